"""training.export's guards: a forced re-export replaces a version only once the new one is whole (an error or
SIGTERM leaves the old one and no scratch directory), a version the store would not read is refused, a model name
keeps one kind of data, and the manifest's description is the family docstring's first paragraph."""

import json
import os
import shutil
import signal

import pytest

import training.export as export_module
from service.store.store import ModelStore, is_version_number
from training.export import MAX_VERSION, DataMismatch, export, first_paragraph
from training.families import family_module


@pytest.fixture
def store(tiny_store, tmp_path):
    """A writable copy of the tiny store (pixelcnn/1) with a file of an old layout in the version."""
    copy = tmp_path / "models"
    shutil.copytree(tiny_store, copy)
    (copy / "pixelcnn" / "1" / "old-layout.pt").write_text("a file no manifest names")
    return copy


def snapshot(version_dir):
    return {p.name: p.read_bytes() for p in version_dir.iterdir()}


def fail_midway(monkeypatch, failure):
    """Make export fail (call `failure`) after it has written the functions, before the shared weights."""
    def share(out_dir, files, **kwargs):
        failure()

    monkeypatch.setattr(export_module, "share_onnx_weights", share)


def test_forced_export_that_fails_leaves_the_old_version_and_no_scratch(store, tiny_run, monkeypatch):
    before = snapshot(store / "pixelcnn" / "1")
    fail_midway(monkeypatch, lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        export(tiny_run, store, name="pixelcnn", version=1, reuse_eval=True, force=True)
    assert snapshot(store / "pixelcnn" / "1") == before
    assert [p.name for p in (store / "pixelcnn").iterdir()] == ["1"]


def test_sigterm_during_a_forced_export_leaves_the_old_version_and_no_scratch(store, tiny_run, monkeypatch):
    before = snapshot(store / "pixelcnn" / "1")
    fail_midway(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        export(tiny_run, store, name="pixelcnn", version=1, reuse_eval=True, force=True)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous
    assert snapshot(store / "pixelcnn" / "1") == before
    assert [p.name for p in (store / "pixelcnn").iterdir()] == ["1"]


def test_version_being_written_is_not_in_the_store_and_replaces_the_old_one_whole(store, tiny_run, monkeypatch):
    seen = []
    write = export_module.write_version

    def watched(out_dir, *args):
        write(out_dir, *args)
        assert (out_dir / "manifest.json").is_file()
        seen.append(sorted(p.parent.name for p in store.glob("*/*/manifest.json")))

    monkeypatch.setattr(export_module, "write_version", watched)
    out = export(tiny_run, store, name="pixelcnn", version=1, reuse_eval=True, force=True)
    assert seen == [["1"]]  # only the old version, while the new one is whole in its scratch directory
    assert not (out / "old-layout.pt").exists()
    assert [p.name for p in (store / "pixelcnn").iterdir()] == ["1"]
    assert ModelStore(store).entries["pixelcnn"].version == 1


def test_version_the_store_would_not_read_is_refused_naming_the_flag(tiny_run, tmp_path):
    assert is_version_number(str(MAX_VERSION)) and not is_version_number(str(MAX_VERSION + 1))
    with pytest.raises(ValueError, match=r"^--version 1000000000000000000 .*18 digits") as refused:
        export(tiny_run, tmp_path / "models", version=MAX_VERSION + 1)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "models").exists()


def test_a_version_of_other_data_under_the_name_is_refused(store, tiny_gray_run, tiny_gray_store):
    with pytest.raises(DataMismatch, match=r"pixelcnn/1 holds a model of other data .*levels 2 there, 256 here.*"
                                           r"--name") as refused:
        export(tiny_gray_run, store, version=2, reuse_eval=True)  # the name defaults to the family: pixelcnn
    assert "\n" not in str(refused.value)
    assert [p.name for p in (store / "pixelcnn").iterdir()] == ["1"]


def test_a_version_of_the_same_data_is_added(store, tiny_run):
    out = export(tiny_run, store, version=2, reuse_eval=True)
    assert ModelStore(store).versions["pixelcnn"].keys() == {1, 2} and out.name == "2"


def test_description_is_the_first_paragraph_with_its_lines_joined(tiny_store):
    doc = """Gated PixelCNN (van den Oord et al. 2016,
        "Conditional Image Generation").

        More detail.
        """
    assert first_paragraph(doc) == 'Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation").'
    assert first_paragraph(None) == ""
    manifest = json.loads((tiny_store / "pixelcnn" / "1" / "manifest.json").read_text())
    first_line = family_module("pixelcnn").__doc__.strip().splitlines()[0]
    assert manifest["description"].startswith(first_line) and len(manifest["description"]) > len(first_line)
    assert manifest["description"] == first_paragraph(family_module("pixelcnn").__doc__)
