"""`make ray-test`: genserve on Ray Serve (deploy/ray) on a local one-node Ray cluster, checked end to end.

1. `ray start --head` with --num-cpus 2, no dashboard, token authentication, a temporary --temp-dir; shipped
   models (vae, pixelcnn) are linked into a temporary store.
2. deploy/ray/serve.yaml is deployed with `serve run` (its autoscaling pinned to 1 replica, the HTTP proxy on a
   free port of 127.0.0.1) and driven by --clients clients for --seconds after a WARM_UP_S warm-up: throughput
   with 1 replica.
3. Redeployed pinned to 2 replicas: the same seeded requests (a VAE sample, a PixelCNN sample, a PixelCNN
   sample streamed as server-sent events) are sent until both replicas have answered each (answers name their
   replica in `x-genserve-replica`); every answer must be byte for byte the answer of `genserve`'s app run in
   this process. Then throughput with 2 replicas.
4. Mixed traffic (REST sample, REST score, V2 infer), --requests in all from --clients clients; once a third of
   them are answered, one replica's process gets SIGKILL (its pid: the child of this cluster's raylet whose
   process title is the replica's). Every request must end 200, after the client's retry rule (RETRY_STATUSES
   below) where needed. A new replica must take the killed one's place.
Ray is stopped at the end whatever happens: its processes are ended by pid (this cluster's only). Exits 1 on a
failed check.

    .venv/bin/python scripts/ray_test.py [--clients 32] [--seconds 10] [--requests 480]
"""

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODELS = ("vae", "pixelcnn")
# The client's retry rule (README, "Scale-out on Ray Serve"): a 500 (Ray's proxy, when the replica died under the
# request), 502, 503 (genserve's refusal for now: overloaded, draining), 504 or a broken connection is retried after
# an exponential backoff, RETRY_DELAY_S doubled at each attempt up to MAX_DELAY_S, and never sooner than the answer's
# Retry-After; at most RETRIES retries. Every genserve request is safe to send again: none changes state, and a
# seeded one gets the same answer.
RETRY_STATUSES = {500, 502, 503, 504}
RETRIES = 8
RETRY_DELAY_S = 0.5
MAX_DELAY_S = 8.0
REQUEST_TIMEOUT_S = 60.0
START_TIMEOUT_S = 240.0
WARM_UP_S = 3.0
AUTH_TOKEN = secrets.token_hex(32)
REFUSALS: dict[tuple[str, int], str] = {}  # (path, status) -> the first answer's text
REPLICA_TITLE = "ray::ServeReplica:genserve:genserve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(message: str) -> None:
    print(f"[ray-test {time.monotonic() - STARTED:5.0f}s] {message}", flush=True)


# --- the local cluster -----------------------------------------------------------------------------------------------

