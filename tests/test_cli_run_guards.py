"""`genserve train`, `export` and `eval` refuse, in one line naming the argument and before anything is written or
trained, what used to end in a traceback: --epochs (or a config's epochs) or eval's --n below 1, a --run-dir or
--models that cannot be made or written in (a file on the way, /proc), an `eval --quality --json` file that could not
be written, and a --run-dir that holds a run of another family, or a checkpoint of the same family with another
model (resuming it could not load its weights), or an exported model version (training would write into the
store)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import training.export as export
import training.train as train
from genserve import cli
from tests.test_cli_store_guards import files_under, refusal

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "training" / "configs"
CHARRNN = ["train", "charrnn", "--config", str(CONFIGS / "charrnn-tiny.json")]


def contents(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in files_under(root) if p.is_file()}


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Training and loading a run are reached only when every check passes: they raise 'past the checks'."""

    def past_the_checks(*args, **kwargs):
        raise RuntimeError("past the checks")

    monkeypatch.setattr(train, "train_run", past_the_checks)
    monkeypatch.setattr(export, "load_model", past_the_checks)


@pytest.mark.parametrize("epochs", ["0", "-2", "two"])
def test_train_refuses_epochs_below_one_as_a_usage_error(epochs, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*CHARRNN, "--run-dir", str(tmp_path / "run"), "--epochs", epochs])
    assert info.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said == f"genserve train: error: argument --epochs: must be a whole number, 1 or more, got {epochs}"
    assert files_under(tmp_path) == []


def test_eval_refuses_n_below_one_as_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", "--quality", "--n", "0"])
    assert info.value.code == 2
    assert "argument --n: must be a whole number, 1 or more, got 0" in capsys.readouterr().err


def test_eval_quality_refuses_a_json_path_it_could_not_write_before_measuring(tmp_path):
    store = tmp_path / "models"
    (store / "pixelcnn" / "1").mkdir(parents=True)
    (store / "pixelcnn" / "1" / "manifest.json").write_text("{}")  # a model is there: the store check passes
    for path, said in ((tmp_path, f"--json {tmp_path} is a directory"),
                       (tmp_path / "no" / "q.json", f"--json {tmp_path / 'no' / 'q.json'}: no directory ")):
        message = refusal(["eval", "--models", str(store), "--quality", "--json", str(path)])
        assert message.startswith(f"genserve eval: {said}"), message


def test_train_refuses_a_config_whose_epochs_are_below_one(tmp_path):
    config = json.loads((CONFIGS / "charrnn-tiny.json").read_text())
    config["train"]["epochs"] = 0
    path = tmp_path / "zero.json"
    path.write_text(json.dumps(config))
    message = refusal(["train", "charrnn", "--config", str(path), "--run-dir", str(tmp_path / "run")])
    assert message == (f"genserve train: {path}: not a usable config: train.epochs must be a whole number, 1 or "
                       "more, got 0 (or give --epochs)")
    assert files_under(tmp_path) == [path]
    with pytest.raises(RuntimeError, match="past the checks"):  # --epochs overrides the config's
        cli.main(["train", "charrnn", "--config", str(path), "--run-dir", str(tmp_path / "run"), "--epochs", "1"])


def unwritable_paths(tmp_path: Path) -> list[tuple[Path, str]]:
    """(path, what the refusal says) for a directory that cannot be made or written in."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return [(a_file, f"{a_file} is a file, not a directory"),
            (a_file / "sub" / "dir", f"{a_file} is a file, not a directory"),
            (Path("/proc/genserve-run"), "cannot write in /proc")]


def test_train_refuses_a_run_dir_that_cannot_be_made_naming_it(tmp_path):
    paths = unwritable_paths(tmp_path)
    before = files_under(tmp_path)
    for path, said in paths:
        message = refusal([*CHARRNN, "--run-dir", str(path)])
        assert message.startswith(f"genserve train: --run-dir {path}: ") and said in message, message
    assert files_under(tmp_path) == before


def test_export_refuses_a_store_that_cannot_be_made_naming_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "charrnn"}))
    paths = unwritable_paths(tmp_path)
    before = files_under(tmp_path)
    for path, said in paths:
        message = refusal(["export", str(run), "--models", str(path)])
        assert message.startswith(f"genserve export: --models {path}: ") and said in message, message
    assert files_under(tmp_path) == before


def a_run(run_dir: Path, config_name: str, checkpoint: bool = True) -> Path:
    """A run dir as training leaves it: config.json, and with `checkpoint` state.json and weights."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text((CONFIGS / config_name).read_text())
    if checkpoint:
        (run_dir / "state.json").write_text(json.dumps({"epoch": 1, "history": []}))
        (run_dir / "model.safetensors").write_bytes(b"weights")
    return run_dir


