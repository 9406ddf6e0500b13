"""A training run is reproducible from what it records (training/train.py), on tiny midinet (a GAN: every RNG draw
and every rounding carries on): a resumed run equals an uninterrupted one, epoch k of a longer run equals a k-epoch
run, and the sessions that trained a run (command, epochs, intra-op threads) reach the exported manifest."""

import json

import torch
from safetensors.torch import load_file

import training.train as training_loop
from training.export import export

CONFIG = "training/configs/midinet-tiny.json"


def weights(run_dir):
    return load_file(run_dir / "model.safetensors")


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, one_thread):
    """2 epochs, then resumed to 3, gives the 3-epoch run's weights bit for bit: the global torch RNG (noise, chord
    dropout) goes on from where it stopped (it was reseeded from the config's seed on resume)."""
    training_loop.train(CONFIG, tmp_path / "straight", epochs=3)
    training_loop.train(CONFIG, tmp_path / "resumed", epochs=2)
    training_loop.train(CONFIG, tmp_path / "resumed", epochs=3)
    assert_identical(weights(tmp_path / "resumed"), weights(tmp_path / "straight"))


def test_epoch_k_of_a_longer_run_is_a_k_epoch_run(tmp_path, one_thread, monkeypatch):
    """Nothing in a run depends on its total epochs: epoch 2 of a 4-epoch run is the 2-epoch run, so a config of k
    epochs retrains the checkpoint chosen at epoch k of a longer run."""
    saved = []
    save_file = training_loop.save_file

    def keep(tensors, path, *args, **kwargs):
        save_file(tensors, path, *args, **kwargs)
        if path.name == "model.safetensors" and path.parent.name == "long":
            saved.append({name: t.clone() for name, t in tensors.items()})

    monkeypatch.setattr(training_loop, "save_file", keep)
    training_loop.train(CONFIG, tmp_path / "long", epochs=4)
    training_loop.train(CONFIG, tmp_path / "short", epochs=2)
    assert len(saved) == 4
    assert_identical(saved[1], weights(tmp_path / "short"))


def test_the_sessions_and_their_threads_are_recorded_and_exported(tmp_path, one_thread, capsys):
    """Each call that trains epochs adds its command, epochs, intra-op threads, CPU kernels and code commit to
    state.json (a call with nothing to train adds none); resuming on another thread count says so; export copies
    them to the manifest's provenance."""
    run = tmp_path / "run"
    training_loop.train(CONFIG, run, epochs=1)
    torch.set_num_threads(2)
    try:
        training_loop.train(CONFIG, run, epochs=2)
    finally:
        torch.set_num_threads(1)
    assert "earlier epochs ran on [1] intra-op threads, these on 2" in capsys.readouterr().out
    training_loop.train(CONFIG, run, epochs=2)  # nothing left to train
    sessions = json.loads((run / "state.json").read_text())["sessions"]
    assert [(s["epochs"], s["threads"]) for s in sessions] == [([1, 1], 1), ([2, 2], 2)]
    assert set(sessions[0]) == {"command", "epochs", "threads", "cpu_capability", "torch_version", "git_commit",
                                "training_code_modified"}
    manifest = json.loads((export(run, tmp_path / "models", name="midinet") / "manifest.json").read_text())
    assert manifest["provenance"]["training"] == sessions


def test_a_run_from_before_the_rng_state_still_resumes_and_says_it_differs(tmp_path, one_thread, capsys):
    run = tmp_path / "run"
    training_loop.train(CONFIG, run, epochs=1)
    (run / training_loop.RNG_FILE).unlink()
    state = json.loads((run / "state.json").read_text())
    del state["sessions"]
    (run / "state.json").write_text(json.dumps(state))
    training_loop.train(CONFIG, run, epochs=2)
    assert "saved no RNG state" in capsys.readouterr().out
    assert [s["epochs"] for s in json.loads((run / "state.json").read_text())["sessions"]] == [[2, 2]]