def ray_env() -> dict[str, str]:
    """The environment of `ray start` and `serve run`: Ray's token authentication on (its ports listen beyond
    127.0.0.1: Ray puts a node on the machine's address), with a token made for this run."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": AUTH_TOKEN}


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process this user can see."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if entry.name.isdigit() and state != "Z":  # a zombie has ended already
            found[int(entry.name)] = (int(parent), cmdline)
    return found


def descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found, grew = set(roots), True
    while grew:
        more = {pid for pid, (parent, _) in table.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


@contextmanager
def local_ray(temp_dir: Path):
    """A one-node Ray cluster (2 CPUs, no dashboard, its files in temp_dir, its ports free ones); yields its GCS
    address. `ray start` runs in a session of its own, so every daemon it starts is in its process group; on exit
    those and their descendants (the workers and actors) are ended by pid, SIGTERM then SIGKILL."""
    port = free_port()
    command = [str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard",
               "false", "--temp-dir", str(temp_dir), "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
               "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
               "--metrics-export-port", str(free_port())]
    start = subprocess.Popen(command, env=ray_env(), stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        if start.wait(timeout=120) != 0:
            raise SystemExit(f"FAIL: ray start exited {start.returncode}")
        yield f"127.0.0.1:{port}"
    finally:
        table = processes()
        ours = descendants({pid for pid in table if _group(pid) == start.pid}, table) - {os.getpid()}
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in ours:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while (ours := ours & set(processes())) and time.monotonic() < deadline:
                time.sleep(0.2)
        say(f"Ray stopped{'' if not ours else f'; still running: {sorted(ours)}'}")


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def replica_pids() -> list[int]:
    """The pids of this cluster's genserve replicas: children of its raylet whose process title is the replica's."""
    table = processes()
    raylets = {pid for pid, (_, cmd) in table.items() if "raylet" in cmd.split(" ")[0] and str(TEMP) in cmd}
    return sorted(pid for pid, (parent, cmd) in table.items() if parent in raylets and cmd.startswith(REPLICA_TITLE))


def deploy(address: str, store: Path, replicas: int, http_port: int, workdir: Path) -> None:
    """deploy/ray/serve.yaml over `store`, its autoscaling pinned to `replicas`, the proxy on 127.0.0.1:http_port."""
    config = yaml.safe_load((REPO / "deploy/ray/serve.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=http_port)
    app = config["applications"][0]
    app["args"]["models"] = str(store)
    scaling = app["deployments"][0]["autoscaling_config"]
    scaling.update(min_replicas=replicas, initial_replicas=replicas, max_replicas=replicas)
    path = workdir / f"serve-{replicas}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([str(BIN / "serve"), "run", "--non-blocking", "--address", address, str(path)], env=ray_env(),
                   check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_replicas(base: str, count: int) -> set[str]:
    """Poll /readyz until `count` replicas (and no other) answer 200 within the last 4 * count answers."""
    deadline, recent = time.monotonic() + START_TIMEOUT_S, []
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                answer = client.get(f"{base}/readyz")
                if answer.status_code == 200:
                    recent = [*recent, answer.headers["x-genserve-replica"]][-4 * count:]
            except httpx.TransportError:
                pass
            if len(recent) == 4 * count and len(set(recent)) == count and len(replica_pids()) == count:
                return set(recent)
            time.sleep(0.2)
    raise SystemExit(f"FAIL: {count} replica(s) not serving after {START_TIMEOUT_S:.0f} s")


# --- the requests ------------------------------------------------------------------------------------------------

def mixed_request(i: int) -> tuple[str, dict]:
    """Request i of the mix: REST sample (VAE), REST score (PixelCNN), V2 infer (vae.decode), seeded by i."""
    rng = np.random.default_rng(i)
    kind = i % 3
    if kind == 0:
        return "/v1/models/vae/sample", {"n": 1, "seed": i, "format": "array"}
    if kind == 1:
        return "/v1/models/pixelcnn/score", {"inputs": rng.integers(0, 2, (1, 28, 28)).tolist()}
    z = rng.standard_normal((1, 32)).astype(np.float32)
    return "/v2/models/vae.decode/infer", {"inputs": [{"name": "z", "shape": [1, 32], "datatype": "FP32",
                                                       "data": z.ravel().tolist()}]}


async def send(client: httpx.AsyncClient, path: str, body: dict) -> tuple[int, int, float, tuple[int, ...]]:
    """(final status, tries, seconds, the statuses retried) for one request under the retry rule; status 0: the
    connection broke with no answer."""
    start, retried = time.perf_counter(), ()
    for attempt in range(1, RETRIES + 2):
        delay_s = min(RETRY_DELAY_S * 2 ** (attempt - 1), MAX_DELAY_S)
        try:
            answer = await client.post(path, json=body)
            status = answer.status_code
            REFUSALS.setdefault((path, status), answer.text[:300])
            delay_s = max(delay_s, float(answer.headers.get("retry-after", 0)))
        except httpx.TransportError as e:
            status = 0
            REFUSALS.setdefault((path, status), repr(e))
        if status not in RETRY_STATUSES | {0} or attempt == RETRIES + 1:
            return status, attempt, time.perf_counter() - start, retried
        retried += (status,)
        await asyncio.sleep(delay_s)
    raise AssertionError("unreachable")


async def drive(base: str, clients: int, requests: int | None = None, seconds: float | None = None,
                kill_after: int | None = None) -> tuple[list[tuple[str, int, int, float]], float]:
    """--clients concurrent loops over the mix, until `requests` are sent or `seconds` are up; with kill_after, one
    replica process is killed once that many are answered. Returns (path, status, tries, seconds, statuses retried)
    per request and the wall time."""
    results: list[tuple] = []
    in_flight = 0
    counter = iter(range(10**9))
    stop_at = time.monotonic() + seconds if seconds else float("inf")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def loop(client: httpx.AsyncClient) -> None:
        nonlocal in_flight
        while time.monotonic() < stop_at and (i := next(counter)) < (requests or 10**9):
            path, body = mixed_request(i)
            in_flight += 1
            results.append((path, *await send(client, path, body)))
            in_flight -= 1
            if kill_after is not None and len(results) == kill_after:
                victim = replica_pids()[0]
                os.kill(victim, signal.SIGKILL)
                say(f"SIGKILL to replica process {victim} after {kill_after} answers, {in_flight} requests in flight")

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(*(loop(client) for _ in range(clients)))
    return results, time.perf_counter() - start


def throughput_row(replicas: int, clients: int, results: list, wall_s: float) -> str:
    ok = sorted(seconds for _, status, _, seconds, _ in results if status == 200)
    if not ok:
        raise SystemExit(f"FAIL: no request answered 200 with {replicas} replica(s)")
    p50, p99 = (1000 * ok[min(int(q * len(ok)), len(ok) - 1)] for q in (0.5, 0.99))
    failed, retried = len(results) - len(ok), sum(tries > 1 for _, _, tries, _, _ in results)
    return (f"| {replicas} | {clients} | {len(results)} | {retried} | {failed} | {len(ok) / wall_s:.1f} | {p50:.0f} "
            f"| {p99:.0f} |")


# --- the checks ----------------------------------------------------------------------------------------------------

SEEDED = (("/v1/models/vae/sample", {"n": 2, "seed": 1234, "format": "array"}),
          ("/v1/models/pixelcnn/sample", {"n": 1, "seed": 1234, "label": 3, "format": "array"}),
          ("/v1/models/pixelcnn/sample/stream", {"n": 1, "seed": 1234, "format": "array"}))  # SSE, row by row


def reference_answers(store: Path) -> list[bytes]:
    """The SEEDED answers of genserve's own app (service.api.create_app), run in this process."""
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.engine.engine import Engine
    from service.settings import Settings
    from service.store import ModelStore

    settings = Settings(models=store, intra_op_threads=1)
    with TestClient(create_app(Engine(ModelStore(store), settings), settings)) as client:
        answers = [client.post(path, json=body) for path, body in SEEDED]
    assert all(a.status_code == 200 for a in answers) and answers[-1].content.endswith(b"\n\n"), "reference failed"
    assert b"event: done" in answers[-1].content, "the reference stream did not end with its done event"
    return [answer.content for answer in answers]


