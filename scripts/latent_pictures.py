"""The README's pictures of the latent-variable models, made through the serving engine on the shipped store:

  docs/vae-interpolation.png  rows: decode of 10 latents on the line between two test digits' posterior means
                              (0 to 7, 2 to 3, 4 to 9, 6 to 1)
  docs/inpainting.png         rows: test digits, the observed top half (the rest gray), then each model's
                              completions (pseudo-Gibbs for the VAEs, clamped Gibbs for the RBM)
  docs/realnvp-samples.png    rows: realnvp samples at temperature 1.0, then 0.7 (the same seed)

    .venv/bin/python scripts/latent_pictures.py [--models models]
"""

import argparse
import asyncio
from pathlib import Path

import numpy as np

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training.data import load
from training.plots import save_grid

DOCS = Path(__file__).resolve().parent.parent / "docs"


async def interpolation(engine: Engine, x: np.ndarray, pairs: int = 4, steps: int = 10) -> np.ndarray:
    """[pairs * steps, 1, 28, 28] decoded means in [0, 1]."""
    rows = [(await engine.interpolate("vae", x[2 * p: 2 * p + 2], steps))["images"] for p in range(pairs)]
    return np.concatenate(rows)


async def inpainting(engine: Engine, x: np.ndarray, models: list[str], levels: int = 2) -> np.ndarray:
    """Rows of len(x) images: originals, observed halves (the rest mid-gray), then one completion per model."""
    mask = np.zeros((1, 28, 28), np.int64)
    mask[:, :14] = 1
    observed = np.where(mask == 1, x, (levels - 1) / 2)
    rows = [x, observed]
    for name in models:
        rows.append((await engine.complete(name, x, mask, 1, 0, 1.0))[:, 0])
    return np.concatenate(rows)


async def main(models_dir: Path) -> None:
    engine = Engine(ModelStore(models_dir), Settings())
    split = load("mnist5k-binarized")
    first = [int(np.flatnonzero(split.y_test == digit)[0]) for digit in (0, 7, 2, 3, 4, 9, 6, 1)]  # one per class
    x = split.x_test[first].astype(np.int64)
    save_grid(await interpolation(engine, x), 2, DOCS / "vae-interpolation.png", columns=10)
    completers = [name for name in ("vae", "hvae", "rbm") if name in engine.models]
    save_grid(await inpainting(engine, x, completers), 2, DOCS / "inpainting.png", columns=8)
    if "realnvp" in engine.models:
        grid = np.concatenate([await engine.sample("realnvp", 8, 0, t, None) for t in (1.0, 0.7)])
        save_grid(grid, 256, DOCS / "realnvp-samples.png", columns=8)
    print(f"wrote {DOCS / 'vae-interpolation.png'} and {DOCS / 'inpainting.png'} (rows: original, observed, "
          f"{', '.join(completers)}), and realnvp-samples.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    asyncio.run(main(parser.parse_args().models))
