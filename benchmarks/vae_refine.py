"""Iterative inference at serving time: the test ELBO of the shipped `vae` after 0, 1, 2, ... refinement steps
of its amortized posterior (gradient ascent on a Monte Carlo ELBO, run by the engine's `refine_step`).

Every row uses the same inputs, seed and k, so the differences are the refinement's alone.

    .venv/bin/python benchmarks/vae_refine.py [--images 100] [--k 100] [--json out.json]
"""

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training.data import load

STEPS = (0, 1, 2, 5, 10, 20, 50)


async def table(models: Path, images: int, k: int) -> list[dict]:
    engine = Engine(ModelStore(models), Settings())
    x = load("mnist5k-binarized").x_test[::5][:images].astype(np.int64)  # the split is ordered by class
    rows = []
    for steps in STEPS:
        elbo = [r["log_likelihood_nats"] for r in await engine.score("vae", x, method="elbo", k=k, refine_steps=steps)]
        iwae = [r["log_likelihood_nats"] for r in await engine.score("vae", x, method="iwae", k=k, refine_steps=steps)]
        rows.append({"refine_steps": steps, "elbo": float(np.mean(elbo)), "iwae": float(np.mean(iwae)),
                     "elbo_stderr": float(np.std(elbo, ddof=1) / np.sqrt(images))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--images", type=int, default=100, help="test images (every 5th: 10 of each class)")
    parser.add_argument("--k", type=int, default=100, help="importance samples per estimate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = asyncio.run(table(args.models, args.images, args.k))
    print(f"| refine steps | ELBO (nats) | gain over 0 steps | IWAE-{args.k} (nats) |")
    print("|---|---|---|---|")
    for row in rows:
        gain = row["elbo"] - rows[0]["elbo"]
        print(f"| {row['refine_steps']} | {row['elbo']:.2f} | {gain:+.2f} | {row['iwae']:.2f} |")
    print(f"\n{args.images} test images of mnist5k-binarized (every 5th), k = {args.k}, seed 0; "
          f"ELBO standard error over images about {rows[0]['elbo_stderr']:.2f} "
          "(the gains are paired, on the same images and noise).")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
