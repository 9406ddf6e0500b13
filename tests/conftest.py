"""Shared fixtures: tiny models trained in seconds and exported into temporary stores."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "training" / "configs"


def train_tiny(config: str, tmp_path_factory) -> Path:
    """A run of training/configs/<config>.json in a temporary directory."""
    from training.train import train

    return train(CONFIGS / f"{config}.json", tmp_path_factory.mktemp("runs") / config)


def export_tiny(run: Path, name: str, tmp_path_factory) -> Path:
    """A temporary model store holding `run` exported as `name` (version 1, no baseline)."""
    from training.export import export

    store = tmp_path_factory.mktemp("models")
    out = export(run, store, name=name, baseline=False)
    assert json.loads((out / "manifest.json").read_text())["name"] == name
    return store


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny binarized PixelCNN."""
    return train_tiny("pixelcnn-tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_store(tiny_run, tmp_path_factory) -> Path:
    """A model store holding one model, `pixelcnn`, exported from the tiny run."""
    return export_tiny(tiny_run, "pixelcnn", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gray_run(tmp_path_factory) -> Path:
    """A tiny 256-level PixelCNN with the logistic-mixture output."""
    return train_tiny("pixelcnn-gray-tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gray_store(tiny_gray_run, tmp_path_factory) -> Path:
    """A model store holding `pixelcnn-gray`, exported from the tiny gray run."""
    return export_tiny(tiny_gray_run, "pixelcnn-gray", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory) -> Path:
    """A tiny char-RNN on pydoc-text."""
    return train_tiny("charrnn-tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_text_store(tiny_text_run, tmp_path_factory) -> Path:
    """A model store holding `charrnn`, exported from the tiny text run."""
    return export_tiny(tiny_text_run, "charrnn", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_audio_run(tmp_path_factory) -> Path:
    """A tiny WaveNet on speech-tiny (needs espeak-ng)."""
    return train_tiny("wavenet-tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_audio_store(tiny_audio_run, tmp_path_factory) -> Path:
    """A model store holding `wavenet`, exported from the tiny audio run."""
    return export_tiny(tiny_audio_run, "wavenet", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_vae_run(tmp_path_factory) -> Path:
    """A tiny binarized VAE (Gaussian posterior with refinement, Bernoulli decoder)."""
    return train_tiny("vae-tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_vae_store(tiny_vae_run, tmp_path_factory) -> Path:
    """A model store holding `vae`, exported from the tiny VAE run."""
    return export_tiny(tiny_vae_run, "vae", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_rbm_run(tmp_path_factory) -> Path:
    """A tiny binary RBM (PCD training; log Z by annealed importance sampling at export)."""
    return train_tiny("rbm-tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_rbm_store(tiny_rbm_run, tmp_path_factory) -> Path:
    """A model store holding `rbm`, exported from the tiny RBM run."""
    return export_tiny(tiny_rbm_run, "rbm", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_flow_store(tmp_path_factory) -> Path:
    """A model store holding `nice`, a tiny NICE flow on 256-level mnist5k."""
    return export_tiny(train_tiny("nice-tiny", tmp_path_factory), "nice", tmp_path_factory)
