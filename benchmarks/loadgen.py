"""Load generator for a genserve server, in the manner of Triton's perf_analyzer.

It starts `genserve serve` itself (127.0.0.1, free ports), waits for /readyz and
always stops it again. The workload is one test image of mnist5k-binarized
scored by the shipped `pixelcnn`: `log_prob_given_label` (labels [y], one
network pass) by default, `log_prob` (no labels, 10 passes) with --marginal;
over REST (`POST /v1/models/pixelcnn/score`, httpx) and gRPC
(`genserve.v1.Genserve/Score`, grpc.aio).

For each concurrency level C, C asyncio clients each send one request at a
time, back to back. After --warmup-s the run is cut into windows of --window-s
seconds; windows are added until two consecutive ones agree on throughput
within --stability (10%), at most --max-windows. The table reports throughput
and p50/p99 latency over those last two windows, and whether they agreed.

    .venv/bin/python benchmarks/loadgen.py [--concurrency 1 8 32 64] [--protocols rest grpc]
        [--window-s 3] [--compare-batching] [--overhead] [--marginal] [--json out.json]
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import fmt, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = ["rest", "grpc"]
BATCHING_OFF = {"GENSERVE_MAX_BATCH_SIZE": "1", "GENSERVE_MAX_QUEUE_DELAY_US": "0"}
READY_TIMEOUT_S = 120.0


# --- the server ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`genserve serve` in a subprocess on 127.0.0.1; a context manager that always terminates it.

    Subclasses serve something else by overriding command(), environment() and the class attributes.
    """

    ready_path = "/readyz"  # answers 200 once the server can take requests
    new_session = False  # True: start it in a process group of its own

    def __init__(self, models: str, env: dict[str, str], label: str):
        self.models, self.overrides, self.label = models, env, label
        self.port, self.grpc_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="loadgen-server-", suffix=".log", delete=False)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--models", self.models,
                "--port", str(self.port), "--grpc-port", str(self.grpc_port)]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
        env.update(self.overrides, PYTHONUNBUFFERED="1")
        return env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> "Server":
        import httpx

        knobs = " ".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        print(f"starting server ({self.label}): {knobs}; log {self.log.name}", file=sys.stderr)
        self.process = subprocess.Popen(self.command(), cwd=REPO, env=self.environment(), stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=self.new_session)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.tail()}")
                try:
                    if httpx.get(f"{self.base_url}{self.ready_path}", timeout=2.0).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:.0f} s:\n{self.tail()}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:  # keep the log only when something went wrong
            Path(self.log.name).unlink(missing_ok=True)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-chars:]


# --- the workload --------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    model: str
    x: np.ndarray  # [1, 1, 28, 28] uint8
    label: int | None  # None: marginal log p(x), function log_prob
    index: int

    @property
    def function(self) -> str:
        return "log_prob" if self.label is None else "log_prob_given_label"

    def rest_body(self) -> bytes:
        body = {"inputs": self.x.astype(int).tolist()}
        if self.label is not None:
            body["labels"] = [self.label]
        return json.dumps(body).encode()

    def grpc_request(self):
        from service.grpc.gen import genserve_pb2 as pb

        tensor = pb.Tensor(dtype=str(self.x.dtype), shape=list(self.x.shape), data=self.x.tobytes())
        labels = [] if self.label is None else [self.label]
        return pb.ScoreRequest(model=self.model, inputs=tensor, labels=labels)


def load_workload(model: str, index: int, marginal: bool) -> Workload:
    from training.data.images import mnist5k_binarized

    split = mnist5k_binarized()
    x = np.ascontiguousarray(split.x_test[index : index + 1], dtype=np.uint8)  # [1, 1, 28, 28]
    return Workload(model, x, None if marginal else int(split.y_test[index]), index)


class RestClient:
    def __init__(self, server: Server, work: Workload, concurrency: int, timeout_s: float):
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=timeout_s)
        self.url, self.body = f"/v1/models/{work.model}/score", work.rest_body()
        self.headers = {"content-type": "application/json"}

    async def call(self) -> float:
        response = await self.client.post(self.url, content=self.body, headers=self.headers)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response.json()["results"][0]["log_likelihood_nats"]

    async def close(self) -> None:
        await self.client.aclose()


class GrpcClient:
    def __init__(self, server: Server, work: Workload, concurrency: int, timeout_s: float):
        import grpc

        from service.grpc.gen import genserve_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(server.grpc_target)
        self.stub = pb_grpc.GenserveStub(self.channel)
        self.request, self.timeout_s = work.grpc_request(), timeout_s

    async def call(self) -> float:
        response = await self.stub.Score(self.request, timeout=self.timeout_s)
        return response.results[0].log_likelihood_nats

    async def close(self) -> None:
        await self.channel.close()


