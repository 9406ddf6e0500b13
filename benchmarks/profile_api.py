"""Where genserve's serving processes spend their time under load: py-spy samples, summed by library and function.

Optional, outside `make test` (issue 16). It starts `genserve serve` (scratch store of the served model, the
knobs of triton_compare.py: max batch 64, 500 us delay, 1 onnxruntime thread; --genserve-source for another
tree), drives --clients closed-loop clients of --model over --protocol (rest-json or rest-binary by wrk, grpc by
grpc.aio clients in this process, see v2load.py), and after --warmup-s records the API process (--target api), its
engine worker (worker) or both with `py-spy record --format raw` (collapsed stacks; --rate samples/s per thread,
idle threads not sampled) for --duration-s. Then it prints, for each process:

- its CPU use over the recording (cores, from /proc) and the load's throughput meanwhile;
- self time by library: the share of samples whose innermost frame is in each library (json, asyncio, h11,
  uvicorn, starlette, fastapi, pydantic, genserve's api/engine/grpc packages, grpc, numpy, logging, threads);
- inclusive time of the parts of the hot path (a sample counts once for each part its stack passes through);
- the top functions by self time.

py-spy comes from PyPI (`.venv/bin/pip install py-spy`) and must be allowed to ptrace the server (root is). The
collapsed stacks can be kept (--raw-out, for flamegraph.pl or speedscope.app) and re-read without a server
(--from-raw FILE).

    .venv/bin/python benchmarks/profile_api.py --protocol rest-json --clients 16 [--target both] [--raw-out api.txt]
    .venv/bin/python benchmarks/profile_api.py --protocol grpc --clients 16
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import markdown_table
from loadgen import _interrupt
from v2load import (
    Genserve,
    batching_env,
    grpc_point,
    process_cpu_s,
    process_tree,
    require_wrk,
    rest_point,
    rest_request,
    scratch_store,
    v2_work,
)

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))

# (library, pattern on "function (file:line)"), first match wins; the innermost frame's library is its self time
LIBRARIES = [
    ("json (stdlib)", r"[(/]json/|_json\.c"),
    ("orjson", r"orjson"),
    ("logging (stdlib)", r"[(/]logging/"),
    ("h11 (HTTP/1.1 parser)", r"[(/]h11/"),
    ("httptools", r"httptools"),
    ("uvicorn", r"[(/]uvicorn/"),
    ("starlette", r"[(/]starlette/"),
    ("fastapi", r"[(/]fastapi/"),
    ("pydantic", r"pydantic"),
    ("anyio", r"[(/]anyio/"),
    ("prometheus_client", r"prometheus_client"),
    ("grpc", r"[(/]grpc/|_cygrpc"),
    ("protobuf", r"[(/]google/protobuf/|_message\.abi3|PyUpb|upb_"),
    ("numpy", r"[(/]numpy/|_multiarray"),
    ("onnxruntime", r"onnxruntime"),
    ("genserve api", r"[(/]service/api/"),
    ("genserve grpc", r"[(/]service/grpc/"),
    ("genserve engine: scheduler", r"[(/]service/engine/scheduler\.py"),
    ("genserve engine: workers/IPC", r"[(/]service/engine/workers\.py"),
    ("genserve engine: other", r"[(/]service/engine/"),
    ("genserve other", r"[(/]service/"),
    ("threads (threading, concurrent.futures)", r"[(/]threading\.py|[(/]concurrent/futures/"),
    ("asyncio (event loop)", r"[(/]asyncio/|uvloop"),
    ("selectors/socket (stdlib)", r"[(/]selectors\.py|[(/]socket\.py|[(/]ssl\.py|socketmodule\.c|selectmodule"),
    ("asyncio (event loop)", r"_asynciomodule"),
]
# native leaves of no library of their own (libc, the C++ runtime, the interpreter) are charged to the nearest
# caller that has one: a write() grpc makes is grpc's time
GENERIC = re.compile(r"libc\.so|libstdc\+\+|libpthread|libpython|\(object\.h|\(ceval|\(Python/|\(Objects/|"
                     r"\(Include/|\(no Python frame\)")

# (part of the hot path, pattern on one frame), counted once per sample whose stack has a matching frame
PARTS = [
    ("JSON encoding (json.dumps/encoder)", r"[(/]json/encoder\.py|^dumps \((.*/)?json/__init__\.py|"
     r"^encoder_\w+ \(_json\.c"),
    ("JSON decoding (json.loads/decoder)", r"[(/]json/decoder\.py|^loads \((.*/)?json/__init__\.py|"
     r"^scan\w* \(_json\.c"),
    ("garbage collector (gc_collect)", r"^gc_collect"),
    ("access log (uvicorn.access / logging)", r"[(/]logging/|AccessFormatter|access_log"),
    ("h11 parse and serialize", r"[(/]h11/"),
    ("uvicorn protocol (excl. the app)", r"[(/]uvicorn/protocols/"),
    ("starlette/fastapi routing and request handling", r"[(/]starlette/routing\.py|[(/]fastapi/routing\.py"),
    ("FastAPI request validation / response serialization", r"(solve_dependencies|request_body_to_args|"
     r"serialize_response|_prepare_response_content|jsonable_encoder|validate_python|dump_python)"),
    ("middleware (starlette + genserve)", r"[(/]starlette/middleware/|[(/]service/api/(metrics|drain)\.py|"
     r"BodyLimitMiddleware|[(/]fastapi/middleware/"),
    ("V2 REST handler: parse/decode inputs", r"(_parse|decode_inputs|_json_array|_decompress) \((.*/)?service/api/v2"),
    ("V2 REST handler: encode response", r"encode_response \((.*/)?service/api/v2"),
    ("V2 gRPC servicer", r"[(/]service/grpc/inference\.py"),
    ("gRPC (grpc.aio, cygrpc)", r"[(/]grpc/|_cygrpc"),
    ("protobuf (de)serialization", r"[(/]google/protobuf/|SerializeToString|FromString|_message\.abi3|PyUpb"),
    ("engine: infer checks (levels, shapes)",
     r"(check_levels|check_batch|_input_levels|infer) \((.*/)?service/engine/"),
    ("engine: dynamic batcher", r"[(/]service/engine/scheduler\.py"),
    ("engine: worker IPC (pack/unpack, channel)", r"[(/]service/engine/(workers|channel)\.py"),
    ("prometheus metrics", r"prometheus_client"),
    ("threads (to_thread, executors, thread switches)", r"[(/]threading\.py|[(/]concurrent/futures/|to_thread"),
    ("asyncio event loop (select, callbacks)", r"_run_once \(|select \((.*/)?selectors\.py"),
    ("onnxruntime run (worker)", r"onnxruntime|\brun \((.*/)?service/engine/runtimes\.py"),
]


def library(frame: str) -> str:
    for name, pattern in LIBRARIES:
        if re.search(pattern, frame):
            return name
    file = re.search(r"\(([^():]+)", frame)
    return f"other: {file.group(1)}" if file else f"other: {frame[:40]}"


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw format: `frame;frame;...;innermost count` per line, a frame `function (file:line)`."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int) -> dict:
    total = sum(n for _, n in stacks) or 1
    by_library: collections.Counter = collections.Counter()
    by_function: collections.Counter = collections.Counter()
    by_part: collections.Counter = collections.Counter()
    by_thread: collections.Counter = collections.Counter()
    compiled = [(name, re.compile(p)) for name, p in PARTS]
    for frames, n in stacks:
        by_thread[thread_name(frames[0])] += n
        frames = [f for f in frames if not re.match(r"^(process|thread) \(", f)] or ["(no Python frame)"]
        leaf = frames[-1]
        owner = next((f for f in reversed(frames) if not GENERIC.search(f)), leaf)
        if any(f.startswith("gc_collect") for f in frames):  # a collection is nobody's own work
            by_library["garbage collector (CPython gc)"] += n
        else:
            by_library[library(owner) + ("" if owner is leaf else " (native calls it made)")] += n
        by_function[re.sub(r":\d+\)$", ")", leaf)] += n
        for name, pattern in compiled:
            if any(pattern.search(f) for f in frames):
                by_part[name] += n
    pct = {k: 100.0 * v / total for k, v in by_library.items()}
    return {"samples": total, "self_by_library": dict(sorted(pct.items(), key=lambda kv: -kv[1])),
            "inclusive_by_part": {name: 100.0 * by_part[name] / total for name, _ in PARTS if by_part[name]},
            "top_self_functions": [(f, 100.0 * n / total) for f, n in by_function.most_common(top)],
            "threads": {k: 100.0 * v / total for k, v in by_thread.most_common()}}


def thread_name(frame: str) -> str:
    """py-spy --threads starts a stack with `thread (tid): name`; executors number their threads (name_0, name_1)."""
    found = re.match(r"^thread \(\d+\):? ?(.*)$", frame)
    if not found:
        return "(unnamed)"
    return re.sub(r"[-_]?\d+(_\d+)?$", "_N", found.group(1)) or "(unnamed)"


def print_summary(title: str, s: dict, extra: str) -> None:
    print(f"### {title}\n\n{extra}{s['samples']} samples.\n")
    print(markdown_table(["library (self time)", "% of samples"],
                         [[k, f"{v:.1f}"] for k, v in s["self_by_library"].items() if v >= 0.5]))
    print("\n(libraries under 0.5% left out)\n")
    print(markdown_table(["part of the hot path (inclusive)", "% of samples"],
                         [[k, f"{v:.1f}"] for k, v in sorted(s["inclusive_by_part"].items(), key=lambda kv: -kv[1])]))
    print("\n(inclusive: a sample counts for every part its stack passes through, so the column does not sum "
          "to 100)\n")
    print(markdown_table(["function (self time)", "% of samples"], [[f, f"{v:.1f}"] for f, v in
                                                                    s["top_self_functions"]]))
    print("\n" + markdown_table(["thread", "% of samples"], [[k, f"{v:.1f}"] for k, v in s["threads"].items()]))
    print()


def record(pid: int, seconds: float, rate: int, out: Path, gil: bool, native: bool) -> subprocess.Popen:
    command = [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
               "--format", "raw", "--output", str(out), "--nonblocking", "--threads"]
    if gil:
        command.append("--gil")
    if native:  # C and Cython frames too (grpc's cygrpc, upb, _asyncio, ...); py-spy then pauses the process
        command = [c for c in command if c != "--nonblocking"] + ["--native"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="model store (default: %(default)s)")
    parser.add_argument("--model", default="vae.decode", help="V2 model under load (default: %(default)s)")
    parser.add_argument("--protocol", choices=["rest-json", "rest-binary", "grpc"], default="rest-json")
    parser.add_argument("--clients", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--target", choices=["api", "worker", "both"], default="both")
    parser.add_argument("--duration-s", type=float, default=15.0, help="recorded seconds (default: %(default)s)")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="load before recording (default: %(default)s)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default: %(default)s)")
    parser.add_argument("--gil", action="store_true", help="only samples of threads holding the GIL")
    parser.add_argument("--native", action="store_true", help="native (C, Cython) frames too; pauses the process")
    parser.add_argument("--top", type=int, default=15, help="functions listed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--queue-delay-us", type=int, default=500)
    parser.add_argument("--genserve-source", type=Path, default=None)
    parser.add_argument("--raw-out", type=Path, help="keep the collapsed stacks: PATH.api.txt, PATH.worker.txt")
    parser.add_argument("--from-raw", type=Path, nargs="+", help="summarize these collapsed-stack files; no server")
    args = parser.parse_args(argv)
    if args.from_raw:
        for path in args.from_raw:
            print_summary(str(path), summarize(read_raw(path), args.top), "")
        return 0
    if not Path(PY_SPY).exists():
        raise SystemExit("error: py-spy is missing (.venv/bin/pip install py-spy)")
    if args.protocol != "grpc":
        require_wrk()
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    env = batching_env(args.threads, args.max_batch_size, args.queue_delay_us)
    work = v2_work(args.model)
    results: dict = {}
    with scratch_store(args.models, [work.stored_model]) as store, \
            Genserve(store, env, "genserve", [args.model], args.genserve_source) as server, \
            tempfile.TemporaryDirectory(prefix="profile-api-") as tmp:
        api = server.process.pid
        workers = [p for p in process_tree(api) if p != api]
        pids = {"api": api, "worker": workers[0] if workers else None}
        targets = ["api", "worker"] if args.target == "both" else [args.target]
        load_s = args.warmup_s + args.duration_s + 3.0
        box: dict = {}

        def load() -> None:
            if args.protocol == "grpc":
                box["point"] = grpc_point("genserve", args.model, server.grpc_target, work, args.clients, load_s, 0.0)
            else:
                box["point"] = rest_point("genserve", args.protocol, args.model, server.base_url,
                                          rest_request(work, args.protocol == "rest-binary"), args.clients, load_s,
                                          0.0)

        driver = threading.Thread(target=load, daemon=True)
        driver.start()
        time.sleep(args.warmup_s)
        cpu = {t: process_cpu_s(pids[t]) - (process_cpu_s(pids["worker"]) if t == "api" and pids["worker"] else 0)
               for t in targets}
        begin = time.monotonic()
        spies = {t: record(pids[t], args.duration_s, args.rate, Path(tmp) / f"{t}.txt", args.gil,
                        args.native) for t in targets}
        for t, spy in spies.items():
            _, err = spy.communicate(timeout=args.duration_s + 60)
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy on the {t} process failed: {err[-2000:]}")
        seconds = time.monotonic() - begin
        for t in targets:
            used = process_cpu_s(pids[t]) - (process_cpu_s(pids["worker"]) if t == "api" and pids["worker"] else 0)
            results[t] = {"cores": (used - cpu[t]) / seconds, "stacks": read_raw(Path(tmp) / f"{t}.txt")}
            if args.raw_out:
                shutil.copy(Path(tmp) / f"{t}.txt", f"{args.raw_out}.{t}.txt")
        driver.join(timeout=load_s + 60)
    point = box.get("point")
    load_line = (f"load: {args.clients} clients, {args.protocol}, {args.model}: "
                 + (f"{point.throughput:.0f} req/s, p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.1f} ms over "
                    f"{point.seconds:.0f} s" if point else "no result") + "\n\n")
    print(f"## py-spy profile of genserve under load ({os.cpu_count()} CPUs, shared)\n")
    for t in targets:
        s = summarize(results[t]["stacks"], args.top)
        sampled = s["samples"] / (args.rate * args.duration_s)
        print_summary(f"{t} process", s, load_line + f"{t} process CPU while recording: "
                      f"{results[t]['cores']:.2f} cores; py-spy at {args.rate} Hz"
                      + (", GIL holders only" if args.gil else ", idle threads excluded")
                      + f": samples cover {sampled:.2f} of the wall time (more than the CPU share: a thread "
                      "that is runnable but waiting for a core counts as busy, at the frame where the kernel "
                      "preempted it, often a socket write that woke a client; --gil leaves those out where the "
                      "call releases the GIL); ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
