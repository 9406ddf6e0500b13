"""Where the CPU of a V2 gRPC request goes (issue 16, goal 1: `vae.decode` over gRPC at 64 clients).

Five measurements, each printed as one markdown table row (CPU from /proc and time.process_time, so a busy
machine moves them less than it moves throughput):

- transport: a bare grpc.aio server (its own process, uvloop) answering every ModelInfer with a fixed
  response of the function's output shape, under the benchmarks' closed-loop gRPC clients: grpc.aio's own
  CPU per call, the floor of any Python gRPC front end;
- layer: the same server with genserve's own code around every call (the request id, sent back in the trailing
  metadata, and the calls in flight), as build_grpc_server wraps each method without API keys;
- handler: genserve's V2 ModelInfer handler over an in-process Engine whose runner answers at once, from
  concurrent tasks, no transport: validation, the dynamic batcher, metrics and encoding per request;
- worker: one engine-worker round trip of `--rows` rows, one after another: the worker process's CPU and
  the calling process's CPU per call, beside onnxruntime's own CPU for the same call in-process;
- server: `genserve serve` on the function under the same gRPC clients, `--repeats` times: the API
  process's and the worker's CPU per request and the mean dynamic batch (its /metrics);
  `--genserve-source` runs another tree's server, for a before/after.

    .venv/bin/python benchmarks/grpc_costs.py [--clients 64] [--rows 3] [--repeats 3] [--parts ...]
"""

import argparse
import asyncio
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from v2load import Genserve, batching_env, grpc_point, scratch_store, v2_work

from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc

MODEL, FUNCTION, OUTPUT = "vae", "decode", "mean"
V2_MODEL = f"{MODEL}.{FUNCTION}"
OUTPUT_SHAPE = (1, 784)  # vae.decode's answer to one latent
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in found]


# --- transport -----------------------------------------------------------------------------------------------------


def _bare_server(port: int, layer: bool) -> None:
    import grpc
    import uvloop

    from service.grpc.handlers import AroundEveryCall
    from service.grpc.server import CallsInFlight, around_every_call

    answer = np.zeros(OUTPUT_SHAPE, "<f4").tobytes()

    class Fixed(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            response = pb.ModelInferResponse(model_name=request.model_name)
            response.outputs.add(name=OUTPUT, datatype="FP32", shape=list(OUTPUT_SHAPE))
            response.raw_output_contents.append(answer)
            return response

    async def serve():
        server = grpc.aio.server()
        around = AroundEveryCall(server, around_every_call(CallsInFlight())) if layer else server
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Fixed(), around)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(serve())


def transport(args, layer: bool) -> str:
    """The fixed-answer server alone, or (layer) with genserve's own code around every call: the request id (in
    the trailing metadata) and the calls in flight, as build_grpc_server wraps each method without API keys."""
    port = 50000 + os.getpid() % 10000 + layer
    server = multiprocessing.get_context("spawn").Process(target=_bare_server, args=(port, layer), daemon=True)
    server.start()
    try:
        time.sleep(2.0)
        point = grpc_point("bare", V2_MODEL, f"127.0.0.1:{port}", v2_work(V2_MODEL), args.clients,
                           args.duration_s, args.warmup_s, server.pid)
    finally:
        server.kill()
    what = "+ genserve's request id and calls in flight" if layer else "bare grpc.aio server"
    return (f"| transport: {what}, {args.clients} clients | {point.throughput:.0f} req/s | server "
            f"{point.server_cpu_ms_per_request * 1000:.0f} us CPU per call |")


# --- handler -------------------------------------------------------------------------------------------------------


