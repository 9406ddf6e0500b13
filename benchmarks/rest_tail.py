"""Where REST's p99 at 64 clients is spent (issue 16, goal 1: run 9 of serving_h2load_triton.md missed by it).

`genserve serve` serves `vae.decode` (the knobs of triton_compare.py); wrk drives V2 REST JSON with `--clients`
closed-loop clients for `--rounds` points. Each point prints wrk's throughput, p50 and p99 beside the server's own
view of the same requests, read from its /metrics before and after: the bucket that holds the p50 and the p99 of
genserve_http_request_duration_seconds (from the request reaching the ASGI app to its answer being sent) and of
genserve_inference_request_duration_seconds (from the engine's submit to the result), the point's warm-up included,
and of genserve_event_loop_lag_seconds: how late the API process's event loop resumed a task due every 10 ms (one
observation per tick, not per request), which is how long anything ready, a request's bytes just arrived included,
waits behind the work the loop runs first. Buckets are coarse (25, 50, 100 ms), so the server's quantiles are upper
bounds; what wrk sees beyond the app's own was spent outside it: in the sockets, the event loop before the app
reads the request (the lag), or the client.

    .venv/bin/python benchmarks/rest_tail.py [--rounds 3] [--clients 64]
"""

import argparse
import re
import sys

import httpx
from v2load import Genserve, batching_env, point_line, require_wrk, rest_point, rest_request, scratch_store, v2_work

HISTOGRAMS = {"genserve_http_request_duration_seconds": "server, HTTP",
              "genserve_inference_request_duration_seconds": "server, engine",
              "genserve_event_loop_lag_seconds": "event loop lag"}
BUCKET = re.compile(r'^(genserve_\w+_seconds)_bucket\{(.*)\} ([0-9.e+]+)$', re.M)


def buckets(base_url: str) -> dict[str, dict[float, float]]:
    """{histogram: {le: cumulative count}} of the HISTOGRAMS, summed over their label sets."""
    counts: dict[str, dict[float, float]] = {}
    for name, labels, value in BUCKET.findall(httpx.get(base_url + "/metrics", timeout=10.0).text):
        if name in HISTOGRAMS:
            le = float(re.search(r'le="([^"]+)"', labels).group(1))  # "+Inf" reads as inf
            counts.setdefault(name, {})[le] = counts.setdefault(name, {}).get(le, 0.0) + float(value)
    return counts


def bound(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket that holds quantile q of the observations between two readings (seconds)."""
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    return next(le for le in sorted(after) if after[le] - before.get(le, 0.0) >= q * total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args()
    require_wrk()
    work = v2_work("vae.decode")
    with scratch_store("models", ["vae"]) as store, Genserve(store, batching_env(1, 64, 500), "genserve",
                                                             [work.model]) as server:
        for _ in range(args.rounds):
            before = buckets(server.base_url)
            point = rest_point("genserve", "rest-json", work.model, server.base_url, rest_request(work, False),
                               args.clients, args.duration_s, args.warmup_s, server.process.pid)
            after = buckets(server.base_url)
            seen = "; ".join(f"{label}: p50 <= {1000 * bound(before.get(name, {}), after[name], 0.5):g} ms, "
                             f"p99 <= {1000 * bound(before.get(name, {}), after[name], 0.99):g} ms"
                             for name, label in HISTOGRAMS.items())
            print(f"{point_line(point)}; {seen}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
