"""A health figure per model: the NLL a model gives its own samples, beside its test NLL (issue 22, item 12).

For every model of the store that both samples and scores a likelihood (GAN critics and the GSN are left out),
this draws --n samples through the serving engine (in this process; requests with seeds 0, c, 2c, ... of c rows,
default length, steps and k), scores them as a user would (the model's default method), and prints, per model:
the mean bits per dimension (per character, per audio sample) of its own samples, the test split's figure from
its manifest (`metrics.test_bits_per_dim`, measured at export), their ratio, the median percentile of the
samples' NLL among the held-out NLLs the anomaly calibration holds (the `nll` detector), and the share of samples
that detector flags. A well-fitted model's samples should score about like held-out data (ratio near 1, median
percentile near 50); samples that drift into states the model is unsure of score worse than any held-out input.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/own_samples.py [--n 32] [--only wavenet,charrnn] \\
        [--json benchmarks/results/own_samples.json] [--md benchmarks/results/own_samples.md]
"""

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from service.engine.engine import Engine  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402

TIMEOUT_MS = 30 * 60 * 1000


def likelihood_models(engine: Engine) -> list[str]:
    """The models that sample and score a likelihood (not a critic)."""
    return sorted(name for name, m in engine.models.items()
                  if {"sample", "score"} <= set(m.capabilities) and m.capabilities["score"].get("method") != "critic")


def per_request(cap: dict, row_steps: int, n: int) -> int:
    """How many of n rows of `row_steps` steps one request may carry (the capability's max_row_steps)."""
    return max(1, min(n, cap["max_row_steps"] // row_steps)) if "max_row_steps" in cap else n


async def own_samples(engine: Engine, name: str, n: int) -> list:
    """n samples, in requests the capability's limits allow; sample i has seed i (one row per seed)."""
    m = engine.model(name)
    cap = m.capability("sample")
    steps = cap.get("steps", 1) * (math.prod(cap["step_shape"]) if "step_shape" in cap else 1)
    chunk = per_request(cap, steps, n)
    out = []
    for i in range(0, n, chunk):
        x = await engine.sample(name, min(chunk, n - i), i, 1.0, None)
        out.extend(list(x))
    return out


async def scores(engine: Engine, name: str, x: list) -> list[dict]:
    m = engine.model(name)
    cap = m.capability("score")
    chunk = per_request(cap, cap.get("k", 1), len(x))
    out = []
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        out += await engine.score(name, part if m.is_sequence else np.stack(part), anomaly_method="nll")
    return out


async def measure(models: Path, n: int, only: list[str]) -> list[dict]:
    # a slow (shared) machine gives a slow run rather than a deadline error
    engine = Engine(ModelStore(models), Settings(intra_op_threads=1, timeout_ms=TIMEOUT_MS))
    rows = []
    for name in likelihood_models(engine):
        if only and name not in only:
            continue
        t0 = time.monotonic()
        results = await scores(engine, name, await own_samples(engine, name, n))
        m = engine.model(name)
        bits = np.array([r["bits_per_dim"] for r in results])
        percentiles = np.array([r["anomaly"]["percentile"] for r in results])
        test_bits = m.manifest["metrics"]["test_bits_per_dim"]
        rows.append({"model": name, "kind": m.data["kind"], "n": len(results), "method": results[0]["method"],
                     "own_bits": float(bits.mean()), "own_bits_stderr": float(bits.std(ddof=1) / math.sqrt(len(bits))),
                     "test_bits": test_bits, "ratio": float(bits.mean() / test_bits),
                     "median_percentile": float(np.median(percentiles)),
                     "flagged": float(np.mean([r["anomaly"]["is_anomaly"] for r in results])),
                     "seconds": time.monotonic() - t0})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


UNITS = {"image": "bits/dim", "text": "bits/char", "audio": "bits/sample"}


def markdown(rows: list[dict], command: str) -> str:
    lines = ["| model | unit | own samples | test split | ratio | median percentile | flagged | method |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {UNITS[r['kind']]} | {r['own_bits']:.3f} ± {r['own_bits_stderr']:.3f} | "
              f"{r['test_bits']:.3f} | {r['ratio']:.2f} | {r['median_percentile']:.0f} | "
              f"{r['flagged'] * 100:.0f}% | {r['method']} |" for r in rows]
    lines += ["", f"{rows[0]['n'] if rows else 0} samples per model (temperature 1, the default length, steps and k; "
              "requests of as many rows as the capability's limit allows, seeds 0, c, 2c, ...), each scored "
              "without a label; own samples: mean ± standard error; test split: the manifest's "
              "`metrics.test_bits_per_dim`; percentile and flag: the `nll` detector against the held-out "
              f"calibration (flagged at percentile >= 99). `{command}`"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--n", type=int, default=32, help="samples per model")
    p.add_argument("--only", default="", help="comma-separated models")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    args = p.parse_args()
    rows = asyncio.run(measure(args.models, args.n, [s for s in args.only.split(",") if s]))
    text = markdown(rows, "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/own_samples.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
