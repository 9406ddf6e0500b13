"""Markov chains run beside the runtime (service.engine.chains): the same chain in a worker process and in-process,
steps shared between chains, deadlines and refusals carried back as the engine's own errors, and the scheduler's
observer events replayed exactly once."""

import asyncio
import time

import numpy as np
import pytest

from service.engine import chains, procedures
from service.engine.errors import Overloaded
from service.engine.scheduler import BatchingConfig, DeadlineExceeded, Observer
from service.engine.workers import InProcess, WorkerPool
from service.store import ModelStore

CAPABILITY = {"noise": {"noise": {"distribution": "uniform", "shape": [4]}}}  # one uniform input, "noise"


async def flip_where_noise_is_small(model: str, function: str, feeds: dict) -> dict:
    """A toy chain step: next_x = x XOR (noise < 0.5) where mask is 0, observed where it is 1."""
    await asyncio.sleep(0.001)
    flipped = feeds["x"] ^ (feeds["noise"] < 0.5)
    return {"next_x": np.where(feeds["mask"] == 1, feeds["observed"], flipped)}


def request(seed: int, rows: int, steps: int, seconds_left: float = 10.0, **batching) -> tuple[dict, dict]:
    rngs = procedures.row_generators(seed, rows)
    config = BatchingConfig(**batching)
    zeros = np.zeros((rows, 4), np.int64)
    arrays = {"x": zeros, "observed": zeros, "mask": zeros}
    return chains.chain_request(CAPABILITY, rngs, steps, config, time.monotonic() + seconds_left), arrays


def naive(seed: int, rows: int, steps: int) -> np.ndarray:
    """The same chain, one step after another, with numpy alone."""
    rngs, x = procedures.row_generators(seed, rows), np.zeros((rows, 4), np.int64)
    for _ in range(steps):
        noise = np.stack([rng.random(4, dtype=np.float32) for rng in rngs])
        x = x ^ (noise < 0.5)
    return x


class Tally(Observer):
    """Counts what the hooks were told."""

    def __init__(self):
        self.arrivals, self.batches, self.outcomes = 0, [], []

    def queued(self):
        self.arrivals += 1

    def batch(self, rows):
        self.batches.append(rows)

    def finished(self, outcome, request_s, queue_s, compute_s):
        self.outcomes.append(outcome)


def test_a_chain_request_gives_the_naive_chain_and_two_chains_share_their_steps():
    runner = chains.ChainRunner(flip_where_noise_is_small)

    async def both():
        return await asyncio.gather(runner.run("m", "step", *request(0, 2, 30)),
                                    runner.run("m", "step", *request(1, 3, 30)))

    (first, events_a), (second, events_b) = asyncio.run(both())
    assert np.array_equal(first["next_x"], naive(0, 2, 30))
    assert np.array_equal(second["next_x"], naive(1, 3, 30))
    tally = Tally()
    chains.replay(events_a + events_b, tally)
    assert tally.arrivals == 2 and tally.outcomes == ["success", "success"]
    assert 5 in tally.batches  # the two chains' 2 + 3 rows ran in one call
    assert sum(tally.batches) == 2 * 30 + 3 * 30  # every step of every row, each reported once


def test_a_chain_stops_at_its_deadline_and_a_full_queue_refuses_with_the_engine_errors():
    runner = chains.ChainRunner(flip_where_noise_is_small)
    with pytest.raises(chains.ChainFailed) as failed:
        asyncio.run(runner.run("m", "step", *request(0, 1, 100_000, seconds_left=0.1)))
    assert isinstance(failed.value.error, DeadlineExceeded)
    assert ["finished", "timeout"] == failed.value.events[-1][:2]
    with pytest.raises(chains.ChainFailed) as refused:  # a function's batcher takes the knobs of its first chain
        asyncio.run(chains.ChainRunner(flip_where_noise_is_small).run("m", "step", *request(0, 8, 3, max_queue_size=4)))
    assert isinstance(refused.value.error, Overloaded) and refused.value.events == [["rejected"]]


def test_refusal_rebuilds_the_scheduler_error_by_its_code():
    assert isinstance(chains.refusal("deadline_exceeded", "late", "timeout_ms"), DeadlineExceeded)
    assert chains.refusal("overloaded", "full", "n").field == "n"


def test_a_chain_in_a_worker_process_equals_the_chain_in_process(tiny_rbm_store):
    entry = ModelStore(tiny_rbm_store).entries["rbm"]
    directories, cap = {"rbm": entry.directory}, entry.manifest["capabilities"]["sample"]
    rngs = procedures.row_generators(7, 3)
    start = np.stack([rng.integers(0, 2, (1, 28, 28)) for rng in rngs])
    zeros = np.zeros_like(start)
    arrays = {"x": start, "observed": zeros, "mask": zeros}
    chain = chains.chain_request(cap, rngs, 25, BatchingConfig(), time.monotonic() + 60)

    async def in_worker():
        pool = WorkerPool(directories, "onnx", 1)
        await pool.start()
        try:
            answer = await pool.chain("rbm", cap["function"], chain, arrays)
            endless = chains.chain_request(cap, procedures.row_generators(0, 1), 10**6, BatchingConfig(),
                                           time.monotonic() + 60)
            abandoned = asyncio.create_task(pool.chain("rbm", cap["function"], endless,
                                                       {name: a[:1] for name, a in arrays.items()}))
            await asyncio.sleep(0.5)
            abandoned.cancel()  # its client went away: the worker drops it at the next step
            await asyncio.sleep(0.2)
            _, later_events = await pool.chain("rbm", cap["function"], {**chain, "steps": 1}, arrays)
            return answer, later_events
        finally:
            await pool.stop()

    (served, events), later_events = asyncio.run(in_worker())
    assert ["finished", "cancelled"] in [event[:2] for event in later_events]
    local, _ = asyncio.run(InProcess(directories, "onnx", 1).chain("rbm", cap["function"], chain, arrays))
    assert np.array_equal(served["next_x"], local["next_x"])
    assert not np.array_equal(served["next_x"], start)  # 25 Gibbs steps moved the state
    assert ["batch", 3] in events and events[-1][:2] == ["finished", "success"]
