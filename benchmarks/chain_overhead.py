"""An iterative procedure through the server against the same procedure in-process (issue 16, goal 5).

--case chain (default): a --steps-step RBM sample of n=1 (seed 0), the Markov chain.
--case importance: `vae`'s IWAE score of one test digit with k=--k importance samples after --steps
gradient refinements of its posterior (seed 0): each refinement step and each chunk of samples is a call.

Times the request through `genserve serve` over REST (a server started on 127.0.0.1 over a store of that
model alone) and through an in-process Engine with the same settings, alternating, --repeats times each,
and prints the medians and their ratio.

    .venv/bin/python benchmarks/chain_overhead.py [--case chain|importance] [--steps N] [--k K] [--repeats 5]
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # what the server gets (server_env), set before torch and numpy load

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from common import markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from test_server import free_port, server_env, stop, wait_ready  # noqa: E402

from service.engine.engine import Engine  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402
from training.data import mnist5k_binarized  # noqa: E402


@dataclasses.dataclass
class Case:
    model: str
    title: str
    route: str
    body: dict
    run: Callable[[Engine], Awaitable]


def chain(args: argparse.Namespace) -> Case:
    steps = args.steps or 1000
    return Case("rbm", f"{steps}-step RBM chain, n=1", "/v1/models/rbm/sample",
                {"n": 1, "seed": 0, "steps": steps, "format": "array"},
                lambda engine: engine.sample("rbm", 1, 0, 1.0, None, steps=steps))


def importance(args: argparse.Namespace) -> Case:
    steps = args.steps if args.steps is not None else 20
    digit = mnist5k_binarized().x_test[:1].astype(np.int64)  # [1, 1, 28, 28] levels 0..1
    return Case("vae", f"vae IWAE score, k={args.k}, {steps} refinement steps", "/v1/models/vae/score",
                {"inputs": digit.tolist(), "method": "iwae", "k": args.k, "refine_steps": steps, "seed": 0},
                lambda engine: engine.score("vae", digit, method="iwae", k=args.k, refine_steps=steps, seed=0))


CASES = {"chain": chain, "importance": importance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="chain")
    parser.add_argument("--steps", type=int, default=None, help="chain steps (1000) or refinement steps (20)")
    parser.add_argument("--k", type=int, default=1000, help="importance samples (--case importance)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    case = CASES[args.case](args)
    store = Path(tempfile.mkdtemp(prefix="chain-"))
    (store / case.model).symlink_to((REPO / "models" / case.model).resolve())
    engine = Engine(ModelStore(store), Settings(intra_op_threads=1))
    logs, port = Path(tempfile.mkdtemp(prefix="chain-logs-")), free_port()
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--grpc-port", str(free_port()), "--models", str(store)]
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env=server_env(), stdout=out, stderr=err)
    served, local = [], []
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", logs)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for _ in range(2):  # warm-up
                client.post(case.route, json=case.body).raise_for_status()
                asyncio.run(case.run(engine))
            for _ in range(args.repeats):
                start = time.perf_counter()
                client.post(case.route, json=case.body).raise_for_status()
                served.append(time.perf_counter() - start)
                start = time.perf_counter()
                asyncio.run(case.run(engine))
                local.append(time.perf_counter() - start)
    finally:
        stop(process)
    a, b = statistics.median(served), statistics.median(local)
    print(markdown_table(["path", f"{case.title} (median s)"],
                         [["REST, through the server", f"{a:.3f}"], ["in-process Engine", f"{b:.3f}"],
                          ["ratio", f"{a / b:.2f}x"]]))


if __name__ == "__main__":
    main()
