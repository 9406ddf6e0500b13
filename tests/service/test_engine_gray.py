"""The continuous output path end to end: a 256-level PixelCNN with the discretized logistic mixture, served.

Sampling draws two uniforms per pixel (capability noise_shape [W, 2]); the engine's per-row generators must
feed the exported step exactly what eager sampling would use.
"""

import asyncio

import numpy as np
import pytest
import torch

from service.engine.engine import Engine
from service.engine.procedures import row_generators
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn-gray"


@pytest.fixture(scope="module")
def engine(tiny_gray_store) -> Engine:
    return Engine(ModelStore(tiny_gray_store), Settings(runtime="onnx", intra_op_threads=1))


@pytest.fixture(scope="module")
def eager(tiny_gray_run):
    """The eager PixelCNN the store was exported from."""
    from training.train import load_model

    return load_model(tiny_gray_run)[0]


def test_manifest_declares_two_uniforms_per_pixel(engine):
    cap = engine.model(MODEL).capabilities["sample"]
    assert cap["noise_shape"] == [28, 2] and cap["step_shape"] == [28]
    assert engine.data_spec(MODEL)["levels"] == 256


def test_served_samples_are_seeded_and_equal_eager_sampling_under_the_same_noise(engine, eager):
    from training.families.pixelcnn import sample_fast

    x = asyncio.run(engine.sample(MODEL, 3, seed=5, temperature=1.0, label=2))  # [3, 1, 28, 28]
    assert x.shape == (3, 1, 28, 28) and x.min() >= 0 and x.max() <= 255 and len(np.unique(x)) > 10
    assert np.array_equal(asyncio.run(engine.sample(MODEL, 3, seed=5, temperature=1.0, label=2)), x)

    rngs = row_generators(5, 3)  # what the engine drew: row r, step t -> rngs[r].random([28, 2])
    noise = np.stack([np.stack([rng.random((28, 2), dtype=np.float32) for _ in range(28)]) for rng in rngs])
    expected = sample_fast(eager, torch.full((3,), 2), torch.from_numpy(noise), torch.ones(3)).numpy()
    assert np.mean(x == expected) > 0.99  # float32 ONNX vs eager may flip a pixel at a bin edge, rarely


def test_scores_equal_eager_log_prob_and_completion_keeps_observed_pixels(engine, eager):
    from training.data import load

    images = load("mnist5k").x_test[:3].astype(np.int64)
    results = asyncio.run(engine.score(MODEL, images, labels=[0, 1, 2]))
    with torch.no_grad():
        expected = eager.log_prob(torch.from_numpy(images), torch.tensor([0, 1, 2])).numpy()
    assert np.allclose([r["log_likelihood_nats"] for r in results], expected, rtol=1e-4)
    assert all(r["method"] == "exact" and r["bits_per_dim"] > 0 for r in results)
    mask = np.zeros((1, 28, 28), np.int64)
    mask[:, :14] = 1
    out = asyncio.run(engine.complete(MODEL, images, mask, n=2, seed=1, temperature=1.0))  # [3, 2, 1, 28, 28]
    assert out.shape == (3, 2, 1, 28, 28)
    assert np.array_equal(out[:, :, :, :14], np.broadcast_to(images[:, None, :, :14], out[:, :, :, :14].shape))
