"""genserve side by side with NVIDIA Triton (PyTriton, CPU): the same ONNX files, knobs, machine and load generators.

Optional, outside `make test` (issue 16, goal 1). It starts both servers on 127.0.0.1 (free ports) and always stops
them: `genserve serve` from .venv (on a scratch store holding only the served models: symlinks to the same files;
or from another source tree with --genserve-source) and benchmarks/triton_server.py from .venv-triton (Python
3.12, LD_LIBRARY_PATH with its lib directory). Both serve the V2 models of --functions (default `vae.decode`, cheap,
and `pixelcnn.log_prob_given_label`, compute-bound) with the same dynamic batching (--max-batch-size 64,
--queue-delay-us 500; genserve through GENSERVE_MAX_BATCH_SIZE / GENSERVE_MAX_QUEUE_DELAY_US), onnxruntime with
--threads 1 intra-op thread, one model instance each.

It first checks that both servers answer the same output (within 1e-4) over every protocol, then measures each
(function, protocol, clients) point on both servers, one after the other, the order alternating from point to
point (A B, B A, ...), --rounds times (the table shows each server's median over the rounds):

- rest-json: V2 REST with JSON tensors, driven by `wrk` (benchmarks/wrk_post.lua; one wrk thread);
- rest-binary: V2 REST with the binary tensor data extension, inputs and outputs (what tritonclient.http sends), wrk;
- grpc: V2 gRPC ModelInfer with raw_input_contents, driven by `h2load` (nghttp2's C load generator: C connections,
  one call in flight on each, as wrk's C connections; v2load.py says how it tells a gRPC error from an answer).
  --grpc-client h2load-shared: the same calls on one connection; aio: closed-loop grpc.aio clients on one channel in
  this process, as before 2026-12-06 (they take a fifth to a half of a core from the servers on 2 cores).

Each point: --warmup-s untimed, then --duration-s measured. Columns: throughput, p50, p99, the ratios, `goal met`
(genserve's throughput at least Triton's and its p99 no worse), and the server CPU per request (the whole process
tree of each server, from /proc), which is less disturbed by other load on a shared machine than throughput.

The one difference in the requests: Triton takes no per-item scalar in a batched model, so pixelcnn's `label` is
[1, 1] and its `log_prob` [1, 1], where genserve's are [1] (the manifest's shape).

Make the Triton venv once with any Python 3.12 (nvidia-pytriton ships a Triton server that runs on CPU; it needs
3.12: a distribution's python3.12 package, `pyenv install 3.12` or `uv python install 3.12`), and get wrk:

    python3.12 -m venv .venv-triton
    .venv-triton/bin/pip install nvidia-pytriton onnxruntime numpy
    apt-get install -y wrk nghttp2-client   # wrk for REST, h2load for gRPC

then, from the repository root:

    .venv/bin/python benchmarks/triton_compare.py [--functions vae.decode pixelcnn.log_prob_given_label]
        [--protocols rest-json rest-binary grpc] [--concurrency 1 16 64] [--duration-s 5] [--rounds 1] [--json out]
        [--grpc-client h2load|h2load-shared|aio]
"""

import argparse
import os
import signal
import statistics
import sys
from pathlib import Path

import numpy as np
from common import fmt, markdown_table, write_json
from loadgen import REPO, Server, _interrupt
from v2load import (
    FUNCTIONS,
    GRPC_CLIENT_TEXT,
    GRPC_CLIENTS,
    PROTOCOLS,
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
    v2_work,
    wait_ready,
)

TRITON_VENV = REPO / ".venv-triton"
TRITON_PYTHON = TRITON_VENV / "bin" / "python"
TOLERANCE = 1e-4
VENV_HELP = (f"the Triton venv is missing ({TRITON_PYTHON}); make it with any Python 3.12\n"
             "    python3.12 -m venv .venv-triton\n"
             "    .venv-triton/bin/pip install nvidia-pytriton onnxruntime numpy")


def python_lib(venv: Path) -> str:
    """The lib/ folder of the Python the venv was made from, where a pyenv or uv build keeps the libpython that
    tritonserver's Python backend loads (a distribution's Python has it on the default path already)."""
    lines = (venv / "pyvenv.cfg").read_text().splitlines()
    home = next(value for key, _, value in (line.partition("=") for line in lines) if key.strip() == "home")
    return str(Path(home.strip()).parent / "lib")


