"""Captions measured from digits: thicker strokes measure thicker, a shear measures its slant's sign, a smaller
digit measures smaller; the words follow the measures; the service splits a caption into the same word ids."""

import numpy as np
import torch
import torch.nn.functional as F

from service.engine import captions as served
from training.data import captions


def strokes() -> torch.Tensor:
    """Two synthetic digits, levels [2, 1, 28, 28]: a vertical bar (a "one") and a ring (a "zero"), 2 pixels wide."""
    x = torch.zeros(2, 1, 28, 28)
    x[0, 0, 4:24, 13:15] = 255
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    radius = ((rows - 14) ** 2 + (cols - 14) ** 2).sqrt()
    x[1, 0] = 255 * ((radius > 6) & (radius <= 8))
    return x


def sheared(x: torch.Tensor, shear: float) -> torch.Tensor:
    """x with column c moved by shear * (centre row - row): the top leans right for shear > 0."""
    theta = torch.tensor([[1.0, shear, 0.0], [0.0, 1.0, 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def test_a_thicker_stroke_measures_thicker():
    x = strokes()
    thick = F.max_pool2d(x, 3, stride=1, padding=1)  # every stroke 2 pixels wider
    before, after = captions.measure(x)["thickness"], captions.measure(thick)["thickness"]
    assert (after > before + 1).all()
    assert abs(before[0].item() - 2 * 20 * 2 / (2 * 20 + 2 * 2)) < 1e-9  # 2 area / perimeter of a 2 x 20 bar


def test_a_sheared_image_measures_the_slant_sign():
    x = strokes()[:1]
    assert abs(captions.measure(x)["slant"].item()) < 1e-9  # an upright bar
    slants = [captions.measure(sheared(x, s))["slant"].item() for s in (-0.4, -0.2, 0.2, 0.4)]
    assert slants[0] < slants[1] < 0 < slants[2] < slants[3]
    assert abs(slants[3] - 0.4) < 0.05  # the shear itself, about


def test_a_smaller_digit_measures_smaller():
    x = strokes()
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear")  # [2, 1, 14, 14]
    small = F.pad(small, (7, 7, 7, 7))
    assert (captions.measure(small)["size"] < 0.75 * captions.measure(x)["size"]).all()


def test_words_follow_the_measures_and_the_grammar():
    thresholds = captions.Thresholds(np.tile([[1.5, 2.5]], (10, 1)), np.tile([[15.0, 18.0]], (10, 1)))
    measured = {"thickness": torch.tensor([1.0, 3.0, 2.0]), "size": torch.tensor([20.0, 10.0, 16.0]),
                "slant": torch.tensor([0.5, -0.5, 0.0])}
    choices = captions.attributes(measured, np.array([7, 8, 1]), thresholds)
    assert captions.captions(choices, np.array([7, 8, 1])) == [
        "a large thin seven slanted to the right", "a small thick eight slanted to the left",
        "a one upright"]
    assert captions.caption(8, 1, 1, None) == "an eight"
    dropped = captions.captions(np.tile(choices, (50, 1)), np.tile([7, 8, 1], 50), np.random.default_rng(0), 0.5)
    assert len(set(dropped)) > 3 and all(text.split()[0] in ("a", "an") for text in dropped)
    for text in dropped:
        assert set(text.split()) <= set(captions.VOCABULARY) and len(text.split()) <= captions.MAX_WORDS


def test_the_service_encodes_a_caption_as_training_does():
    spec = {"vocabulary": list(captions.VOCABULARY), "max_words": captions.MAX_WORDS, "separators": ",.;:!?"}
    text = "a small thick seven slanted to the right"
    expected = captions.tokens([text])[0].numpy()
    assert np.array_equal(served.encode(text, spec), expected)
    assert np.array_equal(served.encode("  A small, THICK seven slanted to the right.", spec), expected)
