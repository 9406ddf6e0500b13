"""Engine metrics: the schedulers with numpy step functions and a real EngineMetrics over a fresh registry."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import Overloaded
from service.engine.metrics import EngineMetrics
from service.engine.scheduler import (
    OUTCOMES,
    BatchingConfig,
    ContinuousBatcher,
    DeadlineExceeded,
    DynamicBatcher,
    Sequence,
)
from service.settings import Settings

MODEL, FUNCTION = "m", "f"


class Doubler:
    """A 'model': doubles x after `delay` seconds, or fails."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.delay, self.fail = delay, fail

    async def __call__(self, feeds):
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return {"y": feeds["x"] * 2}


async def step(feeds):
    return {"x": feeds["x_prev"] + 1}


def sequence(rows: int, steps: int) -> Sequence:
    return Sequence(lambda t: {}, {"x_prev": np.zeros((rows, 1), np.int64)}, steps)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class Reader:
    def __init__(self):
        self.metrics = EngineMetrics(CollectorRegistry())

    def __call__(self, name: str, **labels) -> float:
        value = self.metrics.registry.get_sample_value(name, {"model": MODEL, "function": FUNCTION, **labels})
        return 0.0 if value is None else value

    def outcomes(self) -> dict[str, float]:
        return {o: self("genserve_inference_request_total", outcome=o) for o in OUTCOMES}

    def gauges(self) -> tuple[float, float]:
        return self("genserve_inference_pending_request_count"), self("genserve_inference_inflight_request_count")

    def dynamic(self, model, **config) -> DynamicBatcher:
        return DynamicBatcher(model, BatchingConfig(**config), self.metrics.observer(MODEL, FUNCTION))

    def continuous(self, **config) -> ContinuousBatcher:
        observer = self.metrics.observer(MODEL, FUNCTION)
        return ContinuousBatcher(step, {"x_prev": "x"}, BatchingConfig(**config), observer)


@pytest.fixture
def read() -> Reader:
    return Reader()


def test_successes_count_requests_rows_and_run_calls(read):
    batcher = read.dynamic(Doubler(delay=0.005), max_batch_size=8, max_queue_delay_us=20000)
    rows = [k % 3 + 1 for k in range(10)]

    async def main():
        await asyncio.gather(*[batcher.submit({"x": np.ones((r, 2))}) for r in rows])

    run(main())
    assert read.outcomes() == {**dict.fromkeys(OUTCOMES, 0.0), "success": 10.0}
    assert read("genserve_inference_request_success_total") == 10
    assert read("genserve_inference_count_total") == sum(rows)
    execs = read("genserve_inference_exec_count_total")
    assert 2 <= execs < 10  # merged, at most 8 rows a call
    assert read("genserve_inference_batch_size_count") == execs
    assert read("genserve_inference_batch_size_sum") == sum(rows)
    for what in ("request", "queue", "compute_infer"):
        assert read(f"genserve_inference_{what}_duration_seconds_count") == 10
    assert read("genserve_inference_compute_infer_duration_seconds_sum") >= 10 * 0.005
    assert read("genserve_inference_request_duration_seconds_sum") >= read(
        "genserve_inference_compute_infer_duration_seconds_sum")
    assert read.gauges() == (0, 0)


def test_batch_size_histogram_buckets(read):
    batcher = read.dynamic(Doubler(), max_batch_size=4, max_queue_delay_us=50000)

    async def main():  # all eight are queued before the batch loop first runs: two full batches
        await asyncio.gather(*[batcher.submit({"x": np.ones((1, 1))}) for _ in range(8)])

    run(main())
    bucket = {le: read("genserve_inference_batch_size_bucket", le=le) for le in ("1.0", "2.0", "4.0", "8.0", "+Inf")}
    assert bucket == {"1.0": 0, "2.0": 0, "4.0": 2, "8.0": 2, "+Inf": 2}
    assert read("genserve_inference_exec_count_total") == 2 and read("genserve_inference_count_total") == 8


def test_a_full_queue_counts_a_rejection_and_the_gauges_follow_the_queue(read):
    batcher = read.dynamic(Doubler(delay=0.2), max_batch_size=1, max_queue_size=2, max_queue_delay_us=0)

    async def main():
        first = asyncio.create_task(batcher.submit({"x": np.ones((2, 1))}))
        await asyncio.sleep(0)
        assert read.gauges() == (1, 1)  # queued
        with pytest.raises(Overloaded):
            await batcher.submit({"x": np.ones((1, 1))})
        await asyncio.sleep(0.05)
        assert read.gauges() == (0, 1)  # running
        await first

    run(main())
    assert read.outcomes() == {**dict.fromkeys(OUTCOMES, 0.0), "success": 1.0, "rejected": 1.0}
    assert read("genserve_inference_request_failure_total", reason="rejected") == 1
    assert read("genserve_inference_request_duration_seconds_count") == 1  # rejections are counted, not timed
    assert read.gauges() == (0, 0)


