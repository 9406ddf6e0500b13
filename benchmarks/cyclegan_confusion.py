"""Where a cyclegan run's translations lose the digit's class: per class, on the run's validation images (its config's
`validation`: the last train images of each domain, kept out of its training), how often each judge reads the
source's label, and the judges' commonest misreadings (true -> read: count).

a -> b is read by b's judge (`target_classifier`) and by the shipped classifier; beside it, the same judges on the
untranslated digits and on the ideal translations (the digits drawn b's way: `optdigits`, upscaled and framed).
b -> a is read by the shipped classifier, beside the untranslated digits.

    .venv/bin/python benchmarks/cyclegan_confusion.py runs/cyclegan-long-15 [--json out.json]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training import quality
from training.families import cyclegan as cg
from training.train import load_model


def confusion(judge: quality.Classifier, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[10, 10] counts: row the true class, column the judge's reading."""
    counts = np.zeros((10, 10), int)
    np.add.at(counts, (y, quality.classify(judge, x, cg.LEVELS)[0].argmax(1)), 1)
    return counts


def summary(counts: np.ndarray) -> dict:
    misread = sorted(((int(counts[i, j]), i, j) for i in range(10) for j in range(10) if i != j), reverse=True)
    return {"accuracy": float(np.trace(counts) / counts.sum()),
            "per_class": [round(float(v), 3) for v in np.diag(counts) / counts.sum(1)],
            "commonest_misreadings": [f"{i}->{j}: {n}" for n, i, j in misread[:5] if n > 0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _, split = load_model(args.run_dir)
    if not model.config.validation:
        parser.error(f"{args.run_dir}: its config holds no validation images out (model option `validation`)")
    shipped, _ = quality.load_classifier(quality.SHIPPED)
    judge_b = cg.target_classifier(mnist_frame=model.config.mnist_frame)
    held = cg.held_out(model, split)
    (xa, ya), (xb, yb) = held["a"], held["b"]
    border = 4 if model.config.mnist_frame else 0
    rows = {"a -> b, b's judge": (judge_b, cg.translate(model.g_ab, xa), ya),
            "a -> b, shipped classifier": (shipped, cg.translate(model.g_ab, xa), ya),
            "a untranslated, b's judge": (judge_b, xa, ya),
            "a drawn b's way, b's judge": (judge_b, cg.upscale(cg.optdigits(xa), border), ya),
            "a drawn b's way, shipped classifier": (shipped, cg.upscale(cg.optdigits(xa), border), ya),
            "b -> a, shipped classifier": (shipped, cg.translate(model.g_ba, xb), yb),
            "b untranslated, shipped classifier": (shipped, xb, yb)}
    report = {name: summary(confusion(*row)) for name, row in rows.items()}
    print("| validation digits, judge | all | " + " | ".join(map(str, range(10))) + " | commonest misreadings |")
    print("|---|---|" + "---|" * 10 + "---|")
    for name, row in report.items():
        print(f"| {name} | {row['accuracy']:.3f} | " + " | ".join(f"{v:.2f}" for v in row["per_class"])
              + f" | {', '.join(row['commonest_misreadings'][:3])} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(args.run_dir), "rows": report}, indent=2))


if __name__ == "__main__":
    main()
