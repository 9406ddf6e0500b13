"""`genserve train` takes a config by name only (a path goes through --config), checks the whole config before
anything is made, refuses fewer epochs than a run trained and leaves a finished run alone, says where a Ctrl-C left
the run, and names the files it wrote (without loading the model again for its closing note)."""

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

import training.data as data
import training.data.speech as speech
import training.train as train
from genserve import cli
from tests.test_cli_store_guards import files_under, refusal

REPO = Path(__file__).resolve().parent.parent.parent
CONFIGS = REPO / "training" / "configs"
TINY = json.loads((CONFIGS / "pixelcnn-tiny.json").read_text())


@pytest.fixture
def no_training(monkeypatch):
    """Training is reached only when every check passes: it raises 'past the checks'."""

    def past_the_checks(*args, **kwargs):
        raise RuntimeError("past the checks")

    monkeypatch.setattr(train, "train_run", past_the_checks)  # what `genserve train` calls once its checks pass


def test_a_config_name_is_never_a_path(tmp_path, no_training):
    config = tmp_path / "elsewhere.json"
    config.write_text(json.dumps(TINY))
    relative = os.path.relpath(tmp_path / "elsewhere", CONFIGS)  # ../../../tmp/...: read as a name, it was a path
    message = refusal(["train", relative, "--run-dir", str(tmp_path / "run")])
    assert message == (f"genserve train: {relative!r} is a path, not a config name or family: give the config's "
                       f"family and the file as --config, e.g. `genserve train <family> --config {relative}`")
    assert files_under(tmp_path) == [config]
    assert cli._family_of("pixelcnn-tiny") == "pixelcnn" and cli._family_of("wgan-gp") == "gan"


def changed(edit) -> dict:
    config = json.loads(json.dumps(TINY))
    edit(config)
    return config


BAD_CONFIGS = [
    (changed(lambda c: c.update(dataset="nosuch")), "dataset 'nosuch' is not one of "),
    (changed(lambda c: c["train"].pop("seed")), "train.seed is missing: it must be a whole number, 0 or more"),
    (changed(lambda c: c["train"].pop("batch_size")), "train.batch_size is missing: it must be a whole number"),
    (changed(lambda c: c["train"].update(lr="0.1")), "train.lr must be a number above 0, got '0.1'"),
    (changed(lambda c: c["train"].update(max_train=2.5)), "train.max_train must be a whole number, 1 or more"),
    (changed(lambda c: c["model"].update(bogus=1)), "model.bogus is not a setting of a pixelcnn model; known: "),
    (changed(lambda c: c.update(model=[8])), "model must be an object"),
    (["family", "dataset", "model", "train"], "the config is a JSON list, not an object"),
]


@pytest.mark.parametrize(("config", "said"), BAD_CONFIGS)
def test_a_config_that_could_not_train_is_refused_in_one_line_naming_the_key(config, said, tmp_path, no_training):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    message = refusal(["train", "pixelcnn", "--config", str(path), "--run-dir", str(tmp_path / "run")])
    assert message.startswith(f"genserve train: {path}: not a usable config: {said}"), message
    assert files_under(tmp_path) == [path]


def test_training_checks_the_config_before_making_the_run_dir(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD_CONFIGS[0][0]))
    with pytest.raises(ValueError, match="dataset 'nosuch'"):
        train.train(path, tmp_path / "run")
    assert files_under(tmp_path) == [path]


def checks_counted(monkeypatch) -> list[dict]:
    """The configs check_config is given from now on (copies), training stopping at 'past the checks' after them."""
    checked, check = [], train.check_config

    def counted(config):
        checked.append(json.loads(json.dumps(config)))
        check(config)

    def past_the_checks(config, config_path):
        checked.append({"trained": config})
        raise RuntimeError("past the checks")

    monkeypatch.setattr(train, "check_config", counted)
    monkeypatch.setattr(train, "_data_and_model", past_the_checks)
    return checked


