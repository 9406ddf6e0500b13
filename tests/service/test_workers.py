"""The engine worker pool: the wire format, parity with in-process runs, errors, death and restart."""

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from service.engine.errors import WorkerLost
from service.engine.workers import Functions, InProcess, WorkerPool, pack, unpack
from service.store import ModelStore

MODEL = "pixelcnn"
START_TIMEOUT_S = 60.0


def test_pack_then_unpack_gives_back_every_tensor_exactly():
    arrays = {"x": np.arange(24, dtype=np.int64).reshape(2, 3, 4), "t": np.float32(0.5) * np.ones(2, np.float32),
              "scalar": np.array(7, np.int32), "empty": np.zeros((0, 5), np.float64),
              "strided": np.arange(10.0)[::2], "flag": np.array([True, False])}
    frames = [memoryview(bytearray(memoryview(f))) for f in pack({"id": 3}, arrays)]  # as the channel receives them
    header, back = unpack(frames)
    assert header == {"id": 3}
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert np.array_equal(back[name], array)


async def wait_up(pool: WorkerPool) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not pool.ready():
        assert time.monotonic() < deadline, "the worker did not come up"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def directories(tiny_store):
    return {name: entry.directory for name, entry in ModelStore(tiny_store).entries.items()}


def test_a_worker_process_computes_what_this_process_computes_and_survives_death(directories):
    rng = np.random.default_rng(0)
    feeds = {"x": rng.integers(0, 2, (3, 1, 28, 28)), "label": np.array([0, 4, 9])}
    expected = asyncio.run(InProcess(directories, "onnx", 1).call(MODEL, "log_prob_given_label", feeds))
    restarts = []

    async def main():
        pool = WorkerPool(directories, "onnx", 1, on_restart=lambda: restarts.append(1))
        assert not pool.ready()  # nothing spawned yet
        await pool.start()
        try:
            await wait_up(pool)
            got = await pool.call(MODEL, "log_prob_given_label", feeds)
            with pytest.raises(RuntimeError, match="label"):  # the runtime's error comes back; the worker lives on
                await pool.call(MODEL, "log_prob_given_label", {"x": feeds["x"]})
            assert pool.ready()

            [worker] = pool.workers
            in_flight = asyncio.ensure_future(pool.call(MODEL, "log_prob", {"x": np.repeat(feeds["x"], 200, 0)}))
            await asyncio.sleep(0.1)
            os.kill(worker.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(WorkerLost):
                await in_flight
            failed_after = time.monotonic() - killed
            assert not pool.ready()
            again = await pool.call(MODEL, "log_prob_given_label", feeds)  # waits for the restarted worker
            assert pool.ready()

            pool.call_timeout_s = 0.01  # a worker silent for longer over one call is killed and restarted
            with pytest.raises(WorkerLost, match="did not answer"):
                await pool.call(MODEL, "log_prob", {"x": np.repeat(feeds["x"], 200, 0)})
            pool.call_timeout_s = 60.0
            await wait_up(pool)
            assert len(restarts) == 2
            return got, again, failed_after, worker
        finally:
            await pool.stop()

    got, again, failed_after, worker = asyncio.run(main())
    assert np.array_equal(got["log_prob"], expected["log_prob"])  # the same runtime, bit for bit
    assert np.array_equal(again["log_prob"], expected["log_prob"])
    assert failed_after < 1.0
    assert not worker.process.is_alive()  # stop() stopped it


def test_functions_load_on_first_use_and_preload_loads_the_rest(directories):
    """Issue 16, goal 4: a worker answers before every model is loaded; a call loads what it needs first."""
    functions = Functions(directories, "onnx", 1, None)
    assert functions.loaded == {} and ("pixelcnn", "log_prob") in functions.specs
    log_prob = functions["pixelcnn", "log_prob"]
    assert list(functions.loaded) == [("pixelcnn", "log_prob")]
    assert functions["pixelcnn", "log_prob"] is log_prob  # loaded once
    with pytest.raises(KeyError):
        functions["pixelcnn", "no_such_function"]
    functions.preload()
    assert set(functions.loaded) == set(functions.specs)
