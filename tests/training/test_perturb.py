"""The background model's training data (training/train.py `perturb`, Ren et al. 2019): each value replaced by a
uniform level with the configured probability."""

import numpy as np
import pytest

from training.train import perturb


@pytest.mark.parametrize("levels", [2, 256])
def test_perturb_replaces_values_at_the_rate_with_uniform_levels(levels):
    x = np.zeros((400, 1, 28, 28), np.uint8)
    out = perturb(x, 0.2, levels, np.random.default_rng(0))
    assert out.dtype == x.dtype and out.shape == x.shape
    # a replaced value stays 0 with probability 1 / levels
    changed = np.mean(out != 0)
    expected = 0.2 * (1 - 1 / levels)
    assert abs(changed - expected) < 4 * np.sqrt(expected * (1 - expected) / x.size)
    counts = np.bincount(out[out != 0].ravel(), minlength=levels)[1:]
    assert counts.min() > 0 and out.max() < levels  # every nonzero level is drawn, none beyond the range
    assert (perturb(x, 0.2, levels, np.random.default_rng(0)) == out).all()  # seeded
