"""Garbage-collection pauses of the API process under load, per young-generation threshold (issue 16, goal 1).

For each threshold given (alternating, `--repeats` times), `genserve serve` with GENSERVE_GC_YOUNG_THRESHOLD set
serves `vae.decode`; h2load drives V2 gRPC (or wrk V2 REST JSON: `--protocol rest-json`) with `--clients` clients
for `--rounds` points. Each point prints
throughput and p99 beside the collections that ran during it (its warmup included), read from the server's
genserve_gc_pause_seconds histogram: how many, their total time, and how many took over 25 and 100 ms.

    .venv/bin/python benchmarks/gc_pauses.py [--thresholds 10000 100000] [--repeats 2] [--rounds 3]
"""

import argparse
import re
import sys

import httpx
from v2load import (
    Genserve,
    batching_env,
    grpc_h2load_point,
    point_line,
    require_h2load,
    require_wrk,
    rest_point,
    rest_request,
    scratch_store,
    v2_work,
)

PAUSE_LINE = re.compile(r'^genserve_gc_pause_seconds_(bucket|sum|count)\{(?:generation="(\d)")?,?(?:le="([^"]+)")?'
                        r'.*\} ([0-9.e+-]+)$', re.M)


def pause_totals(base_url: str) -> dict[tuple[str, str], float]:
    """{(kind, le or ""): value} summed over the generations: count, sum, and each bucket's cumulative count."""
    text = httpx.get(base_url + "/metrics", timeout=10.0).text
    totals: dict[tuple[str, str], float] = {}
    for kind, _generation, le, value in PAUSE_LINE.findall(text):
        key = (kind, le)
        totals[key] = totals.get(key, 0.0) + float(value)
    if not totals:
        raise SystemExit("the server's /metrics has no genserve_gc_pause_seconds: is it this tree's genserve?")
    return totals


def pauses_line(before: dict, after: dict) -> str:
    """The collections between two readings: count, total ms, and how many took over 25 and 100 ms."""
    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)
    count = delta(("count", ""))
    over = {le: count - delta(("bucket", le)) for le in ("0.025", "0.1")}
    return (f"collections {count:.0f}, {1000 * delta(('sum', '')):.1f} ms in all, "
            f"{over['0.025']:.0f} over 25 ms, {over['0.1']:.0f} over 100 ms")


def load_point(args, label: str, server: Genserve, work):
    """One point of --protocol's load on the server."""
    if args.protocol == "grpc":
        return grpc_h2load_point(label, work.model, server.grpc_target, work, args.clients, args.duration_s,
                                 args.warmup_s, server.process.pid)
    return rest_point(label, "rest-json", work.model, server.base_url, rest_request(work, False), args.clients,
                      args.duration_s, args.warmup_s, server.process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=2, help="servers started per threshold, alternating")
    parser.add_argument("--rounds", type=int, default=3, help="points per server")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--protocol", choices=["grpc", "rest-json"], default="grpc")
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args()
    if args.protocol == "grpc":
        require_h2load()
    else:
        require_wrk()
    work = v2_work("vae.decode")
    with scratch_store("models", ["vae"]) as store:
        for _ in range(args.repeats):
            for threshold in args.thresholds:
                env = batching_env(1, 64, 500) | {"GENSERVE_GC_YOUNG_THRESHOLD": str(threshold)}
                label = f"gc {threshold}"
                with Genserve(store, env, label, [work.model]) as server:
                    for _ in range(args.rounds):
                        before = pause_totals(server.base_url)
                        point = load_point(args, label, server, work)
                        after = pause_totals(server.base_url)
                        print(f"{point_line(point)}; {pauses_line(before, after)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
