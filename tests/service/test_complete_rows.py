"""A text or audio completion's rows (inputs x n) must fit the queue at once: more is a 422 on n, never a 503 that
a client retries for ever; and when one input's generation fails, the others' stop with it."""

import asyncio

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.errors import InvalidInput, Overloaded
from service.engine.generation import together
from service.engine.scheduler import ContinuousBatcher
from service.settings import Settings
from service.store import ModelStore

MODEL = "charrnn"


@pytest.fixture(scope="module")
def engine(tiny_text_store) -> Engine:
    settings = Settings(runtime="onnx", intra_op_threads=1, max_batch_size=2, max_queue_size=4)
    return Engine(ModelStore(tiny_text_store), settings)


def live_rows(engine: Engine) -> int:
    """Rows that the model's step batchers still run or keep waiting for a consumer."""
    return sum(s.rows for b in engine._batchers.values() if isinstance(b, ContinuousBatcher)
               for s in (*b.waiting, *b.active) if not s.cancelled)


def test_inputs_x_n_over_the_queue_is_refused_on_n_before_any_runs(engine):
    async def main():
        with pytest.raises(InvalidInput) as refused:
            await engine.complete(MODEL, [np.array([1, 2])] * 3, None, n=2, seed=1, temperature=1.0, length=8)
        assert live_rows(engine) == 0  # nothing of it was queued
        return refused.value

    refused = asyncio.run(main())
    assert refused.field == "n"
    assert "inputs x n is 6 rows, over the 4 that run together" in str(refused)


def test_a_full_queue_stops_the_inputs_already_queued(engine):
    async def main():
        # one sample runs (max_batch_size 2), one waits: 2 of the queue's 4 rows are taken
        blockers = [asyncio.create_task(engine.sample(MODEL, 2, seed=s, temperature=1.0, label=None, length=20000))
                    for s in range(2)]
        for _ in range(2000):
            if live_rows(engine) == 4:
                break
            await asyncio.sleep(0.001)
        assert live_rows(engine) == 4
        try:  # input 0's 2 rows fit the queue, input 1's do not
            with pytest.raises(Overloaded):
                await engine.complete(MODEL, [np.array([1, 2])] * 2, None, n=2, seed=1, temperature=1.0, length=8)
            assert live_rows(engine) == 4  # input 0 no longer holds rows of its own
        finally:
            for blocker in blockers:
                blocker.cancel()
            await asyncio.gather(*blockers, return_exceptions=True)

    asyncio.run(main())


def test_together_cancels_the_rest_and_raises_the_first_error_itself():
    cancelled = []

    async def slow(i: int) -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def fail() -> int:
        await asyncio.sleep(0)
        raise Overloaded("queue full", field="n")

    async def main():
        assert await together(asyncio.sleep(0, result=i) for i in range(3)) == [0, 1, 2]
        with pytest.raises(Overloaded):
            await together([slow(0), fail(), slow(2)])
        assert sorted(cancelled) == [0, 2]  # by together itself, before asyncio.run cancels what is left

    asyncio.run(asyncio.wait_for(main(), 5))
