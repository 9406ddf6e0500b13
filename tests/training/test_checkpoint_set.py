"""A checkpoint is one epoch's set of files (training/train.py): each tensor file carries its epoch, so that a set
mixed by a save killed between two renames is refused at resume, naming the files, instead of resuming into a run
that silently differs from an uninterrupted one, and so is it by export and eval (`load_model`), instead of
exporting weights beside another epoch's state.json; a run saved before the stamps still resumes and loads; each
file is synced before it is renamed into place. On tiny midinet (a GAN: two optimizer files)."""

import os
import shutil

import pytest
import safetensors
import safetensors.torch

import training.train as training_loop
from tests.test_cli_store_guards import refusal
from tests.training.test_reproducible_runs import CONFIG, assert_identical, weights

TENSOR_FILES = ["model.safetensors", "optimizer-generator.safetensors", "optimizer-discriminator.safetensors",
                training_loop.RNG_FILE]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """A 1-epoch run and an uninterrupted 2-epoch one of the same config (about 3 s)."""
    runs = tmp_path_factory.mktemp("runs")
    training_loop.train(CONFIG, runs / "one", epochs=1)
    training_loop.train(CONFIG, runs / "two", epochs=2)
    return runs


def stamp(path) -> str | None:
    with safetensors.safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get("epoch")


def mtimes(run) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def test_every_tensor_file_of_a_checkpoint_carries_its_epoch(runs):
    assert sorted(p.name for p in (runs / "two").glob("*.safetensors")) == sorted(TENSOR_FILES)
    assert [stamp(runs / "two" / name) for name in TENSOR_FILES] == ["2"] * 4


LATER = [["model.safetensors"], ["model.safetensors", "optimizer-generator.safetensors"]]


def mixed(runs, tmp_path, later):
    """Epoch 2's first files (`later`) renamed into place over epoch 1's, then the save killed before state.json."""
    run = shutil.copytree(runs / "one", tmp_path / "run")
    for name in later:
        shutil.copy(runs / "two" / name, run / name)
    return run


def refused_mix(run, later) -> str:
    named = ", ".join(f"{name} (epoch 2)" for name in later)
    return (f"{run} holds files of another epoch than its state.json's 1: {named} (a save was interrupted between "
            "files); they are not one checkpoint, to resume, export or evaluate: train again in another --run-dir, "
            "or after removing this one")


@pytest.mark.parametrize("later", LATER)
def test_a_save_interrupted_between_files_is_refused_at_resume_naming_them(runs, tmp_path, later):
    run = mixed(runs, tmp_path, later)
    before = mtimes(run)
    with pytest.raises(training_loop.Refused) as refused:
        training_loop.train(CONFIG, run, epochs=2)
    assert str(refused.value) == refused_mix(run, later)
    assert mtimes(run) == before


@pytest.mark.parametrize("later", LATER)
def test_a_save_interrupted_between_files_is_refused_by_export_and_eval_naming_them(runs, tmp_path, later):
    run = mixed(runs, tmp_path, later)
    before = mtimes(run)
    with pytest.raises(training_loop.Refused) as refused:
        training_loop.load_model(run)
    assert str(refused.value) == refused_mix(run, later)
    assert refusal(["eval", str(run)]) == f"genserve eval: {refused_mix(run, later)}"
    assert refusal(["export", str(run), "--models", str(tmp_path / "models")]) == \
        f"genserve export: {refused_mix(run, later)}"
    assert mtimes(run) == before and not (tmp_path / "models").exists()


def test_an_untouched_run_resumes_as_an_uninterrupted_one(runs, tmp_path):
    run = shutil.copytree(runs / "one", tmp_path / "run")
    training_loop.train(CONFIG, run, epochs=2)
    assert_identical(weights(run), weights(runs / "two"))


def unstamped(runs, tmp_path):
    """Run "one" as saved before the stamps: its tensor files without metadata."""
    run = shutil.copytree(runs / "one", tmp_path / "run")
    for name in TENSOR_FILES:
        safetensors.torch.save_file(safetensors.torch.load_file(run / name), run / name)  # no metadata
        assert stamp(run / name) is None
    return run


def test_a_run_saved_before_the_stamps_still_resumes_as_an_uninterrupted_one(runs, tmp_path):
    run = unstamped(runs, tmp_path)
    training_loop.train(CONFIG, run, epochs=2)
    assert_identical(weights(run), weights(runs / "two"))
    assert stamp(run / "model.safetensors") == "2"


def test_a_run_saved_before_the_stamps_still_loads_for_export_and_eval(runs, tmp_path):
    """Its weights as saved, with its state.json and without (a directory of config.json and weights only)."""
    run = unstamped(runs, tmp_path)
    assert_identical(training_loop.load_model(run)[0].state_dict(), weights(runs / "one"))
    (run / "state.json").unlink()
    assert_identical(training_loop.load_model(run)[0].state_dict(), weights(runs / "one"))


def test_a_file_is_synced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def synced(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def replaced(source, target):
        events.append(("replace", str(source)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", replaced)
    with training_loop.replacing(tmp_path / "state.json") as temporary:  # written through the writer's own handle
        temporary.write_text("{}")
    temporary = str(temporary)
    assert events == [("fsync", temporary), ("replace", temporary), ("fsync", str(tmp_path))]
