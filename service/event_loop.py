"""The event loop every genserve process runs on: uvloop's when it is installed (a genserve dependency),
else asyncio's. On uvloop the API process's REST and gRPC paths cost less per request, and so does an
engine worker's call (`benchmarks/grpc_costs.py --parts worker`; before and after in
benchmarks/results/grpc_costs.md)."""

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

LAG_TICK_S = 0.01
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's new_event_loop, or None (asyncio's default) where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run(main) on the event loop above."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


async def watch_lag(histogram, tick_s: float = LAG_TICK_S) -> None:
    """Observe into `histogram`, every tick_s, how late the loop resumed a task whose timer fell due: the wait of
    any ready callback (a request's bytes just read, an answer to send) behind the work the loop runs ahead of it.
    A single-threaded loop that is busy most of the time shows it here first. Runs until cancelled."""
    while True:
        due = time.monotonic() + tick_s
        await asyncio.sleep(tick_s)
        histogram.observe(max(time.monotonic() - due, 0.0))