CLIENTS = {"rest": RestClient, "grpc": GrpcClient}


# --- measurement ---------------------------------------------------------------------------------------------------


@dataclass
class Window:
    seconds: float
    latencies_s: list[float]
    errors: int

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds


@dataclass
class Level:
    protocol: str
    concurrency: int
    batching: str
    windows: list[Window] = field(default_factory=list)
    stable: bool = False
    first_error: str | None = None
    log_likelihood_nats: float | None = None
    client_cpu: float = float("nan")  # CPU seconds of the load generator's process per wall second, measured part

    def reported(self) -> list[Window]:
        return self.windows[-2:]

    @property
    def throughput(self) -> float:
        w = self.reported()
        return sum(len(x.latencies_s) for x in w) / sum(x.seconds for x in w) if w else 0.0

    def percentile_ms(self, q: float) -> float:
        latencies = [lat for w in self.reported() for lat in w.latencies_s]
        return float(np.percentile(latencies, q)) * 1000.0 if latencies else float("nan")

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.reported())

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "concurrency": self.concurrency, "batching": self.batching,
                "throughput_rps": self.throughput, "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99),
                "stable": self.stable, "errors": self.errors, "client_cpu": self.client_cpu,
                "first_error": self.first_error, "log_likelihood_nats": self.log_likelihood_nats,
                "windows": [{"seconds": w.seconds, "requests": len(w.latencies_s), "errors": w.errors,
                             "throughput_rps": w.throughput, "latencies_s": w.latencies_s} for w in self.windows]}


def stable(a: Window, b: Window, tolerance: float) -> bool:
    high = max(a.throughput, b.throughput)
    return high > 0 and abs(a.throughput - b.throughput) / high <= tolerance


async def measure(make_client: Callable[[], Any], protocol: str, concurrency: int, batching: str,
                  args: argparse.Namespace) -> Level:
    """C closed-loop clients; warm-up, then windows until two consecutive agree (or --max-windows).

    make_client() (called inside the event loop) gives an object with `async call() -> float` (one request, the
    value it returned) and `async close()`; the C clients share it.
    """
    level = Level(protocol, concurrency, batching)
    client = make_client()
    done: list[tuple[float, float]] = []  # (finish time, latency) of successful requests
    failed: list[float] = []  # finish times of failed requests
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                value = await client.call()
            except Exception as e:  # noqa: BLE001 - every failure is counted, the first one reported
                failed.append(time.perf_counter())
                level.first_error = level.first_error or f"{type(e).__name__}: {e}"[:300]
                await asyncio.sleep(0.01)  # a dead server must not turn into a busy loop
                continue
            end = time.perf_counter()
            done.append((end, end - start))
            level.log_likelihood_nats = value

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(args.warmup_s)
        begin = time.perf_counter()
        cpu_begin, wall_begin = time.process_time(), begin
        for _ in range(args.max_windows):
            await asyncio.sleep(args.window_s)
            end = time.perf_counter()
            level.windows.append(Window(end - begin, [lat for t, lat in done if begin <= t < end],
                                        sum(1 for t in failed if begin <= t < end)))
            begin = end
            if len(level.windows) >= 2 and stable(level.windows[-2], level.windows[-1], args.stability):
                level.stable = True
                break
        level.client_cpu = (time.process_time() - cpu_begin) / (time.perf_counter() - wall_begin)
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=args.request_timeout_s + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    return level


def run_level(protocol: str, server: Server, work: Workload, concurrency: int, batching: str,
              args: argparse.Namespace) -> Level:
    def make_client():
        return CLIENTS[protocol](server, work, concurrency, args.request_timeout_s)

    return report_level(asyncio.run(measure(make_client, protocol, concurrency, batching, args)))


def report_level(level: Level) -> Level:
    """One progress line on stderr."""
    w = level.windows[-1] if level.windows else None
    print(f"  {level.protocol} c={level.concurrency} ({level.batching}): {fmt(level.throughput)} req/s, "
          f"p50 {fmt(level.percentile_ms(50))} ms, windows {len(level.windows)}, stable {level.stable}, "
          f"client CPU {level.client_cpu:.2f}"
          + (f", errors {level.errors}: {level.first_error}" if w and level.errors else ""), file=sys.stderr)
    return level


