"""service.event_loop.watch_lag: a loop held busy shows in genserve_event_loop_lag_seconds; an idle one does not."""

import asyncio
import time

from prometheus_client import CollectorRegistry

from service import event_loop
from service.main import loop_lag_histogram

NAME = "genserve_event_loop_lag_seconds"


def lag_samples(busy_s: float) -> tuple[float, float]:
    """(ticks observed, ticks later than 250 ms) over 0.2 s of watching and busy_s, the loop blocked once for busy_s."""
    registry = CollectorRegistry()

    async def watch() -> None:
        watcher = asyncio.ensure_future(event_loop.watch_lag(loop_lag_histogram(registry), tick_s=0.005))
        await asyncio.sleep(0.05)
        time.sleep(busy_s)  # the loop runs nothing else meanwhile, as under a burst of requests
        await asyncio.sleep(0.15)
        watcher.cancel()

    event_loop.run(watch())
    count = registry.get_sample_value(f"{NAME}_count")
    return count, count - registry.get_sample_value(f"{NAME}_bucket", {"le": "0.25"})


def test_a_blocked_loop_is_observed_late_by_about_the_time_it_was_blocked():
    count, late = lag_samples(busy_s=0.6)
    assert count >= 5
    assert late >= 1  # the tick that fell due while the loop was blocked


def test_an_idle_loop_has_no_late_tick():
    count, late = lag_samples(busy_s=0.0)
    assert count >= 10
    assert late == 0
