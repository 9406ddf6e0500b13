"""Shared machinery of triton_compare.py and serving_overhead.py: V2 workloads, wrk for REST, gRPC load, servers.

- Workloads: the V2 infer request of `vae.decode` (a fixed latent z [1, 32], seed 0; about 0.5 ms of onnxruntime)
  and of `pixelcnn.log_prob_given_label` (mnist5k-binarized test image 0 and its label; one network pass), as
  V2 REST JSON, V2 REST with the binary tensor data extension (inputs and outputs binary, as tritonclient.http
  sends them), V2 gRPC (raw_input_contents), and genserve's own REST route for the same work
  (`/v1/models/vae/decode` with "format": "array", `/score` with the label).
- REST load: `wrk` (Debian package `wrk`; one thread, C connections, each with one request in flight, for a fixed
  duration after an untimed warm-up run) with benchmarks/wrk_post.lua, which posts the body and prints a JSON
  summary. wrk's latency percentiles are over every completed request.
- gRPC load, two clients (`--grpc-client`):
  - `h2load` (the default; Debian package `nghttp2-client`): nghttp2's C load generator posts the gRPC message
    itself (its 5-byte length prefix, content-type application/grpc, te: trailers) over C HTTP/2 connections, one
    call in flight on each, for a fixed duration after an untimed warm-up run: C clients as wrk makes them for REST.
    `h2load-shared`: the same calls as C streams of one connection (as C tasks on one grpcio channel). Latency
    percentiles come from h2load's per-request log. h2load sees HTTP statuses only, and a gRPC error answers 200
    with no DATA: every answer to the fixed request has the same length, so the DATA bytes received, divided
    by that length (read once through grpcio), count the answers that carried a result; the rest are errors.
    No ghz: it is not packaged for the registries this machine reaches.
  - `aio`: closed-loop grpc.aio clients in the manner of loadgen.py (C asyncio tasks on one channel, in this
    process), the same warm-up and duration. On this 2-core machine they use a fifth to a half of a core, which
    the server then lacks, and their own time per call is part of every latency.
- Server CPU: the CPU time of the server's whole process tree (API process and engine worker; Triton's launcher,
  tritonserver and its Python backend stubs) over the measured seconds, from /proc: cores used, and CPU ms per
  request, which the other load on a shared machine disturbs less than throughput does.
- Servers: `genserve serve` (loadgen.Server) on a scratch store that holds only the served models (symlinks to the
  store's directories, so the very same files; it is ready in seconds instead of the full store's 15 s), from the
  repository or from another source tree (--genserve-source, e.g. `git archive` of a baseline commit), and
  everything on 127.0.0.1.
"""

import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from loadgen import REPO, Server

LUA = Path(__file__).resolve().with_name("wrk_post.lua")
FUNCTIONS = ["vae.decode", "pixelcnn.log_prob_given_label"]
PROTOCOLS = ["rest-json", "rest-binary", "grpc"]
HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]  # what a gRPC server requires of a call
GRPC_PREFIX = struct.Struct(">BI")  # before each gRPC message: the compressed flag (0: not) and its length
GRPC_CLIENT_TEXT = {"h2load": "h2load, one connection per client", "h2load-shared": "h2load, one connection for all "
                    "clients", "aio": "grpc.aio clients on one channel in the benchmark's process"}
GRPC_CLIENTS = list(GRPC_CLIENT_TEXT)


# --- workloads -----------------------------------------------------------------------------------------------------


@dataclass
class V2Work:
    """One V2 infer request: model "<model>.<function>", its input tensors, the output that is checked."""

    model: str
    inputs: dict[str, np.ndarray]
    output: str

    @property
    def stored_model(self) -> str:
        return self.model.split(".", 1)[0]


