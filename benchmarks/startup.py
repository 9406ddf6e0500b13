"""How soon `genserve serve` on the shipped store is ready, and what a first request then pays (issue 16, goal 4).

Starts the server (127.0.0.1, free ports), times /readyz 200 from the start of the process, then sends one small
request per model at once (a score, or a sample for models without one) and times it: a model whose functions the
worker has not loaded yet loads them for that request. Then waits for the worker's "all N functions loaded" log
line and sends the same requests again (all loaded).

    .venv/bin/python benchmarks/startup.py [--models-dir models]
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import markdown_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from test_server import free_port, server_env, stop  # noqa: E402


def probe(client: httpx.Client, model: dict, capabilities: dict) -> float:
    """Seconds of one small request to the model (a score of a blank image or a short text where it scores, a
    translation of a blank image where it translates, else one sample: of a caption where it takes a prompt, under
    two zero actions where it rolls out); NaN if it failed. `capabilities`: its manifest's."""
    name, data = model["name"], model["data"]
    blank = [[[0] * data["shape"][-1] for _ in range(data["shape"][-2])]] if data["kind"] == "image" else None
    start = time.perf_counter()
    if "score" in capabilities and data["kind"] == "image":
        response = client.post(f"/v1/models/{name}/score", json={"inputs": [blank]})
    elif "score" in capabilities and data["kind"] == "text":
        response = client.post(f"/v1/models/{name}/score", json={"inputs": ["hello"]})
    elif "translate" in capabilities:
        shape = capabilities["translate"]["input"]["shape"]  # [C, H, W]
        image = [[[0] * shape[-1] for _ in range(shape[-2])]]
        response = client.post(f"/v1/models/{name}/translate", json={"inputs": [image]})
    else:
        sample = capabilities["sample"]
        extra = {"length": 16} if data["kind"] == "audio" else {}  # a Markov chain runs its default steps
        if "prompt" in sample:
            extra["prompt"] = "a thick seven"
        if "actions" in sample:
            extra["actions"] = [[0.0] * math.prod(sample["actions"]["shape"])] * 2
        response = client.post(f"/v1/models/{name}/sample", json={"n": 1, "seed": 0, **extra})
    seconds = time.perf_counter() - start
    return seconds if response.status_code == 200 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="startup-"))
    port = free_port()
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--grpc-port", str(free_port()), "--models", str(args.models_dir)]
    start = time.monotonic()
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env=server_env(), stdout=out, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            while True:
                try:
                    if client.get("/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - start > 120 or process.poll() is not None:
                    raise SystemExit(f"not ready in 120 s; log: {logs}")
                time.sleep(0.05)
            ready = time.monotonic() - start
            models = client.get("/v1/models").json()["models"]
            capabilities = {m["name"]: json.loads((args.models_dir / m["name"] / str(m["version"]) /
                                                   "manifest.json").read_text())["capabilities"] for m in models}
            first = {m["name"]: probe(client, m, capabilities[m["name"]]) for m in models}
            while "functions loaded in" not in (logs / "stderr").read_text():
                if time.monotonic() - start > 300:
                    raise SystemExit(f"the worker did not finish loading in 300 s; log: {logs}")
                time.sleep(0.2)
            loaded = time.monotonic() - start
            warm = {m["name"]: probe(client, m, capabilities[m["name"]]) for m in models}
    finally:
        stop(process)
    rows = [[name, f"{first[name] * 1000:.0f}", f"{warm[name] * 1000:.0f}"] for name in first]
    print(f"/readyz 200 after {ready:.2f} s; every function loaded after {loaded:.1f} s ({len(models)} models)\n")
    print(markdown_table(["model", "first request right after ready (ms)", "once all loaded (ms)"], rows))


if __name__ == "__main__":
    main()
