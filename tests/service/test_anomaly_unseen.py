"""benchmarks/anomaly_unseen.py's held-out OOD kinds (its second and third sets) are what their names say, seeded,
and the choose step's rule picks by the mean over the constructions where the old worst-case rule would not."""

import numpy as np
import pytest

from benchmarks import anomaly_unseen as unseen
from benchmarks.anomaly import chosen_default, worst_case_default
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


@pytest.mark.parametrize("kind_set", list(unseen.KIND_SETS))
def test_every_kind_of_each_set_is_a_seeded_set_of_gray_images(digits, kind_set):
    kinds, make, _ = unseen.KIND_SETS[kind_set]
    first, again = (make(digits, 12, np.random.default_rng(3)) for _ in range(2))
    assert list(first) == kinds
    for kind, x in first.items():
        assert x.shape == (12, 1, 28, 28) and x.dtype == np.uint8, kind
        np.testing.assert_array_equal(x, again[kind])
    other = make(digits, 12, np.random.default_rng(4))
    assert all(not np.array_equal(first[k], other[k]) for k in kinds)


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


def test_the_third_sets_patterns_are_as_named(digits):
    made = unseen.third_kinds(digits, 12, np.random.default_rng(3))
    assert set(np.unique(made["checkerboard"])) == {0, 255}
    assert made["blobs"].reshape(12, -1).max(axis=1).tolist() == [255] * 12


def test_the_third_set_changes_the_digits_as_named(digits):
    rng = np.random.default_rng(0)
    a = digits[:20]
    turned = unseen.third_kinds(a, 20, np.random.default_rng(5))["upside down"]  # its digits, drawn by the rng
    order = np.random.default_rng(5).permutation(20)
    np.testing.assert_array_equal(turned, np.rot90(a[order], 2, axes=(2, 3)))

    def lean(x: np.ndarray) -> np.ndarray:  # the top half's column centre less the bottom half's [n]
        top, bottom = x.copy(), x.copy()
        top[:, :, 14:], bottom[:, :, :14] = 0, 0
        return centre(top)[:, 1] - centre(bottom)[:, 1]

    assert (np.abs(lean(unseen.sheared(a, rng)) - lean(a)) > 3).all()  # 0.6-0.9 pixels per row, about 7 rows apart
    outline = unseen.hollow(a)
    assert (outline[a > 200] < 60).all() and (outline.astype(int).sum(axis=(1, 2, 3)) > 0).all()
    zoomed = unseen.zoomed_in(a).astype(float)  # every other pixel follows the middle 14x14, twice the size
    assert np.corrcoef(zoomed[:, :, ::2, ::2].ravel(), a[:, :, 7:21, 7:21].astype(float).ravel())[0, 1] > 0.8
    framed = unseen.framed(a)
    for edge in (framed[:, :, :2], framed[:, :, -2:], framed[:, :, :, :2], framed[:, :, :, -2:]):
        assert edge.min() == 255
    np.testing.assert_array_equal(framed[:, :, 2:-2, 2:-2], a[:, :, 2:-2, 2:-2])
    faint = unseen.low_contrast(a, rng)
    assert faint.max() <= 115 and (faint.reshape(20, -1).max(axis=1) >= 0.2 * a.reshape(20, -1).max(axis=1)).all()


def test_the_choice_rules_differ_where_the_worst_case_and_the_mean_disagree():
    detectors, choose = ["a", "b"], {"a": {"x": 0.9, "y": 0.9}, "b": {"x": 0.6, "y": 1.0}}
    assert chosen_default(detectors, choose) == worst_case_default(detectors, choose) == "a"
    choose["b"] = {"x": 0.85, "y": 1.0}
    assert chosen_default(detectors, choose) == "b"  # a worse worst case, a better mean
    assert worst_case_default(detectors, choose) == "a"