def v2_work(model: str, scalar_as_column: bool = False) -> V2Work:
    """The benchmark's request for `model`; scalar_as_column: a per-item scalar input is [B, 1] (Triton's way)."""
    if model == "vae.decode":
        z = np.random.default_rng(0).standard_normal((1, 32)).astype("<f4")
        return V2Work(model, {"z": z}, "mean")
    if model == "pixelcnn.log_prob_given_label":
        from training.data.images import mnist5k_binarized

        split = mnist5k_binarized()
        x = np.ascontiguousarray(split.x_test[0:1], dtype="<i8")  # [1, 1, 28, 28]
        label = np.full([1, 1] if scalar_as_column else [1], int(split.y_test[0]), dtype="<i8")
        return V2Work(model, {"x": x, "label": label}, "log_prob")
    raise SystemExit(f"no benchmark workload for {model!r}; known: {FUNCTIONS}")


@dataclass
class HttpRequest:
    path: str
    body: bytes
    headers: dict[str, str]


def _v2_datatype(dtype: np.dtype) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "uint8": "UINT8"}[dtype.name]


def rest_request(work: V2Work, binary: bool) -> HttpRequest:
    """POST /v2/models/<model>/infer: JSON tensors, or the binary tensor data extension both ways."""
    path = f"/v2/models/{work.model}/infer"
    tensors = []
    for name, a in work.inputs.items():
        tensor = {"name": name, "shape": list(a.shape), "datatype": _v2_datatype(a.dtype)}
        if binary:
            tensor["parameters"] = {"binary_data_size": a.nbytes}
        else:
            tensor["data"] = a.ravel().tolist()
        tensors.append(tensor)
    header = {"inputs": tensors, "outputs": [{"name": work.output, "parameters": {"binary_data": binary}}]}
    head = json.dumps(header).encode()
    if not binary:
        return HttpRequest(path, head, {"Content-Type": "application/json"})
    return HttpRequest(path, head + b"".join(a.tobytes() for a in work.inputs.values()),
                       {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))})


def v1_request(work: V2Work) -> HttpRequest:
    """genserve's own REST route doing the same work: /v1/models/vae/decode (floats), /score (given the label)."""
    if work.model == "vae.decode":
        body = {"z": work.inputs["z"].tolist(), "format": "array"}
        return HttpRequest("/v1/models/vae/decode", json.dumps(body).encode(), {"Content-Type": "application/json"})
    if work.model == "pixelcnn.log_prob_given_label":
        body = {"model": "pixelcnn", "inputs": work.inputs["x"][:, 0].tolist(),
                "labels": work.inputs["label"].ravel().tolist()}
        return HttpRequest("/score", json.dumps(body).encode(), {"Content-Type": "application/json"})
    raise SystemExit(f"no genserve route for {work.model!r}")


def rest_values(content: bytes, headers, output: str) -> np.ndarray:
    """The output's values (flat float64) from a V2 REST answer, JSON or binary, or from a genserve /v1 answer."""
    n = headers.get(HEADER_LENGTH)
    head = json.loads(content if n is None else content[:int(n)])
    if "outputs" not in head:  # genserve /v1
        if "images" in head:
            return np.asarray(head["images"], dtype=np.float64).ravel()
        return np.asarray([r["log_likelihood_nats"] for r in head["results"]], dtype=np.float64)
    offset = 0 if n is None else int(n)
    for tensor in head["outputs"]:
        size = tensor.get("parameters", {}).get("binary_data_size")
        if tensor["name"] == output:
            if size is None:
                return np.asarray(tensor["data"], dtype=np.float64).ravel()
            dtype = np.dtype({"FP32": "<f4", "FP64": "<f8"}[tensor["datatype"]])
            return np.frombuffer(content[offset:offset + size], dtype=dtype).astype(np.float64)
        offset += size or 0
    raise RuntimeError(f"no output {output!r} in {list(head['outputs'])}")


