"""Anomaly detection on OOD kinds that nobody had seen: held-out tests of the served detectors, in two sets.

The ten REPORT kinds of benchmarks/anomaly.py have been read after every run since issue 17 began, and some design
choices followed them (the `constant` construction was added after smooth inputs failed there), so they no longer
test "inputs nobody tuned for". Each set below was written and committed before any model scored it; nothing here
writes a manifest. Each kind is made from the test split's half B (the report half) or from noise.

The SECOND set (2026-12-07, committed in ddb1a82):

    shifted        a test digit moved 5-7 pixels in one of eight directions (what leaves the canvas is lost)
    bold           a test digit dilated by a 5x5 maximum filter
    faint          a test digit eroded by a 3x3 minimum filter
    two digits     two test digits, each scaled to 14x14, side by side
    crossed out    a test digit with a straight line of width 3 from the left edge to the right edge
    smooth field   uniform noise through GaussianBlur(radius 2), stretched to 0..255
    stripes        a sinusoidal grating, period 4-10 pixels, any angle
    elastic        a test digit warped by a smooth random displacement field (sigma 4 pixels, up to about 8)

Its three questions: 1. do the defaults hold there; 2. is the density of states (`states:...`) better there too;
3. would the mean rule (the best mean AUROC over the constructions instead of the best worst case) have picked
better defaults. The answers led to the choose step's switch to the mean rule (benchmarks/anomaly.chosen_default),
after which that set, like the REPORT kinds, had played a part in a choice.

The THIRD set (2026-12-07, written after the switch and committed before any model scored it):

    upside down    a test digit turned by 180 degrees
    sheared        a test digit sheared horizontally by 0.6-0.9 pixels per row, either way, about its middle row
    hollow         a test digit's outline: its 3x3 dilation less the digit
    zoomed in      a test digit's middle 14x14 scaled up to 28x28
    framed         a test digit inside a 2-pixel white border at the canvas edge
    low contrast   a test digit's ink scaled by 0.25-0.45
    checkerboard   black and white squares of 2-7 pixels, any offset
    blobs          3-6 Gaussian blobs (sigma 1.5-3.5 pixels) anywhere in the middle, stretched to 0..255

Its three questions, fixed before the run:
1. Do the defaults, now chosen by the mean rule, hold there: each model's min / mean AUROC, how many models meet the
   issue's thresholds (min >= 0.95, mean >= 0.98) on these eight, and over all 26 held-out kinds (REPORT, second,
   third)?
2. Is the mean rule better there than the worst-case rule it replaced (the mean over models of each rule's picks'
   min and mean AUROC)?
3. Is the density of states better there than the defaults?

Every detector is scored from its calibration entry as the manifest holds it (mix and states standardizations, the
latent Gaussian, typical_nll's center) and the model's features through the in-process Engine, with the k, seeds,
background model and hierarchical skip of benchmarks/anomaly.py, checked equal to what each entry records (a bound-
scored model's base `nll` alone is scored at --k, while its top-level calibration, training's test bound, is at
k 1000). The in-distribution set is benchmarks/anomaly.py's `report/in` (the first --n digits of half B). The
choose step's AUROCs come from the rows of the latest benchmarks/anomaly.py run (--rows).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly_unseen.py --set third [--models vae gan] --json ... --out ...

(The second set's runs predate --set: their rows have no "set" key, which --merge reads as the second set.)
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
    BOOTSTRAP,
    DATASETS,
    HIERARCHY_SKIP,
    REPORT_KINDS,
    TEST_SIZE,
    auroc,
    cell,
    chosen_default,
    features,
    fpr95,
    halves,
    pil_map,
    quantize,
    score_options,
    scoring_models,
    with_interval,
    worst_case_default,
)
from service.engine import anomaly  # noqa: E402
from service.engine.engine import Engine  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import ModelStore  # noqa: E402
from training.data import load  # noqa: E402

SECOND_KINDS = ["shifted", "bold", "faint", "two digits", "crossed out", "smooth field", "stripes", "elastic"]


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


def second_kinds(half_b: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gray [n, 1, 28, 28] sets of every UNSEEN kind, the digit ones from half B's gray digits."""
    a, b = (half_b[rng.permutation(len(half_b))[:n]] for _ in range(2))
    return {"shifted": shifted(a, rng), "bold": pil_map(a, lambda im: im.filter(ImageFilter.MaxFilter(5))),
            "faint": pil_map(a, lambda im: im.filter(ImageFilter.MinFilter(3))), "two digits": two_digits(a, b),
            "crossed out": crossed_out(a, rng), "smooth field": smooth_field(n, rng), "stripes": stripes(n, rng),
            "elastic": elastic(a, rng)}


