"""Anomaly detection with every scoring image model in the store: AUROC of the engine's anomaly score, test
digits (in-distribution) against out-of-distribution sets made here from a seed.

The score is `anomaly.score` from Engine.score (higher = more anomalous: a likelihood model's NLL in nats per
image, a critic's negated output). Nalisnick et al. 2019, "Do Deep Generative Models Know What They Don't
Know?", found likelihood models assign higher likelihood to some OOD inputs than to their own test data; Serrà et
al. 2020, "Input Complexity and Out-of-Distribution Detection with Likelihood-based Generative Models", correct
the NLL by the input's complexity: S(x) = NLL(x) in bits - L(x), with L(x) the bits of a lossless (PNG) code.
Both scores are reported; the correction applies only to likelihood scores.

    .venv/bin/python benchmarks/anomaly.py [--models pixelcnn realnvp] [--n 500] [--k 100] [--out PATH]
"""

import argparse
import asyncio
import io
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training.data import load

DATASETS = {2: "mnist5k-binarized", 256: "mnist5k"}
SHAPE = [1, 28, 28]
TEST_SIZE = 500  # images in the mnist5k test split
CHUNK = 25  # images per score request: under the batcher's queue limit even when scoring over 10 labels
BLUR_RADIUS = 2
LIKELIHOOD_SCORE = "nll_nats"  # the calibration score kind whose anomaly score is an NLL in nats per image
OOD_NOTES = {
    "uniform noise": "every pixel drawn uniformly from the model's levels (0..255, or 0/1)",
    "inverted": "levels-1-x of the in-distribution test images (255-x gray; 1-x of the binarized split)",
    "sklearn digits": "scikit-learn's 8x8 digits (a seeded choice of n of the 1,797), scaled 0..16 -> 0..255, "
                      "Pillow bilinear resize to 20x20, zero-padded by 4 to 28x28 (MNIST's 20x20 box)",
    "blurred": f"the gray test images through Pillow's GaussianBlur(radius={BLUR_RADIUS})",
}


def quantize(gray: np.ndarray, levels: int, rng: np.random.Generator) -> np.ndarray:
    """Gray uint8 images at the model's levels: as they are (256), or binarized like mnist5k-binarized (2)."""
    if levels == 256:
        return gray
    return (rng.random(gray.shape) < gray / 255.0).astype(np.uint8)


def sklearn_digits(n: int, rng: np.random.Generator) -> np.ndarray:
    """n of scikit-learn's 8x8 digits as gray [n, 1, 28, 28] uint8, digit in the central 20x20."""
    images = load_digits().images[rng.permutation(1797)[:n]]  # [n, 8, 8], 0..16
    out = np.zeros((n, *SHAPE), np.uint8)
    for i, image in enumerate(images):
        small = Image.fromarray(np.round(image * 255 / 16).astype(np.uint8))
        out[i, 0, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    return out


def blurred(gray: np.ndarray) -> np.ndarray:
    blur = ImageFilter.GaussianBlur(BLUR_RADIUS)
    return np.stack([np.asarray(Image.fromarray(x[0]).filter(blur))[None] for x in gray])


def image_sets(levels: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """The in-distribution test images ("test") and each OOD set, n images each at `levels`, from `seed`."""
    rng = [np.random.default_rng([seed, i]) for i in range(5)]
    chosen = np.sort(rng[4].permutation(TEST_SIZE)[:n])  # the split is ordered by class: a seeded subset
    test, gray = load(DATASETS[levels]).x_test[chosen], load("mnist5k").x_test[chosen]
    return {
        "test": test,
        "uniform noise": rng[0].integers(0, levels, test.shape, dtype=np.uint8),
        "inverted": (levels - 1 - test).astype(np.uint8),
        "sklearn digits": quantize(sklearn_digits(n, rng[1]), levels, rng[2]),
        "blurred": quantize(blurred(gray), levels, rng[3]),
    }


def png_bits(x: np.ndarray, levels: int) -> np.ndarray:
    """L(x): bits of each image's PNG at maximum compression (8-bit gray, or 1-bit for binary images)."""
    def bits(image: np.ndarray) -> int:
        buffer = io.BytesIO()
        Image.fromarray(image.astype(bool) if levels == 2 else image).save(buffer, "PNG", optimize=True)
        return 8 * len(buffer.getvalue())

    return np.array([bits(image[0]) for image in x], np.float64)


def score_options(engine: Engine, name: str, k: int) -> dict:
    """Importance-sampled models score with k samples (IWAE); the others take no options."""
    return {"k": k} if engine.model(name).capabilities["score"]["procedure"] == "importance" else {}


async def anomaly_scores(engine: Engine, name: str, x: np.ndarray, options: dict,
                         bar: tqdm) -> tuple[np.ndarray, dict]:
    """Each image's anomaly score, and the first result (its method and score kind)."""
    results = []
    for start in range(0, len(x), CHUNK):  # seed: the chunk's offset, so chunks draw different noise
        results += await engine.score(name, x[start:start + CHUNK], seed=start, **options)
        bar.update(min(CHUNK, len(x) - start))
    return np.array([r["anomaly"]["score"] for r in results]), results[0]


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(ood_scores))]  # OOD is the positive class
    return float(roc_auc_score(labels, np.r_[in_scores, ood_scores]))


def method_label(result: dict) -> str:
    return result["method"] + (f" k={result['k']}" if "k" in result else "")


