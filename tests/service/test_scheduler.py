"""The schedulers alone, with numpy step functions: no torch, no runtime."""

import asyncio
import time

import numpy as np
import pytest

from service.engine.errors import Overloaded
from service.engine.scheduler import BatchingConfig, ContinuousBatcher, DeadlineExceeded, DynamicBatcher, Sequence


class Recorder:
    """A 'model': doubles x, and records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list[int] = []
        self.delay, self.fail = delay, fail

    async def __call__(self, feeds):
        self.batches.append(len(feeds["x"]))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return {"y": feeds["x"] * 2}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_dynamic_batcher_merges_concurrent_requests_and_splits_results():
    model = Recorder(delay=0.01)
    batcher = DynamicBatcher(model, BatchingConfig(max_batch_size=8, max_queue_delay_us=20000))

    async def main():
        inputs = [np.full((k % 3 + 1, 2), k, np.float32) for k in range(10)]
        outs = await asyncio.gather(*[batcher.submit({"x": x}) for x in inputs])
        return inputs, outs

    inputs, outs = run(main())
    for x, out in zip(inputs, outs, strict=True):
        assert np.array_equal(out["y"], x * 2)
    assert len(model.batches) < 10  # merged
    assert max(model.batches) <= 8 and sum(model.batches) == sum(len(x) for x in inputs)


def test_dynamic_batcher_rejects_at_once_when_the_queue_is_full():
    batcher = DynamicBatcher(Recorder(delay=0.2), BatchingConfig(max_batch_size=1, max_queue_size=2,
                                                                 max_queue_delay_us=0))

    async def main():
        first = asyncio.create_task(batcher.submit({"x": np.ones((2, 1))}))
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(Overloaded):
            await batcher.submit({"x": np.ones((1, 1))})
        assert time.monotonic() - started < 0.05
        await first

    run(main())


def test_dynamic_batcher_times_out_and_propagates_errors():
    slow = DynamicBatcher(Recorder(delay=0.3), BatchingConfig(max_queue_delay_us=0, timeout_ms=50))
    with pytest.raises(DeadlineExceeded):
        run(slow.submit({"x": np.ones((1, 1))}))
    broken = DynamicBatcher(Recorder(fail=True), BatchingConfig(max_queue_delay_us=5000))

    async def main():
        return await asyncio.gather(*[broken.submit({"x": np.ones((1, 1))}) for _ in range(3)],
                                    return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in run(main()))


def test_a_full_batch_runs_at_once_and_the_queue_count_drains_to_zero():
    model = Recorder(delay=0.01)
    never = 10**9  # a 1000 s queue delay: only a full batch starts a call
    pair = DynamicBatcher(model, BatchingConfig(max_batch_size=2, max_queue_delay_us=never))
    four = DynamicBatcher(model, BatchingConfig(max_batch_size=4, max_queue_delay_us=never, timeout_ms=30))

    def one_row():
        return {"x": np.ones((1, 1))}

    async def main():
        full = await asyncio.wait_for(asyncio.gather(pair.submit(one_row()), pair.submit(one_row())), 5)
        assert [len(out["y"]) for out in full] == [1, 1] and model.batches == [2]
        expiring, cancelled = (asyncio.create_task(four.submit(one_row())) for _ in range(2))
        await asyncio.sleep(0)
        assert four.queued_rows() == 2
        cancelled.cancel()
        with pytest.raises(DeadlineExceeded) as expired:
            await expiring  # still queued, waiting for a full batch
        assert expired.value.field == "timeout_ms"
        await asyncio.gather(cancelled, return_exceptions=True)
        # the two stale rows still count towards a full batch: two more start the call, which skips them
        await asyncio.wait_for(asyncio.gather(four.submit(one_row()), four.submit(one_row())), 5)
        await asyncio.sleep(0)
        return four.queued_rows(), four.idle(), model.batches

    queued, idle, batches = run(main())
    assert (queued, idle, batches) == (0, True, [2, 2])


class Counter:
    """A step function: x = x_prev + 1 + floor(10 * noise); records the rows of every step."""

    def __init__(self, delay: float = 0.002):
        self.rows: list[int] = []
        self.delay = delay

    async def __call__(self, feeds):
        self.rows.append(len(feeds["x_prev"]))
        await asyncio.sleep(self.delay)
        return {"x": feeds["x_prev"] + 1 + np.floor(10 * feeds["noise"]).astype(np.int64)}


def sequence(seed: int, rows: int, steps: int) -> Sequence:
    rngs = [np.random.default_rng([seed, r]) for r in range(rows)]
    return Sequence(lambda t: {"noise": np.stack([g.random(3) for g in rngs])},
                    {"x_prev": np.zeros((rows, 3), np.int64)}, steps)


async def collect(batcher, seq, stop_after=None):
    out = []
    async for value in batcher.generate(seq):
        out.append(value)
        if stop_after and len(out) == stop_after:
            break
    return np.stack(out, axis=1)


def test_continuous_batching_is_deterministic_whatever_shares_the_batch():
    alone = run(collect(ContinuousBatcher(Counter(), {"x_prev": "x"}, BatchingConfig()), sequence(7, 2, 6)))
    step = Counter()
    batcher = ContinuousBatcher(step, {"x_prev": "x"}, BatchingConfig())

    async def busy():
        async def late():
            await asyncio.sleep(0.005)
            return await collect(batcher, sequence(7, 2, 6))

        results = await asyncio.gather(collect(batcher, sequence(1, 3, 20)), late(),
                                       collect(batcher, sequence(2, 1, 4)))
        return results[1]

    assert np.array_equal(run(busy()), alone)
    assert max(step.rows) > 2  # it really shared a batch


def test_a_long_sequence_does_not_block_a_short_one():
    batcher = ContinuousBatcher(Counter(delay=0.005), {"x_prev": "x"}, BatchingConfig())
    finished = []

    async def tagged(name, seq):
        await collect(batcher, seq)
        finished.append(name)

    async def main():
        long = asyncio.create_task(tagged("long", sequence(0, 1, 60)))
        await asyncio.sleep(0.02)
        await tagged("short", sequence(1, 1, 3))
        await long

    run(main())
    assert finished == ["short", "long"]


def test_a_cancelled_sequence_frees_its_rows_within_one_step():
    step = Counter(delay=0.003)
    batcher = ContinuousBatcher(step, {"x_prev": "x"}, BatchingConfig())

    async def main():
        long = asyncio.create_task(collect(batcher, sequence(0, 1, 40)))
        await asyncio.sleep(0.01)
        await collect(batcher, sequence(1, 4, 40), stop_after=2)
        cancelled_at = len(step.rows)
        await long
        return cancelled_at

    cancelled_at = run(main())
    assert 5 in step.rows  # the 4-row sequence ran beside the 1-row one
    assert all(rows == 1 for rows in step.rows[cancelled_at + 1:])  # gone after at most one more step


def test_continuous_batcher_respects_queue_and_batch_limits():
    step = Counter()
    batcher = ContinuousBatcher(step, {"x_prev": "x"}, BatchingConfig(max_batch_size=4, max_queue_size=4))

    async def main():
        await asyncio.gather(*[collect(batcher, sequence(k, 2, 5)) for k in range(2)])
        with pytest.raises(Overloaded):
            await collect(batcher, sequence(9, 5, 2))

    run(main())
    assert max(step.rows) <= 4


def test_a_sequence_whose_inputs_fail_gets_the_error_and_the_batcher_lives_on():
    batcher = ContinuousBatcher(Counter(), {"x_prev": "x"}, BatchingConfig())
    broken = Sequence(lambda t: {"noise": np.stack([])}, {"x_prev": np.zeros((1, 3), np.int64)}, 3)

    async def main():
        with pytest.raises(ValueError):
            await collect(batcher, broken)
        return await collect(batcher, sequence(0, 1, 3))

    assert run(main()).shape == (1, 3, 3)


def test_a_sequence_past_its_deadline_gets_504_and_frees_its_rows_within_one_step():
    step = Counter(delay=0.01)
    batcher = ContinuousBatcher(step, {"x_prev": "x"}, BatchingConfig(timeout_ms=100))

    async def main():
        with pytest.raises(DeadlineExceeded):
            await collect(batcher, sequence(0, 3, 1000))  # would take about 10 s
        expired_at = len(step.rows)
        await asyncio.sleep(0.05)
        return expired_at

    expired_at = run(main())
    assert len(step.rows) <= expired_at + 1  # at most the step in flight ran after the deadline
    assert expired_at < 100  # it stopped long before its 1000 steps


def test_dynamic_batcher_sends_a_request_larger_than_its_queue_in_parts():
    model = Recorder()
    batcher = DynamicBatcher(model, BatchingConfig(max_batch_size=4, max_queue_size=4, max_queue_delay_us=0))
    x = np.arange(11, dtype=np.float32).reshape(11, 1)
    out = run(batcher.submit({"x": x}))
    assert np.array_equal(out["y"], x * 2)  # every row, in order
    assert model.batches == [4, 4, 3]