def sheared(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """a [n, 1, 28, 28] -> each sheared horizontally by 0.6-0.9 pixels per row, either way, about row 14."""
    out = np.zeros_like(a)
    for i, x in enumerate(a):
        shear = rng.choice([-1, 1]) * rng.uniform(0.6, 0.9)
        image = Image.fromarray(x[0]).transform((28, 28), Image.Transform.AFFINE, (1, shear, -14 * shear, 0, 1, 0),
                                                resample=Image.Resampling.BILINEAR)
        out[i, 0] = np.asarray(image)
    return out


def hollow(a: np.ndarray) -> np.ndarray:
    """a [n, 1, 28, 28] -> each digit's outline: its 3x3 dilation less the digit."""
    dilated = pil_map(a, lambda im: im.filter(ImageFilter.MaxFilter(3)))
    return (dilated.astype(np.int16) - a).clip(0, 255).astype(np.uint8)


def zoomed_in(a: np.ndarray) -> np.ndarray:
    """a [n, 1, 28, 28] -> the middle 14x14 of each, scaled up to 28x28."""
    return pil_map(a, lambda im: im.crop((7, 7, 21, 21)).resize((28, 28), Image.Resampling.BILINEAR))


def framed(a: np.ndarray) -> np.ndarray:
    """a [n, 1, 28, 28] -> each inside a 2-pixel white border at the canvas edge."""
    out = a.copy()
    out[:, :, :2], out[:, :, -2:], out[:, :, :, :2], out[:, :, :, -2:] = 255, 255, 255, 255
    return out


def low_contrast(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """a [n, 1, 28, 28] -> each one's ink scaled by a factor in 0.25-0.45."""
    scale = rng.uniform(0.25, 0.45, (len(a), 1, 1, 1))
    return np.round(a * scale).astype(np.uint8)


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 1, 28, 28] black and white squares of 2-7 pixels, each board at its own offset."""
    rows, cols = np.indices((28, 28))
    out = np.zeros((n, 1, 28, 28), np.uint8)
    for i in range(n):
        size, (dy, dx) = rng.integers(2, 8), rng.integers(0, 8, 2)
        out[i, 0] = 255 * (((rows + dy) // size + (cols + dx) // size) % 2)
    return out


def blobs(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 1, 28, 28] sums of 3-6 Gaussian blobs (sigma 1.5-3.5 pixels, centres in 4..24), stretched to 0..255."""
    rows, cols = np.indices((28, 28))
    out = np.zeros((n, 1, 28, 28), np.uint8)
    for i in range(n):
        field = np.zeros((28, 28))
        for _ in range(rng.integers(3, 7)):
            (r, c), sigma = rng.uniform(4, 24, 2), rng.uniform(1.5, 3.5)
            field += np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma ** 2))
        out[i, 0] = np.round(255 * field / field.max()).astype(np.uint8)
    return out