def rest_check(base_url: str, request: HttpRequest, output: str) -> np.ndarray:
    import httpx

    response = httpx.post(base_url + request.path, content=request.body, headers=request.headers, timeout=30.0)
    if response.status_code != 200:
        raise RuntimeError(f"POST {request.path}: HTTP {response.status_code}: {response.text[:300]}")
    return rest_values(response.content, response.headers, output)


def grpc_request(work: V2Work):
    """The work as a V2 ModelInferRequest, its inputs in raw_input_contents."""
    from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb

    tensors = [pb.ModelInferRequest.InferInputTensor(name=name, datatype=_v2_datatype(a.dtype), shape=list(a.shape))
               for name, a in work.inputs.items()]
    return pb.ModelInferRequest(model_name=work.model, inputs=tensors,
                                raw_input_contents=[a.tobytes() for a in work.inputs.values()])


class GrpcV2Client:
    """inference.GRPCInferenceService/ModelInfer with raw_input_contents; the output's values as float64."""

    def __init__(self, target: str, work: V2Work, timeout_s: float):
        import grpc

        from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(target)
        self.stub, self.timeout_s, self.output = pb_grpc.GRPCInferenceServiceStub(self.channel), timeout_s, work.output
        self.request = grpc_request(work)

    async def values(self) -> np.ndarray:
        response = await self.stub.ModelInfer(self.request, timeout=self.timeout_s)
        i = [t.name for t in response.outputs].index(self.output)
        if response.raw_output_contents:
            return np.frombuffer(response.raw_output_contents[i], dtype="<f4").astype(np.float64)
        return np.asarray(response.outputs[i].contents.fp32_contents, dtype=np.float64)

    async def call(self) -> float:
        return float((await self.values())[0])

    async def close(self) -> None:
        await self.channel.close()


def grpc_check(target: str, work: V2Work) -> np.ndarray:
    async def once() -> np.ndarray:
        client = GrpcV2Client(target, work, 30.0)
        try:
            return await client.values()
        finally:
            await client.close()

    return asyncio.run(once())


# --- load ----------------------------------------------------------------------------------------------------------


@dataclass
class Point:
    """One measured level: closed-loop clients against one server, route and protocol."""

    server: str
    route: str  # "rest-json", "rest-binary", "grpc", "v1", ...
    model: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    client_cpu: float  # cores used by the load generator (wrk, or this process for gRPC) while measuring
    server_cpu: float = float("nan")  # cores used by the server's processes (all of them) while measuring
    first_error: str | None = None

    @property
    def server_cpu_ms_per_request(self) -> float:
        return 1000.0 * self.server_cpu * self.seconds / self.requests if self.requests else float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "throughput_rps": self.throughput,
                "server_cpu_ms_per_request": self.server_cpu_ms_per_request}


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk is not installed (Debian: apt-get install -y wrk)")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(url: str, request: HttpRequest, concurrency: int, duration_s: float, timeout_s: float) -> dict:
    """One wrk run (one thread, `concurrency` connections); its WRK_JSON summary plus the CPU it used."""
    with tempfile.NamedTemporaryFile(prefix="wrk-body-", suffix=".bin") as body:
        body.write(request.body)
        body.flush()
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(duration_s, 1.0):g}s", f"--timeout={timeout_s:g}s",
                   "-s", str(LUA), url + request.path, "--", body.name,
                   *(f"{k}: {v}" for k, v in request.headers.items())]
        cpu = _children_cpu()
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
        cpu = _children_cpu() - cpu
    found = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
    summary = json.loads(found.group(1))
    summary["cpu_s"] = cpu
    return summary


