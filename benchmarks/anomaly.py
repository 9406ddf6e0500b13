"""Anomaly detection with every scoring image model in the store, in three separate steps:

1. CHOOSE: each model's default detector (service/engine/anomaly.py) is the one with the best mean AUROC
   (chosen_default; until 2026-12-07 the best worst case) over the CHOOSE kinds: constructions made from
   *training* digits only (erasures, pixel noise, mixtures of two digits, halves of two digits, uniform noise,
   constant images: Serra et al. 2020's synthetic sets, the last
   added on 2026-12-07 after the REPORT table showed smooth inputs rated as likely), against training digits.
   Mixes standardize their parts by the training digits' scores. One more candidate, the density of states of
   every per-input detector the model has (`states:...`, Morningstar et al. 2021), is fitted on FIT_SIZE training
   digits apart from the choose step's in-distribution digits and from the latent Gaussian's fit (the constructions
   draw their source digits from all of them). Nothing else plays a part in the choice.
2. CALIBRATE: every detector's held-out quantiles from a seeded half of the test split (`--write` puts them in
   the manifests' `calibration.detectors`, with `calibration.default` from step 1; no model file changes).
3. REPORT: the other half of the test split against the REPORT kinds, which played no part in steps 1-2
   (letters, symbols, rotated, flipped, shrunk, pixel-permuted digits, scikit-learn digits, inverted, blurred,
   random strokes): AUROC and FPR at 95% TPR with bootstrap intervals for every model x detector x kind, and each
   default detector's flag rate on those fresh test digits against its threshold.

Features are computed once per input through the in-process Engine (its NLL or critic, its class joint
log p(x | y) p(y), its BiGAN reconstruction, the NLL of the likelihood ratio's background model, a hierarchical
model's ratio L - L^{>1} at the same k and seed as its NLL, an encoder's posterior mean and std, a GAN's
cross-fitted inversion residual from the same seed as the service's) and every
detector is computed from them with the served code. A model scored by an importance-sampled bound is scored at
--k with its capability's method, and its calibration entries record that k and method: the service scores their
detectors at them, whatever a request's k. The latent Mahalanobis score's Gaussian is fitted on the training
digits other than the CHOOSE step's own (the model's encoder, its noise seeded as the service seeds it), and every
set is scored with its arrays as the service reads them (float32, anomaly.latent_arrays); they are saved beside the
--json rows (<json stem>.<model>.latent_gaussian.safetensors), and `--write` copies that file into the model's
directory as anomaly.LATENT_FILE, listed in the manifest's files with its sha256 (with --merge: the file beside the
rows' own --json). The
background models (BACKGROUNDS: small-receptive-field PixelCNNs trained on perturbed training digits,
training/configs/*-background.json) are no subjects of the table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly.py [--models pixelcnn rbm] [--n 64] [--k 100] [--write]
    .venv/bin/python benchmarks/anomaly.py --merge part1.json part2.json   # the tables of runs split by --models
    .venv/bin/python benchmarks/anomaly.py --merge part.json --write ...   # write the manifests from a run's rows

--merge takes each row's default anew by chosen_default from the row's own choose AUROCs, so rows of a run made
under an older rule are written and tabled under today's.

Two modes check and redo step 2 alone on the store as it is: `--check-calibration` (the default detectors' flag on
all 250 digits of half B against the threshold, with a binomial and a permutation p-value:
benchmarks/results/anomaly-calibration.md) and `--recalibrate` (the manifests' calibration.detectors quantiles
re-estimated by anomaly.calibration_for from their held-out scores, recomputed as step 2 computed them and checked
against the stored quantiles first; defaults and everything else unchanged).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly.py --check-calibration \
        --out benchmarks/results/anomaly-calibration.md --json benchmarks/results/anomaly-calibration.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly.py --recalibrate [--models vae rbm]
"""

import argparse
import asyncio
import hashlib
import json
import os
import shlex
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from safetensors.numpy import save_file
from scipy import stats
from sklearn.datasets import load_digits
from tqdm import tqdm

from service.engine import anomaly, procedures
from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training.data import load

DATASETS = {2: "mnist5k-binarized", 256: "mnist5k"}
BACKGROUNDS = {2: "pixelcnn-background", 256: "pixelcnn-gray-background"}  # per levels: the likelihood ratio's
SHAPE = [1, 28, 28]
TEST_SIZE = 500
CHUNK = 25
FIT_CHUNK = 250
FIT_SIZE = 250  # training digits the density of states is fitted on, apart from every other set
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 201)]
HIERARCHY_SKIP = 1  # the hierarchical ratio's k: the lowest latent layer from its conditional prior (hvae has two)
BOOTSTRAP = 200
PERMUTATIONS = 2000
FRESH_SEED = 10_000  # the fresh digits' noise: chunk seeds other than the calibration's
MAX_FILE_BYTES = 8 << 20  # the project's bound on one committed artifact file (about 8 MB; no store check)
CHOOSE_KINDS = ["erased", "pixel noise", "mixture", "two halves", "uniform noise", "constant"]
REPORT_KINDS = ["letters", "symbols", "rotated", "flipped", "shrunk", "permuted pixels", "sklearn digits",
                "inverted", "blurred", "random strokes"]