def in_process_p50(args: argparse.Namespace, work: Workload) -> dict:
    """p50 of Engine.score on the same input, sequential calls on one event loop, the server's settings."""
    from service.engine.engine import Engine
    from service.settings import Settings
    from service.store import ModelStore

    store = ModelStore(Path(args.models))
    store.entries = {work.model: store.entries[work.model]}
    # the server's knobs exactly: explicit arguments win over any GENSERVE_* in this process's environment
    knobs = {"max_batch_size": args.max_batch_size, "max_queue_delay_us": args.queue_delay_us,
             "max_queue_size": None, "timeout_ms": None}
    settings = Settings(runtime=args.runtime, intra_op_threads=args.threads, models=Path(args.models), **knobs)
    engine = Engine(store, settings)
    x = work.x.astype(np.int64)
    labels = None if work.label is None else [work.label]

    async def loop() -> tuple[list[float], float]:
        latencies, value = [], float("nan")
        for i in range(args.overhead_warmup + args.overhead_calls):
            start = time.perf_counter()
            value = (await engine.score(work.model, x, labels))[0]["log_likelihood_nats"]
            if i >= args.overhead_warmup:
                latencies.append(time.perf_counter() - start)
            if i >= args.overhead_warmup + 10 and sum(latencies) > args.overhead_budget_s:
                break
        return latencies, value

    latencies, value = asyncio.run(loop())
    return {"p50_ms": float(np.median(latencies)) * 1000.0, "p99_ms": float(np.percentile(latencies, 99)) * 1000.0,
            "calls": len(latencies), "log_likelihood_nats": value, "latencies_s": latencies}


# --- main ----------------------------------------------------------------------------------------------------------