def rest_point(server: str, route: str, model: str, base_url: str, request: HttpRequest, concurrency: int,
               duration_s: float, warmup_s: float, server_pid: int | None = None, timeout_s: float = 30.0) -> Point:
    """wrk for warmup_s (not counted), then for duration_s."""
    if warmup_s > 0:
        wrk(base_url, request, concurrency, warmup_s, timeout_s)
    cpu = process_cpu_s(server_pid)
    s = wrk(base_url, request, concurrency, duration_s, timeout_s)
    seconds = s["duration_us"] / 1e6
    server_cpu = (process_cpu_s(server_pid) - cpu) / seconds if server_pid else float("nan")
    errors = s["status_errors"] + s["connect_errors"] + s["read_errors"] + s["write_errors"] + s["timeouts"]
    return Point(server, route, model, concurrency, s["requests"] - s["status_errors"], errors, seconds,
                 s["p50_us"] / 1000.0, s["p99_us"] / 1000.0, s["cpu_s"] / seconds, server_cpu,
                 f"{errors} wrk errors: {s}" if errors else None)


async def closed_loop(client, concurrency: int, warmup_s: float, duration_s: float, server_pid: int | None,
                      timeout_s: float) -> tuple[list[float], int, float, float, float, str | None]:
    """`concurrency` tasks calling client.call() back to back (loadgen.py's clients); after warmup_s, for duration_s:
    (latencies, errors, seconds, client cores, server cores, first error)."""
    latencies: list[float] = []
    errors, first_error, measuring, stop = 0, None, False, asyncio.Event()

    async def worker() -> None:
        nonlocal errors, first_error
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await client.call()
            except Exception as e:  # noqa: BLE001 - every failure is counted, the first one reported
                if measuring:
                    errors += 1
                    first_error = first_error or f"{type(e).__name__}: {e}"[:300]
                await asyncio.sleep(0.01)
                continue
            if measuring:
                latencies.append(time.perf_counter() - start)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        measuring = True
        begin, cpu, server = time.perf_counter(), time.process_time(), process_cpu_s(server_pid)
        await asyncio.sleep(duration_s)
        measuring = False
        seconds = time.perf_counter() - begin
        client_cpu = (time.process_time() - cpu) / seconds
        server_cpu = (process_cpu_s(server_pid) - server) / seconds if server_pid else float("nan")
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=timeout_s + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return latencies, errors, seconds, client_cpu, server_cpu, first_error


def grpc_point(server: str, model: str, target: str, work: V2Work, concurrency: int, duration_s: float,
               warmup_s: float, server_pid: int | None = None, timeout_s: float = 30.0) -> Point:
    """C closed-loop grpc.aio clients on one channel, in this process."""
    async def run():
        client = GrpcV2Client(target, work, timeout_s)
        try:
            return await closed_loop(client, concurrency, warmup_s, duration_s, server_pid, timeout_s)
        finally:
            await client.close()

    latencies, errors, seconds, client_cpu, server_cpu, first_error = asyncio.run(run())
    p50, p99 = (float(np.percentile(latencies, q)) * 1000.0 for q in (50, 99)) if latencies else (np.nan, np.nan)
    return Point(server, "grpc", model, concurrency, len(latencies), errors, seconds, p50, p99, client_cpu,
                 server_cpu, first_error)


def require_h2load() -> None:
    if shutil.which("h2load") is None:
        raise SystemExit("error: h2load is not installed (Debian: apt-get install -y nghttp2-client), or use "
                         "--grpc-client aio")


def grpc_body(work: V2Work) -> bytes:
    """ModelInfer's request as gRPC puts it in the HTTP/2 body: flag 0 (uncompressed), length (big-endian u32), the
    protobuf."""
    message = grpc_request(work).SerializeToString()
    return GRPC_PREFIX.pack(0, len(message)) + message


def grpc_answer_bytes(target: str, work: V2Work, timeout_s: float = 30.0) -> int:
    """The length in the HTTP/2 body (prefix and protobuf) of the server's answer to the work, asked once."""
    import grpc

    from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(work), timeout=timeout_s)
    return GRPC_PREFIX.size + len(answer.SerializeToString())


