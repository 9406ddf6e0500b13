"""The smoke checks of `make image-test` (scripts/image-test.sh) against a running container.

    --http URL --grpc HOST:PORT   /readyz, a sample from every model that samples (so every family), a score,
                                  gRPC health, /metrics
    --http URL --prometheus URL   the compose stack: Prometheus scrapes genserve and answers
                                  genserve_http_requests_total

Prints one line per check; exits non-zero at the first failure. Every wait is bounded.
"""

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

READY_S = 240  # model loading in the container took about 25 s on 2 cores
SCRAPE_S = 120  # Prometheus scrapes every 5 s


def call(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"FAIL: {message}")


def wait_until(what: str, seconds: float, probe) -> float:
    """Calls probe() until it is truthy; the seconds that took."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            if probe():
                return time.monotonic() - start
        except (OSError, ValueError):  # not listening yet, or an answer still being built
            pass
        time.sleep(1)
    sys.exit(f"FAIL: {what} not within {seconds} s")


def wait_ready(http: str) -> None:
    took = wait_until("/readyz 200", READY_S, lambda: call(f"{http}/readyz", timeout=5)[0] == 200)
    ok(f"/readyz answered 200 after {took:.0f} s")


NEEDS_INPUT = ("actions", "prompt")  # a state-space model's actions, a text-to-image model's caption


def sample_request(model: dict) -> dict:
    """The smallest sample request of a model: one sample, short for text and audio."""
    kind = model["data"].get("kind")
    return {"n": 1, "seed": 0} | ({"length": 32} if kind in ("text", "audio") else {"format": "array"})


def sample_every_family(http: str, models: list[dict]) -> dict[str, list]:
    """A sample from every model that can sample; the samples by model name."""
    samples, families = {}, set()
    for model in models:
        name = model["name"]
        if "sample" not in model["capabilities"]:
            print(f"skip: {name} ({model['family']}) has no sample capability", flush=True)
            continue
        status, body = call(f"{http}/v1/models/{name}/sample", sample_request(model))
        if status == 422 and json.loads(body)["error"].get("field") in NEEDS_INPUT:
            print(f"skip: {name} ({model['family']}) samples only given {json.loads(body)['error']['field']} "
                  "(answered 422 naming it)", flush=True)
            continue
        check(status == 200, f"sample {name}: HTTP {status} {body[:200]!r}")
        samples[name] = json.loads(body)["samples"]
        check(len(samples[name]) == 1, f"sample {name}: {len(samples[name])} samples, asked for 1")
        families.add(model["family"])
    silent = {m["family"] for m in models} - families
    ok(f"one sample from each of {len(samples)} models: families {', '.join(sorted(families))}"
       + (f"; families that cannot sample: {', '.join(sorted(silent))}" if silent else ""))
    return samples


def score_a_sample(http: str, models: list[dict], samples: dict[str, list]) -> None:
    """Scores an image model's own sample: the first model that gives a likelihood (a GAN gives a critic's
    score) answers a finite log p(x)."""
    for model in models:
        name = model["name"]
        if "score" not in model["capabilities"] or name not in samples or model["data"].get("kind") != "image":
            continue
        status, body = call(f"{http}/v1/models/{name}/score", {"inputs": samples[name]})
        check(status == 200, f"score {name}: HTTP {status} {body[:200]!r}")
        result = json.loads(body)["results"][0]
        if result["method"] == "critic":
            continue
        nats = result["log_likelihood_nats"]
        check(nats is not None and math.isfinite(nats), f"score {name}: {result}")
        ok(f"score {name} of its own sample: {result['method']} log p(x) = {nats:.1f} nats")
        return
    sys.exit("FAIL: no image model gave a likelihood score")


def grpc_health(target: str) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    check(answer.status == health_pb2.HealthCheckResponse.SERVING, f"gRPC health: {answer.status}")
    ok("gRPC grpc.health.v1.Health/Check: SERVING")


def metrics(http: str) -> None:
    status, body = call(f"{http}/metrics")
    lines = [line for line in body.decode().splitlines() if line.startswith("genserve_http_requests_total{")]
    check(status == 200 and bool(lines), f"/metrics: HTTP {status}, {len(lines)} genserve_http_requests_total series")
    ok(f"/metrics: {len(lines)} genserve_http_requests_total series")


def prometheus(http: str, prom: str) -> None:
    """Prometheus (the compose stack's) scrapes genserve and answers a query on its request counter."""
    for _ in range(3):
        call(f"{http}/v1/models")

    def target_up() -> bool:
        targets = json.loads(call(f"{prom}/api/v1/targets", timeout=5)[1])["data"]["activeTargets"]
        return any(t["labels"].get("job") == "genserve" and t["health"] == "up" for t in targets)

    took = wait_until("Prometheus' genserve target up", SCRAPE_S, target_up)
    ok(f"Prometheus: target job=genserve is up after {took:.0f} s")
    query = urllib.parse.urlencode({"query": "genserve_http_requests_total"})

    def series() -> list:
        return json.loads(call(f"{prom}/api/v1/query?{query}", timeout=5)[1])["data"]["result"]

    wait_until("genserve_http_requests_total in Prometheus", SCRAPE_S, series)
    endpoints = sorted({s["metric"].get("endpoint", "") for s in series()})
    ok(f"Prometheus /api/v1/query genserve_http_requests_total: {len(series())} series, endpoints {endpoints}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", required=True, help="the container's REST base URL")
    parser.add_argument("--grpc", help="the container's gRPC address")
    parser.add_argument("--prometheus", help="the compose stack's Prometheus base URL")
    args = parser.parse_args()
    wait_ready(args.http)
    if args.prometheus:
        prometheus(args.http, args.prometheus)
        return
    models = json.loads(call(f"{args.http}/v1/models")[1])["models"]
    ok(f"/v1/models lists {len(models)} models")
    samples = sample_every_family(args.http, models)
    score_a_sample(args.http, models, samples)
    if args.grpc:
        grpc_health(args.grpc)
    metrics(args.http)


if __name__ == "__main__":
    main()