def server_env(args: argparse.Namespace, batching_off: bool = False) -> dict[str, str]:
    env = {"GENSERVE_RUNTIME": args.runtime, "GENSERVE_INTRA_OP_THREADS": str(args.threads)}
    if args.queue_delay_us is not None:
        env["GENSERVE_MAX_QUEUE_DELAY_US"] = str(args.queue_delay_us)
    if args.max_batch_size is not None:
        env["GENSERVE_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    if batching_off:
        env.update(BATCHING_OFF)
    return env


def level_row(level: Level) -> list[str]:
    return [level.protocol, str(level.concurrency), fmt(level.throughput), fmt(level.percentile_ms(50)),
            fmt(level.percentile_ms(99)), "yes" if level.stable else "no", str(len(level.windows)),
            str(level.errors), f"{level.client_cpu:.2f}"]


LEVEL_HEADERS = ["protocol", "concurrency", "throughput (req/s)", "p50 (ms)", "p99 (ms)", "stable",
                 "windows", "errors", "client CPU"]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="model store the server serves (default: %(default)s)")
    parser.add_argument("--name", default="pixelcnn", help="model to score (default: %(default)s)")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=PROTOCOLS)
    parser.add_argument("--concurrency", nargs="*", type=int, default=[1, 8, 32, 64],
                        help="concurrency levels of the sweep (default: %(default)s); none: skip the sweep")
    parser.add_argument("--marginal", action="store_true",
                        help="score log p(x) without labels (function log_prob, 10 passes) instead of log p(x | y)")
    parser.add_argument("--image-index", type=int, default=0, help="test image to score (default: %(default)s)")
    parser.add_argument("--window-s", type=float, default=3.0, help="measurement window (default: %(default)s)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="untimed warm-up per level (default: %(default)s)")
    parser.add_argument("--max-windows", type=int, default=5, help="windows per level at most (default: %(default)s)")
    parser.add_argument("--stability", type=float, default=0.10,
                        help="two consecutive windows are stable when their throughputs differ by at most this "
                             "fraction of the larger (default: %(default)s)")
    parser.add_argument("--request-timeout-s", type=float, default=30.0, help="client timeout per request")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torchscript"], help="server runtime")
    parser.add_argument("--threads", type=int, default=0,
                        help="GENSERVE_INTRA_OP_THREADS of the server and the in-process engine (0: runtime default)")
    parser.add_argument("--queue-delay-us", type=int, default=None, help="override max_queue_delay_us (batching on)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="override max_batch_size (batching on)")
    parser.add_argument("--compare-batching", action="store_true",
                        help="at --batching-concurrency, the manifest's batching vs none (max batch 1, no delay)")
    parser.add_argument("--batching-concurrency", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--overhead", action="store_true",
                        help="p50 of an in-process Engine.score vs REST and gRPC p50 at concurrency 1")
    parser.add_argument("--overhead-calls", type=int, default=300, help="in-process timed calls at most")
    parser.add_argument("--overhead-warmup", type=int, default=20, help="in-process untimed calls")
    parser.add_argument("--overhead-budget-s", type=float, default=5.0, help="in-process timed seconds at most")
    parser.add_argument("--json", type=Path, help="also write the results (and every latency) as JSON")
    args = parser.parse_args(argv)
    if min(args.concurrency or [1]) < 1 or args.max_windows < 2 or args.window_s <= 0:
        parser.error("concurrency must be >= 1, --max-windows >= 2 and --window-s > 0")

    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, so the server is stopped too
    work = load_workload(args.name, args.image_index, args.marginal)
    print(f"workload: {args.name}.{work.function} on mnist5k-binarized test image {work.index}"
          + (f" (label {work.label})" if work.label is not None else "") + f"; runtime {args.runtime}, "
          f"threads {args.threads or 'default'}; windows of {args.window_s:g} s after {args.warmup_s:g} s warm-up, "
          f"stable within {args.stability:.0%}, at most {args.max_windows}; client and server on {os.cpu_count()} "
          "CPUs of one machine\n")
    results: dict = {"workload": {"model": args.name, "function": work.function, "image_index": work.index,
                                  "label": work.label}, "args": vars(args), "sweep": [], "batching": [],
                     "overhead": None}

    sweep: list[Level] = []
    needs_c1 = args.overhead and 1 not in args.concurrency
    with Server(args.models, server_env(args), "batching on") as server:
        for protocol in args.protocols:
            for c in args.concurrency:
                sweep.append(run_level(protocol, server, work, c, "on", args))
            if needs_c1:
                sweep.append(run_level(protocol, server, work, 1, "on", args))
        batching_on: list[Level] = []
        if args.compare_batching:
            for protocol in args.protocols:
                found = [lv for lv in sweep if lv.protocol == protocol and lv.concurrency == args.batching_concurrency]
                batching_on.append(found[0] if found else
                                   run_level(protocol, server, work, args.batching_concurrency, "on", args))

    shown = [lv for lv in sweep if lv.concurrency in args.concurrency]
    if shown:
        print(f"## Concurrency sweep: {args.name}.{work.function}, manifest batching\n")
        print(markdown_table(LEVEL_HEADERS, [level_row(lv) for lv in shown]))
        print("\nthroughput and latency over the last two windows; stable: they agreed within "
              f"{args.stability:.0%}; client CPU: cores used by the load generator itself while measuring\n")
    results["sweep"] = [lv.to_dict() for lv in sweep]

    batching_off: list[Level] = []
    if args.compare_batching:
        with Server(args.models, server_env(args, batching_off=True), "batching off") as server:
            for protocol in args.protocols:
                batching_off.append(run_level(protocol, server, work, args.batching_concurrency, "off", args))
        rows = []
        for on, off in zip(batching_on, batching_off, strict=True):
            ratio = on.throughput / off.throughput if off.throughput else float("inf")
            rows.append([on.protocol, str(on.concurrency), fmt(on.throughput), fmt(on.percentile_ms(99)),
                         fmt(off.throughput), fmt(off.percentile_ms(99)), f"{fmt(ratio)}x",
                         "yes" if on.stable and off.stable else "no", f"{on.client_cpu:.2f} / {off.client_cpu:.2f}"])
            results["batching"].append({"protocol": on.protocol, "on": on.to_dict(), "off": off.to_dict(),
                                        "ratio": ratio})
        print(f"## Batching on vs off: concurrency {args.batching_concurrency}\n")
        print(markdown_table(["protocol", "concurrency", "on (req/s)", "on p99 (ms)", "off (req/s)", "off p99 (ms)",
                              "on / off", "both stable", "client CPU on / off"], rows))
        print("\non: the manifest's knobs; off: GENSERVE_MAX_BATCH_SIZE=1, GENSERVE_MAX_QUEUE_DELAY_US=0\n")

    if args.overhead:
        local = in_process_p50(args, work)
        results["overhead"] = {"in_process": local, "protocols": {}}
        rows = [["in-process Engine.score", fmt(local["p50_ms"]), "", str(local["calls"])]]
        for protocol in args.protocols:
            lv = next(lv for lv in sweep if lv.protocol == protocol and lv.concurrency == 1)
            added = lv.percentile_ms(50) - local["p50_ms"]
            rows.append([f"{protocol}, concurrency 1", fmt(lv.percentile_ms(50)), f"{added:+.3f}",
                         str(sum(len(w.latencies_s) for w in lv.reported()))])
            results["overhead"]["protocols"][protocol] = {"p50_ms": lv.percentile_ms(50), "added_ms": added}
        print("## Service overhead over an in-process call (p50)\n")
        print(markdown_table(["path", "p50 (ms)", "added (ms)", "calls"], rows))
        print("\nin-process: Engine.score on the same input, sequential, one event loop, same runtime, threads and "
              "batching knobs (a lone request waits up to max_queue_delay_us on both paths)\n")

    levels = sweep + (batching_on + batching_off if args.compare_batching else [])
    values = {lv.log_likelihood_nats for lv in levels if lv.log_likelihood_nats is not None}
    if results["overhead"]:
        values.add(results["overhead"]["in_process"]["log_likelihood_nats"])
    print(f"log-likelihood returned (every path, last response): {', '.join(f'{v:.4f}' for v in sorted(values))} "
          "nats")
    write_json(args.json, results)
    failures = [lv for lv in levels if lv.errors or not lv.windows or lv.throughput == 0]
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
