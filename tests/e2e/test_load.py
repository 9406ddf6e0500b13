"""Traffic on a real `genserve serve`: overload, expiry, and determinism inside busy mixed batches.

Issue 3: a full queue gives 503 with Retry-After at once (RESOURCE_EXHAUSTED on gRPC), an expired request
gives 504, and the same seed gives bit-identical output alone and inside a busy mixed batch.
Every request is bounded in time, and sent only to 127.0.0.1.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest

from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array, to_tensor
from tests.e2e.test_drain import N, post_sample, start_server
from tests.e2e.test_server import MODEL, SHAPE, free_port, stop, wait_ready

BIG = 256  # inputs of a score request that keeps the tiny model busy for over a second (10 passes each)
AT_ONCE_S = 0.5  # a refusal must come back faster than this (the queue ahead of it holds seconds of work)


@pytest.fixture
def serve(tiny_store, tmp_path):
    """Start servers with GENSERVE_* settings: serve(**settings) -> (base URL, gRPC target); all stopped at the end."""
    processes = []

    def start(**settings: str) -> tuple[str, str]:
        port, grpc_port = free_port(), free_port()
        logs = tmp_path / str(len(processes))
        logs.mkdir()
        processes.append(start_server(tiny_store, port, grpc_port, logs, **settings))
        wait_ready(processes[-1], f"http://127.0.0.1:{port}", logs)
        return f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"

    yield start
    for process in processes:
        stop(process)


def images(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (rows, *SHAPE))


def score_http(base: str, x: np.ndarray) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    with httpx.Client(base_url=base, timeout=60.0) as client:
        response = client.post(f"/v1/models/{MODEL}/score", json={"inputs": x.tolist()})
    return response, time.monotonic() - began


def score_grpc(target: str, x: np.ndarray) -> tuple[str, float]:
    began = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        try:
            request = pb.ScoreRequest(model=MODEL, inputs=to_tensor(x.astype(np.uint8)))  # small on the wire
            pb_grpc.GenserveStub(channel).Score(request, timeout=60.0)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
    return code, time.monotonic() - began


def test_a_full_queue_refuses_at_once_and_an_expired_request_gets_504(serve):
    base, target = serve(GENSERVE_MAX_QUEUE_SIZE=str(BIG), GENSERVE_MAX_BATCH_SIZE=str(BIG))
    with ThreadPoolExecutor(max_workers=2) as pool:
        running = pool.submit(score_grpc, target, images(BIG, 0))  # the model is busy with it for seconds
        time.sleep(0.5)
        queued = pool.submit(score_grpc, target, images(BIG, 1))  # fills the queue
        time.sleep(0.3)
        http_probe, http_s = score_http(base, images(1, 2))
        grpc_probe, grpc_s = score_grpc(target, images(1, 3))
        assert not running.done(), f"the busy request finished before the probes: {running.result()}"
        assert running.result(timeout=120)[0] == queued.result(timeout=120)[0] == "OK"  # accepted work is done

    assert http_probe.status_code == 503, http_probe.text
    assert http_probe.json()["error"]["code"] == "overloaded" and http_probe.headers["retry-after"] == "1"
    assert grpc_probe == "RESOURCE_EXHAUSTED"
    assert max(http_s, grpc_s) < AT_ONCE_S, f"refusals took {http_s:.2f} s (HTTP), {grpc_s:.2f} s (gRPC)"

    base, _ = serve(GENSERVE_TIMEOUT_MS="1")  # no batch of the marginal log_prob takes under 1 ms
    response, _ = score_http(base, images(64, 0))
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("deadline_exceeded", "timeout_ms") and "timed out" in error["message"]


def largest_bound_exceeded(base: str) -> float:
    """The largest batch-size bucket bound that some sample step's rows exceeded (0 if none)."""
    counts = {}
    for line in httpx.get(f"{base}/metrics", timeout=5.0).text.splitlines():
        if line.startswith("genserve_inference_batch_size_bucket{") and 'function="sample_step"' in line:
            bound = line.split('le="')[1].split('"')[0]
            counts[float(bound)] = float(line.rpartition(" ")[2])
    total = counts[float("inf")]
    return max((bound for bound, count in counts.items() if count < total), default=0.0)


def grpc_sample(target: str, n: int, seed: int) -> np.ndarray:
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.GenserveStub(channel).Sample(pb.SampleRequest(model=MODEL, n=n, seed=seed), timeout=60.0)
    return to_array(reply.samples, "samples")


def test_a_seed_gives_the_same_samples_alone_and_inside_a_busy_mixed_batch(serve):
    base, target = serve()
    alone_http = post_sample(base, 3, 11).json()["samples"]
    alone_grpc = grpc_sample(target, 3, 11)
    observed = images(2, 5)
    mask = np.zeros(SHAPE, np.int64)
    mask[: SHAPE[0] // 2] = 1

    def complete() -> httpx.Response:
        with httpx.Client(base_url=base, timeout=60.0) as client:
            return client.post(f"/v1/models/{MODEL}/complete",
                               json={"inputs": observed.tolist(), "mask": mask.tolist(), "n": 4, "seed": 3,
                                     "format": "array"})

    with ThreadPoolExecutor(max_workers=5) as pool:
        busy = [pool.submit(post_sample, base, N // 2, 1), pool.submit(complete)]
        time.sleep(0.3)  # the big request is running; the next ones join the running batch at a step boundary
        assert not busy[0].done(), "the busy request finished before the others joined it"
        mixed_http = pool.submit(post_sample, base, 3, 11)
        mixed_grpc = pool.submit(grpc_sample, target, 3, 11)
        assert mixed_http.result(timeout=120).json()["samples"] == alone_http
        assert np.array_equal(mixed_grpc.result(timeout=120), alone_grpc)
        assert all(f.result(timeout=120).status_code == 200 for f in busy)
    # the proof that they shared a batch: some step ran more rows than the busy request alone (N // 2)
    assert largest_bound_exceeded(base) >= N // 2
    assert np.array_equal(np.array(alone_http), alone_grpc.reshape(3, *SHAPE))  # one engine behind both protocols
