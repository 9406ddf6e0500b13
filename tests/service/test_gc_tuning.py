"""service.main.tune_gc: the young threshold it sets, and every collection timed into the pause histogram."""

import gc

import pytest
from prometheus_client import CollectorRegistry

from service.main import tune_gc
from service.settings import Settings


def test_tune_gc_sets_the_threshold_and_times_each_collection():
    registry, threshold, callbacks = CollectorRegistry(), gc.get_threshold(), list(gc.callbacks)
    try:
        tune_gc(1234, registry)
        assert gc.get_threshold()[0] == 1234
        before = registry.get_sample_value("genserve_gc_pause_seconds_count", {"generation": "1"})
        gc.collect(1)
        assert registry.get_sample_value("genserve_gc_pause_seconds_count", {"generation": "1"}) == before + 1
        assert registry.get_sample_value("genserve_gc_pause_seconds_sum", {"generation": "1"}) > 0
    finally:
        gc.callbacks[:] = callbacks
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_young_threshold_setting_defaults_to_10000_and_refuses_0_and_above_a_c_int(monkeypatch):
    monkeypatch.delenv("GENSERVE_GC_YOUNG_THRESHOLD", raising=False)
    assert Settings().gc_young_threshold == 10_000
    for refused in ("0", str(2**31)):  # gc.set_threshold takes a C int: beyond it, an OverflowError at start
        monkeypatch.setenv("GENSERVE_GC_YOUNG_THRESHOLD", refused)
        with pytest.raises(ValueError, match="gc_young_threshold"):
            Settings()
