"""SIGTERM drains a real `genserve serve`: in-flight HTTP and gRPC work finishes, new work is refused, exit 0.

Issue 3 ("Processes"): "SIGTERM drains: in-flight requests finish, new ones get 503, and the process exits 0".
The HTTP listener stays open during the drain, so a new HTTP request gets 503 (not a refused connection),
/readyz 503 and /healthz 200; a new gRPC call fails with UNAVAILABLE.
"""

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np

from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from tests.e2e.test_server import MODEL, REPO, SHAPE, free_port, server_env, stop, wait_ready

N = 1024  # samples per slow request: the tiny model samples 28 rows per image; 1024 of them take seconds
MIN_SLOW_S = 0.5  # a slow request must take at least this long alone, or "in flight" proves nothing
EXIT_TIMEOUT_S = 60.0
N_CUT = 4096  # samples per request of the cut-drain test: far longer than its drain limit
CUT_DRAIN_S = 1.0  # GENSERVE_DRAIN_TIMEOUT_S of the cut-drain test
CUT_EXIT_MARGIN_S = 10.0  # after the limit: the cut requests' answers and the workers' stop


def start_server(models, port: int, grpc_port: int, logs, **settings: str) -> subprocess.Popen:
    """`genserve serve` on the ports, with room for two slow requests of N samples in one batch.

    settings: more GENSERVE_* environment variables, which win over these.
    """
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--grpc-port", str(grpc_port), "--models", str(models)]
    env = server_env() | {"GENSERVE_MAX_SAMPLES_PER_REQUEST": str(N), "GENSERVE_MAX_QUEUE_SIZE": str(2 * N),
                          "GENSERVE_MAX_BATCH_SIZE": str(2 * N)} | settings
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)


def post_sample(base: str, n: int, seed: int) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=60.0) as client:  # a connection of its own
        return client.post(f"/v1/models/{MODEL}/sample", json={"n": n, "seed": seed, "format": "array"})


def new_request_outcome(base: str) -> str:
    """What a brand-new HTTP client sees: 'refused', or 'http <status>'."""
    try:
        response = post_sample(base, 1, 0)
    except httpx.ConnectError:
        return "refused"
    return f"http {response.status_code}"


def test_sigterm_drains_in_flight_work_refuses_new_work_and_exits_0(tiny_store, tmp_path):
    port, grpc_port = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    process = start_server(tiny_store, port, grpc_port, tmp_path)
    pool = ThreadPoolExecutor(max_workers=2)
    channel = grpc.insecure_channel(target)
    try:
        wait_ready(process, base, tmp_path)
        began = time.monotonic()
        assert post_sample(base, N, 1).status_code == 200
        alone_s = time.monotonic() - began
        assert alone_s >= MIN_SLOW_S, f"n={N} took only {alone_s:.2f} s: too fast to be caught in flight"

        # a slow HTTP request and a gRPC SampleStream, both in flight
        stub = pb_grpc.GenserveStub(channel)
        first_chunk = threading.Event()

        def stream() -> list:
            chunks = []
            for chunk in stub.SampleStream(pb.SampleRequest(model=MODEL, n=N, seed=2), timeout=60.0):
                chunks.append(chunk)
                first_chunk.set()
            return chunks

        streamed = pool.submit(stream)
        posted = pool.submit(post_sample, base, N, 3)
        assert first_chunk.wait(timeout=30.0), "the gRPC stream sent nothing"
        time.sleep(0.2)  # the HTTP request has reached the server and is sampling
        assert not posted.done() and not streamed.done(), "the slow requests finished before SIGTERM"

        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # new work during the drain is refused; the old work is still running, so this is the drain
        http_outcome = new_request_outcome(base)
        ready, alive = httpx.get(f"{base}/readyz", timeout=5.0), httpx.get(f"{base}/healthz", timeout=5.0)
        with grpc.insecure_channel(target) as fresh:
            try:
                pb_grpc.GenserveStub(fresh).Sample(pb.SampleRequest(model=MODEL, n=1, seed=0), timeout=10.0)
                grpc_outcome = "OK"
            except grpc.RpcError as e:
                grpc_outcome = e.code().name
        print(f"during the drain: new HTTP request -> {http_outcome}; new gRPC call -> {grpc_outcome}")
        still_draining = not posted.done() and not streamed.done() and process.poll() is None
        assert still_draining, "the drain was over before new requests were tried"
        assert http_outcome == "http 503", f"a new HTTP request during the drain: {http_outcome}"
        assert (ready.status_code, alive.status_code) == (503, 200)
        assert grpc_outcome == "UNAVAILABLE", f"a new gRPC call during the drain: {grpc_outcome}"

        # in-flight work finishes, complete and correct
        response = posted.result(timeout=60.0)
        assert response.status_code == 200, response.text
        samples = np.array(response.json()["samples"])
        assert samples.shape == (N, *SHAPE) and set(np.unique(samples)) <= {0, 1}
        chunks = streamed.result(timeout=60.0)
        assert chunks and len(chunks) == chunks[0].steps == SHAPE[0]
        assert [c.step for c in chunks] == list(range(len(chunks)))
        assert all(c.values.shape[0] == N and np.prod(c.values.shape[1:]) * c.steps == np.prod(SHAPE) for c in chunks)

        assert process.wait(timeout=EXIT_TIMEOUT_S) == 0, (tmp_path / "stderr").read_text()[-4000:]
        log = (tmp_path / "stderr").read_text()
        assert "drain: cut" not in log, "a drain that finished in time reported a cut"
        # defaults: the log says once that the server is open, and writes no access log (GENSERVE_ACCESS_LOG)
        assert log.count("no GENSERVE_API_KEYS_FILE: REST") == 1, log[-4000:]
        assert "HTTP/1.1\" 200" not in log, "an access log line, though GENSERVE_ACCESS_LOG defaults to off"
    finally:
        channel.close()
        pool.shutdown(wait=False, cancel_futures=True)
        stop(process)


