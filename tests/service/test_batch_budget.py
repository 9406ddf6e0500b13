"""A merged batch never does more work than one request may: requests that would take a batch over the batcher's
values budget (a sequence score's rows x values limit per request) wait for the next batch, in order, and every one
is answered with its own rows."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.scheduler import BatchingConfig, DynamicBatcher
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"
GATHER = BatchingConfig(max_batch_size=64, max_queue_delay_us=50000)  # 50 ms: concurrent submits share a batch


class Runner:
    """A runner (and a batcher's run function) that answers each row of x with minus its sum and records the
    shape of x in every call."""

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    async def start(self):
        pass

    def ready(self):
        return True

    async def call(self, model, function, feeds):
        return await self(feeds)

    async def __call__(self, feeds):
        x = feeds["x"]
        self.calls.append(x.shape)
        return {"log_prob": -x.reshape(len(x), -1).sum(axis=1).astype(np.float32)}


def gathered(*requests):
    async def main():
        return await asyncio.gather(*requests)

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_requests_over_the_budget_together_run_in_several_calls_in_order():
    runner = Runner()
    batcher = DynamicBatcher(runner, GATHER, max_values=100)
    inputs = [np.full((2, 20), value, np.int64) for value in range(1, 6)]  # 40 values each, 200 in all
    answers = gathered(*(batcher.submit({"x": x}) for x in inputs))
    assert [a["log_prob"].tolist() for a in answers] == [[-20.0 * v] * 2 for v in range(1, 6)]
    assert runner.calls == [(4, 20), (4, 20), (2, 20)]  # oldest first, each call within 100 values


def test_a_batch_full_by_values_runs_without_waiting_out_the_queue_delay():
    runner = Runner()
    batcher = DynamicBatcher(runner, BatchingConfig(max_batch_size=64, max_queue_delay_us=60_000_000), max_values=100)

    async def main():  # two requests of 50 values fill the budget: the batch runs at once, not after 60 s
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit({"x": np.ones((1, 50), np.int64)})
                                                       for _ in range(2))), 5)

    assert len(asyncio.run(main())) == 2 and runner.calls == [(2, 50)]


def test_without_a_budget_the_same_requests_run_in_one_call():
    runner = Runner()
    batcher = DynamicBatcher(runner, GATHER)
    gathered(*(batcher.submit({"x": np.ones((2, 20), np.int64)}) for _ in range(5)))
    assert runner.calls == [(10, 20)]


@pytest.fixture
def engine():
    """The store's charrnn (15,000 values per input and 110,000 per request) on a runner that records its calls."""
    return Engine(ModelStore(MODELS), Settings(max_queue_delay_us=50000), runner=Runner())


def test_concurrent_scores_each_within_the_limit_are_not_merged_beyond_it(engine):
    """Two scores of 7 x 15,000 characters (105,000 each, 210,000 together) run in two calls."""
    x = [[np.full(15000, value, np.int64)] * 7 for value in (1, 2)]
    first, second = gathered(*(engine.score("charrnn", inputs) for inputs in x))
    assert [r["log_likelihood_nats"] for r in first] == [-15000.0] * 7
    assert [r["log_likelihood_nats"] for r in second] == [-30000.0] * 7
    assert engine.runner.calls == [(7, 15000), (7, 15000)]


def test_concurrent_v2_calls_of_a_score_function_are_held_to_it_too(engine):
    x = [np.full((7, 15000), value, np.int64) for value in (1, 2)]
    first, second = gathered(*(engine.infer("charrnn", "log_prob", {"x": xi}) for xi in x))
    assert first["log_prob"].tolist() == [-15000.0] * 7 and second["log_prob"].tolist() == [-30000.0] * 7
    assert engine.runner.calls == [(7, 15000), (7, 15000)]


def test_small_scores_still_share_a_call(engine):
    gathered(*(engine.score("charrnn", [np.ones(1000, np.int64)] * 2) for _ in range(3)))
    assert engine.runner.calls == [(6, 1000)]
