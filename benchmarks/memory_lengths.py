"""Does the server's memory stay flat under scores of random lengths? (issue 15, defect 8)

Starts `genserve serve` on a store of one sequence model (default charrnn from models/), sends --requests
score requests of one input of a random length in 1..--max-length (seeded), one at a time, to 127.0.0.1, and
prints the RSS of the API process and of the engine worker every --every requests.

    .venv/bin/python benchmarks/memory_lengths.py [--model charrnn] [--requests 5000] [--max-length 3000]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import markdown_table
from servers import REPO, free_port, reduced_store, rss_mb, start_server, stop, wait_ready, worker_pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="charrnn")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--max-length", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="genserve-memory-"))
    store = reduced_store(REPO / "models", [args.model], work)
    port, log = free_port(), work / "server.log"
    process = start_server(store, port, free_port(), log)
    base, rng, rows = f"http://127.0.0.1:{port}", np.random.default_rng(0), []
    alphabet = "abcdefghijklmnopqrstuvwxyz ().,"
    try:
        wait_ready(process, base, log)
        worker = worker_pid(process.pid)
        start = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(args.requests + 1):
                if i % args.every == 0:
                    rows.append([i, f"{rss_mb(process.pid):.0f}", f"{rss_mb(worker):.0f}",
                                 f"{time.monotonic() - start:.0f}"])
                    print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
                if i == args.requests:
                    break
                text = "".join(rng.choice(list(alphabet), int(rng.integers(1, args.max_length + 1))))
                response = client.post(f"/v1/models/{args.model}/score", json={"inputs": [text]})
                response.raise_for_status()
    finally:
        stop(process)
    print(markdown_table(["requests", "API RSS (MB)", "worker RSS (MB)", "seconds"], rows))


if __name__ == "__main__":
    main()
