"""Epoch selection (training/train.py, train.select): after every epoch the family's selection_score (lower is better,
from the training data only) is recorded in state.json, the best epoch's weights are kept as selected.safetensors
(stamped with their epoch), and load_model (export, eval) takes them; a resumed selecting run equals an uninterrupted
one. On tiny midinet, whose selection_score (training/families/midinet.py) must not read the test pieces."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import training.train as training_loop
from tests.training.test_checkpoint_set import stamp
from tests.training.test_reproducible_runs import CONFIG, assert_identical, weights
from training.data import load
from training.export import export
from training.families import midinet


def select_config(tmp_path, family_config=CONFIG, select=True):
    """family_config with train.select set, written into tmp_path."""
    config = json.loads(open(family_config).read())
    config["train"]["select"] = select
    path = tmp_path / f"select-{select}.json"
    path.write_text(json.dumps(config))
    return path


def state(run) -> dict:
    return json.loads((run / "state.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """3 epochs of tiny midinet with selection, uninterrupted and resumed after epoch 2, and without selection;
    each epoch's weights of the uninterrupted run (about 5 s)."""
    runs = tmp_path_factory.mktemp("runs")
    config = select_config(runs)
    epochs = []
    save_file = training_loop.save_file

    def keep(tensors, path, epoch):
        save_file(tensors, path, epoch)
        if path.name == "model.safetensors" and path.parent.name == "straight":
            epochs.append({name: t.clone() for name, t in tensors.items()})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_loop, "save_file", keep)
        training_loop.train(config, runs / "straight", epochs=3)
    training_loop.train(config, runs / "resumed", epochs=2)
    training_loop.train(config, runs / "resumed", epochs=3)
    training_loop.train(CONFIG, runs / "plain", epochs=3)
    return runs, epochs


def test_each_epochs_score_is_recorded_and_the_best_epochs_weights_kept(runs):
    """The scores are midinet.selection_score of each epoch's weights, the best epoch the first of the lowest,
    selected.safetensors that epoch's weights stamped with it, and load_model gives them."""
    runs, epochs = runs
    run = runs / "straight"
    selection = state(run)["selection"]
    model, _, split = training_loop.load_model(run)
    recomputed = []
    for tensors in epochs:
        model.load_state_dict(tensors)
        recomputed.append(midinet.selection_score(model, split))
    assert selection["scores"] == recomputed
    assert selection["best_epoch"] == int(np.argmin(recomputed)) + 1
    assert selection["rule"].startswith("training.families.midinet.selection_score: How far the model's melodies")
    assert stamp(run / training_loop.SELECTED) == str(selection["best_epoch"])
    assert_identical(load_file(run / training_loop.SELECTED), epochs[selection["best_epoch"] - 1])
    assert_identical(training_loop.load_model(run)[0].state_dict(), epochs[selection["best_epoch"] - 1])


def test_selecting_leaves_the_training_as_it_was(runs):
    """selection_score draws from its own generator: the last epoch's weights are those of a run without it."""
    runs, _ = runs
    assert_identical(weights(runs / "straight"), weights(runs / "plain"))
    assert not (runs / "plain" / training_loop.SELECTED).exists() and "selection" not in state(runs / "plain")


def test_a_resumed_selecting_run_equals_an_uninterrupted_one(runs):
    runs, _ = runs
    assert state(runs / "resumed")["selection"] == state(runs / "straight")["selection"]
    assert_identical(load_file(runs / "resumed" / training_loop.SELECTED),
                     load_file(runs / "straight" / training_loop.SELECTED))
    assert_identical(weights(runs / "resumed"), weights(runs / "straight"))


def scripted(monkeypatch, scores):
    """midinet.selection_score replaced by one that gives `scores` in turn, one per epoch trained."""
    given = iter(scores)

    def score(model, split):
        """Scripted."""
        return next(given)

    monkeypatch.setattr(midinet, "selection_score", score)