def h2load(target: str, body: bytes, connections: int, streams: int, duration_s: float, timeout_s: float) -> dict:
    """One h2load run posting `body` to ModelInfer over `connections`, `streams` calls in flight on each, for
    duration_s. {"latencies_s": each request's answered with HTTP 200, "seconds", "started", "done", "failed" (of
    the done: reset or refused streams), "data_bytes", "cpu_s"}. A call still in flight when duration_s ends is started
    but not done; the DATA bytes of its answer may already be counted."""
    headers = [part for header in GRPC_HEADERS for part in ("-H", header)]
    with tempfile.NamedTemporaryFile(prefix="h2load-body-") as file, \
            tempfile.NamedTemporaryFile(prefix="h2load-log-", mode="r") as log:
        file.write(body)
        file.flush()
        command = ["h2load", f"-c{connections}", f"-m{streams}", f"-D{round(max(duration_s, 1.0) * 1000)}ms",
                   "-d", file.name, "--log-file", log.name, *headers, f"http://{target}{MODEL_INFER}"]
        cpu = _children_cpu()
        process = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
        cpu = _children_cpu() - cpu
        rows = [line.split("\t") for line in log.read().splitlines() if line.strip()]  # start, status, microseconds
        latencies = [int(row[2]) / 1e6 for row in rows if row[1] == "200"]
    out = process.stdout
    finished = re.search(r"^finished in ([\d.]+)(ms|s),", out, re.MULTILINE)
    requests = re.search(r"^requests: \d+ total, (\d+) started, (\d+) done, \d+ succeeded, (\d+) failed", out,
                         re.MULTILINE)
    data = re.search(r"^traffic: .*\((\d+)\) data$", out, re.MULTILINE)
    if process.returncode != 0 or not (finished and requests and data):
        raise RuntimeError(f"h2load failed ({process.returncode}): {out[-1000:]} {process.stderr[-1000:]}")
    seconds = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    started, done, failed = (int(group) for group in requests.groups())
    return {"latencies_s": latencies, "seconds": seconds, "started": started, "done": done, "failed": failed,
            "data_bytes": int(data.group(1)), "cpu_s": cpu}