def test_timeouts_running_and_queued_are_counted_and_the_queue_returns_to_zero(read):
    batcher = read.dynamic(Doubler(delay=0.3), max_batch_size=1, max_queue_delay_us=0, timeout_ms=50)

    async def main():
        results = await asyncio.gather(*[batcher.submit({"x": np.ones((1, 1))}) for _ in range(2)],
                                       return_exceptions=True)
        assert all(isinstance(r, DeadlineExceeded) for r in results)
        assert read.gauges() == (0, 0)  # the second timed out while queued
        await batcher.task  # the batch loop skips the expired request without counting it again

    run(main())
    assert read.outcomes()["timeout"] == 2
    assert read("genserve_inference_request_failure_total", reason="timeout") == 2
    assert read("genserve_inference_exec_count_total") == 1
    assert read("genserve_inference_request_duration_seconds_count") == 0
    assert read.gauges() == (0, 0)


def test_errors_and_cancellations_are_counted(read):
    broken = read.dynamic(Doubler(fail=True), max_queue_delay_us=5000)

    async def fail():
        return await asyncio.gather(*[broken.submit({"x": np.ones((1, 1))}) for _ in range(3)],
                                    return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in run(fail()))
    # the merged call, then each request alone (a failed merged call is rerun per request): four run calls
    assert read.outcomes()["error"] == 3 and read("genserve_inference_exec_count_total") == 4

    slow = read.dynamic(Doubler(delay=0.1), max_batch_size=1, max_queue_delay_us=0)

    async def cancel():
        first = asyncio.create_task(slow.submit({"x": np.ones((1, 1))}))
        second = asyncio.create_task(slow.submit({"x": np.ones((1, 1))}))
        await asyncio.sleep(0.02)
        second.cancel()  # while queued behind the first
        with pytest.raises(asyncio.CancelledError):
            await second
        assert read.gauges() == (0, 1)
        await first
        await slow.task

    run(cancel())
    assert read.outcomes() == {**dict.fromkeys(OUTCOMES, 0.0), "success": 1.0, "error": 3.0, "cancelled": 1.0}
    assert read("genserve_inference_request_failure_total", reason="cancelled") == 1
    assert read.gauges() == (0, 0)


def test_continuous_batching_counts_samples_steps_and_cancellations(read):
    batcher = read.continuous(max_batch_size=8, max_queue_size=6)

    async def consume(rows, steps, stop_after=None):
        stream = batcher.generate(sequence(rows, steps))
        got = 0
        async for _ in stream:
            got += 1
            if got == stop_after:
                await stream.aclose()  # the consumer went away
                break

    async def main():
        await asyncio.gather(consume(2, 5), consume(1, 3), consume(3, 50, stop_after=2))
        with pytest.raises(Overloaded):
            await consume(7, 2)
        await batcher.task

    run(main())
    assert read.outcomes() == {**dict.fromkeys(OUTCOMES, 0.0), "success": 2.0, "cancelled": 1.0, "rejected": 1.0}
    assert read.metrics.registry.get_sample_value("genserve_samples_generated_total", {"model": MODEL}) == 3
    assert read("genserve_inference_exec_count_total") == batcher.steps_run
    assert read("genserve_inference_batch_size_count") == batcher.steps_run
    assert read("genserve_inference_compute_infer_duration_seconds_count") == 2
    assert read.gauges() == (0, 0)


def test_a_failing_step_counts_an_error(read):
    batcher = read.continuous()
    broken = Sequence(lambda t: {"noise": np.stack([])}, {"x_prev": np.zeros((1, 1), np.int64)}, 3)

    async def main():
        with pytest.raises(ValueError):
            async for _ in batcher.generate(broken):
                pass

    run(main())
    assert read.outcomes()["error"] == 1 and read.gauges() == (0, 0)


def test_every_series_exists_before_traffic_and_worker_restarts_start_at_zero():
    metrics = EngineMetrics(CollectorRegistry())
    metrics.observer(MODEL, FUNCTION)
    text = generate_latest(metrics.registry).decode()
    for outcome in OUTCOMES:
        assert f'genserve_inference_request_total{{function="f",model="m",outcome="{outcome}"}} 0.0' in text
    assert "genserve_worker_restarts_total 0.0" in text
    metrics.worker_restarted()
    assert metrics.registry.get_sample_value("genserve_worker_restarts_total") == 1


def test_rest_metrics_render_the_engines_registry_too():
    engine = Engine(SimpleNamespace(entries={}, unavailable_models=list), Settings())  # an empty store
    engine.metrics.observer(MODEL, FUNCTION)
    client = TestClient(create_app(engine, Settings()))
    text = client.get("/metrics").text
    assert "genserve_http_requests_total" in text
    assert 'genserve_inference_pending_request_count{function="f",model="m"} 0.0' in text
    assert "genserve_worker_restarts_total 0.0" in text
