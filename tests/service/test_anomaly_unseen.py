"""benchmarks/anomaly_unseen.py's eight held-out OOD kinds are what their names say, seeded, and the mean rule
picks by the mean over the constructions."""

import numpy as np
import pytest

from benchmarks import anomaly_unseen as unseen
from training.data import load


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load("mnist5k").x_test[::10]  # 50 gray test digits of every class


def centre(x: np.ndarray) -> np.ndarray:
    """x [n, 1, 28, 28] -> each image's centre of mass (row, col) [n, 2]."""
    rows, cols = np.indices((28, 28))
    ink = x[:, 0].astype(np.float64)
    total = ink.sum(axis=(1, 2))
    return np.stack([(ink * rows).sum(axis=(1, 2)) / total, (ink * cols).sum(axis=(1, 2)) / total], axis=1)


def test_every_kind_is_a_seeded_set_of_gray_images(digits):
    first, again = (unseen.unseen_kinds(digits, 12, np.random.default_rng(3)) for _ in range(2))
    assert list(first) == unseen.UNSEEN_KINDS
    for kind, x in first.items():
        assert x.shape == (12, 1, 28, 28) and x.dtype == np.uint8, kind
        np.testing.assert_array_equal(x, again[kind])
    other = unseen.unseen_kinds(digits, 12, np.random.default_rng(4))
    assert all(not np.array_equal(first[k], other[k]) for k in unseen.UNSEEN_KINDS)


def test_the_digit_kinds_change_the_digits_as_named(digits):
    rng = np.random.default_rng(0)
    a = digits[:20]
    moved = centre(unseen.shifted(a, rng)) - centre(a)
    assert (np.hypot(*moved.T) > 3).all()  # 5-7 pixels, less what leaves the canvas
    assert (unseen.crossed_out(a, rng).astype(int).sum(axis=(1, 2, 3)) > a.astype(int).sum(axis=(1, 2, 3))).all()
    pair = unseen.two_digits(a, a[::-1])
    assert pair[:, :, :7].max() == 0 and pair[:, :, 21:].max() == 0  # two 14x14 digits in the middle rows
    warped = unseen.elastic(a, rng)
    assert not np.array_equal(warped, a) and abs(int(warped.sum()) - int(a.sum())) < 0.2 * int(a.sum())


def test_the_mean_rule_picks_the_best_mean_over_the_constructions():
    row = {"detectors": ["a", "b"], "choose": {"a": {"x": 0.9, "y": 0.9}, "b": {"x": 0.6, "y": 1.0}}}
    assert unseen.mean_rule_default(row) == "a"
    row["choose"]["b"] = {"x": 0.85, "y": 1.0}
    assert unseen.mean_rule_default(row) == "b"  # a worse worst case, a better mean
