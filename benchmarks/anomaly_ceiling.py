"""A REFERENCE for the anomaly table's REPORT kinds (issue 17): how well a detector that was TOLD the kind separates it.

Not a detector to ship: nothing here feeds benchmarks/anomaly.py's choose step, its calibration or any manifest.
For each REPORT kind and each levels (256: the gray models' inputs; 2: the binarized ones', quantize()), a small
CNN (three conv layers, --epochs epochs, seeded, one CPU thread) is trained to separate mnist5k's *training*
digits from that kind's instances made from *training* digits (letters, symbols and random strokes: fresh draws
with other seeds; scikit-learn digits: only the images the report set does not use). It is then evaluated exactly
on the report step's data: the test split's half B (n=--n of it) against the report kinds as anomaly.py's
`evaluate` draws them (same seeds, same binarization stream). A CNN trained on that very kind reaching X is a lower
bound on what is separable in the kind and a realistic ceiling for an unsupervised detector: no classifier-free
"perfect knowledge" bound is computable. For flipped, rotated and shrunk the AUROC is also broken down by the
source digit's class, on the exact draw (a few digits per class) and on all of half B transformed (about 25 each),
to show which classes stay indistinguishable.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/anomaly_ceiling.py \\
        --json benchmarks/results/anomaly_ceiling.json --out benchmarks/results/anomaly_ceiling.md
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.anomaly import (  # noqa: E402
    BOOTSTRAP,
    DATASETS,
    NOTES,
    REPORT_KINDS,
    TEST_SIZE,
    auroc,
    choose_kinds,
    halves,
    quantize,
    report_kinds,
    sklearn_digits,
    with_interval,
)
from training.data import load  # noqa: E402

BY_CLASS = ["flipped", "rotated", "shrunk"]  # kinds made from one test digit each, broken down by its class
BATCH = 64


def network() -> nn.Module:
    """[B, 1, 28, 28] in [0, 1] -> [B] logit of 'the kind'."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 16, 14, 14]
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 32, 7, 7]
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),  # [B, 32, 7, 7]
        nn.Flatten(), nn.Linear(32 * 7 * 7, 1), nn.Flatten(0))  # [B]


def as_input(x: np.ndarray, levels: int) -> torch.Tensor:
    """uint8 [B, 1, 28, 28] at `levels` -> float [B, 1, 28, 28] in [0, 1]."""
    return torch.from_numpy(x.astype(np.float32) / (levels - 1))


def train_detector(x_in: np.ndarray, x_out: np.ndarray, levels: int, epochs: int, seed: int) -> nn.Module:
    """A CNN trained by BCE to tell x_out [M, 1, 28, 28] (label 1) from x_in [N, 1, 28, 28] (label 0); x_out is
    resampled to N images when M != N, so both classes weigh alike."""
    if len(x_out) != len(x_in):
        x_out = x_out[np.random.default_rng([seed, 9]).integers(0, len(x_out), len(x_in))]
    torch.manual_seed(seed)
    x = as_input(np.concatenate([x_in, x_out]), levels)  # [2N, 1, 28, 28]
    y = torch.cat([torch.zeros(len(x_in)), torch.ones(len(x_out))])  # [2N]
    net = network()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(BATCH):
            optimizer.zero_grad()
            loss(net(x[batch]), y[batch]).backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def detector_scores(net: nn.Module, x: np.ndarray, levels: int) -> np.ndarray:
    """uint8 [B, 1, 28, 28] -> [B] logits, higher = more like the kind."""
    return net(as_input(x, levels)).numpy().astype(np.float64)


