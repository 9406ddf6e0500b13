"""genserve's serving path against itself: overhead over an in-process Engine call, /v1 routes vs V2, batching on/off.

Optional, outside `make test` (issue 16, goals 2 and 6). Three parts (--parts, default all), each with its table:

- overhead (goal 2): the p50 at 1 client of `vae.decode` and `pixelcnn.log_prob_given_label` over V2 REST JSON, V2
  REST binary (wrk), V2 gRPC (h2load; or grpc.aio clients in this process, --grpc-client aio) and genserve's own route
  (/v1/models/vae/decode, /score; wrk), against the p50 of the same call made in-process: sequential `Engine.infer`
  calls on one event loop in a child process (from the same source tree), with the model functions run in that process
  (InProcess runner: the goal's baseline) and through an engine worker process over its Unix socket (WorkerPool: what
  the server does, so the difference to it is HTTP/gRPC alone). Every round measures each path once, in-process
  included, the order reversed every other round; a path's `added` is the median over rounds of its p50 minus the same
  round's in-process p50, so slow phases of a shared machine cancel out. A lone request waits up to max_queue_delay_us
  for company on every path, so that wait cancels out too. Goal: REST at most 1 ms added, gRPC at most 0.5 ms.
- routes (goal 2): genserve's own REST route against the V2 REST JSON route for the same work, at --route-concurrency
  (1 16), alternating: throughput and p50 ratios (goal: within 10%).
- batching (goal 6): at --batching-concurrency 64 on `vae.decode`, a server with batching on (--max-batch-size 64,
  --queue-delay-us 500) against one with it off (GENSERVE_MAX_BATCH_SIZE=1, GENSERVE_MAX_QUEUE_DELAY_US=0), both up,
  alternating, over every protocol: the throughput ratio (goal: at least 3x).

Servers: `genserve serve` on a scratch store of vae and pixelcnn (symlinks, the same files), onnxruntime with
--threads 1, everything on 127.0.0.1, always stopped; --genserve-source runs another source tree (e.g.
`git archive <commit> service genserve proto | tar -x -C /tmp/base`) for servers and in-process engine alike.
Each point: --warmup-s untimed, then --duration-s measured (v2load.py).

    .venv/bin/python benchmarks/serving_overhead.py [--parts overhead routes batching] [--duration-s 5]
        [--rounds 1] [--genserve-source DIR] [--json out.json]
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import fmt, markdown_table, write_json
from loadgen import BATCHING_OFF, REPO, _interrupt
from v2load import (
    FUNCTIONS,
    GRPC_CLIENT_TEXT,
    GRPC_CLIENTS,
    Genserve,
    Point,
    batching_env,
    grpc_check,
    grpc_load_point,
    point_line,
    require_h2load,
    require_wrk,
    rest_check,
    rest_point,
    rest_request,
    scratch_store,
    v1_request,
    v2_work,
)

PARTS = ["overhead", "routes", "batching"]
ROUTES = ["rest-json", "rest-binary", "grpc", "v1"]
TOLERANCE = 1e-4


# --- in-process engine (a child process: python serving_overhead.py --in-process ...) -------------------------------

RUNNERS = ["in-process", "worker"]


def in_process_child(args: argparse.Namespace) -> None:
    """Both engines up on one event loop; then, per stdin line {"function", "runner", "seconds"}, that many seconds
    of sequential Engine.infer calls, answered as one JSON line {"latencies_s", "values"} on stdout."""
    from service.engine.engine import Engine
    from service.engine.workers import WorkerPool
    from service.settings import Settings
    from service.store import ModelStore

    settings = Settings(runtime="onnx", intra_op_threads=args.threads, models=Path(args.store),
                        max_batch_size=args.max_batch_size, max_queue_delay_us=args.queue_delay_us)
    engines = {}
    for runner_name in RUNNERS:
        store = ModelStore(Path(args.store))
        runner = None
        if runner_name == "worker":
            directories = {name: entry.directory for name, entry in store.entries.items()}
            runner = WorkerPool(directories, "onnx", args.threads)
        engines[runner_name] = Engine(store, settings, runner=runner)
    works = {function: v2_work(function) for function in args.functions}

    async def start() -> None:
        deadline = time.monotonic() + 120
        for engine in engines.values():
            await engine.start()
            while not engine.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError("the engine worker did not come up in 120 s")
                await asyncio.sleep(0.05)

    async def calls(function: str, runner: str, seconds: float) -> dict:
        engine, work = engines[runner], works[function]
        model, name = function.split(".", 1)
        latencies, values = [], None
        for _ in range(20):  # warm-up
            await engine.infer(model, name, dict(work.inputs))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            begin = time.perf_counter()
            outputs = await engine.infer(model, name, dict(work.inputs))
            latencies.append(time.perf_counter() - begin)
            values = np.asarray(outputs[work.output], dtype=np.float64).ravel()[:8].tolist()
        return {"latencies_s": latencies, "values": values}

    async def stop() -> None:
        for engine in engines.values():
            await engine.stop()

    with asyncio.Runner() as runner:
        runner.run(start())
        try:
            print(json.dumps({"ready": True}), flush=True)
            for line in sys.stdin:
                ask = json.loads(line)
                print(json.dumps(runner.run(calls(ask["function"], ask["runner"], ask["seconds"]))), flush=True)
        finally:
            runner.run(stop())


class InProcessEngines:
    """The child process above, from the benchmarked source tree; measure() asks it for one point."""

    def __init__(self, args: argparse.Namespace, store: Path):
        self.args, self.store = args, store
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "InProcessEngines":
        a = self.args
        source = Path(a.genserve_source or REPO).resolve()
        command = [sys.executable, str(Path(__file__).resolve()), "--in-process", "--store", str(self.store),
                   "--threads", str(a.threads), "--max-batch-size", str(a.max_batch_size),
                   "--queue-delay-us", str(a.queue_delay_us), "--functions", *a.functions]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
        env["PYTHONPATH"] = os.pathsep.join([str(source), str(Path(__file__).resolve().parent)])
        print(f"starting the in-process engines (source {source})", file=sys.stderr)
        self.process = subprocess.Popen(command, cwd=source, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        try:
            self._answer()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _answer(self) -> dict:
        line = self.process.stdout.readline()  # the child is bounded: every call has the engine's timeout
        if not line:
            raise RuntimeError(f"the in-process engine child exited with {self.process.wait(timeout=30)}")
        return json.loads(line)

    def measure(self, function: str, runner: str, seconds: float) -> Point:
        self.process.stdin.write(json.dumps({"function": function, "runner": runner, "seconds": seconds}) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        lat = answer["latencies_s"]
        point = Point("engine", runner, function, 1, len(lat), 0, float(sum(lat)),
                      float(np.median(lat)) * 1000.0, float(np.percentile(lat, 99)) * 1000.0, float("nan"))
        print(point_line(point), file=sys.stderr)
        return point

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.stdin.close()  # the child's loop ends and it stops its worker
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# --- parts ---------------------------------------------------------------------------------------------------------


def measure(server: Genserve, route: str, function: str, c: int, args: argparse.Namespace) -> Point:
    work = v2_work(function)
    pid = server.process.pid if server.process else None
    if route == "grpc":
        point = grpc_load_point(args.grpc_client, server.label, function, server.grpc_target, work, c,
                                args.duration_s, args.warmup_s, pid)
    else:
        request = v1_request(work) if route == "v1" else rest_request(work, route == "rest-binary")
        point = rest_point(server.label, route, function, server.base_url, request, c, args.duration_s,
                           args.warmup_s, pid)
    print(point_line(point), file=sys.stderr)
    return point


def check(server: Genserve, functions: list[str]) -> None:
    """Every route of the server answers the same values as the in-process engine's first ones."""
    for function in functions:
        work = v2_work(function)
        answers = {route: rest_check(server.base_url, v1_request(work) if route == "v1" else
                                     rest_request(work, route == "rest-binary"), work.output)
                   for route in ROUTES if route != "grpc"}
        answers["grpc"] = grpc_check(server.grpc_target, work)
        first = next(iter(answers.values()))
        worst = max(float(np.max(np.abs(v - first))) for v in answers.values())
        if worst > TOLERANCE:
            raise SystemExit(f"error: {server.label}'s routes disagree on {function} by {worst:g}")
        print(f"check {server.label} {function}: {len(answers)} routes agree within {worst:.2g}", file=sys.stderr)


