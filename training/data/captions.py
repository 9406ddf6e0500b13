"""Captions of digits written from what each image shows: "a small thick seven slanted to the right".

Three attributes are measured from the image (levels [B, 1, H, W], 0..255), and the same code measures the
training images and a text-to-image model's samples:
- thickness: the mean stroke width in pixels, 2 * area / perimeter of the ink mask (level > THRESHOLD): a stroke
  of width w and length L >> w has area w L and perimeter about 2 L;
- slant: the shear of the ink about its centre of mass, -cov(column, row) / var(row) weighted by intensity, so
  > 0 when the top leans right (rows count downwards);
- size: the square root of the area of the ink's bounding box, in pixels (mnist5k's digits are all about 20
  pixels high, MNIST's normalization, so size varies mostly with width).

The words: thickness "thin" / "thick" and size "small" / "large" below the first / above the second tercile of
that digit's training images (a thick one is thick for its digit; the middle third gets no word); slant
"slanted to the left" / "slanted to the right" past -SLANT / +SLANT, else "upright". Captions follow one small
grammar, "a|an [size] [thickness] <digit> [slant phrase]", and training drops each attribute phrase with
probability `drop` so that shorter captions ("a seven", "a thick two") mean something too.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

THRESHOLD = 127
SLANT = 0.2  # |shear| past which a digit is "slanted"; under it, "upright"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZES, THICKNESSES = ("small", "large"), ("thin", "thick")
SLANTS = ("slanted to the left", "upright", "slanted to the right")
PAD = ""  # word 0: padding
VOCABULARY = (PAD, "a", "an", *SIZES, *THICKNESSES, *DIGITS, "slanted", "to", "the", "left", "right", "upright")
MAX_WORDS = 8  # "a small thick seven slanted to the right"


def measure(x: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Levels [B, 1, H, W] -> {"thickness", "slant", "size"}, float64 [B] each (see the module docstring)."""
    x = torch.as_tensor(x).double()
    mask = (x > THRESHOLD).double()
    padded = F.pad(mask, (1, 1, 1, 1))
    perimeter = (padded.diff(dim=2).abs().sum((1, 2, 3)) + padded.diff(dim=3).abs().sum((1, 2, 3)))
    thickness = 2 * mask.sum((1, 2, 3)) / perimeter.clamp(min=1)
    w = x[:, 0] / x[:, 0].sum((1, 2), keepdim=True).clamp(min=1e-9)  # [B, H, W] intensity weights
    rows = torch.arange(x.shape[2], dtype=x.dtype).view(1, -1, 1)
    cols = torch.arange(x.shape[3], dtype=x.dtype).view(1, 1, -1)
    r = rows - (w * rows).sum((1, 2), keepdim=True)
    c = cols - (w * cols).sum((1, 2), keepdim=True)
    slant = -(w * r * c).sum((1, 2)) / (w * r * r).sum((1, 2)).clamp(min=1e-9)
    size = (_extent(mask[:, 0].amax(2)) * _extent(mask[:, 0].amax(1))).sqrt()
    return {"thickness": thickness, "slant": slant, "size": size}


def _extent(inked: torch.Tensor) -> torch.Tensor:
    """Whether each row (or column) holds ink [B, N] -> the span from the first to the last inked one [B]."""
    index = torch.arange(inked.shape[1]).expand_as(inked)
    first = torch.where(inked > 0, index, inked.shape[1]).amin(1)
    last = torch.where(inked > 0, index, -1).amax(1)
    return (last - first + 1).clamp(min=0).double()


@dataclass(frozen=True)
class Thresholds:
    """Per digit, the terciles (first, second) of thickness and size on the training images: [10, 2] each."""

    thickness: np.ndarray
    size: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> "Thresholds":
        m = measure(x)
        def terciles(name: str) -> np.ndarray:
            return np.stack([np.quantile(m[name][y == k].numpy(), [1 / 3, 2 / 3]) for k in range(len(DIGITS))])
        return cls(terciles("thickness"), terciles("size"))

    def as_dict(self) -> dict:
        return {"thickness": self.thickness.tolist(), "size": self.size.tolist(), "slant": SLANT}


def attributes(m: dict[str, torch.Tensor], y: np.ndarray, t: Thresholds) -> np.ndarray:
    """Measures and labels [B] -> word choices int64 [B, 3]: size and thickness 0 (small, thin), 1 (no word),
    2 (large, thick); slant 0 left, 1 upright, 2 right."""
    def tercile(values: torch.Tensor, cuts: np.ndarray) -> np.ndarray:
        v = values.numpy()
        return (v > cuts[y, 0]).astype(np.int64) + (v > cuts[y, 1])
    slant = (m["slant"].numpy() > -SLANT).astype(np.int64) + (m["slant"].numpy() > SLANT)
    return np.stack([tercile(m["size"], t.size), tercile(m["thickness"], t.thickness), slant], axis=1)


def caption(label: int, size: int | None, thickness: int | None, slant: int | None) -> str:
    """One caption of the grammar; an attribute None (or a middle tercile of size, thickness) has no word."""
    words = [{0: SIZES[0], 2: SIZES[1]}.get(size), {0: THICKNESSES[0], 2: THICKNESSES[1]}.get(thickness),
             DIGITS[label]]
    words = ["a"] + [w for w in words if w] + ([SLANTS[slant]] if slant is not None else [])
    return caption_article(" ".join(words))


def caption_article(text: str) -> str:
    """A caption starting "a " with "an" instead before "eight" (the one word of the grammar that needs it)."""
    first, rest = text.split(" ", 1)
    return f"{'an' if first in ('a', 'an') and rest.startswith('eight') else first} {rest}"


def captions(choices: np.ndarray, y: np.ndarray, rng: np.random.Generator | None = None,
             drop: float = 0.0) -> list[str]:
    """Word choices [B, 3] and labels [B] -> B captions, each attribute phrase dropped with probability drop."""
    keep = np.ones(choices.shape, bool) if rng is None else rng.random(choices.shape) >= drop
    return [caption(int(label), *(int(v) if k else None for v, k in zip(row, kept, strict=True)))
            for label, row, kept in zip(y, choices, keep, strict=True)]


def tokens(texts: list[str]) -> torch.Tensor:
    """Captions -> int64 word ids [B, MAX_WORDS], padded with 0 (the service's encoder gives the same ids)."""
    index = {w: i for i, w in enumerate(VOCABULARY)}
    ids = torch.zeros(len(texts), MAX_WORDS, dtype=torch.long)
    for i, text in enumerate(texts):
        words = text.split()
        ids[i, : len(words)] = torch.tensor([index[w] for w in words])
    return ids
