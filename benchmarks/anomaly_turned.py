"""Upside-down digits, the third held-out set's hardest kind, split by the digit that was turned (issue 17).

No default detector reaches AUROC 0.95 on "upside down" (benchmarks/results/anomaly_third.md). A 0, 1 or 8 turned by
180 degrees is drawn much as the same digit, and a turned 6 or 9 much as the other: so part of that kind may be
digits, which no detector of "not a digit" should flag. This report asks how much of the shortfall that explains. It
chooses nothing and writes no manifest.

For each model, over the 250 test digits of half B (the report half of benchmarks/anomaly.py, gray or binarized as
the model reads them, as benchmarks/anomaly_unseen.py makes its sets): each model's default detector scores the
digits as they are and turned; the AUROC of all the digits, and of the group's own digits (so that a class's own
typical score does not count as the turn's), against the turned digits of each group of classes, with 2.5-97.5% of
BOOTSTRAP resamples of both sets:

    alike when turned    0, 1, 8 (turned, still the same digit)
    swapped when turned  6, 9 (turned, the other)
    the rest             2, 3, 4, 5, 7

and over all classes (the third set's kind, there with 64 digits). Beside it, the shipped evaluation classifier
(models/evaluation) on the gray turned digits: the share it reads with probability at least 0.9, and the share it
reads as the digit a turn should give (0, 1, 8 as themselves, 6 as 9, 9 as 6), per group.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly_turned.py [--models vae rbm] [--json ...] [--out ...]
"""

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks.anomaly
from benchmarks.anomaly import (  # noqa: E402
    BOOTSTRAP,
    DATASETS,
    auroc,
    cell,
    features,
    halves,
    quantize,
    score_options,
    scoring_models,
    with_interval,
)
from benchmarks.anomaly_unseen import served_entries  # noqa: E402
from service.engine import anomaly  # noqa: E402
from service.engine.engine import Engine  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402
from training import quality  # noqa: E402
from training.data import load  # noqa: E402

GROUPS = {"alike when turned": [0, 1, 8], "swapped when turned": [6, 9], "the rest": [2, 3, 4, 5, 7]}
TURNED_AS = {0: 0, 1: 1, 8: 8, 6: 9, 9: 6}  # the digit a turned digit is drawn as, where there is one
CONFIDENT = 0.9
RESULTS = Path("benchmarks/results/anomaly_turned")


def digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half B's gray test digits [250, 1, 28, 28] and their labels [250]."""
    half_b, split = halves(seed)[1], load("mnist5k")
    return split.x_test[half_b], split.y_test[half_b]


def turned(x: np.ndarray) -> np.ndarray:
    """[N, 1, 28, 28] -> each turned by 180 degrees."""
    return x[:, :, ::-1, ::-1].copy()


