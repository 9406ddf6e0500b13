"""StackGAN's captions against what the served model draws, on mnist5k's 500 test digits.

Through the engine in-process (models/stackgan), with training/data/captions.py measuring both the captions'
digits and the samples:
- agreement: one sample (seed i) per test digit's caption; the shipped evaluation classifier (models/evaluation,
  the one FID and IS use) against the caption's digit, and how often the sample's measured words equal the
  caption's (size, thickness, slant);
- the attribute table: for every digit and --draws seeds, captions that differ in one word only ("a thin seven" /
  "a thick seven", "a small ..." / "a large ...", "... slanted to the left" / "... to the right"), drawn with the
  same seed (so the same noise): the mean measure under each word, and the share of pairs ordered as the words say.
--figure (from the training run, since Stage I's drafts are not served): one column per caption, rows Stage I
(14x14, shown at 28x28) and Stage II.

    .venv/bin/python benchmarks/stackgan_eval.py --run runs/stackgan --figure docs/stackgan.png
"""

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import torch

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training import quality
from training.data import captions, mnist5k
from training.families import stackgan
from training.train import load_model

FIGURE = ["a thin one", "a thick one", "a two slanted to the left", "a two slanted to the right", "a small three",
          "a large three", "a thin four", "a thick four", "a five upright", "a large thick six", "a small thin seven",
          "a seven slanted to the right", "an eight", "a thick nine slanted to the left"]


def engine(models: Path, name: str, runtime: str) -> Engine:
    store = ModelStore(models)
    store.entries = {name: store.entries[name]}
    return Engine(store, Settings(runtime=runtime, intra_op_threads=1, models=models))


async def sample(served: Engine, name: str, texts: list[str], seeds: list[int], chunk: int = 128) -> np.ndarray:
    """One served sample per (caption, seed), `chunk` requests at a time: [N, 1, 28, 28] levels."""
    rows = []
    for i in range(0, len(texts), chunk):
        rows += await asyncio.gather(*(served.sample(name, 1, s, 1.0, None, prompt=t)
                                       for t, s in zip(texts[i: i + chunk], seeds[i: i + chunk], strict=True)))
    return np.concatenate(rows)


def agreement(served: Engine, name: str, split, thresholds: captions.Thresholds) -> dict:
    words = captions.attributes(captions.measure(split.x_test), split.y_test, thresholds)
    texts = captions.captions(words, split.y_test)
    x = asyncio.run(sample(served, name, texts, list(range(len(texts)))))
    classifier = quality.load_classifier(quality.SHIPPED)[0]
    got = captions.attributes(captions.measure(x), split.y_test, thresholds)
    return {"digit": quality.accuracy(classifier, x, split.y_test, 256),
            **{k: float(v) for k, v in zip(["size", "thickness", "slant"], (words == got).mean(0), strict=True)}}


def real_means(split, thresholds: captions.Thresholds) -> dict:
    """For reference, the test digits' mean measure among those whose caption has each word of WORD_PAIRS."""
    measured = captions.measure(split.x_test)
    words = captions.attributes(measured, split.y_test, thresholds)  # [N, 3]: size, thickness, slant
    column = {"size": 0, "thickness": 1, "slant": 2}
    return {a: [float(measured[a][words[:, column[a]] == w].mean()) for w in (0, 2)] for a in stackgan.WORD_PAIRS}


def attribute_table(served: Engine, name: str, draws: int) -> dict:
    """Per WORD_PAIRS attribute: the mean measure under each word, and the share of pairs ordered as the words."""
    table = {}
    for attribute, pair in stackgan.WORD_PAIRS.items():
        seeds = [i % draws for i in range(10 * draws)]
        measured = [captions.measure(asyncio.run(sample(served, name, stackgan.one_word_apart(pattern, draws),
                                                        seeds)))[attribute].numpy() for _, pattern in pair]
        table[attribute] = {"words": [pattern.format("<digit>") for _, pattern in pair],
                            "means": [float(m.mean()) for m in measured],
                            "share_ordered": float((measured[1] > measured[0]).mean())}
    return table


def figure(run: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load_model(run)[0]
    drafts, images = stackgan.draw(model, FIGURE, torch.Generator().manual_seed(0))
    fig, axes = plt.subplots(2, len(FIGURE), figsize=(1.25 * len(FIGURE), 3.2))
    for j, text in enumerate(FIGURE):
        for i, (row, label) in enumerate(((drafts, "Stage I\n14x14"), (images, "Stage II\n28x28"))):
            axes[i, j].imshow(row[j, 0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(label, fontsize=8)
        axes[0, j].set_title(text.replace(" slanted", "\nslanted").replace("a ", "", 1), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--name", default="stackgan")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--draws", type=int, default=50, help="seeds per digit and word in the attribute table")
    parser.add_argument("--run", type=Path, help="the training run, for --figure")
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    split = mnist5k()
    served = engine(args.models, args.name, args.runtime)
    thresholds = captions.Thresholds.fit(split.x_train, split.y_train)
    results = {"agreement": agreement(served, args.name, split, thresholds),
               "attributes": attribute_table(served, args.name, args.draws),
               "real_digits": real_means(split, thresholds)}
    a = results["agreement"]
    print(f"{len(split.x_test)} test captions, one served sample each: classifier agrees with the caption's digit "
          f"{a['digit']:.3f}; measured words equal the caption's: size {a['size']:.3f}, thickness "
          f"{a['thickness']:.3f}, slant {a['slant']:.3f}\n")
    print(f"{args.draws} seeds x 10 digits per word, the same seed under both words:\n")
    print("| measure | caption says | mean | caption says | mean | pairs ordered as the words | test digits with "
          "these words |\n|---|---|---|---|---|---|---|")
    for attribute, r in results["attributes"].items():
        real = results["real_digits"][attribute]
        print(f"| {attribute} | {r['words'][0]} | {r['means'][0]:.3f} | {r['words'][1]} | {r['means'][1]:.3f} | "
              f"{r['share_ordered']:.3f} | {real[0]:.3f} / {real[1]:.3f} |")
    if args.figure:
        figure(args.run, args.figure)
        print(f"\nwrote {args.figure}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
