"""Shared fixtures: a tiny PixelCNN trained in seconds and exported into a temporary store."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "training" / "configs" / "pixelcnn-tiny.json"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    from training.train import train

    return train(TINY_CONFIG, tmp_path_factory.mktemp("runs") / "pixelcnn-tiny")


@pytest.fixture(scope="session")
def tiny_store(tiny_run, tmp_path_factory) -> Path:
    """A model store holding one model, `pixelcnn`, exported from the tiny run."""
    from training.export import export

    store = tmp_path_factory.mktemp("models")
    out = export(tiny_run, store, name="pixelcnn", baseline=False)
    assert json.loads((out / "manifest.json").read_text())["name"] == "pixelcnn"
    return store
