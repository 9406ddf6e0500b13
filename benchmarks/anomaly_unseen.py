"""Anomaly detection on eight OOD kinds that nobody had seen: a second held-out test of the served detectors.

The ten REPORT kinds of benchmarks/anomaly.py have been read after every run since issue 17 began, and some design
choices followed them (the `constant` construction was added after smooth inputs failed there), so they no longer
test "inputs nobody tuned for". These eight kinds were written on 2026-12-07 and committed before any model scored
them; nothing here writes a manifest. Each is made from the test split's half B (the report half) or from noise:

    shifted        a test digit moved 5-7 pixels in one of eight directions (what leaves the canvas is lost)
    bold           a test digit dilated by a 5x5 maximum filter
    faint          a test digit eroded by a 3x3 minimum filter
    two digits     two test digits, each scaled to 14x14, side by side
    crossed out    a test digit with a straight line of width 3 from the left edge to the right edge
    smooth field   uniform noise through GaussianBlur(radius 2), stretched to 0..255
    stripes        a sinusoidal grating, period 4-10 pixels, any angle
    elastic        a test digit warped by a smooth random displacement field (sigma 4 pixels, up to about 8)

Every detector is scored from its calibration entry as the manifest holds it (mix and states standardizations, the
latent Gaussian, typical_nll's center) and the model's features through the in-process Engine, with the k, seeds,
background model and hierarchical skip of benchmarks/anomaly.py, checked equal to what each entry records (a bound-
scored model's base `nll` alone is scored at --k, while its top-level calibration, training's test bound, is at
k 1000). The in-distribution set is benchmarks/anomaly.py's `report/in` (the first --n digits of half B).

Three questions were fixed before the run, with the rows of the latest benchmarks/anomaly.py run (--rows) for the
choose step's AUROCs:
1. Do the defaults hold on kinds that played no part in anything (min / mean AUROC against the report table's)?
2. Is the density of states (`states:...`, chosen for none) better there too, as on the report kinds?
3. Would the choose step's other natural rule, the best *mean* AUROC over the constructions instead of the best
   worst case, have picked better defaults (on these kinds)?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly_unseen.py [--models vae gan] --json ... --out ...
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
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks.anomaly
from benchmarks.anomaly import (  # noqa: E402
    BACKGROUNDS,
    DATASETS,
    HIERARCHY_SKIP,
    REPORT_KINDS,
    TEST_SIZE,
    auroc,
    features,
    halves,
    pil_map,
    quantize,
    score_options,
    scoring_models,
)
from service.engine import anomaly  # noqa: E402
from service.engine.engine import Engine  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402
from training.data import load  # noqa: E402

UNSEEN_KINDS = ["shifted", "bold", "faint", "two digits", "crossed out", "smooth field", "stripes", "elastic"]


def shifted(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """a [n, 1, 28, 28] -> each moved 5-7 pixels in one of eight directions, zeros shifted in."""
    out = np.zeros_like(a)
    for i, x in enumerate(a):
        angle, step = rng.integers(8) * np.pi / 4, rng.integers(5, 8)
        dy, dx = int(round(step * np.sin(angle))), int(round(step * np.cos(angle)))
        moved = np.roll(x[0], (dy, dx), axis=(0, 1))
        rows, cols = np.indices(moved.shape)
        inside = (rows - dy >= 0) & (rows - dy < 28) & (cols - dx >= 0) & (cols - dx < 28)
        out[i, 0] = np.where(inside, moved, 0)
    return out


def two_digits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two digit sets [n, 1, 28, 28] -> each pair scaled to 14x14, side by side in the middle rows."""
    small = [pil_map(x, lambda im: im.resize((14, 14), Image.Resampling.BILINEAR)) for x in (a, b)]
    out = np.zeros_like(a)
    out[:, :, 7:21, :14], out[:, :, 7:21, 14:] = small
    return out