class _AtOnce:
    """A runner that answers every call at once with zeros of the output's shape."""

    async def start(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    async def call(self, model: str, function: str, feeds: dict) -> dict:
        await asyncio.sleep(0)
        return {OUTPUT: np.zeros((len(next(iter(feeds.values()))), OUTPUT_SHAPE[1]), np.float32)}


class _Context:
    def invocation_metadata(self):
        return ()

    async def abort(self, code, details, trailing_metadata=()):
        raise RuntimeError(f"{code}: {details}")


async def _handler_us(store: Path, requests: int, clients: int) -> tuple[float, float]:
    from service.engine.engine import Engine
    from service.grpc.inference import InferenceServicer
    from service.settings import Settings
    from service.store.store import ModelStore

    settings = Settings(runtime="onnx", intra_op_threads=1, max_batch_size=64, max_queue_delay_us=500)
    servicer = InferenceServicer(Engine(ModelStore(store), settings, runner=_AtOnce()))
    z = v2_work(V2_MODEL).inputs["z"]
    request = pb.ModelInferRequest(model_name=V2_MODEL, raw_input_contents=[z.tobytes()])
    request.inputs.add(name="z", datatype="FP32", shape=list(z.shape))
    wire, context, left = request.SerializeToString(), _Context(), [0]

    async def client():
        while left[0] > 0:
            left[0] -= 1
            answer = await servicer.ModelInfer(pb.ModelInferRequest.FromString(wire), context)
            answer.SerializeToString()

    left[0] = 500
    await asyncio.gather(*(client() for _ in range(4)))  # warm
    left[0] = requests
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return (time.process_time() - cpu) / requests * 1e6, requests / (time.perf_counter() - wall)


def handler(args, store: Path) -> str:
    import uvloop

    us, rate = uvloop.run(_handler_us(store, args.requests, args.clients))
    return (f"| handler: V2 ModelInfer, no transport, {args.clients} tasks | {rate:.0f} req/s | {us:.0f} us CPU per "
            "request |")


# --- worker --------------------------------------------------------------------------------------------------------


async def _worker_us(directory: Path, rows: int, calls: int) -> tuple[float, float, float]:
    from service.engine.workers import Functions, WorkerPool

    z = np.random.default_rng(0).standard_normal((rows, 32)).astype(np.float32)
    pool = WorkerPool({MODEL: directory}, "onnx", 1)
    await pool.start()
    try:
        while not pool.ready():
            await asyncio.sleep(0.05)
        for _ in range(100):
            await pool.call(MODEL, FUNCTION, {"z": z})
        pid = pool.workers[0].process.pid
        worker, here = process_cpu(pid), time.process_time()
        for _ in range(calls):
            await pool.call(MODEL, FUNCTION, {"z": z})
        worker, here = process_cpu(pid) - worker, time.process_time() - here
    finally:
        await pool.stop()
    function = Functions({MODEL: directory}, "onnx", 1, None)[MODEL, FUNCTION]
    for _ in range(100):
        function(z=z)
    alone = time.process_time()
    for _ in range(calls):
        function(z=z)
    alone = time.process_time() - alone
    return worker / calls * 1e6, here / calls * 1e6, alone / calls * 1e6


def worker(args, store: Path) -> str:
    import uvloop

    worker_us, api_us, alone_us = uvloop.run(_worker_us(store / MODEL / "1", args.rows, args.calls))
    return (f"| worker: one round trip of {args.rows} rows | worker {worker_us:.0f} us, caller {api_us:.0f} us "
            f"CPU per call | onnxruntime alone {alone_us:.0f} us CPU per call |")


# --- server --------------------------------------------------------------------------------------------------------


def cores_used(pids: list[int], delay_s: float, window_s: float, into: dict) -> None:
    """Each process's CPU cores over window_s seconds from delay_s on, as into["cores"]."""
    time.sleep(delay_s)
    before, start = [process_cpu(pid) for pid in pids], time.monotonic()
    time.sleep(window_s)
    seconds = time.monotonic() - start
    into["cores"] = [(process_cpu(pid) - b) / seconds for pid, b in zip(pids, before, strict=True)]


def _mean_batch(metrics: str) -> float:
    def total(kind: str) -> float:
        pattern = rf'genserve_inference_batch_size_{kind}\{{function="{FUNCTION}",model="{MODEL}"\}} (\S+)'
        return float(re.search(pattern, metrics).group(1))

    return total("sum") / total("count")


def server(args, store: Path) -> list[str]:
    rows = []
    for repeat in range(args.repeats):
        with Genserve(store, batching_env(1, 64, 500), "genserve", [V2_MODEL], args.genserve_source) as served:
            api = served.process.pid
            pids = [api, *children(api)]
            measured: dict[str, list[float]] = {}
            sampler = threading.Thread(target=cores_used, args=(pids, args.warmup_s + 0.5, args.duration_s - 1.0,
                                                                 measured))
            sampler.start()
            point = grpc_point("genserve", V2_MODEL, served.grpc_target, v2_work(V2_MODEL), args.clients,
                               args.duration_s, args.warmup_s, api)
            sampler.join()
            batch = _mean_batch(httpx.get(f"http://127.0.0.1:{served.port}/metrics").text)
        api_cores, worker_cores = measured["cores"][0], sum(measured["cores"][1:])
        rows.append(f"| server, run {repeat + 1}: genserve serve, {args.clients} clients | {point.throughput:.0f} "
                    f"req/s | API {api_cores / point.throughput * 1e6:.0f} us ({api_cores:.2f} cores), worker "
                    f"{worker_cores / point.throughput * 1e6:.0f} us CPU per request; mean batch {batch:.1f} rows |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="the store holding `vae`")
    parser.add_argument("--parts", nargs="+", choices=["transport", "layer", "handler", "worker", "server"],
                        default=["transport", "layer", "handler", "worker", "server"])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20000, help="handler: requests measured")
    parser.add_argument("--rows", type=int, default=3, help="worker: rows per call")
    parser.add_argument("--calls", type=int, default=2000, help="worker: calls measured")
    parser.add_argument("--repeats", type=int, default=3, help="server: runs, one after another")
    parser.add_argument("--genserve-source", type=Path, help="server: run genserve from this source tree "
                                                             "(e.g. a worktree of a baseline commit)")
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    print("| part | throughput | CPU |\n|---|---|---|")
    with scratch_store(args.models, [MODEL]) as store:
        for part in args.parts:
            print(f"{part} ...", file=sys.stderr)
            if part in ("transport", "layer"):
                print(transport(args, layer=part == "layer"), flush=True)
            elif part == "handler":
                print(handler(args, store), flush=True)
            elif part == "worker":
                print(worker(args, store), flush=True)
            else:
                print("\n".join(server(args, store)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
