"""pix2pix against the same U-Net trained with L1 alone, on mnist5k's 500 test pairs (edge map -> digit).

Translates every test digit's edge map (training/data/edges.py) with the served pix2pix (models/pix2pix, through the
engine in-process) and with the L1 baseline's training run (eager: the same generator code; the served path equals
it up to rounding ties, tests/service/test_translate.py), and prints for each: the mean L1 error on 0..1 intensities
against the true digits, and the shipped evaluation classifier's accuracy (models/evaluation, the one FID and IS
use) on the translations against the source digits' labels, beside its accuracy on the true digits. Draws
--figure: rows of edge maps, pix2pix's translations, the baseline's and the true digits, one column per class.

    .venv/bin/python benchmarks/pix2pix_eval.py --baseline runs/pix2pix-l1 --figure docs/pix2pix.png
"""

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training import quality
from training.data import mnist5k
from training.data.edges import edge_map
from training.families import pix2pix
from training.plots import save_grid
from training.train import load_model


def served(models: Path, name: str, sources: np.ndarray, runtime: str, batch: int = 32) -> np.ndarray:
    """Translations [N, 1, 28, 28] levels of edge maps [N, 1, 28, 28] by the served model, `batch` a request."""
    store = ModelStore(models)
    store.entries = {name: store.entries[name]}
    engine = Engine(store, Settings(runtime=runtime, intra_op_threads=1, models=models))

    async def run():
        return np.concatenate([await engine.translate(name, sources[i: i + batch])
                               for i in range(0, len(sources), batch)])

    return asyncio.run(run())


def report(translations: np.ndarray, split, classifier: quality.Classifier) -> dict:
    return {"test_l1": float(np.abs(translations / 255 - split.x_test / 255).mean()),
            "classifier_accuracy": quality.accuracy(classifier, translations, split.y_test, pix2pix.LEVELS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--name", default="pix2pix")
    parser.add_argument("--baseline", type=Path, default=Path("runs/pix2pix-l1"), help="the L1-only training run")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    split, classifier = mnist5k(), quality.load_classifier(quality.SHIPPED)[0]
    sources = edge_map(split.x_test).numpy()  # [500, 1, 28, 28] in {0, 1}
    outputs = {"pix2pix (served)": served(args.models, args.name, sources, args.runtime),
               "U-Net, L1 alone": pix2pix.translate(load_model(args.baseline)[0], split.x_test)}
    results = {source: report(out, split, classifier) for source, out in outputs.items()}
    results["true digits"] = {"test_l1": 0.0,
                              "classifier_accuracy": quality.accuracy(classifier, split.x_test, split.y_test, 256)}
    print(f"{len(split.x_test)} mnist5k test pairs (edge map -> digit)\n")
    print("| source | L1 (0..1 intensities) | classifier accuracy |\n|---|---|---|")
    for source, r in results.items():
        print(f"| {source} | {r['test_l1']:.4f} | {r['classifier_accuracy']:.3f} |")
    if args.figure:
        first = [int(np.flatnonzero(split.y_test == k)[0]) for k in range(10)]
        rows = [sources[first] * 255, *(out[first] for out in outputs.values()), split.x_test[first]]
        save_grid(np.concatenate(rows), 256, args.figure, columns=10, zoom=3)
        print(f"\nwrote {args.figure}: rows of edge maps, {', '.join(outputs)} and the true digits")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
