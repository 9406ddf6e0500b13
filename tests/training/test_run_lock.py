"""One training run at a time in a run directory (training/train.py's `run_lock`, a flock on the directory itself,
which the kernel drops when its holder exits or is killed): a second run, or a resume, into a directory that a run
is training is refused at once, naming it, and `genserve train` says so in one line; export and eval read the run
(`load_model`) under a shared lock, so that they neither read a checkpoint half renamed into place nor let a
training run start under them. On tiny midinet."""

import subprocess
import sys

import pytest

import training.train as training_loop
from tests.test_cli_store_guards import refusal
from tests.training.test_reproducible_runs import CONFIG, assert_identical, weights


def training_holds(run) -> str:
    return (f"{run} is locked: another training run (or an export or eval reading it) holds it; wait for it to "
            "end, or train in another --run-dir")


def reading_refused(run) -> str:
    return f"{run} is locked: a training run holds it; export or evaluate it once that run ends"


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """A 1-epoch run (about 1 s), read only by the tests."""
    run = tmp_path_factory.mktemp("runs") / "one"
    training_loop.train(CONFIG, run, epochs=1)
    return run


def test_a_run_started_in_a_run_dir_being_trained_is_refused_at_once(tmp_path, one_thread, monkeypatch):
    """During each epoch of a 2-epoch run, another run into its directory (after epoch 1: a resume) is refused
    before it makes its data, and the first run ends as an uninterrupted one."""
    refusals, made, inside = [], [], []
    run_epoch, data_and_model = training_loop._run_epoch, training_loop._data_and_model

    def epoch_beside_another_run(*args):
        if not inside:  # the first run's epoch, not one that the second run would train on the old code
            inside.append(True)
            with pytest.raises(training_loop.Refused) as refused:
                training_loop.train(CONFIG, tmp_path / "run", epochs=2)
            refusals.append(str(refused.value))
            inside.clear()
        return run_epoch(*args)

    def making(*args):
        made.append(args)
        return data_and_model(*args)

    monkeypatch.setattr(training_loop, "_run_epoch", epoch_beside_another_run)
    monkeypatch.setattr(training_loop, "_data_and_model", making)
    training_loop.train(CONFIG, tmp_path / "run", epochs=2)
    assert refusals == [training_holds(tmp_path / "run")] * 2
    assert len(made) == 1
    monkeypatch.undo()
    training_loop.train(CONFIG, tmp_path / "straight", epochs=2)
    assert_identical(weights(tmp_path / "run"), weights(tmp_path / "straight"))


def test_genserve_train_into_a_locked_run_dir_says_so_in_one_line(run, one_thread):
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with training_loop.run_lock(run):
        message = refusal(["train", "midinet-tiny", "--run-dir", str(run), "--epochs", "2"])
    assert message == f"genserve train: {training_holds(run)}"
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


@pytest.mark.parametrize("command", [["eval"], ["export", "--models", "{models}"]])
def test_export_and_eval_of_a_run_being_trained_are_refused_in_one_line(run, tmp_path, command):
    argv = [command[0], str(run), *(a.format(models=tmp_path / "models") for a in command[1:])]
    with training_loop.run_lock(run):
        with pytest.raises(training_loop.Refused) as refused:
            training_loop.load_model(run)
        assert str(refused.value) == reading_refused(run)
        assert refusal(argv) == f"genserve {command[0]}: {reading_refused(run)}"
    assert not (tmp_path / "models").exists()


def test_readers_share_a_run_and_keep_training_out(run):
    with training_loop.run_lock(run, shared=True):
        model, config, _ = training_loop.load_model(run)  # a second reader
        assert config["family"] == "midinet" and not model.training
        with pytest.raises(training_loop.Refused) as refused:
            training_loop.train(CONFIG, run, epochs=2)
    assert str(refused.value) == training_holds(run)
    assert training_loop.trained_epochs(run) == 1


def stopped(*args):
    raise KeyboardInterrupt


@pytest.mark.parametrize("epochs, patch, error", [(1, None, training_loop.Refused), (3, stopped, KeyboardInterrupt)],
                         ids=["refused", "interrupted"])
def test_a_run_that_fails_lets_go_of_its_lock(tmp_path, one_thread, monkeypatch, epochs, patch, error):
    """Refused (fewer epochs than the run trained) or stopped by a Ctrl-C mid-epoch: the next run may train."""
    run = tmp_path / "run"
    training_loop.train(CONFIG, run, epochs=2)
    if patch:
        monkeypatch.setattr(training_loop, "_run_epoch", patch)
    with pytest.raises(error):
        training_loop.train(CONFIG, run, epochs=epochs)
    with training_loop.run_lock(run):
        pass


def test_the_lock_of_a_killed_run_is_gone_with_it_and_leaves_no_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, training.train as t\nwith t.run_lock(sys.argv[1]):\n"
         "    print('held', flush=True)\n    sys.stdin.read()", str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(training_loop.Refused), training_loop.run_lock(run):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with training_loop.run_lock(run):
        pass
    assert list(run.iterdir()) == []


def test_no_training_run_starts_while_an_export_measures_and_writes(run, tmp_path, monkeypatch):
    """The export holds its shared lock past load_model, to its end: the eval.json it reads or writes and the
    state.json whose sessions it copies stay the weights' own."""
    from training import export as exporting

    refusals, measure = [], exporting.measured_report

    def measured_beside_a_training_run(*args):
        with pytest.raises(training_loop.Refused) as refused:
            training_loop.train(CONFIG, run, epochs=2)
        refusals.append(str(refused.value))
        return measure(*args)

    monkeypatch.setattr(exporting, "measured_report", measured_beside_a_training_run)
    exporting.export(run, tmp_path / "models", name="midinet")
    assert refusals == [training_holds(run)]


def test_no_training_run_starts_while_eval_measures(run, monkeypatch):
    """genserve eval holds its shared lock to its end too: the eval.json it writes is the weights' it read."""
    import training.evaluate as evaluating
    from genserve.cli import main

    refusals, measure = [], evaluating.evaluate

    def measured_beside_a_training_run(*args, **kwargs):
        with pytest.raises(training_loop.Refused) as refused:
            training_loop.train(CONFIG, run, epochs=2)
        refusals.append(str(refused.value))
        return measure(*args, **kwargs)

    monkeypatch.setattr(evaluating, "evaluate", measured_beside_a_training_run)
    main(["eval", str(run)])
    assert refusals == [training_holds(run)]