def test_a_drain_past_its_limit_cuts_the_work_says_what_it_cut_and_exits_0(tiny_store, tmp_path):
    """Issue 15, defect 6: the drain's limit is GENSERVE_DRAIN_TIMEOUT_S, and what it cuts is logged.

    A cut HTTP request that has no answer yet gets 503 `draining`; a cut gRPC call ends with an error.
    """
    port, grpc_port = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    process = start_server(tiny_store, port, grpc_port, tmp_path, GENSERVE_DRAIN_TIMEOUT_S=str(CUT_DRAIN_S),
                           GENSERVE_MAX_SAMPLES_PER_REQUEST=str(N_CUT), GENSERVE_MAX_QUEUE_SIZE=str(2 * N_CUT),
                           GENSERVE_MAX_BATCH_SIZE=str(2 * N_CUT))
    pool = ThreadPoolExecutor(max_workers=2)
    channel = grpc.insecure_channel(target)
    try:
        wait_ready(process, base, tmp_path)
        stub = pb_grpc.GenserveStub(channel)
        first_chunk = threading.Event()

        def stream() -> str:
            try:
                for _chunk in stub.SampleStream(pb.SampleRequest(model=MODEL, n=N_CUT, seed=2), timeout=120.0):
                    first_chunk.set()
            except grpc.RpcError as e:
                return e.code().name
            return "OK"

        streamed = pool.submit(stream)
        posted = pool.submit(post_sample, base, N_CUT, 3)
        assert first_chunk.wait(timeout=60.0), "the gRPC stream sent nothing"
        time.sleep(0.2)  # the HTTP request has reached the server and is sampling
        assert not posted.done() and not streamed.done(), "the slow requests finished before SIGTERM"

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert process.wait(timeout=EXIT_TIMEOUT_S) == 0, (tmp_path / "stderr").read_text()[-4000:]
        exit_s = time.monotonic() - signalled
        log = (tmp_path / "stderr").read_text()
        response = posted.result(timeout=10.0)
        grpc_outcome = streamed.result(timeout=10.0)
        print(f"cut drain: exit after {exit_s:.1f} s; HTTP {response.status_code}; gRPC {grpc_outcome}")
        assert exit_s < CUT_DRAIN_S + CUT_EXIT_MARGIN_S, f"exit {exit_s:.1f} s after SIGTERM:\n{log[-4000:]}"
        assert "drain: cut 1 HTTP request still in flight (POST /v1/models/{name}/sample x1) after 1 s" in log, log
        assert "drain: cut 1 gRPC call still in flight (/genserve.v1.Genserve/SampleStream x1) after 1 s" in log, log
        assert response.status_code == 503 and response.json()["error"]["code"] == "draining", response.text
        assert "GENSERVE_DRAIN_TIMEOUT_S" in response.json()["error"]["message"]
        assert response.headers["retry-after"]
        assert grpc_outcome != "OK"
        assert "Traceback" not in log, log[-4000:]  # a cut is a clean stop, not a crash
    finally:
        channel.close()
        pool.shutdown(wait=False, cancel_futures=True)
        stop(process)