def test_genserve_train_checks_the_config_once_and_trains_the_config_it_checked(tmp_path, monkeypatch):
    checked = checks_counted(monkeypatch)
    with pytest.raises(RuntimeError, match="past the checks"):
        cli.main(["train", "pixelcnn-tiny", "--run-dir", str(tmp_path / "run"), "--epochs", "3"])
    assert checked[0] == {**TINY, "train": {**TINY["train"], "epochs": 3}}
    assert checked[1:] == [{"trained": {**checked[0], "command": None}}]


def test_a_direct_call_of_training_checks_the_config_once(tmp_path, monkeypatch):
    checked = checks_counted(monkeypatch)
    with pytest.raises(RuntimeError, match="past the checks"):
        train.train(CONFIGS / "pixelcnn-tiny.json", tmp_path / "run", epochs=3)
    assert checked[0] == {**TINY, "train": {**TINY["train"], "epochs": 3}}
    assert checked[1:] == [{"trained": {**checked[0], "command": None}}]


def test_every_shipped_config_passes_the_checks():
    for path in sorted(CONFIGS.glob("*.json")):
        train.check_config(train.load_config(path))


def test_data_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)  # no espeak-ng
    monkeypatch.setitem(data.DATASETS, "speech-tiny", lambda: speech.espeak())  # as if nothing were cached
    message = refusal(["train", "wavenet-tiny", "--run-dir", str(tmp_path / "run")])
    assert message == ("genserve train: the speech datasets are synthesized with espeak-ng, which is not installed: "
                       "apt-get install espeak-ng")
    assert files_under(tmp_path) == []


def test_ctrl_c_says_which_epoch_was_saved_and_exits_130(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def interrupted(config, config_path, run_dir):
        Path(run_dir).mkdir()
        (Path(run_dir) / "state.json").write_text(json.dumps({"epoch": 2, "history": []}))
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_run", interrupted)
    with pytest.raises((SystemExit, KeyboardInterrupt)) as info:
        cli.main(["train", "pixelcnn-tiny", "--run-dir", str(run)])
    assert info.type is SystemExit and info.value.code == 130
    assert capsys.readouterr().err.strip() == (f"genserve train: interrupted, {run} saved epoch 2 last; the same "
                                               "command resumes after it")


@pytest.fixture(scope="module")
def charrnn_run(tmp_path_factory) -> tuple[Path, str]:
    """A tiny charrnn trained by `genserve train` (about 15 s), loading no model after training: its output."""
    run = tmp_path_factory.mktemp("runs") / "charrnn"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(train, "load_model", lambda *a: pytest.fail("the closing note loaded the model again"))
        cli.main(["train", "charrnn-tiny", "--run-dir", str(run)])
    return run, out.getvalue()


def test_train_names_the_files_it_wrote_and_says_before_drawing_samples(charrnn_run):
    run, said = charrnn_run
    lines = said.splitlines()
    written = [run / name for name in lines[-2].removeprefix("wrote ").removesuffix(f" in {run}").split(", ")]
    assert sorted(written) == files_under(run)
    assert lines[-3] == f"drawing samples into {run / 'samples.txt'} ..."
    assert lines[-1] == cli.NLL_NOTES["unconditional"]


def mtimes(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in files_under(run)}


def test_a_run_with_nothing_to_train_is_left_alone(charrnn_run, tmp_path, capsys):
    run = shutil.copytree(charrnn_run[0], tmp_path / "run")
    before = mtimes(run)
    cli.main(["train", "charrnn-tiny", "--run-dir", str(run), "--epochs", "1"])
    assert capsys.readouterr().out == (f"nothing to train: {run} is at epoch 1 of 1 (give --epochs above 1 to "
                                       "train on)\n")
    assert mtimes(run) == before


def test_fewer_epochs_than_the_run_trained_are_refused(charrnn_run, tmp_path):
    run = shutil.copytree(charrnn_run[0], tmp_path / "run")
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "epoch": 2}))  # as if trained to 2
    before = mtimes(run)
    assert refusal(["train", "charrnn-tiny", "--run-dir", str(run), "--epochs", "1"]) == (
        f"genserve train: {run} has trained 2 epochs, more than the 1 asked: give --epochs 2 or more, or another "
        "--run-dir")
    assert mtimes(run) == before