def third_kinds(half_b: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gray [n, 1, 28, 28] sets of every THIRD kind, the digit ones from half B's gray digits."""
    a = half_b[rng.permutation(len(half_b))[:n]]
    return {"upside down": a[:, :, ::-1, ::-1].copy(), "sheared": sheared(a, rng), "hollow": hollow(a),
            "zoomed in": zoomed_in(a), "framed": framed(a), "low contrast": low_contrast(a, rng),
            "checkerboard": checkerboard(n, rng), "blobs": blobs(n, rng)}


THIRD_KINDS = ["upside down", "sheared", "hollow", "zoomed in", "framed", "low contrast", "checkerboard", "blobs"]
# each set: its kinds, their maker, and its seed stream (the next one binarizes)
KIND_SETS = {"second": (SECOND_KINDS, second_kinds, 6), "third": (THIRD_KINDS, third_kinds, 8)}
RESULTS = {"second": Path("benchmarks/results/anomaly_unseen"), "third": Path("benchmarks/results/anomaly_third")}


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


async def evaluate(engine: Engine, name: str, kind_set: str, n: int, seed: int, k: int) -> dict:
    """The model's AUROC per detector and kind: report/in (n digits of half B, as benchmarks/anomaly.py draws
    them) against each kind of the set (KIND_SETS); the set's seed stream makes its kinds and the next binarizes."""
    kinds, make, stream = KIND_SETS[kind_set]
    m = engine.model(name)
    levels = m.data["levels"]
    entries = served_entries(engine, name, k)
    need = {p for d in entries for p in anomaly.components(d)}
    order = np.random.default_rng([seed, 17]).permutation(TEST_SIZE)  # benchmarks/anomaly.py's first draw
    half_b = halves(seed)[1]
    sets = {"in": load(DATASETS[levels]).x_test[np.sort(order[TEST_SIZE // 2:][:n])]}  # its report/in
    binarize = np.random.default_rng([seed, stream + 1])
    for kind, x in make(load("mnist5k").x_test[half_b], n, np.random.default_rng([seed, stream])).items():
        sets[kind] = quantize(x, levels, binarize)
    feats = {}
    for key, x in tqdm(sets.items(), desc=name, file=sys.stderr):
        feats[key] = await features(engine, name, x, score_options(engine, name, k), need)
        if "latent_mahalanobis" in need:
            feats[key]["latent_mahalanobis"] = anomaly.latent_mahalanobis(feats[key]["latent_mean"],
                                                                           feats[key]["latent_std"], m.latent_gaussian)
    scores = {d: {key: anomaly.per_input_scores(d, f, e) for key, f in feats.items()} for d, e in entries.items()}
    default, bootstrap = anomaly.default_detector(m.manifest), np.random.default_rng([seed, 3])
    fpr_bootstrap = np.random.default_rng([seed, 4])  # its own stream: the AUROC intervals stay as first drawn
    return {"model": name, "set": kind_set, "default": default, "n": n,
            "auroc": {d: {kind: auroc(s["in"], s[kind]) for kind in kinds} for d, s in scores.items()},
            "interval": {kind: with_interval(auroc, scores[default]["in"], scores[default][kind], bootstrap)[1:]
                         for kind in kinds},  # the default's AUROC, 2.5-97.5% of BOOTSTRAP resamples of both sets
            "fpr95": {kind: with_interval(fpr95, scores[default]["in"], scores[default][kind], fpr_bootstrap)
                      for kind in kinds}}  # the default's FPR at 95% TPR [value, 2.5%, 97.5%]


def summary(aurocs: dict[str, float]) -> tuple[float, float]:
    values = list(aurocs.values())
    return min(values), float(np.mean(values))


def pair(aurocs: dict[str, float]) -> str:
    return "{:.3f} / {:.3f}".format(*summary(aurocs))


def compared(row: dict, choice: dict) -> dict[str, str]:
    """The detectors section 2 compares for one model: its default, each choice rule's pick, its density of states."""
    return {"default": row["default"], "worst-case rule": worst_case_default(choice["detectors"], choice["choose"]),
            "mean rule": chosen_default(choice["detectors"], choice["choose"]),
            "`states:`": next(d for d in row["auroc"] if anomaly.combination(d) == "states")}


def tables(rows: list[dict], choice_rows: dict[str, dict], earlier: list[dict], command: str,
           seconds: float | None) -> str:
    """The set's tables; `earlier`: rows of the sets scored before it, for the summary over every held-out kind."""
    kind_set = rows[0].get("set", "second")  # the second set's rows predate the key
    kinds = KIND_SETS[kind_set][0]
    took = "Rows merged from runs split by --models." if seconds is None else f"{seconds / 60:.1f} min."
    lines = [f"# Anomaly detection on eight kinds nobody had seen: the {kind_set} set\n", f"    {command}\n",
             f"{took} AUROC, OOD the positive class, {rows[0]['n']} inputs per set; the "
             f"in-distribution set is the report step's ({rows[0]['n']} test digits of half B).\n",
             f"## 1. The defaults, per kind (with 2.5-97.5% of {BOOTSTRAP} bootstrap resamples of both sets, where "
             "the rows have them: not the second set's)\n",
             "| model | default | " + " | ".join(kinds) + " | min | mean | report table: min / mean |",
             "|---|---|" + "---|" * (len(kinds) + 3)]
    for r in rows:
        d, choice = r["default"], choice_rows[r["model"]]
        report = {kind: choice["report"][d][kind]["auroc"][0] for kind in REPORT_KINDS}
        cells = [cell((r["auroc"][d][k], *r["interval"][k])) if "interval" in r else f"{r['auroc'][d][k]:.3f}"
                 for k in kinds]
        lines.append(f"| {r['model']} | {d} | " + " | ".join(cells)
                     + f" | {pair(r['auroc'][d]).replace(' / ', ' | ')} | {pair(report)} |")
    if all("fpr95" in r for r in rows):
        lines += ["\n### The defaults' false-positive rate at 95% true-positive rate (the share of in-distribution "
                  "digits flagged at the threshold that flags 95% of the kind's inputs; lower is better)\n",
                  "| model | default | " + " | ".join(kinds) + " | max |", "|---|---|" + "---|" * (len(kinds) + 1)]
        lines += [f"| {r['model']} | {r['default']} | " + " | ".join(cell(r["fpr95"][k]) for k in kinds)
                  + f" | {max(r['fpr95'][k][0] for k in kinds):.3f} |" for r in rows]
    picks = {r["model"]: compared(r, choice_rows[r["model"]]) for r in rows}
    labels = list(picks[rows[0]["model"]])
    lines += ["\n## 2. Min / mean over the eight kinds: the default, each choice rule's pick, the density of states\n",
              "| model | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for r in rows:
        cells = [f"{pair(r['auroc'][d])} ({d})" for d in picks[r["model"]].values()]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    means = [np.mean([summary(r["auroc"][picks[r["model"]][label]]) for r in rows], axis=0) for label in labels]
    lines.append("| mean over models | " + " | ".join("{:.3f} / {:.3f}".format(*m) for m in means) + " |")
    lines += everything(rows, choice_rows, earlier)
    lines += ["\n## 4. Every served detector\n", "| model | detector | " + " | ".join(kinds) + " | min | mean |",
              "|---|---|" + "---|" * (len(kinds) + 2)]
    for r in rows:
        for d, a in r["auroc"].items():
            lines.append(f"| {r['model']} | {d} | " + " | ".join(f"{a[k]:.3f}" for k in kinds)
                         + f" | {pair(a).replace(' / ', ' | ')} |")
    return "\n".join(lines) + "\n"


def everything(rows: list[dict], choice_rows: dict[str, dict], earlier: list[dict]) -> list[str]:
    """Section 3: each model's default over every held-out kind (REPORT, the earlier sets', this set's) and
    whether it meets issue 17's thresholds (min >= 0.95, mean >= 0.98)."""
    table, counts = [], {}
    for r in rows:
        d = r["default"]
        aurocs = {kind: v["auroc"][0] for kind, v in choice_rows[r["model"]]["report"][d].items()}
        for other in (e for e in earlier if e["model"] == r["model"]):
            aurocs.update(other["auroc"][d])
        aurocs.update(r["auroc"][d])
        low, mean = summary(aurocs)
        counts[r["model"]] = len(aurocs)
        meets = "yes" if low >= 0.95 and mean >= 0.98 else "no"
        table.append(f"| {r['model']} | {d} | {low:.3f} / {mean:.3f} | {meets} |")
    if len(set(counts.values())) > 1:  # a model without --earlier rows would be summed over fewer kinds
        raise SystemExit(f"held-out kinds per model differ (--earlier rows missing for some?): {counts}")
    return [f"\n## 3. The defaults over all {max(counts.values())} held-out kinds (REPORT kinds, earlier sets, "
            "this set)\n",
            "| model | default | min / mean | meets 0.95 / 0.98 |", "|---|---|---|---|", *table]


async def run(args) -> list[dict]:
    engine = Engine(ModelStore(args.store), Settings(intra_op_threads=1))
    rows = []
    for name in scoring_models(engine, args.models):
        rows.append(await evaluate(engine, name, args.set, args.n, args.seed, args.k))
        Path(args.json).write_text(json.dumps(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--n", type=int, default=64, help="inputs per set (at most 250)")
    parser.add_argument("--k", type=int, default=100, help="importance samples for IWAE-scored models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", choices=KIND_SETS, help="which held-out set to score (not with --merge)")
    parser.add_argument("--earlier", nargs="*", type=Path, default=[], help="--json rows of the sets scored before "
                        "this one (for the summary over every held-out kind)")
    parser.add_argument("--rows", type=Path, default=Path("benchmarks/results/anomaly.json"),
                        help="benchmarks/anomaly.py's rows: the choose step's AUROCs and the report table")
    parser.add_argument("--json", help="the rows (default: RESULTS of the set, .json)")
    parser.add_argument("--out", type=Path, help="the tables (default: RESULTS of the set, .md)")
    parser.add_argument("--merge", nargs="+", type=Path, help="instead of running: the tables of these --json files")
    args = parser.parse_args()
    if (args.set is None) == (args.merge is None):
        parser.error("give --set to score a set, or --merge to table scored rows")
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + shlex.join([os.path.relpath(sys.executable), *sys.argv])
    start = time.time()
    merged = [row for path in args.merge or [] for row in json.loads(path.read_text())]
    results = RESULTS[args.set or merged[0].get("set", "second")]  # the second set's rows predate the key
    args.json, args.out = args.json or str(results.with_suffix(".json")), args.out or results.with_suffix(".md")
    rows = merged or asyncio.run(run(args))
    choice_rows = {row["model"]: row for row in json.loads(args.rows.read_text())}
    earlier = [row for path in args.earlier for row in json.loads(path.read_text())]
    args.out.write_text(tables(rows, choice_rows, earlier, command, None if args.merge else time.time() - start))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
