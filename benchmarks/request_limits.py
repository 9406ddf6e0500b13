"""The largest request each shipped model allows, and how long it takes here (issue 15, defects 3 and 4).

Every iterative capability (Markov chains, importance-sampled bounds, sequence generation) has a per-request
limit in its manifest entry: `max_row_steps` (rows x steps: chains x steps, inputs x k, samples x values) and,
for sequence models, `max_length` (values per row). This script measures each capability's rate through the
in-process Engine (ONNX Runtime, the serving default of threads) on a probe request, and derives the limits
that keep the largest allowed request within --budget-s seconds (default 20 s: a third of the default 60 s
deadline, a margin for a machine that is busy with other work):

    max_row_steps = rate at the largest batch x budget,   max_length = rate of one row x budget

(2 significant figures, rounded down). `--write` stores them in the manifests' capability entries (no model
file changes: the store checks the sha256 of the function files, not of the manifest). `--verify` then runs
the largest allowed requests of each capability at both extremes (one row for as many steps as allowed, and
the most rows for max_row_steps / rows steps) and reports their seconds beside the deadline.

    .venv/bin/python benchmarks/request_limits.py [--models rbm gsn ...] [--budget-s 20] [--write] [--verify]
"""

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import markdown_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.engine.engine import Engine  # noqa: E402
from service.engine.scheduler import DeadlineExceeded  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402

ITERATIVE = ("markov_chain", "importance")


def store_of(models: Path, names: list[str]) -> ModelStore:
    """A store of the named models only (links into a temporary directory)."""
    root = Path(tempfile.mkdtemp(prefix="limits-"))
    for name in names:
        (root / name).symlink_to((models / name).resolve())
    return ModelStore(root)


def half_image(m) -> tuple[np.ndarray, np.ndarray]:
    """One blank input and a mask observing its top half."""
    x = np.zeros([1, *m.shape], np.int64)
    mask = np.ones_like(x)
    mask[..., m.shape[-2] // 2:, :] = 0
    return x, mask


async def run(engine: Engine, name: str, capability: str, rows: int, steps: int) -> float:
    """Seconds of one request of `rows` rows and `steps` steps of the capability's procedure."""
    m = engine.model(name)
    cap = m.capability(capability)
    start = time.perf_counter()
    if cap["procedure"] == "importance":
        await engine.score(name, np.zeros([rows, *m.shape], np.int64), k=steps)
    elif m.is_sequence:
        if capability == "sample":
            await engine.sample(name, rows, 0, 1.0, None, length=steps)
        else:
            await engine.complete(name, [np.zeros(1, np.int64)], None, rows, 0, 1.0, length=steps - 1)
    elif capability == "sample":
        await engine.sample(name, rows, 0, 1.0, None, steps=steps)
    else:
        x, mask = half_image(m)
        await engine.complete(name, x, mask, rows, 0, 1.0, steps=steps)
    return time.perf_counter() - start


def capabilities(engine: Engine, name: str) -> list[str]:
    m = engine.model(name)
    return [c for c, cap in m.capabilities.items()
            if cap["procedure"] in ITERATIVE or (cap["procedure"] == "autoregressive" and m.is_sequence
                                                  and c in ("sample", "complete"))]


def round_down(value: float) -> int:
    """Two significant figures, rounded down."""
    scale = 10 ** max(int(math.log10(value)) - 1, 0)
    return int(value // scale * scale)


async def measure(engine: Engine, name: str, capability: str, settings: Settings, budget_s: float) -> dict:
    """Rates at the largest batch and at one row, and the limits they give."""
    m = engine.model(name)
    batch = settings.max_samples_per_request
    generates = m.is_sequence and m.capability(capability)["procedure"] == "autoregressive"  # not an audio bound
    probe = 2000 if generates else 20  # values, chain steps or k per row
    await run(engine, name, capability, 2, 2)  # warm-up
    batched = batch * probe / await run(engine, name, capability, batch, probe)
    limits = {"max_row_steps": round_down(batched * budget_s)}
    if generates:
        single = 4 * probe / await run(engine, name, capability, 1, 4 * probe)
        limits["max_length"] = min(round_down(single * budget_s), settings.max_sequence_length)
    return limits


async def verify(engine: Engine, name: str, capability: str, settings: Settings) -> list[tuple[int, int, float]]:
    """(rows, steps, seconds) of the largest allowed requests at both extremes."""
    cap = engine.model(name).capability(capability)
    rows = settings.max_samples_per_request
    most_steps = cap.get("max_length", cap.get("max_steps", cap.get("max_k")))
    shapes = [(1, min(most_steps, cap["max_row_steps"])), (rows, min(most_steps, cap["max_row_steps"] // rows))]
    return [(r, s, await timed_out_as_inf(run(engine, name, capability, r, s))) for r, s in shapes]


async def timed_out_as_inf(request) -> float:
    """The request's seconds, or infinity if it ran past the deadline."""
    try:
        return await request
    except DeadlineExceeded:
        return math.inf


def write_limits(models: Path, name: str, capability: str, limits: dict) -> None:
    """Store the limits in the capability entry of the model's newest manifest (key order kept)."""
    path = sorted((models / name).glob("*/manifest.json"), key=lambda p: int(p.parent.name))[-1]
    manifest = json.loads(path.read_text())
    manifest["capabilities"][capability].update(limits)
    path.write_text(json.dumps(manifest, indent=2))  # as training/export.py writes it


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--models", nargs="*", help="default: every model with an iterative capability")
    parser.add_argument("--budget-s", type=float, default=20.0)
    parser.add_argument("--write", action="store_true", help="store the measured limits in the manifests")
    parser.add_argument("--verify", action="store_true", help="run the largest allowed requests and time them")
    args = parser.parse_args()
    settings = Settings()
    names = args.models or sorted(p.name for p in args.models_dir.iterdir() if (p / "1").is_dir())
    engine = Engine(store_of(args.models_dir, names), settings)
    rows = []
    for name in names:
        for capability in capabilities(engine, name):
            limits = await measure(engine, name, capability, settings, args.budget_s)
            if args.write:
                write_limits(args.models_dir, name, capability, limits)
                engine = Engine(store_of(args.models_dir, names), settings)  # reread the manifests
            row = [name, capability, engine.model(name).capability(capability)["procedure"],
                   limits["max_row_steps"], limits.get("max_length", "")]
            if args.verify:
                row += ["; ".join(f"{r} x {s}: {t:.1f} s" for r, s, t in await verify(engine, name, capability,
                                                                                          settings))]
            rows.append(row)
            print(" | ".join(map(str, row)), file=sys.stderr, flush=True)
    headers = ["model", "capability", "procedure", "max_row_steps", "max_length"]
    print(markdown_table(headers + (["largest allowed (rows x steps: seconds)"] if args.verify else []), rows))
    print(f"\nbudget {args.budget_s:.0f} s per request; default deadline {60000 / 1000:.0f} s (inf: past it); "
          f"{'written to the manifests' if args.write else 'not written (--write)'}")


if __name__ == "__main__":
    asyncio.run(main())