def grpc_h2load_point(server: str, model: str, target: str, work: V2Work, concurrency: int, duration_s: float,
                      warmup_s: float, server_pid: int | None = None, timeout_s: float = 30.0,
                      shared: bool = False) -> Point:
    """h2load for warmup_s (not counted), then for duration_s: `concurrency` connections with one call in flight
    each, or (shared) one connection with `concurrency` calls in flight. A done request counts as answered when its
    answer carried a result: the DATA bytes received hold that many whole answers (a gRPC error has none; a failed
    stream is done too). No request done at all (a server that stopped answering) counts every started one as an
    error, as the aio client's timeouts do."""
    body, answer_bytes = grpc_body(work), grpc_answer_bytes(target, work, timeout_s)
    connections, streams = (1, concurrency) if shared else (concurrency, 1)
    if warmup_s > 0:
        h2load(target, body, connections, streams, warmup_s, timeout_s)
    cpu = process_cpu_s(server_pid)
    run = h2load(target, body, connections, streams, duration_s, timeout_s)
    server_cpu = (process_cpu_s(server_pid) - cpu) / run["seconds"] if server_pid else float("nan")
    answered = min(run["done"], run["data_bytes"] // answer_bytes)
    errors = run["done"] - answered if run["done"] else run["started"]
    latencies = run["latencies_s"]
    p50, p99 = (float(np.percentile(latencies, q)) * 1000.0 for q in (50, 99)) if latencies else (np.nan, np.nan)
    return Point(server, "grpc", model, concurrency, answered, errors, run["seconds"], p50, p99,
                 run["cpu_s"] / run["seconds"], server_cpu,
                 f"{errors} h2load requests without a result ({run['started']} started, {run['done']} done, "
                 f"{run['failed']} of them failed; {run['data_bytes']} DATA bytes, {answer_bytes} per answer)"
                 if errors else None)


def grpc_load_point(client: str, server: str, model: str, target: str, work: V2Work, concurrency: int,
                    duration_s: float, warmup_s: float, server_pid: int | None = None) -> Point:
    """One gRPC point driven by `client`, one of GRPC_CLIENTS."""
    if client == "aio":
        return grpc_point(server, model, target, work, concurrency, duration_s, warmup_s, server_pid)
    return grpc_h2load_point(server, model, target, work, concurrency, duration_s, warmup_s, server_pid,
                             shared=client == "h2load-shared")


def point_line(p: Point) -> str:
    return (f"  {p.server:>9} {p.route:<11} {p.model} c={p.concurrency}: {p.throughput:.0f} req/s, p50 "
            f"{p.p50_ms:.2f} ms, p99 {p.p99_ms:.1f} ms, CPU client {p.client_cpu:.2f} server {p.server_cpu:.2f} "
            f"({p.server_cpu_ms_per_request:.2f} ms/req)"
            + (f", ERRORS {p.errors}: {p.first_error}" if p.errors else ""))


# --- servers -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_store(models: str | Path, names: list[str]):
    """A temporary store holding only `names`, as symlinks to the store's model directories (the same files)."""
    models = Path(models).resolve()
    directory = Path(tempfile.mkdtemp(prefix="genserve-bench-store-"))
    try:
        for name in names:
            if not (models / name).is_dir():
                raise SystemExit(f"no model {name!r} in the store {models}")
            (directory / name).symlink_to(models / name, target_is_directory=True)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def batching_env(threads: int, max_batch_size: int | None, queue_delay_us: int | None) -> dict[str, str]:
    env = {"GENSERVE_RUNTIME": "onnx", "GENSERVE_INTRA_OP_THREADS": str(threads)}
    if max_batch_size is not None:
        env["GENSERVE_MAX_BATCH_SIZE"] = str(max_batch_size)
    if queue_delay_us is not None:
        env["GENSERVE_MAX_QUEUE_DELAY_US"] = str(queue_delay_us)
    return env


class Genserve(Server):
    """`genserve serve` on a (scratch) store, from the repository or another source tree, ready when V2 models are."""

    def __init__(self, models: str | Path, env: dict[str, str], label: str, ready_models: list[str],
                 source: Path | None = None):
        super().__init__(str(models), env, label)
        self.source = Path(source or REPO).resolve()
        self.ready_models = ready_models
        self.ready_path = f"/v2/models/{ready_models[0]}/ready"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--models", self.models,
                "--port", str(self.port), "--grpc-port", str(self.grpc_port)]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.source != REPO:  # `python -m` puts the working directory first on sys.path: the other tree wins
            env["PYTHONPATH"] = str(self.source)
        return env

    def __enter__(self) -> "Genserve":
        import subprocess as sp

        knobs = " ".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        print(f"starting {self.label}: {knobs}; source {self.source}; log {self.log.name}", file=sys.stderr)
        self.process = sp.Popen(self.command(), cwd=self.source, env=self.environment(), stdin=sp.DEVNULL,
                                stdout=self.log, stderr=sp.STDOUT, start_new_session=self.new_session)
        try:
            wait_ready(self, [f"/v2/models/{m}/ready" for m in self.ready_models])
        except BaseException:
            self.stop()
            raise
        return self


def wait_ready(server: Server, paths: list[str], timeout_s: float = 120.0) -> None:
    """Until every path answers 200 (the server process must stay alive meanwhile)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    pending = list(paths)
    while pending:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.label} exited with {server.process.returncode}:\n{server.tail()}")
        try:
            if httpx.get(f"{server.base_url}{pending[0]}", timeout=2.0).status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.label} not ready after {timeout_s:.0f} s ({pending[0]}):\n{server.tail()}")
        time.sleep(0.2)


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (from /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children") if Path(f"/proc/{p}/task").exists() else []:
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in task.read_text().split()]
    return found


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds used so far by a process and its live descendants (a server with its workers), from /proc."""
    if pid is None:
        return 0.0
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total
