"""The shipped latent-variable models and flows (models/) load and answer every capability their manifest declares."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"
LATENT = ("vae", "vae-gray", "hvae", "vae-planar", "vae-iaf", "rbm", "realnvp", "nice", "maf")


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def engine(request) -> Engine:
    """Both runtimes: models exported since the shared layout keep ONNX weights in weights.onnx.data and every
    TorchScript function in model.pt; the older ones one file per function."""
    return Engine(ModelStore(MODELS), Settings(runtime=request.param, intra_op_threads=1))


def test_every_latent_variable_model_ships(engine):
    assert set(LATENT) <= set(engine.models)


@pytest.mark.parametrize("name", LATENT)
def test_each_capability_answers(engine, name):
    m = engine.model(name)
    levels, shape = m.data["levels"], m.shape
    x = np.random.default_rng(0).integers(0, levels, (2, *shape))
    mask = np.zeros(shape, np.int64)
    mask[..., :14, :] = 1

    async def run():
        chain = {"steps": 3} if m.capabilities["sample"]["procedure"] == "markov_chain" else {}
        samples = await engine.sample(name, 2, 0, 1.0, None, **chain)
        assert samples.shape == (2, *shape) and samples.min() >= 0 and samples.max() < levels
        bound = {"k": 4} if m.capabilities["score"]["procedure"] == "importance" else {}
        for result in await engine.score(name, x, **bound):
            assert np.isfinite(result["log_likelihood_nats"]) and result["log_likelihood_nats"] < 0
            assert result["method"] == m.capabilities["score"]["method"] and "is_lower_bound" in result
        filled = await engine.complete(name, x, mask, 1, 0, 1.0, steps=2)
        assert (filled[:, 0][..., :14, :] == x[..., :14, :]).all()
        if "encode" in m.capabilities:
            posterior = await engine.encode(name, x)
            assert (posterior["std"] >= 0).all()  # 0 for a flow: its encoder is deterministic
            images = await engine.decode(name, posterior["mean"])
            assert images.shape == (2, *shape) and images.min() >= 0 and images.max() <= levels - 1

    asyncio.run(run())
