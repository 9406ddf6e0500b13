"""PNG outputs written beside a checkpoint: sample grids and loss curves."""

from pathlib import Path

import numpy as np
from PIL import Image


def save_grid(images: np.ndarray, levels: int, path: Path, columns: int = 8, zoom: int = 2) -> None:
    """images [N, 1, H, W] in 0..levels-1 -> one PNG, `columns` images per row."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), 128, dtype=np.uint8)
    pixels = (images[:, 0].astype(np.float64) * 255.0 / (levels - 1)).round().astype(np.uint8)
    for k in range(n):
        r, c = divmod(k, columns)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = pixels[k]
    Image.fromarray(canvas).resize((canvas.shape[1] * zoom, canvas.shape[0] * zoom), Image.NEAREST).save(path)


def save_curve(history: list[dict], path: Path) -> None:
    """history: [{"epoch", "train_nll", "test_nll"}, ...] -> a PNG line plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    epochs = [h["epoch"] for h in history]
    for key in ("train_nll", "test_nll"):
        ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats / image)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