def crossed_out(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = a.copy()
    for i, x in enumerate(a):
        image = Image.fromarray(x[0])
        ImageDraw.Draw(image).line([(0, float(rng.uniform(4, 24))), (27, float(rng.uniform(4, 24)))], fill=255,
                                   width=3)
        out[i, 0] = np.asarray(image)
    return out


def smooth_field(n: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    blurred = pil_map(noise, lambda im: im.filter(ImageFilter.GaussianBlur(2))).astype(np.float64)
    low, high = blurred.min(axis=(1, 2, 3), keepdims=True), blurred.max(axis=(1, 2, 3), keepdims=True)
    return np.round(255 * (blurred - low) / np.maximum(high - low, 1)).astype(np.uint8)


def stripes(n: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.indices((28, 28))
    out = np.zeros((n, 1, 28, 28), np.uint8)
    for i in range(n):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(4, 10), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (rows * np.sin(angle) + cols * np.cos(angle)) / period + phase)
        out[i, 0] = np.round(127.5 * (1 + wave)).astype(np.uint8)
    return out


def elastic(a: np.ndarray, rng: np.random.Generator, sigma: float = 4.0, alpha: float = 34.0) -> np.ndarray:
    """Simard et al. 2003's elastic distortion: a uniform random displacement field smoothed by a Gaussian of
    `sigma` pixels and scaled by `alpha` (displacements of up to about 8 pixels), bilinear."""
    rows, cols = np.indices((28, 28)).astype(np.float64)
    out = np.zeros_like(a)
    for i, x in enumerate(a):
        dy, dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), sigma) * alpha for _ in range(2))
        warped = ndimage.map_coordinates(x[0].astype(np.float64), [rows + dy, cols + dx], order=1, cval=0)
        out[i, 0] = np.clip(np.round(warped), 0, 255).astype(np.uint8)
    return out