def classifier_reading(x: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """The shipped classifier on gray digits x [N, 1, 28, 28] turned, per group: the share read with p >= CONFIDENT,
    and the share read as TURNED_AS (where the group has it)."""
    probs = quality.classify(quality.load_classifier(quality.SHIPPED)[0], turned(x), 256)[0]  # [N, 10]
    read, sure = probs.argmax(1), probs.max(1) >= CONFIDENT
    answer = {}
    for group, classes in {**GROUPS, "all": list(range(10))}.items():
        mask = np.isin(y, classes)
        expected = np.array([TURNED_AS.get(int(label), -1) for label in y[mask]])
        answer[group] = {"n": int(mask.sum()), "confident": float(sure[mask].mean()),
                         "read as turned": float((read[mask] == expected).mean()) if group in GROUPS
                         and set(classes) <= set(TURNED_AS) else None}
    return answer


async def evaluate(engine: Engine, name: str, x: np.ndarray, y: np.ndarray, seed: int, k: int) -> dict:
    """The default detector's AUROC of x against x turned, per group (and all), with bootstrap intervals."""
    m = engine.model(name)
    levels, default = m.data["levels"], anomaly.default_detector(m.manifest)
    entry = served_entries(engine, name, k)[default]
    need = set(anomaly.components(default))
    binarize = np.random.default_rng([seed, 99])
    in_distribution = load(DATASETS[levels]).x_test[halves(seed)[1]]  # the third set's report/in, at n = 250
    sets = {"in": in_distribution, "turned": quantize(turned(x), levels, binarize)}
    scores = {}
    for key, images in tqdm(sets.items(), desc=name, file=sys.stderr):
        feats = await features(engine, name, images, score_options(engine, name, k), need)
        if "latent_mahalanobis" in need:
            feats["latent_mahalanobis"] = anomaly.latent_mahalanobis(feats["latent_mean"], feats["latent_std"],
                                                                     m.latent_gaussian)
        scores[key] = anomaly.per_input_scores(default, feats, entry)  # [N]
    bootstrap, groups = np.random.default_rng([seed, 5]), {**GROUPS, "all": list(range(10))}
    aurocs = {group: with_interval(auroc, scores["in"], scores["turned"][np.isin(y, classes)], bootstrap)
              for group, classes in groups.items()}  # against every digit
    matched = {group: with_interval(auroc, scores["in"][np.isin(y, classes)], scores["turned"][np.isin(y, classes)],
                                    bootstrap) for group, classes in groups.items()}  # against the group's own digits
    return {"model": name, "default": default, "levels": levels, "auroc": aurocs, "matched": matched}


def table(rows: list[dict], reading: dict, command: str, seconds: float) -> str:
    groups = [*GROUPS, "all"]
    sizes = ", ".join(f"{g} {reading[g]['n']}" for g in groups)
    lines = ["# Upside-down digits by the digit turned\n", f"    {command}\n",
             f"{seconds / 60:.1f} min. Each model's default detector: AUROC of half B's 250 test digits against "
             f"the same digits turned by 180 degrees, per group of the turned digit's class ({sizes}), with "
             f"2.5-97.5% of {BOOTSTRAP} bootstrap resamples of both sets.\n",
             "| model | default | " + " | ".join(f"{g} ({', '.join(map(str, GROUPS.get(g, ['0-9'])))})" for g in groups)
             + " |", "|---|---|" + "---|" * len(groups)]
    lines += [f"| {r['model']} | {r['default']} | " + " | ".join(cell(r["auroc"][g]) for g in groups) + " |"
              for r in rows]
    lines += ["\n## The same, each group against its own digits untouched (the same classes on both sides)\n",
              lines[3], lines[4]]
    lines += [f"| {r['model']} | {r['default']} | " + " | ".join(cell(r["matched"][g]) for g in groups) + " |"
              for r in rows]
    lines += ["\n## The shipped evaluation classifier on the turned (gray) digits\n",
              "| group | digits | read with p >= 0.9 | read as the digit a turn gives |", "|---|---|---|---|"]
    for g in groups:
        r = reading[g]
        as_turned = "" if r["read as turned"] is None else f"{r['read as turned']:.3f}"
        lines.append(f"| {g} | {r['n']} | {r['confident']:.3f} | {as_turned} |")
    return "\n".join(lines) + "\n"


async def run(args, x: np.ndarray, y: np.ndarray) -> list[dict]:
    engine = Engine(ModelStore(args.store), Settings(intra_op_threads=1))
    rows = []
    for name in scoring_models(engine, args.models):
        rows.append(await evaluate(engine, name, x, y, args.seed, args.k))
        Path(args.json).write_text(json.dumps(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--k", type=int, default=100, help="importance samples for IWAE-scored models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(RESULTS.with_suffix(".json")))
    parser.add_argument("--out", type=Path, default=RESULTS.with_suffix(".md"))
    args = parser.parse_args()
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + shlex.join([os.path.relpath(sys.executable), *sys.argv])
    start = time.time()
    x, y = digits(args.seed)
    reading = classifier_reading(x, y)
    rows = asyncio.run(run(args, x, y))
    args.out.write_text(table(rows, reading, command, time.time() - start))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
