"""The README's pictures of the implicit models, made through the serving engine on the shipped store, and the
measure of how well InfoGAN's categorical code controls the digit class:

  docs/<name>-samples.png   40 samples of each GAN variant (seed 0)
  docs/infogan-codes.png    rows: the categorical code 0..9; columns: the first style code from -1.5 to 1.5
                            (the second at 0), one noise draw (seed 0) for the whole grid
  docs/gan-inpainting.png   rows: test digits, the observed top half (the rest gray), then each GAN's completion
                            by latent optimization

The code purity: for each code, `--per-code` samples (noise and styles drawn) classified by the evaluation
classifier (models/evaluation); purity is the share of the code's most frequent class, and `distinct` how many
classes are some code's most frequent (10: every code maps to its own digit).

    .venv/bin/python scripts/gan_pictures.py [--models models] [--per-code 100]
"""

import argparse
import asyncio
from pathlib import Path

import numpy as np
from latent_pictures import inpainting  # scripts/, on the path when run as a script

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training.data import load
from training.plots import save_grid
from training.quality import classify, load_classifier

DOCS = Path(__file__).resolve().parent.parent / "docs"
VARIANTS = ("gan", "wgan", "wgan-gp", "bigan", "infogan")
STYLES = np.linspace(-1.5, 1.5, 8)


async def code_grid(engine: Engine) -> np.ndarray:
    """[10 * 8, 1, 28, 28]: code c in row c, style[0] along the row, the same noise (seed 0) everywhere."""
    cells = [await engine.sample("infogan", 1, 0, 1.0, None, controls={"code": c, "style": [float(s), 0.0]})
             for c in range(10) for s in STYLES]
    return np.concatenate(cells)


async def code_purity(engine: Engine, per_code: int) -> tuple[list[float], int]:
    """Per code, the share of its samples in its most frequent predicted class; and how many distinct classes."""
    classifier, _ = load_classifier(Path("models/evaluation"))
    purity, majority = [], set()
    for c in range(10):
        x = await engine.sample("infogan", per_code, 1000 + c, 1.0, None, controls={"code": c})
        predicted = classify(classifier, x, 256)[0].argmax(axis=1)
        counts = np.bincount(predicted, minlength=10)
        purity.append(float(counts.max() / per_code))
        majority.add(int(counts.argmax()))
    return purity, len(majority)


async def main(models_dir: Path, per_code: int) -> None:
    engine = Engine(ModelStore(models_dir), Settings())
    shipped = [name for name in VARIANTS if name in engine.models]
    for name in shipped:
        save_grid(await engine.sample(name, 40, 0, 1.0, None), 256, DOCS / f"{name}-samples.png", columns=10)
    if "infogan" in engine.models:
        save_grid(await code_grid(engine), 256, DOCS / "infogan-codes.png", columns=len(STYLES))
        purity, distinct = await code_purity(engine, per_code)
        print(f"infogan code purity ({per_code} samples per code): " + ", ".join(f"{p:.2f}" for p in purity)
              + f"; mean {np.mean(purity):.3f}; {distinct} distinct majority classes of 10")
    split = load("mnist5k")
    x = split.x_test[[int(np.flatnonzero(split.y_test == d)[0]) for d in (0, 7, 2, 3, 4, 9, 6, 1)]].astype(np.int64)
    completers = [name for name in ("gan", "wgan-gp", "bigan") if name in shipped]
    save_grid(await inpainting(engine, x, completers, levels=256), 256, DOCS / "gan-inpainting.png", columns=len(x))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--per-code", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.models, args.per_code))
