"""Faults on a real `genserve serve`: an engine worker killed mid-request, and an HTTP client that goes away.

Issue 3: a worker killed with SIGKILL fails its in-flight requests within 2 s with 503 (UNAVAILABLE on
gRPC), nothing hangs, the worker is restarted while /readyz tells the truth, and later requests succeed.
A client that disconnects has its work cancelled: its rows leave the running batch within a step.
"""

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from tests.e2e.test_drain import N, post_sample, start_server
from tests.e2e.test_server import MODEL, SHAPE, free_port, stop, wait_ready

FAIL_WITHIN_S = 2.0
RESTART_TIMEOUT_S = 60.0


@pytest.fixture
def server(tiny_store, tmp_path):
    """(base URL, gRPC target, process, logs directory) of a server that takes slow requests of N samples."""
    port, grpc_port = free_port(), free_port()
    process = start_server(tiny_store, port, grpc_port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, tmp_path)
        yield base, f"127.0.0.1:{grpc_port}", process, tmp_path
    finally:
        stop(process)


def worker_pid(logs) -> int:
    """The pid of the newest engine worker, from the server's log."""
    pids = re.findall(r"engine worker cpu: started, pid (\d+)", (logs / "stderr").read_text())
    assert pids, "the server logged no engine worker"
    return int(pids[-1])


def metric(base: str, name: str, **labels) -> float:
    """The value of one sample in /metrics; a missing series fails the test."""
    for line in httpx.get(f"{base}/metrics", timeout=5.0).text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    pytest.fail(f"/metrics has no {name} {labels}")


def steps_run(base: str) -> float:
    return metric(base, "genserve_inference_exec_count_total", model=MODEL, function="sample_step")


def test_a_killed_worker_fails_in_flight_requests_fast_restarts_and_serves_again(server):
    base, target, _process, logs = server
    before = post_sample(base, 2, 5)
    assert before.status_code == 200
    first_pid = worker_pid(logs)
    pool = ThreadPoolExecutor(max_workers=2)
    started = threading.Event()

    def grpc_sample() -> str:
        with grpc.insecure_channel(target) as channel:
            stream = pb_grpc.GenserveStub(channel).SampleStream(pb.SampleRequest(model=MODEL, n=N, seed=2),
                                                                timeout=60.0)
            try:
                for _ in stream:
                    started.set()
            except grpc.RpcError as e:
                return e.code().name
        return "OK"

    try:
        streamed = pool.submit(grpc_sample)
        posted = pool.submit(post_sample, base, N, 3)
        assert started.wait(timeout=30.0), "the gRPC stream sent nothing"
        time.sleep(0.2)
        assert not posted.done() and not streamed.done(), "the slow requests finished before the kill"
        os.kill(first_pid, signal.SIGKILL)
        killed = time.monotonic()
        response, grpc_outcome = posted.result(timeout=30.0), streamed.result(timeout=30.0)
        failed_within = time.monotonic() - killed
        ready_after_kill = httpx.get(f"{base}/readyz", timeout=5.0).status_code
    finally:
        pool.shutdown(wait=False, cancel_futures=True)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "worker_unavailable"
    assert response.headers["retry-after"] == "1"
    assert grpc_outcome == "UNAVAILABLE"
    assert failed_within < FAIL_WITHIN_S, f"in-flight requests failed {failed_within:.2f} s after the kill"
    assert ready_after_kill == 503  # the truth: the worker is coming back

    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while httpx.get(f"{base}/readyz", timeout=5.0).status_code != 200:
        assert time.monotonic() < deadline, "the worker did not come back"
        time.sleep(0.2)
    assert worker_pid(logs) != first_pid
    assert metric(base, "genserve_worker_restarts_total") == 1
    after = post_sample(base, 2, 5)
    assert after.status_code == 200 and after.json()["samples"] == before.json()["samples"]  # same seed, same output


def test_a_client_that_disconnects_has_its_rows_freed_within_a_step(server):
    base = server[0]
    assert post_sample(base, 2, 5).status_code == 200  # the sample_step series exist from here on
    steps_before = steps_run(base)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        with httpx.Client(base_url=base, timeout=httpx.Timeout(60.0, read=0.5)) as client:
            client.post(f"/v1/models/{MODEL}/sample", json={"n": N, "seed": 1, "format": "array"})
    gone = time.monotonic()
    while metric(base, "genserve_inference_inflight_request_count", model=MODEL, function="sample_step") > 0:
        assert time.monotonic() - gone < FAIL_WITHIN_S, "the abandoned request still holds its rows"
        time.sleep(0.05)
    steps = steps_run(base) - steps_before
    assert 0 < steps < SHAPE[0], f"the abandoned request ran {steps:.0f} of its {SHAPE[0]} steps"
    assert metric(base, "genserve_inference_request_total", model=MODEL, function="sample_step",
                  outcome="cancelled") == 1
    assert post_sample(base, 2, 6).status_code == 200  # the batcher lives on
