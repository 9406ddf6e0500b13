"""`genserve export` and `genserve eval --models` guard the store: a name outside the store's rule or a version
below 1 is refused before anything is written; a run exported under a name that holds a model of another family is
refused unless --force; eval of a store path with no model fails in one line, as `serve` does."""

import json
from pathlib import Path

import pytest

import training.export as export
from genserve import cli


def refusal(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message  # one line, not an exit status
    return message


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.fixture
def charrnn_run(tmp_path, monkeypatch) -> Path:
    """A run that reaches load_model only when every check passes: loading it raises 'past the checks'."""
    run = tmp_path / "runs" / "charrnn"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"family": "charrnn"}))

    def loaded(run_dir):
        raise RuntimeError("past the checks")

    monkeypatch.setattr(export, "load_model", loaded)
    return run


@pytest.mark.parametrize(("flags", "said"), [
    (["--name", "../evil"], "--name '../evil' is not a model name"),
    (["--name", "a/b"], "--name 'a/b' is not a model name"),
    (["--name", "Charrnn"], "--name 'Charrnn' is not a model name"),
    (["--version", "0"], "--version 0 is not a version"),
    (["--version", "-3"], "--version -3 is not a version"),
])
def test_export_refuses_a_bad_name_or_version_before_writing_anything(flags, said, charrnn_run, tmp_path):
    store = tmp_path / "store" / "models"
    store.mkdir(parents=True)
    before = files_under(tmp_path)
    message = refusal(["export", str(charrnn_run), "--models", str(store), *flags])
    assert message.startswith("genserve export: ") and said in message
    assert files_under(tmp_path) == before  # nothing written, inside the store or beside it


def _stored(store: Path, name: str, version: int, family: str) -> None:
    (store / name / str(version)).mkdir(parents=True)
    (store / name / str(version) / "manifest.json").write_text(json.dumps({"name": name, "family": family}))


def test_export_refuses_a_name_that_holds_another_family_naming_both(charrnn_run, tmp_path):
    store = tmp_path / "models"
    _stored(store, "wavenet", 1, "wavenet")
    before = files_under(tmp_path)
    message = refusal(["export", str(charrnn_run), "--models", str(store), "--name", "wavenet", "--version", "2"])
    assert "'wavenet' model" in message and "this run is a 'charrnn'" in message and "--force" in message
    assert files_under(tmp_path) == before


def test_export_under_a_name_of_the_same_family_or_with_force_gets_past_the_checks(charrnn_run, tmp_path):
    store = tmp_path / "models"
    _stored(store, "wavenet", 1, "wavenet")
    _stored(store, "shakespeare", 1, "charrnn")
    for name, force in (("wavenet", True), ("shakespeare", False), ("new-name", False)):
        with pytest.raises(RuntimeError, match="past the checks"):
            export.export(charrnn_run, store, name=name, version=2, force=force)


def test_eval_of_a_store_with_no_model_fails_in_one_line(tmp_path):
    missing = tmp_path / "nonexistent"
    assert refusal(["eval", "--models", str(missing)]) == f"genserve eval: model store {missing} is not a directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    message = refusal(["eval", "--models", str(empty)])
    assert message.startswith("genserve eval: no model in the store:") and "is empty" in message


def test_eval_of_a_store_with_a_model_prints_its_table(tmp_path, capsys):
    _stored(tmp_path / "models", "charrnn", 1, "charrnn")
    (tmp_path / "models" / "charrnn" / "1" / "manifest.json").write_text(json.dumps({"metrics": {}}))
    cli.main(["eval", "--models", str(tmp_path / "models")])
    assert capsys.readouterr().out.startswith("| model | family |")


def test_eval_quality_without_the_classifier_is_refused_before_the_store_table(tmp_path, capsys):
    """The refusal comes before any output: it came after the store table was printed."""
    _stored(tmp_path / "models", "charrnn", 1, "charrnn")
    (tmp_path / "models" / "charrnn" / "1" / "manifest.json").write_text(json.dumps({"metrics": {}}))
    message = refusal(["eval", "--models", str(tmp_path / "models"), "--quality"])
    assert "has no classifier.json" in message and capsys.readouterr().out == ""