@pytest.mark.parametrize("checkpoint", [True, False])
def test_train_refuses_a_run_dir_of_another_family_naming_both(checkpoint, tmp_path):
    run = a_run(tmp_path / "pixelcnn", "pixelcnn-tiny.json", checkpoint)
    before = contents(tmp_path)
    message = refusal([*CHARRNN, "--run-dir", str(run)])
    assert message == (f"genserve train: --run-dir {run} holds a run of the family 'pixelcnn', not 'charrnn'; give "
                       "another --run-dir")
    assert contents(tmp_path) == before


def test_train_refuses_a_checkpoint_of_the_same_family_with_another_model(tmp_path):
    run = a_run(tmp_path / "pixelcnn", "pixelcnn-tiny.json")
    message = refusal(["train", "pixelcnn", "--run-dir", str(run)])  # the full config: a bigger model
    assert message.startswith(f"genserve train: --run-dir {run} holds a 'pixelcnn' checkpoint of another model ")


def test_train_refuses_a_run_dir_whose_config_is_not_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    assert "holds a config.json that is not a genserve run's" in refusal([*CHARRNN, "--run-dir", str(run)])


def test_export_refuses_a_model_name_that_is_a_file_in_the_store(tmp_path):
    run = a_run(tmp_path / "charrnn", "charrnn-tiny.json")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "charrnn").write_text("not a directory")
    before = contents(tmp_path)
    assert refusal(["export", str(run), "--models", str(tmp_path / "models")]) == (
        f"genserve export: {tmp_path / 'models' / 'charrnn'} is a file, not a model's directory: give another "
        "--name or --models")
    assert contents(tmp_path) == before


def test_export_refuses_a_version_that_is_a_file_even_with_force(tmp_path):
    run = a_run(tmp_path / "charrnn", "charrnn-tiny.json")
    (tmp_path / "models" / "charrnn").mkdir(parents=True)
    (tmp_path / "models" / "charrnn" / "1").write_text("not a directory")
    before = contents(tmp_path)
    assert refusal(["export", str(run), "--models", str(tmp_path / "models"), "--force"]) == (
        f"genserve export: {tmp_path / 'models' / 'charrnn' / '1'} is a file, not a model version's directory: give "
        "another --version or --models")
    assert contents(tmp_path) == before


def test_train_refuses_an_exported_model_version_as_run_dir(tmp_path):
    version = tmp_path / "models" / "charrnn" / "1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text("{}")
    before = contents(tmp_path)
    assert refusal([*CHARRNN, "--run-dir", str(version)]) == (
        f"genserve train: --run-dir {version} is an exported model version (it holds a manifest.json), not a "
        "training run; give another --run-dir")
    assert contents(tmp_path) == before


def test_a_new_run_dir_a_resumable_one_and_a_writable_store_get_past_the_checks(tmp_path):
    resumable = a_run(tmp_path / "charrnn", "charrnn-tiny.json")
    for run_dir in (tmp_path / "new" / "run", resumable):
        with pytest.raises(RuntimeError, match="past the checks"):
            cli.main([*CHARRNN, "--run-dir", str(run_dir), "--epochs", "3"])
    with pytest.raises(RuntimeError, match="past the checks"):
        cli.main(["export", str(resumable), "--models", str(tmp_path / "new" / "models")])
    assert not (tmp_path / "new").exists()  # the checks make nothing


def test_a_refusal_through_the_entry_point_is_one_line_and_a_failing_status(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    done = subprocess.run([sys.executable, "-m", "genserve", *CHARRNN, "--run-dir", str(a_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"genserve train: --run-dir {a_file}: {a_file} is a file, not a directory\n"
