"""Shared fixtures: a tiny PixelCNN trained in seconds and exported into a temporary store."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "training" / "configs" / "pixelcnn-tiny.json"
TINY_GRAY_CONFIG = REPO / "training" / "configs" / "pixelcnn-gray-tiny.json"


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


@pytest.fixture(scope="session")
def tiny_gray_run(tmp_path_factory) -> Path:
    """A tiny 256-level PixelCNN with the logistic-mixture output, trained in seconds."""
    from training.train import train

    return train(TINY_GRAY_CONFIG, tmp_path_factory.mktemp("runs") / "pixelcnn-gray-tiny")


@pytest.fixture(scope="session")
def tiny_gray_store(tiny_gray_run, tmp_path_factory) -> Path:
    """A model store holding `pixelcnn-gray`, exported from the tiny gray run."""
    from training.export import export

    store = tmp_path_factory.mktemp("gray-models")
    export(tiny_gray_run, store, name="pixelcnn-gray", baseline=False)
    return store
