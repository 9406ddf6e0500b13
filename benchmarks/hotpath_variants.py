"""Experiment: what cheap hot-path changes would buy, measured on an unchanged genserve tree by patching it at start.

Optional, outside `make test` (issue 16's profile). It starts one `genserve serve` per variant (all up at once, on a
scratch store of `vae`, max batch 64, 500 us delay, 1 onnxruntime thread) and drives V2 `vae.decode` over --route
(rest-json, rest-binary by wrk; grpc by grpc.aio clients) at each --clients level, the variants taking turns (the
order reversed every other round), --rounds times; the table shows medians and the server CPU per request.

A variant is a comma-separated set of patches, applied in the server process before `service.main.run`:

- `noaccess`: uvicorn's access log off (uvicorn.Config(access_log=False));
- `httptools`: uvicorn's httptools HTTP parser instead of h11 (without it the variant forces h11);
- `uvloop`: uvloop's event loop policy;
- `orjson`: the V2 REST answer written by orjson straight from the numpy array (OPT_SERIALIZE_NUMPY) instead of
  `json.dumps(array.ravel().tolist())` (service.api.v2.encode_response replaced);
- `gc`: the cyclic garbage collector's first threshold raised from 700 to 100,000 allocations;
- `asyncio`: uvloop hidden from the tree, so a tree that picks it up by itself runs on asyncio's loop;
- `native`: uvicorn's HTTP parser left as the tree chooses (a tree that names httptools itself, as genserve does
  since issue 16); without `native` or `httptools` the variant forces h11, as the tree at fe556b0 shipped.

A variant may end in `@DIR`: that variant runs the genserve tree in DIR instead of --source, so a tree before
and after a change run side by side (`--variants "@/tmp/genserve-base" "native"`: the baseline tree as it
shipped against this repository as it is).

The patches reach into the tree's internals (service.main.run's uvicorn.Config call, service.api.v2.encode_response)
as they were at commit fe556b0; a later tree may need them updated. orjson, uvloop and httptools are not genserve
dependencies: install them to a folder of their own, so the shared .venv (where uvicorn would pick httptools and
uvloop up by itself) stays as it is, and name it with --extra-site:

    .venv/bin/pip install --target /tmp/pyextra orjson uvloop httptools
    .venv/bin/python benchmarks/hotpath_variants.py --extra-site /tmp/pyextra --route rest-json --clients 16 64 \\
        --variants "" noaccess noaccess,httptools,uvloop noaccess,httptools,uvloop,orjson [--source /tmp/base]
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from pathlib import Path

PATCHES = ["noaccess", "httptools", "uvloop", "orjson", "gc", "native", "asyncio"]


def patch(variant: set[str]) -> None:
    """Apply the variant's patches in this (server) process."""
    import uvicorn

    class Config(uvicorn.Config):
        def __init__(self, app, **kw):
            if "native" not in variant:
                kw["http"] = "httptools" if "httptools" in variant else "h11"
            if "noaccess" in variant:
                kw["access_log"] = False
            super().__init__(app, **kw)

    uvicorn.Config = Config
    if "asyncio" in variant:  # a tree that runs on uvloop when it can (service.main) finds none
        sys.modules["uvloop"] = None
    if "gc" in variant:
        import gc

        gc.set_threshold(100_000, 50, 50)
    if "uvloop" in variant:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if "orjson" in variant:
        import numpy as np
        import orjson
        from fastapi.responses import Response

        from service.api import v2

        def encode_response(header, outputs, spec, wanted):
            dtypes = {t["name"]: t["dtype"] for t in spec["outputs"]}
            tensors, chunks = [], []
            for name, binary in wanted:
                array = np.ascontiguousarray(outputs[name], dtype=dtypes[name])
                tensor = {"name": name, "datatype": v2.v2_datatype(array.dtype.name), "shape": list(array.shape)}
                if binary:
                    chunks.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
                    tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
                else:
                    tensor["data"] = array.ravel()
                tensors.append(tensor)
            head = orjson.dumps({**header, "outputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
            if not chunks:
                return Response(head, media_type="application/json")
            return Response(b"".join([head, *chunks]), media_type="application/octet-stream",
                            headers={v2.HEADER_LENGTH: str(len(head))})

        v2.encode_response = encode_response


def variant_server(store: Path, variant: str, args: argparse.Namespace):
    """A loadgen.Server running this script's --serve mode (imported here: the server needs none of it)."""
    from loadgen import REPO, Server
    from v2load import batching_env, wait_ready

    class Variant(Server):
        def command(self) -> list[str]:
            return [sys.executable, str(Path(__file__).resolve()), "--serve", variant or "-", "--port",
                    str(self.port), "--grpc-port", str(self.grpc_port), "--store", self.models,
                    "--extra-site", str(args.extra_site)]

        def environment(self) -> dict[str, str]:
            env = super().environment()
            env["PYTHONPATH"] = os.pathsep.join([str(tree), str(Path(__file__).resolve().parent)])
            return env

        def __enter__(self):
            print(f"starting {self.label} (source {tree}); log {self.log.name}", file=sys.stderr)
            self.process = subprocess.Popen(self.command(), cwd=tree, env=self.environment(),
                                            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
            try:
                wait_ready(self, [f"/v2/models/{args.function}/ready"])
            except BaseException:
                self.stop()
                raise
            return self

    patches, _, elsewhere = variant.partition("@")
    tree = Path(elsewhere or args.source or REPO).resolve()
    label = variant or "baseline"
    variant = patches
    return Variant(str(store), batching_env(1, 64, 500), label)


def serve(args: argparse.Namespace) -> None:
    sys.path.append(str(args.extra_site))  # after the tree and the venv: only what they lack comes from there
    variant = set() if args.serve == "-" else set(args.serve.split(","))
    unknown = variant - set(PATCHES)
    if unknown:
        raise SystemExit(f"unknown patches {sorted(unknown)}; known: {PATCHES}")
    patch(variant)
    from service.main import run

    run(host="127.0.0.1", port=args.port, grpc_port=args.grpc_port, models=args.store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models")
    parser.add_argument("--variants", nargs="+", default=["", "noaccess", "noaccess,httptools,uvloop",
                                                          "noaccess,httptools,uvloop,orjson"],
                        help=f"comma-separated patches of {PATCHES}; '' is the tree as it is")
    parser.add_argument("--function", default="vae.decode", help="V2 model to drive (vae's or pixelcnn's)")
    parser.add_argument("--route", choices=["rest-json", "rest-binary", "grpc"], default="rest-json")
    parser.add_argument("--clients", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--source", type=Path, default=None, help="genserve tree to run (default: this repository)")
    parser.add_argument("--extra-site", type=Path, required=True, help="folder with orjson, uvloop, httptools")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the server's mode: its variant
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    from common import markdown_table, write_json
    from loadgen import _interrupt
    from v2load import grpc_point, point_line, require_wrk, rest_point, rest_request, scratch_store, v2_work

    if args.route != "grpc":
        require_wrk()
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    work = v2_work(args.function)
    request = rest_request(work, args.route == "rest-binary")
    points = []
    with scratch_store(args.models, [args.function.partition(".")[0]]) as store:
        servers = [variant_server(store, v, args) for v in args.variants]
        try:
            for server in servers:
                server.__enter__()
            for c in args.clients:
                for r in range(args.rounds):
                    for s in servers if r % 2 == 0 else servers[::-1]:
                        if args.route == "grpc":
                            p = grpc_point(s.label, args.function, s.grpc_target, work, c, args.duration_s,
                                           args.warmup_s, s.process.pid)
                        else:
                            p = rest_point(s.label, args.route, args.function, s.base_url, request, c,
                                           args.duration_s, args.warmup_s, s.process.pid)
                        print(point_line(p), file=sys.stderr)
                        points.append(p)
        finally:
            for server in servers:
                server.stop()
    rows = []
    for c in args.clients:
        base = statistics.median(p.throughput for p in points if p.server == servers[0].label and p.concurrency == c)
        for s in servers:
            mine = [p for p in points if p.server == s.label and p.concurrency == c]
            t = statistics.median(p.throughput for p in mine)
            rows.append([s.label, str(c), f"{t:.0f}", f"{statistics.median(p.p50_ms for p in mine):.1f}",
                         f"{statistics.median(p.p99_ms for p in mine):.1f}",
                         f"{statistics.median(p.server_cpu_ms_per_request for p in mine):.2f}", f"{t / base:.2f}x"])
    print(f"## Hot-path variants: V2 {args.route} {args.function}, max batch 64, 500 us, 1 onnxruntime thread\n")
    print(markdown_table(["variant", "clients", f"req/s (median of {args.rounds})", "p50 (ms)", "p99 (ms)",
                          "server CPU ms/req", f"vs {servers[0].label}"], rows))
    print(f"\n{args.duration_s:g} s per point after {args.warmup_s:g} s warm-up, variants alternating")
    write_json(args.json, {"args": vars(args), "points": [p.to_dict() for p in points]})
    return 1 if any(p.errors or not p.requests for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
