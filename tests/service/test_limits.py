"""Per-request limits of iterative procedures (issue 15, defect 4): a capability's max_row_steps and max_length
refuse, with a 422 naming the field, what could not finish within the deadline; Markov chains run on the
continuous batcher, so chains of different requests share steps."""

import asyncio
import json
import shutil

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore


def with_limits(store, tmp_path, model: str, capability: str, **limits):
    """A copy of the store whose model's capability carries the given limits."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    path = next(copy.glob(f"{model}/*/manifest.json"))
    manifest = json.loads(path.read_text())
    manifest["capabilities"][capability].update(limits)
    path.write_text(json.dumps(manifest))
    return Engine(ModelStore(copy), Settings(intra_op_threads=1))


def refused(coroutine, field: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(coroutine)
    assert caught.value.field == field
    return caught.value.message


def test_a_chain_of_more_row_steps_than_allowed_is_refused(tiny_rbm_store, tmp_path):
    engine = with_limits(tiny_rbm_store, tmp_path, "rbm", "sample", max_row_steps=100)
    assert "4 x 30 = 120" in refused(engine.sample("rbm", 4, 0, 1.0, None, steps=30), "steps")
    assert asyncio.run(engine.sample("rbm", 4, 0, 1.0, None, steps=25)).shape == (4, 1, 28, 28)


def test_an_importance_bound_of_more_samples_than_allowed_is_refused(tiny_vae_store, tmp_path):
    engine = with_limits(tiny_vae_store, tmp_path, "vae", "score", max_row_steps=1000)
    x = np.zeros((3, 1, 28, 28), np.int64)
    assert "3 x 400 = 1200" in refused(engine.score("vae", x, k=400), "k")
    assert len(asyncio.run(engine.score("vae", x, k=300))) == 3


def test_a_sequence_longer_or_larger_than_allowed_is_refused(tiny_text_store, tmp_path):
    engine = with_limits(tiny_text_store, tmp_path, "charrnn", "sample", max_length=50, max_row_steps=120)
    assert "limit of 50" in refused(engine.sample("charrnn", 1, 0, 1.0, None, length=51), "length")
    assert "3 x 50 = 150" in refused(engine.sample("charrnn", 3, 0, 1.0, None, length=50), "length")
    assert asyncio.run(engine.sample("charrnn", 2, 0, 1.0, None, length=50)).shape == (2, 50)


def test_rows_that_cannot_run_together_are_refused_not_overloaded(tiny_rbm_store):
    engine = Engine(ModelStore(tiny_rbm_store), Settings(intra_op_threads=1, max_queue_size=8))
    x, mask = np.zeros((3, 1, 28, 28), np.int64), np.ones((1, 28, 28), np.int64)
    assert "9 rows" in refused(engine.complete("rbm", x, mask, 3, 0, 1.0, steps=2), "n")


def test_an_image_completion_refuses_a_length(tiny_store):
    engine = Engine(ModelStore(tiny_store), Settings(intra_op_threads=1))
    x, mask = np.zeros((1, 1, 28, 28), np.int64), np.ones((1, 28, 28), np.int64)
    refused(engine.complete("pixelcnn", x, mask, 1, 0, 1.0, length=5), "length")


def test_chains_of_concurrent_requests_share_steps_and_keep_their_seeds(tiny_rbm_store):
    engine = Engine(ModelStore(tiny_rbm_store), Settings(intra_op_threads=1))

    async def together():
        return await asyncio.gather(engine.sample("rbm", 2, 1, 1.0, None, steps=40),
                                    engine.sample("rbm", 3, 2, 1.0, None, steps=40))

    first, second = asyncio.run(together())
    batcher, = engine.runner.procedures.schedulers.values()  # the chain's continuous batcher, beside the runtime
    assert batcher.steps_run < 80  # the two chains ran in shared steps, not one after the other
    alone = asyncio.run(engine.sample("rbm", 3, 2, 1.0, None, steps=40))
    assert np.array_equal(second, alone)  # a row depends on its seed only


def test_scores_of_ever_new_lengths_keep_a_bounded_number_of_schedulers(tiny_text_store):
    """Issue 15, defect 8: one dynamic batcher per scored length once grew without bound."""
    from service.engine.engine import MAX_LENGTH_SCHEDULERS

    engine = Engine(ModelStore(tiny_text_store), Settings(intra_op_threads=1))

    async def many_lengths():
        for length in range(1, MAX_LENGTH_SCHEDULERS + 40):
            await engine.score("charrnn", [np.zeros(length, np.int64)])
        return len(engine._batchers)

    assert asyncio.run(many_lengths()) <= MAX_LENGTH_SCHEDULERS