NOTES = {
    "erased": "a training digit with a random 14x14 block set to 0",
    "pixel noise": "a training digit with 20% of its pixels replaced by uniform levels",
    "mixture": "the pixelwise maximum of two training digits",
    "two halves": "the top half of one training digit over the bottom half of another",
    "uniform noise": "every pixel uniform over 0..255",
    "constant": "every pixel one level, uniform over 0..255 per image (Serra et al. 2020's synthetic Constant set)",
    "letters": "A-Z rendered by Pillow's default font (size 22), centred in the 20x20 box",
    "symbols": "strokes of non-digit symbols (square, triangle, cross, plus, star, arrow, circle with cross), "
               "width 2-3, random size and position in the 20x20 box",
    "rotated": "test digits rotated by 90 or 270 degrees",
    "flipped": "test digits mirrored left-right",
    "shrunk": "test digits scaled by 0.5 about the centre",
    "permuted pixels": "a test digit's pixels in a random order (noise with the digits' ink density)",
    "sklearn digits": "scikit-learn's 8x8 digits, bilinear to 20x20, padded to 28x28",
    "inverted": "255 - a test digit",
    "blurred": "test digits through GaussianBlur(radius 2)",
    "random strokes": "3-5 random line segments of width 2",
}


def quantize(gray: np.ndarray, levels: int, rng: np.random.Generator) -> np.ndarray:
    """Gray uint8 images at the model's levels: as they are (256), or binarized like mnist5k-binarized (2)."""
    return gray if levels == 256 else (rng.random(gray.shape) < gray / 255.0).astype(np.uint8)


def pil_map(gray: np.ndarray, f) -> np.ndarray:
    return np.stack([np.asarray(f(Image.fromarray(x[0])), np.uint8)[None] for x in gray])


def draw_set(n: int, rng: np.random.Generator, paint) -> np.ndarray:
    out = np.zeros((n, *SHAPE), np.uint8)
    for i in range(n):
        image = Image.new("L", (28, 28))
        paint(ImageDraw.Draw(image), rng)
        out[i, 0] = np.asarray(image)
    return out


def letters(n: int, rng: np.random.Generator) -> np.ndarray:
    font = ImageFont.load_default(size=22)
    out = np.zeros((n, *SHAPE), np.uint8)
    for i in range(n):
        big = Image.new("L", (40, 40))
        ImageDraw.Draw(big).text((8, 4), chr(ord("A") + int(rng.integers(26))), fill=255, font=font)
        box = big.getbbox()
        glyph = big.crop(box)
        scale = 20 / max(glyph.size)
        glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                             Image.Resampling.BILINEAR)
        canvas = Image.new("L", (28, 28))
        canvas.paste(glyph, ((28 - glyph.width) // 2, (28 - glyph.height) // 2))
        out[i, 0] = np.asarray(canvas)
    return out


def symbol(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    size = rng.uniform(12, 20)
    cx, cy = 14 + rng.uniform(-2, 2), 14 + rng.uniform(-2, 2)
    h, w = size / 2, int(rng.integers(2, 4))
    kind = int(rng.integers(7))
    if kind == 0:
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], outline=255, width=w)
    elif kind == 1:
        draw.line([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h), (cx, cy - h)], fill=255, width=w)
    elif kind == 2:
        draw.line([(cx - h, cy - h), (cx + h, cy + h)], fill=255, width=w)
        draw.line([(cx - h, cy + h), (cx + h, cy - h)], fill=255, width=w)
    elif kind == 3:
        draw.line([(cx - h, cy), (cx + h, cy)], fill=255, width=w)
        draw.line([(cx, cy - h), (cx, cy + h)], fill=255, width=w)
    elif kind == 4:
        points = [(cx + h * np.sin(a), cy - h * np.cos(a)) for a in np.arange(5) * 4 * np.pi / 5]
        draw.line([*points, points[0]], fill=255, width=w)
    elif kind == 5:
        draw.line([(cx - h, cy), (cx + h, cy)], fill=255, width=w)
        draw.line([(cx + h / 2, cy - h / 2), (cx + h, cy), (cx + h / 2, cy + h / 2)], fill=255, width=w)
    else:
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], outline=255, width=w)
        draw.line([(cx - h * 0.7, cy - h * 0.7), (cx + h * 0.7, cy + h * 0.7)], fill=255, width=w)
        draw.line([(cx - h * 0.7, cy + h * 0.7), (cx + h * 0.7, cy - h * 0.7)], fill=255, width=w)


def strokes(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(3, 6))):
        draw.line([tuple(rng.uniform(4, 24, 2)), tuple(rng.uniform(4, 24, 2))], fill=255, width=2)