async def evaluate(engine: Engine, name: str, n: int, seed: int, k: int) -> dict:
    """One model's raw and corrected AUROC per OOD set (corrected: None unless the score is a likelihood)."""
    levels = engine.model(name).data["levels"]
    sets = image_sets(levels, n, seed)
    options = score_options(engine, name, k)
    scores, first = {}, None
    with tqdm(total=sum(map(len, sets.values())), desc=name, file=sys.stderr) as bar:
        for set_name, x in sets.items():
            scores[set_name], first = await anomaly_scores(engine, name, x, options, bar)
    likelihood = first["anomaly"]["score_kind"] == LIKELIHOOD_SCORE
    corrected = {s: scores[s] / math.log(2) - png_bits(x, levels) for s, x in sets.items()} if likelihood else None
    return {
        "model": name, "method": method_label(first), "levels": levels,
        "mean_score": {s: float(v.mean()) for s, v in scores.items()},
        "raw": {s: auroc(scores["test"], scores[s]) for s in OOD_NOTES},
        "corrected": {s: auroc(corrected["test"], corrected[s]) for s in OOD_NOTES} if likelihood else None,
    }


def scoring_models(engine: Engine, wanted: list[str] | None) -> list[str]:
    """Every 28x28 digit model in the store that can score (restricted to `wanted` if given)."""
    names = [name for name, m in sorted(engine.models.items())
             if "score" in m.capabilities and m.data["kind"] == "image" and m.shape == SHAPE
             and m.data["levels"] in DATASETS]
    unknown = set(wanted or []) - set(names)
    if unknown:
        raise SystemExit(f"not scoring image models in the store: {sorted(unknown)}; they are: {names}")
    return [name for name in names if wanted is None or name in wanted]


async def run(store: Path, wanted: list[str] | None, n: int, seed: int, k: int) -> list[dict]:
    engine = Engine(ModelStore(store), Settings(intra_op_threads=1))
    return [await evaluate(engine, name, n, seed, k) for name in scoring_models(engine, wanted)]


def auroc_cells(values: dict | None) -> list[str]:
    if values is None:
        return ["n/a"] * (len(OOD_NOTES) + 1)
    return [f"{values[s]:.3f}" for s in OOD_NOTES] + [f"{np.mean(list(values.values())):.3f}"]


def report(rows: list[dict], command: str, n: int, seed: int, k: int, seconds: float) -> str:
    sets = list(OOD_NOTES)
    lines = ["# Anomaly detection: AUROC, mnist5k test split vs OOD sets\n", f"    {command}\n",
             f"{n} in-distribution images (the mnist5k test split, or mnist5k-binarized for levels-2 models; a "
             f"seeded subset when under {TEST_SIZE}) and "
             f"{n} per OOD set; seed {seed}; {seconds / 60:.1f} min on this machine. OOD is the positive class; "
             "0.5 is chance, under 0.5 means the OOD set looks *more* typical than the test digits.\n",
             "| model (score method) | score | " + " | ".join(sets) + " | mean |",
             "|---|---|" + "---|" * (len(sets) + 1)]
    for r in rows:
        for kind, label in (("raw", "raw anomaly score"), ("corrected", "NLL bits - PNG bits")):
            lines.append(f"| {r['model']} ({r['method']}) | {label} | " + " | ".join(auroc_cells(r[kind])) + " |")
    lines += ["\nMean anomaly score per set (NLL nats per image for likelihood models):\n",
              "| model | levels | test | " + " | ".join(sets) + " |", "|---|---|---|" + "---|" * len(sets)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['levels']} | "
                     + " | ".join(f"{r['mean_score'][s]:.1f}" for s in ["test", *sets]) + " |")
    lines += ["\nOOD sets (each at the model's levels):\n"] + [f"- {s}: {note}." for s, note in OOD_NOTES.items()]
    lines += ["- binary (levels 2) models: the gray sklearn and blurred images are binarized like "
              "mnist5k-binarized, pixel ~ Bernoulli(intensity / 255), from the seed (not a 0.5 threshold), so "
              "they carry the same binarization noise as the in-distribution digits.",
              "- correction (Serrà et al. 2020): S(x) = NLL(x) / ln 2 - L(x), L(x) = 8 x the bytes of the image's "
              "PNG from Pillow with optimize=True (8-bit gray; a 1-bit PNG for binary images); n/a for scores that "
              "are not a likelihood.",
              f"- importance-sampled models (VAEs): IWAE with k={k} samples per image instead of the "
              "manifest's default k, for speed; the dequantization and importance noise come from seed = the "
              "image's chunk offset."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+", help="model names (default: every scoring image model)")
    parser.add_argument("--n", type=int, default=TEST_SIZE, help=f"images per set, at most {TEST_SIZE}")
    parser.add_argument("--k", type=int, default=100, help="importance samples for IWAE-scored models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/anomaly.md"))
    args = parser.parse_args()
    if not 1 <= args.n <= TEST_SIZE:
        parser.error(f"--n must be in 1..{TEST_SIZE}")
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + shlex.join([os.path.relpath(sys.executable), *sys.argv])
    start = time.perf_counter()
    rows = asyncio.run(run(args.store, args.models, args.n, args.seed, args.k))
    text = report(rows, command, args.n, args.seed, args.k, time.perf_counter() - start)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