def test_the_best_epoch_before_a_resume_is_kept_after_it(tmp_path, one_thread, monkeypatch):
    """Scores 2, 1 (best: epoch 2), then resumed: 3, 1 (ties keep the first). selected.safetensors stays epoch 2's,
    which load_model gives, not the last epoch's; the export's manifest says so."""
    config, run = select_config(tmp_path), tmp_path / "run"
    scripted(monkeypatch, [2.0, 1.0, 3.0, 1.0])
    training_loop.train(config, run, epochs=2)
    kept = load_file(run / training_loop.SELECTED)
    training_loop.train(config, run, epochs=4)
    selection = state(run)["selection"]
    assert selection["scores"] == [2.0, 1.0, 3.0, 1.0] and selection["best_epoch"] == 2
    assert stamp(run / training_loop.SELECTED) == "2"
    assert_identical(load_file(run / training_loop.SELECTED), kept)
    assert_identical(training_loop.load_model(run)[0].state_dict(), kept)
    assert not all(torch.equal(kept[name], tensor) for name, tensor in weights(run).items())
    manifest = json.loads((export(run, tmp_path / "models", name="midinet") / "manifest.json").read_text())
    assert manifest["provenance"]["selection"] == selection


def test_a_selected_file_of_another_epoch_is_refused(tmp_path, one_thread, monkeypatch):
    """selected.safetensors renamed into place at epoch 2, the save killed before state.json (best epoch 1)."""
    config, run = select_config(tmp_path), tmp_path / "run"
    scripted(monkeypatch, [1.0])
    training_loop.train(config, run, epochs=1)
    training_loop.save_file(load_file(run / "model.safetensors"), run / training_loop.SELECTED, 2)
    with pytest.raises(training_loop.Refused, match=r"its state\.json's 1: selected\.safetensors \(epoch 2\)"):
        training_loop.load_model(run)
    with pytest.raises(training_loop.Refused, match=r"selected\.safetensors \(epoch 2\)"):
        training_loop.train(config, run, epochs=2)


@pytest.mark.parametrize("select", [True, False])
def test_select_cannot_change_within_a_run(tmp_path, one_thread, select):
    """A run trained without selection is refused resumed with it (its earlier epochs were not scored), and the
    other way round (its selected.safetensors would go stale), before anything is written."""
    run = tmp_path / "run"
    training_loop.train(select_config(tmp_path, select=not select), run, epochs=1)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(training_loop.Refused, match=f"trained 1 epochs {'without' if select else 'with'} "
                                                    "train.select, which must stay as it was for the whole run"):
        training_loop.train(select_config(tmp_path, select=select), run, epochs=2)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_select_for_a_family_without_selection_score_is_refused(tmp_path):
    config = select_config(tmp_path, "training/configs/vae-tiny.json")
    with pytest.raises(ValueError, match=r"select-True\.json: train\.select is true, but the vae family defines no "
                                         r"selection_score to select epochs by; leave select out"):
        training_loop.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("select", ["yes", 1])
def test_select_must_be_true_or_false(tmp_path, select):
    with pytest.raises(ValueError, match=rf"train\.select must be true or false, got {select!r}"):
        training_loop.train(select_config(tmp_path, select=select), tmp_path / "run")


def test_a_nan_first_score_is_beaten_by_any_number(tmp_path, one_thread, monkeypatch):
    """Scores NaN, 0.5, NaN, 0.1: epoch 2 replaces the NaN epoch 1, a NaN never replaces a number, epoch 4 wins."""
    scripted(monkeypatch, [float("nan"), 0.5, float("nan"), 0.1])
    training_loop.train(select_config(tmp_path), tmp_path / "run", epochs=4)
    assert state(tmp_path / "run")["selection"]["best_epoch"] == 4
    assert stamp(tmp_path / "run" / training_loop.SELECTED) == "4"


def test_the_midinet_score_does_not_read_the_test_pieces(one_thread):
    """The same score with the test pieces (and test pairs) emptied or replaced by garbage; it changes with the
    training pieces."""
    split = load("chorales-tiny")
    torch.manual_seed(0)
    model = midinet.build(json.loads(open(CONFIG).read())["model"], split)
    score = midinet.selection_score(model, split)
    garbage = tuple((np.full_like(bars, 7), np.zeros_like(chords)) for bars, chords in split.pieces_train)
    assert midinet.selection_score(model, dataclasses.replace(split, pieces_test=garbage, x_test=split.x_test[:0],
                                                              y_test=split.y_test[:0])) == score
    assert midinet.selection_score(model, dataclasses.replace(split, pieces_test=())) == score
    assert midinet.selection_score(model, dataclasses.replace(split, pieces_train=split.pieces_train[:3])) != score


def test_the_midinet_score_is_seeded(one_thread):
    split = load("chorales-tiny")
    model = midinet.build(json.loads(open(CONFIG).read())["model"], split)
    assert midinet.selection_score(model, split) == midinet.selection_score(model, split)