def sklearn_digits(n: int, rng: np.random.Generator) -> np.ndarray:
    images = load_digits().images[rng.permutation(1797)[:n]]
    out = np.zeros((n, *SHAPE), np.uint8)
    for i, image in enumerate(images):
        small = Image.fromarray(np.round(image * 255 / 16).astype(np.uint8))
        out[i, 0, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    return out


def choose_kinds(train: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gray constructions from training digits only."""
    a, b = train[rng.permutation(len(train))[:n]], train[rng.permutation(len(train))[:n]]
    erased = a.copy()
    for i, (r, c) in enumerate(rng.integers(0, 15, (n, 2))):
        erased[i, 0, r:r + 14, c:c + 14] = 0
    noisy = np.where(rng.random(a.shape) < 0.2, rng.integers(0, 256, a.shape), a).astype(np.uint8)
    halves = np.concatenate([a[:, :, :14], b[:, :, 14:]], axis=2)
    uniform = rng.integers(0, 256, a.shape, dtype=np.uint8)
    constant = np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 1), dtype=np.uint8), a.shape).copy()
    return {"erased": erased, "pixel noise": noisy, "mixture": np.maximum(a, b), "two halves": halves,
            "uniform noise": uniform, "constant": constant}


def report_kinds(test: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gray OOD kinds that play no part in the choice; digit transforms start from test digits."""
    a = test[rng.permutation(len(test))[:n]]
    turns = rng.choice([90, 270], n)
    rotated = np.stack([np.asarray(Image.fromarray(x[0]).rotate(int(t)))[None] for x, t in zip(a, turns, strict=True)])
    shrink = pil_map(a, lambda im: im.resize((14, 14), Image.Resampling.BILINEAR))
    shrunk = np.zeros_like(a)
    shrunk[:, :, 7:21, 7:21] = shrink
    permuted = np.stack([rng.permutation(x.ravel()).reshape(x.shape) for x in a])
    return {"letters": letters(n, rng), "symbols": draw_set(n, rng, symbol), "rotated": rotated,
            "flipped": a[:, :, :, ::-1].copy(), "shrunk": shrunk, "permuted pixels": permuted,
            "sklearn digits": sklearn_digits(n, rng), "inverted": 255 - a,
            "blurred": pil_map(a, lambda im: im.filter(ImageFilter.GaussianBlur(2))),
            "random strokes": draw_set(n, rng, strokes)}


def score_options(engine: Engine, name: str, k: int) -> dict:
    return {"k": k} if engine.model(name).capabilities["score"]["procedure"] == "importance" else {}


def candidates(engine: Engine, name: str) -> list[str]:
    """The per-input detectors the model can compute, the mixes of two or more of them, and the density of states
    of all of them."""
    m = engine.model(name)
    cap = m.capability("score")
    manifest = {**m.manifest, "calibration": {**m.manifest["calibration"], "detectors": {
        d: {} for d in ("typical_nll", "complexity", "class", "reconstruction", "likelihood_ratio",
                        "hierarchical_ratio", "latent_mahalanobis", "inversion")}}}
    base = [d for d in anomaly.available(manifest, cap, m.function_inputs, BACKGROUNDS[m.data["levels"]] in
                                         engine.models) if d != "typicality"]
    mixes = ["mix:" + "+".join(parts) for size in range(2, len(base) + 1) for parts in combinations(base, size)]
    return base + mixes + ["states:" + "+".join(base)]


async def posterior(engine: Engine, name: str, x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """q(z | x)'s mean and std [B, D] each, as the served latent_mahalanobis computes them."""
    return await engine._encode(engine.model(name), x.astype(np.int64), 0, procedures.row_generators(seed, len(x)))


async def latent_fit(engine: Engine, name: str, x: np.ndarray) -> dict:
    """The latent_mahalanobis entry's Gaussian from training digits x, encoded in chunks."""
    parts = [await posterior(engine, name, x[start:start + FIT_CHUNK], start) for start in range(0, len(x), FIT_CHUNK)]
    return anomaly.latent_gaussian(*(np.concatenate(p) for p in zip(*parts, strict=True)))


async def features(engine: Engine, name: str, x: np.ndarray, options: dict, need: set[str]) -> dict:
    """The quantities every detector is computed from, through the engine, in chunks."""
    m = engine.model(name)
    cap = m.capability("score")
    out: dict[str, list] = {"nll": [], "critic": [], "log_joint": [], "reconstruction": [], "background_nll": [],
                            "hierarchical_ratio": [], "latent_mean": [], "latent_std": [], "inversion": []}
    for start in range(0, len(x), CHUNK):
        chunk = x[start:start + CHUNK]
        if "class" in need:  # the marginal from the same rows, as the engine serves it
            joint = await engine._class_log_joint(m, cap, chunk)
            out["log_joint"].append(joint)
            out["nll"].append(-np.logaddexp.reduce(joint, axis=1))
        elif options:  # the bound at the benchmark's k, whatever k the manifest's calibrations record
            results = await engine._score_bound(m, cap, chunk, None, options["k"], 0, start)
            out["nll"].append(-np.array([r["log_likelihood_nats"] for r in results]))
        else:
            results = await engine.score(name, chunk, seed=start, anomaly_method=anomaly.base_detector(m.manifest))
            base = np.array([r["anomaly"]["score"] for r in results])  # nll, or the negative critic
            out["critic" if cap.get("method") == "critic" else "nll"].append(-base if cap.get("method") == "critic"
                                                                             else base)
        if "reconstruction" in need:
            out["reconstruction"].append(await engine._reconstruction(m, chunk))
        if "likelihood_ratio" in need:
            background = await engine.score(BACKGROUNDS[m.data["levels"]], chunk, anomaly_method="nll")
            out["background_nll"].append(np.array([r["anomaly"]["score"] for r in background]))
        if "hierarchical_ratio" in need:  # the NLL's own draws (seed, k): L is that bound
            log_w = await engine._hierarchy_log_weights(m, cap, chunk, options["k"], start)
            out["hierarchical_ratio"].append(anomaly.hierarchical_ratio(log_w, cap["method"], HIERARCHY_SKIP))
        if "latent_mahalanobis" in need:  # the encoder's noise from the chunk's seed, as the NLL's
            mean, std = await posterior(engine, name, chunk, start)
            out["latent_mean"].append(mean)
            out["latent_std"].append(std)
        if "inversion" in need:  # the latent searches from the chunk's seed, as the service's
            out["inversion"].append(await engine._inversion(m, chunk.astype(np.int64), start))
    feats = {key: np.concatenate(v) for key, v in out.items() if v}
    if "complexity" in need:
        feats["png_bits"] = anomaly.png_bits(x, m.data["levels"])
    return feats


def scores(detector: str, feats: dict, entry: dict | None) -> np.ndarray:
    return anomaly.per_input_scores(detector, feats, entry)


def auroc(in_s: np.ndarray, out_s: np.ndarray) -> float:
    """P(OOD scores higher) + half the ties: the Mann-Whitney statistic."""
    s = np.sort(in_s)
    below = np.searchsorted(s, out_s, "left")
    upto = np.searchsorted(s, out_s, "right")
    return float((below + 0.5 * (upto - below)).sum() / (len(in_s) * len(out_s)))


def fpr95(in_s: np.ndarray, out_s: np.ndarray) -> float:
    """The share of in-distribution inputs at or above the threshold that flags 95% of the OOD inputs."""
    return float(np.mean(in_s >= np.quantile(out_s, 0.05, method="lower")))


def with_interval(f, in_s: np.ndarray, out_s: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    boot = [f(in_s[rng.integers(0, len(in_s), len(in_s))], out_s[rng.integers(0, len(out_s), len(out_s))])
            for _ in range(BOOTSTRAP)]
    return f(in_s, out_s), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def score_parameters(detector: str, feats: dict) -> dict:
    """The parameters a per-input score is computed with, fitted on the training digits' features `feats`, kept in its
    entry and in a mix's standardization of it: typical_nll's center (their mean NLL)."""
    return {"center": float(np.mean(feats["nll"]))} if detector == "typical_nll" else {}


def extra_entry(detector: str, feats: dict, levels: int, gaussian: dict | None, fit: dict) -> dict | None:
    """What a detector's calibration entry carries beside its quantiles: the likelihood ratio's background model;
    the hierarchical ratio's skip; the latent Mahalanobis score's Gaussian; typical_nll's center; a mix's
    standardization, each part's mean and standard deviation on the training digits `feats` (and its score's
    parameters); a density of states' standardization and precision, both on the training digits `fit`."""
    if detector == "typical_nll":
        return score_parameters(detector, feats)
    if detector == "likelihood_ratio":
        return {"background": BACKGROUNDS[levels]}
    if detector == "hierarchical_ratio":
        return {"skip": HIERARCHY_SKIP}
    if detector == "latent_mahalanobis":
        return {"latent": anomaly.latent_entry(gaussian)}
    key = anomaly.combination(detector)
    if key is None:
        return None
    on = fit if key == "states" else feats
    parts = anomaly.components(detector)
    standardization = {p: {**own, "mean": float(v.mean()), "std": float(v.std() or 1.0)}
                       for p in parts for own in [score_parameters(p, on)] for v in [scores(p, on, own)]}
    if key == "mix":
        return {"mix": standardization}
    z = anomaly.standardized(parts, on, standardization)  # [FIT_SIZE, F]
    return {"states": standardization, "precision": anomaly.states_precision(z).tolist(), "fit_n": len(z)}


async def evaluate(engine: Engine, name: str, n: int, n_cal: int, seed: int, k: int) -> tuple[dict, dict | None]:
    """The model's row (its choice, calibration entries and report) and its fitted latent Gaussian (None: no
    latent_mahalanobis), whose arrays the row's entry names by file."""
    m = engine.model(name)
    levels = m.data["levels"]
    options = score_options(engine, name, k)
    detectors = candidates(engine, name)
    need = {p for d in detectors for p in anomaly.components(d)}
    rng = np.random.default_rng([seed, 17])
    data, gray = load(DATASETS[levels]), load("mnist5k")
    order = rng.permutation(TEST_SIZE)  # test split: calibration half, report half
    cal_index, report_index = np.sort(order[:TEST_SIZE // 2][:n_cal]), np.sort(order[TEST_SIZE // 2:][:n])
    train_index = np.sort(rng.permutation(len(data.x_train))[:n])
    rest = np.setdiff1d(np.arange(len(data.x_train)), train_index)  # the fit set's own stream: no other set moves
    fit_index = np.sort(np.random.default_rng([seed, 4]).permutation(rest)[:FIT_SIZE])
    sets = {"choose/in": data.x_train[train_index], "calibrate/in": data.x_test[cal_index],
            "report/in": data.x_test[report_index], "fit/in": data.x_train[fit_index]}
    for kind, x in choose_kinds(gray.x_train, n, np.random.default_rng([seed, 1])).items():
        sets[f"choose/{kind}"] = quantize(x, levels, rng)
    report_gray = report_kinds(gray.x_test[np.sort(order[TEST_SIZE // 2:])], n, np.random.default_rng([seed, 2]))
    for kind, x in report_gray.items():
        sets[f"report/{kind}"] = quantize(x, levels, rng)
    feats = {}
    with tqdm(total=len(sets), desc=name, file=sys.stderr) as bar:
        for key, x in sets.items():
            feats[key] = await features(engine, name, x, options, need)
            bar.update()
    gaussian = None
    if "latent_mahalanobis" in need:  # fit on the training digits that are neither the CHOOSE step's nor FIT's
        gaussian = await latent_fit(engine, name, np.delete(data.x_train, np.union1d(train_index, fit_index), axis=0))
        served = {**gaussian, **anomaly.latent_arrays(gaussian)}  # the arrays as the service reads them
        for f in feats.values():
            f["latent_mahalanobis"] = anomaly.latent_mahalanobis(f["latent_mean"], f["latent_std"], served)
    # 1. CHOOSE: training digits vs the CHOOSE kinds only
    entries = {d: extra_entry(d, feats["choose/in"], levels, gaussian, feats["fit/in"]) for d in detectors}
    choose = {d: {kind: auroc(scores(d, feats["choose/in"], entries[d]),
                              scores(d, feats[f"choose/{kind}"], entries[d])) for kind in CHOOSE_KINDS}
              for d in detectors}
    default = chosen_default(detectors, choose)
    # 2. CALIBRATE: the calibration half of the test split; a bound's entries record its k and method, at which
    # the service scores every detector of theirs
    bound = {"k": options["k"], "method": m.capability("score")["method"]} if options else {}
    calibration = {}
    for d in detectors:
        held_out = scores(d, feats["calibrate/in"], entries[d])
        kind = anomaly.COMBINATION_KINDS.get(anomaly.combination(d)) or anomaly.SCORE_KINDS[d]
        calibration[d] = {**anomaly.calibration_for(held_out, kind, f"{DATASETS[levels]}/test, "
                                                    f"{half_a_split(len(held_out), seed)}", QUANTILES),
                          **bound, **(entries[d] or {})}
    # 3. REPORT: the report half of the test split vs the REPORT kinds
    brng = np.random.default_rng([seed, 3])
    report, flag_rate = {}, {}
    for d in detectors:
        in_s = scores(d, feats["report/in"], entries[d])
        report[d] = {kind: {"auroc": with_interval(auroc, in_s, out, brng),
                            "fpr95": with_interval(fpr95, in_s, out, brng)}
                     for kind in REPORT_KINDS for out in [scores(d, feats[f"report/{kind}"], entries[d])]}
        flag_rate[d] = float(np.mean(anomaly.percentile(calibration[d], in_s) >= 99.0))
    return {"model": name, "levels": levels, "detectors": detectors, "default": default, "choose": choose,
            "calibration": calibration, "report": report, "flag_rate": flag_rate, "n": n, "n_cal": len(cal_index),
            "options": options}, gaussian


def chosen_default(detectors: list[str], choose: dict[str, dict[str, float]]) -> str:
    """The choose step's rule: the detector with the best mean AUROC over the constructions (ties: the best worst
    case). It replaced worst_case_default on 2026-12-07, after both held-out sets had been read (see
    benchmarks/anomaly_unseen.py's third set, made after the switch)."""
    return max(detectors, key=lambda d: (np.mean(list(choose[d].values())), min(choose[d].values())))


def worst_case_default(detectors: list[str], choose: dict[str, dict[str, float]]) -> str:
    """The rule until 2026-12-07: the best worst-case AUROC over the constructions (ties: the best mean)."""
    return max(detectors, key=lambda d: (min(choose[d].values()), np.mean(list(choose[d].values()))))


def half_a_split(n_cal: int, seed: int) -> str:
    """How a calibration entry's split names the test split's half A (n_cal of its digits), as `evaluate` writes it
    and --check-calibration and --recalibrate recognize the entries calibrated on all of it."""
    return f"half A ({n_cal} of {TEST_SIZE // 2}, seed {seed})"


def halves(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The test split's calibration half A and report half B (indices), as `evaluate` draws them."""
    order = np.random.default_rng([seed, 17]).permutation(TEST_SIZE)
    return np.sort(order[:TEST_SIZE // 2]), np.sort(order[TEST_SIZE // 2:])


async def served(engine: Engine, name: str, x: np.ndarray, seed: int, entry: dict) -> np.ndarray:
    """The default detector's scores [B] as the service answers them, in chunks, chunk i seeded seed + its start
    (seed 0: the calibration's own seeds); a bound asked at the entry's k and method (any other gives the same
    anomaly scores, after computing a second bound)."""
    bound = dict(zip(("k", "method"), anomaly.bound_settings(entry) or (), strict=False))
    parts = [await engine.score(name, x[start:start + CHUNK], seed=seed + start, **bound)
             for start in range(0, len(x), CHUNK)]
    return np.array([r["anomaly"]["score"] for part in parts for r in part])


def binomial_tail(flags: int, n: int, p: float) -> float:
    """P(X >= flags), X ~ Binomial(n, p)."""
    return float(stats.binom.sf(flags - 1, n, p))


def fresh_flags(entry: dict, fresh: np.ndarray, q: float, index: np.ndarray) -> dict:
    """The fresh scores' [n] flags as the service sets them (percentile among the entry's held-out scores at least
    100 q): their count, rate, binomial p-value against rate 1 - q, and the flagged inputs' `index` [n] entries."""
    flagged = anomaly.percentile(entry, fresh) >= q * 100.0
    flags = int(np.count_nonzero(flagged))
    return {"flags": flags, "fpr": flags / len(fresh), "binomial_p": binomial_tail(flags, len(fresh), 1 - q),
            "flagged": index[flagged].tolist()}


def split_flags(pooled: np.ndarray, n_cal: int, q: float, method: str, orders: np.ndarray) -> np.ndarray:
    """Flags [draws] of the fresh side of each random split of the pooled held-out and fresh scores (orders
    [draws, N]: the first n_cal calibrate, by the same quantile estimate; the rest are flagged at q)."""
    return np.array([np.count_nonzero(pooled[o[n_cal:]] >= np.quantile(pooled[o[:n_cal]], q, method=method))
                     for o in orders])


def permutation_p(counts: np.ndarray, observed: int) -> float:
    """The permutation test's upper-tail p-value of `observed` among the permuted `counts`: (1 + #{counts >=
    observed}) / (1 + draws), counting the observed split as one of the draws (never 0)."""
    return float((1 + np.count_nonzero(counts >= observed)) / (1 + len(counts)))


def permutation_tests(rows: list[dict], seed: int) -> dict:
    """Each tested row's `exchangeable_mean` and `exchangeable_p`: its flags' mean and upper tail when half A and
    half B are exchangeable (a calibrated score), over random splits of its pooled scores; and the same for the sum
    of every row's flags, over the same splits for every model (the models share the digits, so their flags are
    correlated and no binomial sum describes them)."""
    tested = [r for r in rows if r["n_fresh"]]
    if not tested:
        raise SystemExit(f"no fresh digits to test: every model of {[r['model'] for r in rows]} has its default "
                         f"calibrated on the whole test split, not on {half_a_split(TEST_SIZE // 2, seed)}")
    size = tested[0]["n_cal"] + tested[0]["n_fresh"]
    rng = np.random.default_rng([seed, 5])
    orders = np.array([rng.permutation(size) for _ in range(PERMUTATIONS)])
    total = np.zeros(PERMUTATIONS, int)
    for r in tested:
        counts = split_flags(np.array(r["held_out_scores"] + r["fresh_scores"]), r["n_cal"], 1 - r["expected_fpr"],
                             r["quantile_method"], orders)
        r |= {"exchangeable_mean": float(counts.mean()), "exchangeable_p": permutation_p(counts, r["flags"])}
        total += counts
    flags = sum(r["flags"] for r in tested)
    return {"models": len(tested), "flags": flags, "fresh": sum(r["n_fresh"] for r in tested),
            "exchangeable_mean": float(total.mean()), "exchangeable_p": permutation_p(total, flags)}


async def check_calibration(engine: Engine, name: str, seed: int) -> dict:
    """The default detector's flag on test digits that neither the choice (training digits) nor its calibration
    used: its false-positive rate against the threshold and a binomial p-value (the permutation test that also
    counts the threshold's own sampling error: permutation_tests, from the scores kept). The held-out scores are
    recomputed through the service at the calibration's seeds and compared with the stored quantiles (equal where
    the calibration is the served score)."""
    m = engine.model(name)
    detector = anomaly.default_detector(m.manifest)
    entry = anomaly.calibration_entry(m.manifest, detector)
    q = m.manifest["calibration"]["threshold_quantile"]
    x = load(DATASETS[m.data["levels"]]).x_test
    half_a, half_b = halves(seed)
    calibrated_on_half_a = entry["split"].endswith(half_a_split(TEST_SIZE // 2, seed))
    held_out_x, fresh_x = (x[half_a], x[half_b]) if calibrated_on_half_a else (x, x[:0])
    held_out = await served(engine, name, held_out_x, 0, entry)
    stored = np.asarray(entry["values"])
    method = entry.get("quantile_method", "linear")
    recomputed = np.quantile(held_out, entry["quantiles"], method=method)
    row = {"model": name, "detector": detector, "split": entry["split"], "n_cal": len(held_out),
           "reproduced": float(np.max(np.abs(recomputed - stored)) / (stored[-1] - stored[0])),
           "expected_fpr": 1 - q, "n_fresh": len(fresh_x)}
    if len(fresh_x):
        fresh = await served(engine, name, fresh_x, FRESH_SEED, entry)
        row |= fresh_flags(entry, fresh, q, half_b) | {"quantile_method": method, "held_out_scores": held_out.tolist(),
                                                       "fresh_scores": fresh.tolist()}
    return row


async def recalibrate(engine: Engine, store: Path, name: str, seed: int) -> list[str]:
    """Rewrite the quantiles of the manifest's `calibration.detectors` from their held-out scores by
    anomaly.calibration_for's estimator; everything else (default, mix standardization, latent Gaussian, background,
    k) stays. The held-out scores are recomputed as `evaluate` computed them, and must reproduce the stored quantiles
    by their own estimator first. Returns the detectors rewritten."""
    m = engine.model(name)
    entries = {d: e for d, e in m.manifest["calibration"].get("detectors", {}).items()
               if e["split"].endswith(half_a_split(TEST_SIZE // 2, seed))}
    if not entries:
        return []
    ks = {d: e.get("k", 0) for d, e in entries.items()}  # 0: a bound-free score
    if len(set(ks.values())) != 1:
        raise SystemExit(f"{name}: --recalibrate rescores every calibration.detectors entry at one bound, so their "
                         f"k must agree; found k {ks}")
    k = next(iter(ks.values()))
    need = {p for d in entries for p in anomaly.components(d)}
    x = load(DATASETS[m.data["levels"]]).x_test[halves(seed)[0]]
    feats = await features(engine, name, x, score_options(engine, name, k), need)
    if "latent_mahalanobis" in need:
        feats["latent_mahalanobis"] = anomaly.latent_mahalanobis(feats["latent_mean"], feats["latent_std"],
                                                                 m.latent_gaussian)
    path = store / name / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    for d, entry in entries.items():
        held_out = scores(d, feats, entry)
        stored = np.asarray(entry["values"])
        gap = np.abs(np.quantile(held_out, entry["quantiles"], method=entry.get("quantile_method", "linear")) - stored)
        if gap.max() > 1e-5 * (stored[-1] - stored[0]):
            raise SystemExit(f"{name} {d}: the held-out scores do not reproduce the stored quantiles ({gap.max():.3g})")
        manifest["calibration"]["detectors"][d] |= anomaly.calibration_for(held_out, entry["score"], entry["split"],
                                                                           entry["quantiles"])
    path.write_text(json.dumps(manifest, indent=2))  # as the manifests are written: no final newline
    return sorted(entries)


def calibration_table(rows: list[dict], joint: dict, command: str) -> str:
    lines = ["# Anomaly calibration: the default detector's flag on fresh test digits\n", f"    {command}\n",
             f"Fresh: the test split's half B ({TEST_SIZE - TEST_SIZE // 2} digits), which neither the choose step "
             f"(training digits) nor the calibration (half A) used, scored through the service (chunks of {CHUNK}, "
             f"seeds {FRESH_SEED} + start). `p binomial`: P(X >= flags), X ~ Binomial(n, 0.01), the threshold taken "
             "as exact. `p exchangeable`: the same tail when half A and half B are exchangeable (a calibrated score): "
             f"(1 + the splits with at least as many flags) / (1 + {PERMUTATIONS}) over {PERMUTATIONS} random splits "
             f"of the pooled {TEST_SIZE} scores, each thresholded by the same quantile estimate, so that it also "
             "counts the threshold's sampling error; `E flags` its mean. `reproduced`: the largest gap between the "
             "stored quantiles and those of the held-out scores recomputed through the service at the calibration's "
             "seeds, over the stored range (0: the calibration is the served score).\n",
             "| model | default | calibration | reproduced | fresh n | flags | FPR | p binomial | E flags | "
             "p exchangeable |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fresh = (f"{r['n_fresh']} | {r['flags']} | {r['fpr']:.3f} | {r['binomial_p']:.3f} | "
                 f"{r['exchangeable_mean']:.2f} | {r['exchangeable_p']:.3f}") if r["n_fresh"] else \
            "0 | - | - | - | - | - (every test digit calibrates it)"
        lines.append(f"| {r['model']} | {r['detector']} | {r['split']} (n={r['n_cal']}) | {r['reproduced']:.1e} | "
                     f"{fresh} |")
    tested = [r for r in rows if r["n_fresh"]]
    lines += ["\nThe flagged fresh digits (indices into the test split):\n"]
    lines += [f"- {r['model']}: {r['flagged']}" for r in tested]
    flags, n = joint["flags"], joint["fresh"]
    lines.append(f"\nAll {joint['models']} tested models together: {flags} flags of {n} fresh digits, FPR "
                 f"{flags / n:.4f}. As if independent, P(X >= {flags}), X ~ Binomial({n}, 0.01) = "
                 f"{binomial_tail(flags, n, 0.01):.3g}; but the models share the digits, so over the same random "
                 f"splits for every model: E flags {joint['exchangeable_mean']:.1f}, P(flags >= {flags}) = "
                 f"{joint['exchangeable_p']:.3f}.")
    return "\n".join(lines) + "\n"


def scoring_models(engine: Engine, wanted: list[str] | None) -> list[str]:
    names = [name for name, m in sorted(engine.models.items())
             if "score" in m.capabilities and m.data["kind"] == "image" and m.shape == SHAPE
             and m.data["levels"] in DATASETS and name not in BACKGROUNDS.values()]
    unknown = set(wanted or []) - set(names)
    if unknown:
        raise SystemExit(f"not scoring image models in the store: {sorted(unknown)}; they are: {names}")
    return [name for name in names if wanted is None or name in wanted]


def gaussian_path(rows_json: Path, model: str) -> Path:
    """Where a run keeps a model's latent Gaussian (anomaly.latent_arrays, safetensors): beside its --json rows."""
    return rows_json.with_name(f"{rows_json.stem}.{model}.{anomaly.LATENT_FILE}")


def latent_file(rows_json: Path, row: dict) -> bytes | None:
    """The bytes of the latent Gaussian file that the row's latent_mahalanobis entry names (None: no such entry).
    Rows whose Gaussian is JSON lists (written before the file) are refused, and so is a missing or oversized file."""
    latent = row["calibration"].get("latent_mahalanobis", {}).get("latent")
    if latent is None:
        return None
    if "file" not in latent:
        raise SystemExit(f"{row['model']}: its latent_mahalanobis Gaussian is JSON lists in the rows (written before "
                         f"{anomaly.LATENT_FILE}); rerun the model instead of writing these rows")
    source = gaussian_path(rows_json, row["model"])
    if not source.is_file():
        raise SystemExit(f"{row['model']}: {source}, the latent Gaussian of these rows, is missing; rerun the model")
    data = source.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise SystemExit(f"{row['model']}: {source} is {len(data)} bytes, over the project's {MAX_FILE_BYTES} per "
                         "artifact file")
    return data


def write_manifest(store: Path, row: dict, rows_json: Path) -> None:
    """Only calibration.detectors and calibration.default, and the latent Gaussian's file (copied from beside the
    rows' --json, `rows_json`) with its sha256 in files; re-read right before writing. Rows whose entries were
    estimated before calibration_for took its quantiles at rank q (n + 1) are refused: writing them would bring back
    the biased thresholds that --recalibrate replaced."""
    stale = [d for d, e in row["calibration"].items() if "quantile_method" not in e and d not in ("nll", "critic")]
    if stale:
        raise SystemExit(f"{row['model']}: calibration entries {stale} predate quantile_method; rerun the model "
                         "instead of writing these rows")
    gaussian = latent_file(rows_json, row)
    directory = store / row["model"] / "1"
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    base = "critic" if manifest["calibration"]["score"] == "negative_critic" else "nll"
    manifest["calibration"]["detectors"] = {d: e for d, e in row["calibration"].items() if d != base}
    manifest["calibration"]["default"] = row["default"]
    if gaussian is not None:
        (directory / anomaly.LATENT_FILE).write_bytes(gaussian)
        manifest["files"][anomaly.LATENT_FILE] = hashlib.sha256(gaussian).hexdigest()
    path.write_text(json.dumps(manifest, indent=2))  # as the manifests are written: no final newline


def cell(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}]"


def tables(rows: list[dict], command: str, seconds: float | None) -> str:
    took = "Rows merged from runs split by --models." if seconds is None else f"{seconds / 60:.1f} min."
    lines = ["# Anomaly detection: choose on constructions, report on kinds never used\n", f"    {command}\n",
             f"{took} OOD is the positive class; AUROC 0.5 is chance. Intervals: 2.5-97.5% of "
             f"{BOOTSTRAP} bootstrap resamples of both sets.\n",
             "## 1. Choose (training digits vs CHOOSE kinds; AUROC; `*` the chosen default: the best mean, ties by "
             "the min)\n",
             "| model | detector | " + " | ".join(CHOOSE_KINDS) + " | min | mean |",
             "|---|---|" + "---|" * (len(CHOOSE_KINDS) + 2)]
    for r in rows:
        for d in r["detectors"]:
            v = r["choose"][d]
            lines.append(f"| {r['model']} | {d}{' *' if d == r['default'] else ''} | "
                         + " | ".join(f"{v[k]:.3f}" for k in CHOOSE_KINDS)
                         + f" | {min(v.values()):.3f} | {np.mean(list(v.values())):.3f} |")
    lines += ["\n## 2. Report, default detectors (test digits half B vs REPORT kinds; AUROC)\n",
              "| model | default | " + " | ".join(REPORT_KINDS) + " | min | mean | flag rate (0.01) |",
              "|---|---|" + "---|" * (len(REPORT_KINDS) + 3)]
    for r in rows:
        d = r["default"]
        a = [r["report"][d][k]["auroc"][0] for k in REPORT_KINDS]
        lines.append(f"| {r['model']} | {d} | " + " | ".join(f"{x:.3f}" for x in a)
                     + f" | {min(a):.3f} | {np.mean(a):.3f} | {r['flag_rate'][d]:.3f} (n={r['n']}) |")
    lines += ["\n## 3. Report, every detector: AUROC [interval] / FPR at 95% TPR [interval]\n",
              "| model | detector | kind | AUROC | FPR@95TPR |", "|---|---|---|---|---|"]
    for r in rows:
        for d in r["detectors"]:
            for k in REPORT_KINDS:
                v = r["report"][d][k]
                lines.append(f"| {r['model']} | {d} | {k} | {cell(v['auroc'])} | {cell(v['fpr95'])} |")
    lines += ["\nKinds:\n"] + [f"- {k} ({'CHOOSE' if k in CHOOSE_KINDS else 'REPORT'}): {v}." for k, v in NOTES.items()]
    lines += ["- binary models see every set binarized like mnist5k-binarized (pixel ~ Bernoulli(gray / 255))."]
    return "\n".join(lines) + "\n"


async def run(args) -> list[dict]:
    engine = Engine(ModelStore(args.store), Settings(intra_op_threads=1))
    rows = []
    for name in scoring_models(engine, args.models):
        row, gaussian = await evaluate(engine, name, args.n, args.n_cal, args.seed, args.k)
        rows.append(row)
        if gaussian is not None:
            save_file(anomaly.latent_arrays(gaussian), str(gaussian_path(Path(args.json), name)))
        if args.write:
            write_manifest(args.store, row, Path(args.json))
        Path(args.json).write_text(json.dumps(rows))
    return rows


async def check_all(args) -> dict:
    engine = Engine(ModelStore(args.store), Settings(intra_op_threads=1))
    rows = []
    for name in scoring_models(engine, args.models):
        rows.append(await check_calibration(engine, name, args.seed))
        print(name, rows[-1].get("flags"), file=sys.stderr)
    result = {"rows": rows, "joint": permutation_tests(rows, args.seed)}
    Path(args.json).write_text(json.dumps(result))
    return result


async def recalibrate_all(args) -> None:
    engine = Engine(ModelStore(args.store), Settings(intra_op_threads=1))
    for name in scoring_models(engine, args.models):
        print(name, "rewrote", await recalibrate(engine, args.store, name, args.seed), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--n", type=int, default=64, help="inputs per set (at most 250)")
    parser.add_argument("--n-cal", type=int, default=250, help="calibration inputs (the test split's half A)")
    parser.add_argument("--k", type=int, default=100, help="importance samples for IWAE-scored models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write calibration.detectors/default to manifests "
                        "(with --merge: from the merged rows)")
    parser.add_argument("--out", type=Path, help="(default: benchmarks/results/anomaly.md, with "
                        "--check-calibration anomaly-calibration.md)")
    parser.add_argument("--json", help="(default: benchmarks/results/anomaly.json, with --check-calibration "
                        "anomaly-calibration.json)")
    parser.add_argument("--check-calibration", action="store_true", help="instead of running: the default "
                        "detectors' flag rate on fresh test digits (--out anomaly-calibration.md)")
    parser.add_argument("--recalibrate", action="store_true", help="instead of running: rewrite the "
                        "quantiles of calibration.detectors by anomaly.calibration_for from recomputed held-out scores")
    parser.add_argument("--merge", nargs="+", type=Path, help="instead of running: the tables of these --json files' "
                        "rows, a model's row from the last file that has it (runs split by --models)")
    args = parser.parse_args()
    results = Path("benchmarks/results") / ("anomaly-calibration" if args.check_calibration else "anomaly")
    args.out = args.out or results.with_suffix(".md")  # a calibration check never overwrites the AUROC tables
    args.json = args.json or str(results.with_suffix(".json"))
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + shlex.join([os.path.relpath(sys.executable), *sys.argv])
    start = time.perf_counter()
    if args.recalibrate:
        asyncio.run(recalibrate_all(args))
        return
    if args.check_calibration:
        result = asyncio.run(check_all(args))
        text = calibration_table(result["rows"], result["joint"], command)
        print(text)
        args.out.write_text(text)
        return
    if args.merge:
        merged = {r["model"]: (r, path) for path in args.merge for r in json.loads(path.read_text())}
        rows = sorted(({**r, "default": chosen_default(r["detectors"], r["choose"])} for r, _ in merged.values()),
                      key=lambda r: r["model"])  # the rule of today, from the rows' own choose AUROCs
        Path(args.json).write_text(json.dumps(rows))
        for row in rows if args.write else []:
            write_manifest(args.store, row, merged[row["model"]][1])
    else:
        rows = asyncio.run(run(args))
    text = tables(rows, command, None if args.merge else time.perf_counter() - start)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