class Triton(Server):
    """benchmarks/triton_server.py under .venv-triton, in its own process group (tritonserver is its child)."""

    new_session = True

    def __init__(self, models: str, functions: list[str], threads: int, max_batch_size: int, queue_delay_us: int):
        library = ":".join(filter(None, [python_lib(TRITON_VENV), os.environ.get("LD_LIBRARY_PATH")]))
        super().__init__(models, {"LD_LIBRARY_PATH": library}, "triton")
        self.functions, self.threads = functions, threads
        self.max_batch_size, self.queue_delay_us = max_batch_size, queue_delay_us

    def command(self) -> list[str]:
        return [str(TRITON_PYTHON), "benchmarks/triton_server.py", "--models", self.models, "--serve",
                *self.functions, "--threads", str(self.threads), "--max-batch-size", str(self.max_batch_size),
                "--queue-delay-us", str(self.queue_delay_us), "--http-port", str(self.port),
                "--grpc-port", str(self.grpc_port)]

    def __enter__(self) -> "Triton":
        import subprocess

        print(f"starting triton: {' '.join(self.command()[1:])}; log {self.log.name}", file=sys.stderr)
        self.process = subprocess.Popen(self.command(), cwd=REPO, env=self.environment(), stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(self, [f"/v2/models/{f}/ready" for f in self.functions])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()  # SIGTERM, bounded waits, SIGKILL
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group we started: a tritonserver left behind
            except ProcessLookupError:
                pass


def check(servers: dict[str, Server], functions: list[str], protocols: list[str]) -> dict:
    """Every server answers every function over every protocol, the same values within TOLERANCE."""
    answers: dict = {}
    for function in functions:
        for label, server in servers.items():
            work = v2_work(function, scalar_as_column=label == "triton")
            for protocol in protocols:
                if protocol == "grpc":
                    values = grpc_check(server.grpc_target, work)
                else:
                    values = rest_check(server.base_url, rest_request(work, protocol == "rest-binary"), work.output)
                answers[(function, label, protocol)] = values
        got = [v for (f, _, _), v in answers.items() if f == function]
        worst = max(float(np.max(np.abs(v - got[0]))) for v in got)
        print(f"check {function}: {len(got)} answers agree within {worst:.2g} (first values {got[0][:3]})",
              file=sys.stderr)
        if worst > TOLERANCE:
            raise SystemExit(f"error: the servers disagree on {function} by {worst:g} > {TOLERANCE:g}")
    return {f"{f} {label} {p}": v[:8].tolist() for (f, label, p), v in answers.items()}


def measure_point(label: str, server: Server, function: str, protocol: str, c: int, args) -> Point:
    work = v2_work(function, scalar_as_column=label == "triton")
    pid = server.process.pid if server.process else None
    if protocol == "grpc":
        point = grpc_load_point(args.grpc_client, label, function, server.grpc_target, work, c, args.duration_s,
                                args.warmup_s, pid)
    else:
        point = rest_point(label, protocol, function, server.base_url, rest_request(work, protocol == "rest-binary"),
                           c, args.duration_s, args.warmup_s, pid)
    print(point_line(point), file=sys.stderr)
    return point


def median_point(points: list[Point]) -> dict:
    return {"throughput": statistics.median(p.throughput for p in points),
            "p50": statistics.median(p.p50_ms for p in points), "p99": statistics.median(p.p99_ms for p in points),
            "cpu": statistics.median(p.server_cpu_ms_per_request for p in points),
            "errors": sum(p.errors for p in points)}


HEADERS = ["function", "protocol", "clients", "genserve req/s", "Triton req/s", "genserve/Triton",
           "p50 g / T (ms)", "p99 g / T (ms)", "goal met", "server CPU ms/req g / T", "errors g / T"]


def compare_row(function: str, protocol: str, c: int, g: dict, t: dict) -> list[str]:
    ratio = g["throughput"] / t["throughput"] if t["throughput"] else float("inf")
    goal = "yes" if ratio >= 1 and g["p99"] <= t["p99"] else "no"
    return [function, protocol, str(c), fmt(g["throughput"]), fmt(t["throughput"]), f"{ratio:.2f}x",
            f"{fmt(g['p50'])} / {fmt(t['p50'])}", f"{fmt(g['p99'])} / {fmt(t['p99'])}", goal,
            f"{g['cpu']:.2f} / {t['cpu']:.2f}", f"{g['errors']} / {t['errors']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="model store both servers serve (default: %(default)s)")
    parser.add_argument("--functions", nargs="+", default=FUNCTIONS, help="V2 models (default: %(default)s)")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=PROTOCOLS)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64], help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of both servers "
                        "(0: onnxruntime's default) (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="both servers (default: %(default)s)")
    parser.add_argument("--queue-delay-us", type=int, default=500, help="both servers (default: %(default)s)")
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="untimed seconds before each point")
    parser.add_argument("--rounds", type=int, default=1, help="measure every point this many times per server")
    parser.add_argument("--genserve-source", type=Path, default=None,
                        help="run genserve from this source tree (e.g. `git archive` of a baseline commit)")
    parser.add_argument("--grpc-client", choices=GRPC_CLIENTS, default="h2load",
                        help="gRPC load generator (default: %(default)s: one connection per client; h2load-shared: one "
                             "connection for all; aio: grpc.aio clients on one channel in this process)")
    parser.add_argument("--json", type=Path, help="also write every point as JSON")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.duration_s < 1 or args.rounds < 1:
        parser.error("concurrency must be >= 1, --duration-s >= 1 and --rounds >= 1")
    if not TRITON_PYTHON.exists():
        print(f"error: {VENV_HELP}", file=sys.stderr)
        return 2
    if any(p.startswith("rest") for p in args.protocols):
        require_wrk()
    if "grpc" in args.protocols and args.grpc_client.startswith("h2load"):
        require_h2load()
    points_total = len(args.functions) * len(args.protocols) * len(args.concurrency) * 2 * args.rounds
    print(f"workload: V2 {', '.join(args.functions)}; max_batch_size {args.max_batch_size}, max_queue_delay_us "
          f"{args.queue_delay_us}, onnxruntime {args.threads or 'default'} intra-op threads, in both servers; "
          f"{points_total} points of {args.warmup_s:g} s warm-up + {args.duration_s:g} s (about "
          f"{points_total * (args.warmup_s + args.duration_s + 0.5) / 60:.1f} min); clients and servers on "
          f"{os.cpu_count()} CPUs of one machine\n", file=sys.stderr)

    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, so both servers are stopped too
    stored = sorted({f.split(".", 1)[0] for f in args.functions})
    env = batching_env(args.threads, args.max_batch_size, args.queue_delay_us)
    results: dict = {"args": vars(args), "points": []}
    points: list[Point] = []
    with scratch_store(args.models, stored) as store, \
            Genserve(store, env, "genserve", args.functions, args.genserve_source) as genserve, \
            Triton(args.models, args.functions, args.threads, args.max_batch_size, args.queue_delay_us) as triton:
        servers = {"genserve": genserve, "triton": triton}
        results["check"] = check(servers, args.functions, args.protocols)
        turn = 0
        for function in args.functions:
            for protocol in args.protocols:
                for c in args.concurrency:
                    for _ in range(args.rounds):
                        order = list(servers) if turn % 2 == 0 else list(servers)[::-1]  # alternate who goes first
                        turn += 1
                        for label in order:
                            points.append(measure_point(label, servers[label], function, protocol, c, args))
    results["points"] = [p.to_dict() for p in points]

    rows = []
    for function in args.functions:
        for protocol in args.protocols:
            for c in args.concurrency:
                pair = {label: median_point([p for p in points if p.server == label and p.model == function
                                             and p.route == protocol and p.concurrency == c])
                        for label in ("genserve", "triton")}
                rows.append(compare_row(function, protocol, c, pair["genserve"], pair["triton"]))
    results["rows"] = [dict(zip(HEADERS, row, strict=True)) for row in rows]
    print(f"## genserve vs Triton (PyTriton 0.7.0, CPU): max batch {args.max_batch_size}, "
          f"{args.queue_delay_us} us delay, {args.threads} onnxruntime thread\n")
    print(markdown_table(HEADERS, rows))
    print(f"\n{args.duration_s:g} s per point after {args.warmup_s:g} s warm-up, servers alternating"
          + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
          + "; REST by wrk (1 thread), gRPC by "
          + GRPC_CLIENT_TEXT[args.grpc_client]
          + "; goal met: genserve's "
          "throughput at least Triton's and its p99 no worse; server CPU: CPU ms of the server's whole process "
          "tree per answered request")
    write_json(args.json, results)
    return 1 if any(p.errors or not p.requests for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
