"""A Markov chain through the server against the same chain in-process (issue 16, goal 5).

Times a 1000-step RBM sample of n=1 (seed 0) through `genserve serve` over REST (a server started on
127.0.0.1 over a store of `rbm` alone) and through an in-process Engine with the same settings, alternating,
--repeats times each, and prints the medians and their ratio.

    .venv/bin/python benchmarks/chain_overhead.py [--steps 1000] [--repeats 5]
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import markdown_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from test_server import free_port, server_env, stop, wait_ready  # noqa: E402

from service.engine.engine import Engine  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="chain-"))
    (store / "rbm").symlink_to((REPO / "models" / "rbm").resolve())
    engine = Engine(ModelStore(store), Settings(intra_op_threads=1))
    logs, port = Path(tempfile.mkdtemp(prefix="chain-logs-")), free_port()
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--grpc-port", str(free_port()), "--models", str(store)]
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env=server_env(), stdout=out, stderr=err)
    body = {"n": 1, "seed": 0, "steps": args.steps, "format": "array"}
    served, local = [], []
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", logs)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            client.post("/v1/models/rbm/sample", json={**body, "steps": 10}).raise_for_status()  # warm-up
            asyncio.run(engine.sample("rbm", 1, 0, 1.0, None, steps=10))
            for _ in range(args.repeats):
                start = time.perf_counter()
                client.post("/v1/models/rbm/sample", json=body).raise_for_status()
                served.append(time.perf_counter() - start)
                start = time.perf_counter()
                asyncio.run(engine.sample("rbm", 1, 0, 1.0, None, steps=args.steps))
                local.append(time.perf_counter() - start)
    finally:
        stop(process)
    a, b = statistics.median(served), statistics.median(local)
    print(markdown_table(["path", f"{args.steps}-step RBM chain, n=1 (median s)"],
                         [["REST, through the server", f"{a:.3f}"], ["in-process Engine", f"{b:.3f}"],
                          ["ratio", f"{a / b:.2f}x"]]))


if __name__ == "__main__":
    main()