def report_sets(seed: int, n: int, levels: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The report step's sets exactly as anomaly.evaluate draws them: half B's n digits [n, 1, 28, 28] at `levels`,
    each REPORT kind [n, 1, 28, 28] at `levels` (binarized from the same stream, after the CHOOSE kinds), and the
    kinds' gray originals (for the scikit-learn images to leave out of training)."""
    rng = np.random.default_rng([seed, 17])
    data, gray = load(DATASETS[levels]), load("mnist5k")
    order = rng.permutation(TEST_SIZE)  # the same first draw as halves(seed)
    report_index = np.sort(order[TEST_SIZE // 2:][:n])
    rng.permutation(len(data.x_train))  # the CHOOSE step's training digits: consumed as evaluate consumes them
    for x in choose_kinds(gray.x_train, n, np.random.default_rng([seed, 1])).values():
        quantize(x, levels, rng)
    report_gray = report_kinds(gray.x_test[halves(seed)[1]], n, np.random.default_rng([seed, 2]))
    return data.x_test[report_index], {k: quantize(x, levels, rng) for k, x in report_gray.items()}, report_gray


def source_classes(seed_seq: list[int], labels: np.ndarray, n: int) -> np.ndarray:
    """The classes [n] of the digits report_kinds(test, n, default_rng(seed_seq)) transforms (its first draw)."""
    return labels[np.random.default_rng(seed_seq).permutation(len(labels))[:n]]


def training_kinds(seed: int, used_sklearn: np.ndarray) -> dict[str, np.ndarray]:
    """Gray instances [M, 1, 28, 28] of every REPORT kind made from mnist5k's training digits (or fresh draws), and
    the scikit-learn digits other than the `used_sklearn` [n, 1, 28, 28] images of the report set."""
    train = load("mnist5k").x_train
    kinds = report_kinds(train, len(train), np.random.default_rng([seed, 100]))
    rendered = sklearn_digits(1797, np.random.default_rng([seed, 101]))  # every image, in some order
    used = (rendered[:, None] == used_sklearn[None]).all(axis=(2, 3, 4)).any(axis=1)  # [1797]
    kinds["sklearn digits"] = rendered[~used]
    return kinds


def by_class(in_s: np.ndarray, out_s: np.ndarray, classes: np.ndarray) -> dict[str, dict]:
    """Per source class c: its OOD instances' count and AUROC against every in-distribution score."""
    return {str(c): {"n": int((classes == c).sum()), "auroc": auroc(in_s, out_s[classes == c])}
            for c in range(10) if (classes == c).any()}


def evaluate(seed: int, n: int, levels: int, epochs: int, gray_train: dict, bar) -> list[dict]:
    """One row per REPORT kind at `levels`: the supervised detector's AUROC [value, low, high] on the report step's
    sets, and for BY_CLASS kinds the per-class AUROCs on the exact draw and on all of half B transformed."""
    x_in, report, _ = report_sets(seed, n, levels)
    labels = load("mnist5k").y_test[halves(seed)[1]]  # [250] half B's classes
    half_b = load(DATASETS[levels]).x_test[halves(seed)[1]]  # [250] at levels
    whole = report_kinds(load("mnist5k").x_test[halves(seed)[1]], len(labels), np.random.default_rng([seed, 4]))
    train_in = load(DATASETS[levels]).x_train
    qrng, brng = np.random.default_rng([seed, 102, levels]), np.random.default_rng([seed, 3])
    rows = []
    for kind in REPORT_KINDS:
        start = time.perf_counter()
        net = train_detector(train_in, quantize(gray_train[kind], levels, qrng), levels, epochs, seed)
        in_s, out_s = detector_scores(net, x_in, levels), detector_scores(net, report[kind], levels)
        row = {"kind": kind, "levels": levels, "auroc": with_interval(auroc, in_s, out_s, brng)}
        if kind in BY_CLASS:
            all_in = detector_scores(net, half_b, levels)
            all_out = detector_scores(net, quantize(whole[kind], levels, qrng), levels)
            row |= {"by_class": by_class(in_s, out_s, source_classes([seed, 2], labels, n)),
                    "half_b": with_interval(auroc, all_in, all_out, brng),
                    "half_b_by_class": by_class(all_in, all_out, source_classes([seed, 4], labels, len(labels)))}
        rows.append(row | {"seconds": time.perf_counter() - start})
        bar.update()
    return rows


def cell(v: list[float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}]"


def tables(rows: list[dict], command: str, seconds: float, n: int, epochs: int) -> str:
    at = {(r["kind"], r["levels"]): r for r in rows}
    lines = ["# Anomaly ceiling: a CNN trained on each REPORT kind (a reference, not a shipped detector)\n",
             f"    {command}\n",
             f"{seconds / 60:.1f} min. A 3-conv CNN, {epochs} epochs, trained on mnist5k's training digits against "
             "the kind made from training digits (letters, symbols, strokes: other seeds; scikit-learn digits: the "
             f"images the report set does not use), evaluated on the report step's sets: half B (n={n}) against the "
             f"kind as benchmarks/anomaly.py draws it. AUROC [2.5-97.5% of {BOOTSTRAP} bootstrap resamples]. A CNN "
             "trained on that very kind reaches this: a lower bound on what is separable, and a realistic ceiling "
             "for an unsupervised detector.\n",
             "| kind | gray (levels 256) | binarized (levels 2) |", "|---|---|---|"]
    lines += [f"| {k} | {cell(at[k, 256]['auroc'])} | {cell(at[k, 2]['auroc'])} |" for k in REPORT_KINDS]
    lines += ["\n## By the source digit's class: AUROC (OOD digits of that class vs every half-B digit)\n",
              "Exact draw: the report set's instances of the class (n of them); all of half B: its 250 digits "
              "transformed (another seed) vs the same 250 untransformed.\n",
              "| kind | levels | all of half B | " + " | ".join(str(c) for c in range(10)) + " |",
              "|---|---|---|" + "---|" * 10]
    for k in BY_CLASS:
        for levels in (256, 2):
            r = at[k, levels]
            for name, key, total in (("exact draw", "by_class", cell(r["auroc"])),
                                     ("all of half B", "half_b_by_class", cell(r["half_b"]))):
                v = r[key]
                lines.append(f"| {k} ({name}) | {levels} | {total} | " + " | ".join(
                    f"{v[str(c)]['auroc']:.2f} (n={v[str(c)]['n']})" if str(c) in v else "-" for c in range(10))
                    + " |")
    lines += ["\nKinds:\n"] + [f"- {k}: {NOTES[k]}." for k in REPORT_KINDS]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="anomaly.py's --seed (the report draw) and the CNNs'")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n", type=int, default=64, help="anomaly.py's --n: inputs per report set")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/anomaly_ceiling.json"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/anomaly_ceiling.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + shlex.join([os.path.relpath(sys.executable), *sys.argv])
    start = time.perf_counter()
    gray_train = training_kinds(args.seed, report_sets(args.seed, args.n, 256)[2]["sklearn digits"])
    with tqdm(total=2 * len(REPORT_KINDS), desc="kinds", file=sys.stderr) as bar:
        rows = [r for levels in (256, 2) for r in evaluate(args.seed, args.n, levels, args.epochs, gray_train, bar)]
    seconds = time.perf_counter() - start
    args.json.write_text(json.dumps({"command": command, "seconds": seconds, "epochs": args.epochs, "n": args.n,
                                     "seed": args.seed, "rows": rows}))
    text = tables(rows, command, seconds, args.n, args.epochs)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