def check_same_bytes(base: str, replicas: set[str], expected: list[bytes]) -> None:
    """Each SEEDED request, sent until every replica has answered it: the same bytes as `expected` each time."""
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        for (path, body), want in zip(SEEDED, expected, strict=True):
            seen: Counter = Counter()
            for _ in range(200):
                answer = client.post(path, json=body)
                if answer.status_code != 200 or answer.content != want:
                    raise SystemExit(f"FAIL: {path} seed {body['seed']} on replica "
                                     f"{answer.headers.get('x-genserve-replica')}: {answer.status_code}, "
                                     f"{'other bytes' if answer.status_code == 200 else answer.text[:200]}")
                seen[answer.headers["x-genserve-replica"]] += 1
                if set(seen) == replicas:
                    break
            else:
                raise SystemExit(f"FAIL: {path}: only replicas {sorted(seen)} answered in 200 tries")
            say(f"{path} seed {body['seed']}: identical bytes from replicas {dict(seen)} and from genserve's app "
                "in-process")


def check_all_answered(results: list, requests: int) -> None:
    outcomes = Counter((path.split("/")[-1], status, retried) for path, status, _, _, retried in results)
    for (route, status, retried), count in sorted(outcomes.items()):
        say(f"  {route:7s} {status}{f' after {retried}' if retried else ''}: {count}")
    for (path, status), text in sorted(REFUSALS.items()):
        if status != 200:
            say(f"  first {status} on {path}: {text}")
    failed = [r for r in results if r[1] != 200]
    if len(results) != requests or failed:
        raise SystemExit(f"FAIL: {len(results)} of {requests} requests ended, {len(failed)} not 200: {failed[:5]}")
    say(f"all {requests} requests answered 200 ({sum(r[2] > 1 for r in results)} after a retry)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput run")
    parser.add_argument("--requests", type=int, default=480, help="the run with a replica killed")
    args = parser.parse_args()
    global TEMP
    with tempfile.TemporaryDirectory(prefix="genserve-ray-") as work:
        TEMP = Path(work) / "ray"
        store = Path(work) / "models"
        store.mkdir()
        for name in MODELS:
            (store / name).symlink_to(REPO / "models" / name)
        expected = reference_answers(store)
        with local_ray(TEMP) as address:
            http_port = free_port()
            base = f"http://127.0.0.1:{http_port}"
            rows = []
            for replicas in (1, 2):
                deploy(address, store, replicas, http_port, Path(work))
                serving = wait_for_replicas(base, replicas)
                say(f"{replicas} replica(s) serving: {sorted(serving)}, pids {replica_pids()}")
                if replicas == 2:
                    check_same_bytes(base, serving, expected)
                asyncio.run(drive(base, args.clients, seconds=WARM_UP_S))  # first calls load and compile: not timed
                results, wall_s = asyncio.run(drive(base, args.clients, seconds=args.seconds))
                rows.append(throughput_row(replicas, args.clients, results, wall_s))
                say(f"throughput: {rows[-1]}")
            results, _ = asyncio.run(drive(base, args.clients, requests=args.requests, kill_after=args.requests // 3))
            check_all_answered(results, args.requests)
            replaced = wait_for_replicas(base, 2)
            if replaced == serving:
                raise SystemExit("FAIL: the killed replica was not replaced")
            say(f"the killed replica was replaced: replicas now {sorted(replaced)}")
    print(f"\nThroughput, mixed REST sample / score / V2 infer, {args.seconds:g} s per row, {os.cpu_count()} cores "
          "(one Ray node):\n")
    print("| replicas | clients | requests | retried | not 200 after retries | req/s | p50 ms | p99 ms |\n"
          "|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


STARTED = time.monotonic()
TEMP = Path("/nonexistent")

if __name__ == "__main__":
    main()