def median(points: list[Point], attr: str) -> float:
    return statistics.median(getattr(p, attr) for p in points)


def overhead_table(points: list[Point], functions: list[str], rounds: int) -> tuple[list[list[str]], dict]:
    """Median over rounds of each path's p50, and of its p50 minus the same round's in-process p50."""
    rows, summary = [], {}
    for function in functions:
        mine = [p for p in points if p.model == function and p.concurrency == 1]
        base = {r: [p for p in mine if p.server == "engine" and p.route == r] for r in RUNNERS}
        for route in RUNNERS + ROUTES:
            got = [p for p in mine if p.route == route and (p.server == "engine") == (route in RUNNERS)]
            if len(got) != rounds:
                continue
            added = [p.p50_ms - b.p50_ms for p, b in zip(got, base["in-process"], strict=True)]
            over_worker = [p.p50_ms - b.p50_ms for p, b in zip(got, base["worker"], strict=True)]
            p50, add, over = median(got, "p50_ms"), statistics.median(added), statistics.median(over_worker)
            if route in RUNNERS:
                label = "Engine.infer, in-process runtime" if route == "in-process" else \
                    "Engine.infer, through the worker process"
                goal = ""
            else:
                label, limit = route, 0.5 if route == "grpc" else 1.0
                goal = f"{'yes' if add <= limit else 'no'} (<= {limit} ms)"
            rows.append([function, label, fmt(p50), f"{add:+.2f}", f"{over:+.2f}", goal,
                         str(sum(p.requests for p in got))])
            summary[f"{function} {route}"] = {"p50_ms": p50, "added_ms": add, "added_over_worker_ms": over,
                                              "rounds_p50_ms": [p.p50_ms for p in got]}
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="model store (default: %(default)s)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--functions", nargs="+", default=FUNCTIONS, help="V2 models (default: %(default)s)")
    parser.add_argument("--route-concurrency", nargs="+", type=int, default=[1, 16], help="(default: %(default)s)")
    parser.add_argument("--batching-concurrency", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="batching on (default: %(default)s)")
    parser.add_argument("--queue-delay-us", type=int, default=500, help="batching on (default: %(default)s)")
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="untimed seconds before each point")
    parser.add_argument("--rounds", type=int, default=1, help="measure every point this many times")
    parser.add_argument("--genserve-source", type=Path, default=None,
                        help="run genserve from this source tree (e.g. `git archive` of a baseline commit)")
    parser.add_argument("--grpc-client", choices=GRPC_CLIENTS, default="h2load",
                        help="gRPC load generator (default: %(default)s: one connection per client; h2load-shared: one "
                             "connection for all; aio: grpc.aio clients on one channel in this process)")
    parser.add_argument("--json", type=Path, help="also write every point as JSON")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        in_process_child(args)
        return 0
    if args.duration_s < 1 or args.rounds < 1:
        parser.error("--duration-s must be >= 1 and --rounds >= 1")
    require_wrk()
    if args.grpc_client.startswith("h2load"):
        require_h2load()
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, so the servers are stopped too
    on_env = batching_env(args.threads, args.max_batch_size, args.queue_delay_us)
    off_env = {**batching_env(args.threads, None, None), **BATCHING_OFF}
    results: dict = {"args": vars(args), "points": []}
    points: list[Point] = []

    stored = sorted({f.split(".", 1)[0] for f in args.functions})
    with scratch_store(args.models, stored) as store, \
            Genserve(store, on_env, "on", args.functions, args.genserve_source) as on:
        check(on, args.functions)
        if "overhead" in args.parts:
            with InProcessEngines(args, store) as engines:
                for r in range(args.rounds):
                    for function in args.functions:
                        paths = RUNNERS + ROUTES
                        for path in paths if r % 2 == 0 else paths[::-1]:  # alternate the order round by round
                            if path in RUNNERS:
                                points.append(engines.measure(function, path, args.duration_s))
                            else:
                                points.append(measure(on, path, function, 1, args))
        if "routes" in args.parts:
            turn = 0
            for function in args.functions:
                for c in args.route_concurrency:
                    if c == 1 and "overhead" in args.parts:
                        continue  # the overhead part measured both routes at 1 client, alternating
                    for _ in range(args.rounds):
                        order = ["rest-json", "v1"] if turn % 2 == 0 else ["v1", "rest-json"]
                        turn += 1
                        for route in order:
                            points.append(measure(on, route, function, c, args))
        if "batching" in args.parts:
            with Genserve(store, off_env, "off", ["vae.decode"], args.genserve_source) as off:
                turn = 0
                for route in ["rest-json", "rest-binary", "grpc"]:
                    for _ in range(args.rounds):
                        order = [on, off] if turn % 2 == 0 else [off, on]
                        turn += 1
                        for server in order:
                            points.append(measure(server, route, "vae.decode", args.batching_concurrency, args))
    results["points"] = [p.to_dict() for p in points]
    failed = any(p.errors or not p.requests for p in points)
    source = f"source {args.genserve_source}" if args.genserve_source else "source: this repository"
    knobs = (f"max batch {args.max_batch_size}, {args.queue_delay_us} us delay, {args.threads} onnxruntime thread; "
             f"{args.duration_s:g} s per point after {args.warmup_s:g} s warm-up; {source}")

    if "overhead" in args.parts:
        rows, results["overhead"] = overhead_table([p for p in points if p.server in ("engine", "on")],
                                                   args.functions, args.rounds)
        print(f"## Overhead at 1 client over an in-process Engine.infer (p50): {knobs}\n")
        print(markdown_table(["function", "path", "p50 (ms)", "added (ms)", "added over the worker hop (ms)",
                              "goal met", "calls"], rows))
        print("\np50: median over the rounds of each point's p50; added: median over the rounds of the path's p50 "
              "minus the same round's in-process p50 (the model run in the calling process, on a thread); added "
              "over the worker hop: the same against Engine.infer through the engine worker process, i.e. "
              "what HTTP or gRPC alone adds. REST and gRPC p50 include the client's own time (wrk; gRPC: "
              f"{GRPC_CLIENT_TEXT[args.grpc_client]})\n")

    if "routes" in args.parts:
        rows = []
        results["routes"] = []
        for function in args.functions:
            for c in args.route_concurrency:
                v2 = [p for p in points if p.model == function and p.concurrency == c and p.route == "rest-json"
                      and p.server == "on"]
                v1 = [p for p in points if p.model == function and p.concurrency == c and p.route == "v1"
                      and p.server == "on"]
                if not v2 or not v1:
                    continue
                t2, t1 = median(v2, "throughput"), median(v1, "throughput")
                l2, l1 = median(v2, "p50_ms"), median(v1, "p50_ms")
                ok = t1 >= 0.9 * t2 and l1 <= 1.1 * l2
                route = v1_request(v2_work(function)).path
                rows.append([function, route, str(c), fmt(t2), fmt(t1), f"{t1 / t2:.2f}x", f"{fmt(l2)} / {fmt(l1)}",
                             f"{l1 / l2:.2f}x", "yes" if ok else "no",
                             f"{median(v2, 'server_cpu_ms_per_request'):.2f} / "
                             f"{median(v1, 'server_cpu_ms_per_request'):.2f}"])
                results["routes"].append(dict(zip(["function", "route", "clients", "v2_rps", "v1_rps"],
                                                  [function, route, c, t2, t1], strict=True)))
        print(f"## genserve's own REST routes vs the V2 REST JSON route, same work: {knobs}\n")
        print(markdown_table(["function", "genserve route", "clients", "V2 req/s", "route req/s", "route / V2",
                              "p50 V2 / route (ms)", "p50 route / V2", "within 10%", "server CPU ms/req V2 / route"],
                             rows))
        print()

    if "batching" in args.parts:
        rows = []
        results["batching"] = []
        for route in ["rest-json", "rest-binary", "grpc"]:
            on_p = [p for p in points if p.route == route and p.server == "on"
                    and p.concurrency == args.batching_concurrency and p.model == "vae.decode"]
            off_p = [p for p in points if p.route == route and p.server == "off"]
            if not on_p or not off_p:
                continue
            t_on, t_off = median(on_p, "throughput"), median(off_p, "throughput")
            rows.append([route, str(args.batching_concurrency), fmt(t_on), fmt(median(on_p, "p99_ms")), fmt(t_off),
                         fmt(median(off_p, "p99_ms")), f"{t_on / t_off:.2f}x", "yes" if t_on >= 3 * t_off else "no",
                         f"{median(on_p, 'server_cpu_ms_per_request'):.2f} / "
                         f"{median(off_p, 'server_cpu_ms_per_request'):.2f}"])
            results["batching"].append({"route": route, "on_rps": t_on, "off_rps": t_off, "ratio": t_on / t_off})
        print(f"## Batching on vs off, vae.decode at {args.batching_concurrency} clients: {knobs}\n")
        print(markdown_table(["protocol", "clients", "on req/s", "on p99 (ms)", "off req/s", "off p99 (ms)",
                              "on / off", "goal met (3x)", "server CPU ms/req on / off"], rows))
        print(f"\non: max batch {args.max_batch_size}, {args.queue_delay_us} us delay; off: "
              "GENSERVE_MAX_BATCH_SIZE=1, GENSERVE_MAX_QUEUE_DELAY_US=0; the two servers alternate\n")
    write_json(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
