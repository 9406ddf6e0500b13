"""The maths of the EM-fitted Bernoulli mixture baseline."""

import itertools

import numpy as np
import pytest

from training.baselines import BernoulliMixture, fit_baseline
from training.data import Split


def _sample(weights: np.ndarray, probs: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n draws from a Bernoulli mixture -> uint8 [n, D]."""
    rng = np.random.default_rng(seed)
    z = rng.choice(len(weights), size=n, p=weights)  # [n]
    return (rng.random((n, probs.shape[1])) < probs[z]).astype(np.uint8)


def test_one_component_is_a_product_of_bernoullis():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, size=12)  # [D]
    x = rng.integers(0, 2, size=(30, 12))  # [N, D]
    expected = np.log(np.prod(np.where(x == 1, p, 1 - p), axis=1))  # [N]
    model = BernoulliMixture(weights=np.ones(1), probs=p[None])
    np.testing.assert_allclose(model.log_prob(x), expected, rtol=1e-12, atol=1e-12)


def test_probabilities_over_all_binary_vectors_sum_to_one():
    rng = np.random.default_rng(1)
    model = BernoulliMixture(weights=rng.dirichlet(np.ones(3)), probs=rng.uniform(0.01, 0.99, size=(3, 8)))
    every = np.array(list(itertools.product([0, 1], repeat=8)))  # [256, 8]
    assert abs(np.exp(model.log_prob(every)).sum() - 1.0) < 1e-9


def test_em_recovers_a_known_two_component_mixture():
    rng = np.random.default_rng(2)
    true_w = np.array([0.3, 0.7])
    true_p = np.clip(rng.uniform(-0.2, 1.2, size=(2, 20)), 0.05, 0.95)  # well separated means
    x = _sample(true_w, true_p, n=2000, seed=3)
    model = BernoulliMixture().fit(x, n_components=2, n_iter=100, progress=False)
    order = np.argsort(model.weights)  # the true weights are sorted ascending
    np.testing.assert_allclose(model.weights[order], true_w, atol=0.04)
    np.testing.assert_allclose(model.probs[order], true_p, atol=0.08)
    truth = BernoulliMixture(weights=true_w, probs=true_p).log_prob(x).mean()
    fitted = model.log_prob(x).mean()
    assert fitted >= truth - 1e-6  # maximum likelihood beats the truth on its own training data
    assert fitted - truth < 0.05  # ... by little: 41 parameters over 2000 points


def test_em_never_decreases_the_training_log_likelihood():
    rng = np.random.default_rng(4)
    x = (rng.random((300, 16)) < rng.random((300, 1))).astype(np.uint8)  # correlated pixels
    model = BernoulliMixture().fit(x, n_components=5, n_iter=40, tol=0.0, progress=False)
    history = np.array(model.history)
    assert len(history) >= 2
    assert np.all(np.diff(history) >= -1e-10)
    np.testing.assert_allclose(history[-1], model.log_prob(x).mean(), rtol=1e-12)


def test_more_components_than_clusters_stays_finite():
    x = np.repeat(np.eye(4, dtype=np.uint8), 10, axis=0)  # [40, 4]: 4 distinct vectors
    model = BernoulliMixture().fit(x, n_components=12, n_iter=30, progress=False)
    assert np.all(np.isfinite(model.probs))
    assert np.all((model.probs >= 1e-3) & (model.probs <= 1 - 1e-3))
    assert np.isclose(model.weights.sum(), 1.0)
    assert np.all(np.isfinite(model.log_prob(x)))


def test_fit_baseline_reports_bits_per_dim():
    rng = np.random.default_rng(5)
    images = (rng.random((60, 1, 4, 4)) < 0.3).astype(np.uint8)
    labels = np.zeros(60, dtype=np.int64)
    split = Split("toy", images[:50], labels[:50], images[50:], labels[50:], levels=2)
    report = fit_baseline(split, n_components=3, n_iter=10)
    assert report["name"] == "bernoulli_mixture" and report["components"] == 3
    assert report["test_bits_per_dim"] == pytest.approx(report["test_nll_nats"] / (16 * np.log(2)))


def test_fit_baseline_rejects_non_binary_images():
    images = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    labels = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError):
        fit_baseline(Split("toy", images, labels, images, labels, levels=256))
