"""A density flow served by the engine: its score is a one-draw dequantization bound whose draw follows the
request's seed; encode then decode returns the input exactly; samples follow the seed and the temperature."""

import asyncio

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore


@pytest.fixture(scope="module")
def engine(tiny_flow_store) -> Engine:
    return Engine(ModelStore(tiny_flow_store), Settings())


def images(n: int = 3) -> np.ndarray:
    from training.data import load

    return load("mnist5k").x_test[::50][:n].astype(np.int64)


def test_score_is_a_seeded_dequantization_bound(engine):
    async def run():
        x = images()
        first, again = await engine.score("nice", x, seed=1), await engine.score("nice", x, seed=1)
        other = await engine.score("nice", x, seed=2)
        return first, again, other

    first, again, other = asyncio.run(run())
    value = [r["log_likelihood_nats"] for r in first]
    assert value == [r["log_likelihood_nats"] for r in again]  # the draw is the seed's
    assert value != [r["log_likelihood_nats"] for r in other]
    assert all(r["method"] == "dequantized" and r["is_lower_bound"] and np.isfinite(r["bits_per_dim"]) for r in first)


def test_encode_then_decode_returns_the_input_and_samples_follow_the_seed(engine):
    async def run():
        x = images()
        z = (await engine.encode("nice", x))["mean"]  # [B, 784], the exact z = f(x)
        back = await engine.decode("nice", z)
        hot, cold = await engine.sample("nice", 2, 0, 1.0, None), await engine.sample("nice", 2, 0, 0.5, None)
        return x, z, back, hot, cold, await engine.sample("nice", 2, 0, 1.0, None)

    x, z, back, hot, cold, hot_again = asyncio.run(run())
    assert z.shape == (3, 784) and np.array_equal(np.rint(back).astype(np.int64), x)
    assert hot.shape == (2, 1, 28, 28) and np.array_equal(hot, hot_again) and not np.array_equal(hot, cold)


def test_refinement_of_a_model_that_does_not_refine_says_so(engine):
    """Issue 22, item 10: it once answered "takes 0..0"."""
    x = np.zeros((1, *engine.model("nice").shape), np.int64)
    with pytest.raises(InvalidInput, match="does not refine its posterior"):
        asyncio.run(engine.encode("nice", x, refine_steps=3))