def unseen_kinds(half_b: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gray [n, 1, 28, 28] sets of every UNSEEN kind, the digit ones from half B's gray digits."""
    a, b = (half_b[rng.permutation(len(half_b))[:n]] for _ in range(2))
    return {"shifted": shifted(a, rng), "bold": pil_map(a, lambda im: im.filter(ImageFilter.MaxFilter(5))),
            "faint": pil_map(a, lambda im: im.filter(ImageFilter.MinFilter(3))), "two digits": two_digits(a, b),
            "crossed out": crossed_out(a, rng), "smooth field": smooth_field(n, rng), "stripes": stripes(n, rng),
            "elastic": elastic(a, rng)}


def served_entries(engine: Engine, name: str, k: int) -> dict[str, dict]:
    """Every calibrated per-input detector of the model and its entry, as the manifest holds them; SystemExit
    where an entry of `detectors` records settings other than those `features` computes with."""
    m = engine.model(name)
    calibration = m.manifest["calibration"]
    expected = {"k": k, "background": BACKGROUNDS[m.data["levels"]], "skip": HIERARCHY_SKIP}
    for detector, entry in calibration.get("detectors", {}).items():
        other = {key: entry[key] for key in expected if key in entry and entry[key] != expected[key]}
        if other:
            raise SystemExit(f"{name} {detector}: calibrated with {other}; this benchmark computes {expected}")
    return {anomaly.base_detector(m.manifest): calibration, **calibration.get("detectors", {})}


async def evaluate(engine: Engine, name: str, n: int, seed: int, k: int) -> dict:
    """The model's AUROC per detector and kind: report/in (n digits of half B, as benchmarks/anomaly.py draws
    them) against each UNSEEN kind."""
    m = engine.model(name)
    levels = m.data["levels"]
    entries = served_entries(engine, name, k)
    need = {p for d in entries for p in anomaly.components(d)}
    order = np.random.default_rng([seed, 17]).permutation(TEST_SIZE)  # benchmarks/anomaly.py's first draw
    half_b = halves(seed)[1]
    sets = {"in": load(DATASETS[levels]).x_test[np.sort(order[TEST_SIZE // 2:][:n])]}  # its report/in
    binarize = np.random.default_rng([seed, 7])
    for kind, x in unseen_kinds(load("mnist5k").x_test[half_b], n, np.random.default_rng([seed, 6])).items():
        sets[kind] = quantize(x, levels, binarize)
    feats = {}
    for key, x in tqdm(sets.items(), desc=name, file=sys.stderr):
        feats[key] = await features(engine, name, x, score_options(engine, name, k), need)
        if "latent_mahalanobis" in need:
            feats[key]["latent_mahalanobis"] = anomaly.latent_mahalanobis(feats[key]["latent_mean"],
                                                                           feats[key]["latent_std"], m.latent_gaussian)
    scores = {d: {key: anomaly.per_input_scores(d, f, e) for key, f in feats.items()} for d, e in entries.items()}
    return {"model": name, "default": anomaly.default_detector(m.manifest), "n": n,
            "auroc": {d: {kind: auroc(s["in"], s[kind]) for kind in UNSEEN_KINDS} for d, s in scores.items()}}


def mean_rule_default(row: dict) -> str:
    """The detector the choose step would pick by the best mean AUROC over its constructions (ties: worst case)."""
    choose = row["choose"]
    return max(row["detectors"], key=lambda d: (np.mean(list(choose[d].values())), min(choose[d].values())))


def summary(aurocs: dict[str, float]) -> tuple[float, float]:
    values = list(aurocs.values())
    return min(values), float(np.mean(values))


def tables(rows: list[dict], choice_rows: dict[str, dict], command: str, seconds: float | None) -> str:
    took = "Rows merged from runs split by --models." if seconds is None else f"{seconds / 60:.1f} min."
    lines = ["# Anomaly detection on eight kinds nobody had seen\n", f"    {command}\n",
             f"{took} AUROC, OOD the positive class, {rows[0]['n']} inputs per set; the "
             f"in-distribution set is the report step's ({rows[0]['n']} test digits of half B).\n",
             "## 1. The defaults, per kind\n",
             "| model | default | " + " | ".join(UNSEEN_KINDS) + " | min | mean | report table: min / mean |",
             "|---|---|" + "---|" * (len(UNSEEN_KINDS) + 3)]
    for r in rows:
        d, choice = r["default"], choice_rows[r["model"]]
        report = [choice["report"][d][kind]["auroc"][0] for kind in REPORT_KINDS]
        lines.append(f"| {r['model']} | {d} | " + " | ".join(f"{r['auroc'][d][k]:.3f}" for k in UNSEEN_KINDS)
                     + " | {:.3f} | {:.3f} | ".format(*summary(r["auroc"][d]))
                     + f"{min(report):.3f} / {np.mean(report):.3f} |")
    lines += ["\n## 2. Min / mean over the eight kinds: the default, the density of states, the mean rule's pick\n",
              "| model | default | `states:` | mean rule: detector | mean rule: min / mean |", "|---|---|---|---|---|"]
    for r in rows:
        states = next(d for d in r["auroc"] if anomaly.combination(d) == "states")
        pick = mean_rule_default(choice_rows[r["model"]])
        lines.append(f"| {r['model']} | " + "{:.3f} / {:.3f} | ".format(*summary(r["auroc"][r["default"]]))
                     + "{:.3f} / {:.3f} | ".format(*summary(r["auroc"][states]))
                     + f"{pick} | " + "{:.3f} / {:.3f} |".format(*summary(r["auroc"][pick])))
    lines += ["\n## 3. Every served detector\n", "| model | detector | " + " | ".join(UNSEEN_KINDS) + " | min | mean |",
              "|---|---|" + "---|" * (len(UNSEEN_KINDS) + 2)]
    for r in rows:
        for d, a in r["auroc"].items():
            lines.append(f"| {r['model']} | {d} | " + " | ".join(f"{a[k]:.3f}" for k in UNSEEN_KINDS)
                         + " | {:.3f} | {:.3f} |".format(*summary(a)))
    return "\n".join(lines) + "\n"


async def run(args) -> list[dict]:
    engine = Engine(ModelStore(args.store), Settings(intra_op_threads=1))
    rows = []
    for name in scoring_models(engine, args.models):
        rows.append(await evaluate(engine, name, args.n, args.seed, args.k))
        Path(args.json).write_text(json.dumps(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--n", type=int, default=64, help="inputs per set (at most 250)")
    parser.add_argument("--k", type=int, default=100, help="importance samples for IWAE-scored models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=Path, default=Path("benchmarks/results/anomaly.json"),
                        help="benchmarks/anomaly.py's rows: the choose step's AUROCs and the report table")
    parser.add_argument("--json", default="benchmarks/results/anomaly_unseen.json")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/anomaly_unseen.md"))
    parser.add_argument("--merge", nargs="+", type=Path, help="instead of running: the tables of these --json files")
    args = parser.parse_args()
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + shlex.join([os.path.relpath(sys.executable), *sys.argv])
    start = time.time()
    rows = ([row for path in args.merge for row in json.loads(path.read_text())] if args.merge
            else asyncio.run(run(args)))
    choice_rows = {row["model"]: row for row in json.loads(args.rows.read_text())}
    args.out.write_text(tables(rows, choice_rows, command, None if args.merge else time.time() - start))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
