"""The event loop every genserve process runs on: uvloop's when it is installed (a genserve dependency),
else asyncio's. On uvloop the API process's REST and gRPC paths cost less per request, and so does an
engine worker's call (`benchmarks/grpc_costs.py --parts worker`; before and after in
benchmarks/results/grpc_costs.md)."""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


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
