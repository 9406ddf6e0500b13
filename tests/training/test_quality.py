"""The sample-quality kit: Frechet distance against closed forms, inception score and mode coverage on
hand-made predictions, and a briefly trained digit classifier scoring real mnist5k images."""

import functools
import json
import math

import numpy as np
import pytest
import torch

from training import quality
from training.data import mnist5k, mnist5k_binarized


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[classes]


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # diagonal covariances commute: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 = (1 + 4) + (1 + 1)
    mu1, mu2, cov1, cov2 = np.zeros(2), np.array([1.0, 2.0]), np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    assert quality.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(7.0, abs=1e-9)
    assert quality.frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(7.0, abs=1e-9)
    r = rotation(0.7)  # rotating both Gaussians alike keeps the distance, with full covariances this time
    assert quality.frechet_distance(r @ mu1, r @ cov1 @ r.T, r @ mu2, r @ cov2 @ r.T) == pytest.approx(7.0, abs=1e-9)


def test_frechet_distance_of_identical_statistics_is_zero():
    a = np.random.default_rng(0).normal(size=(50, 4))
    mu, cov = a.mean(0), np.cov(a, rowvar=False)
    assert quality.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    assert quality.frechet_distance(mu, cov, mu + 1.0, cov) == pytest.approx(4.0, abs=1e-9)
    assert quality.fid(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 2)) * [1.0, 2.0]
    b = rng.normal(size=(20000, 2)) * [2.0, 3.0] + [1.0, 2.0]
    assert quality.fid(a, b) == pytest.approx(7.0, rel=0.03)


def test_inception_score_of_identical_predictions_is_one():
    probs = np.tile([0.5, 0.3, 0.1, 0.1], (100, 1))
    mean, std = quality.inception_score(probs)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_number_of_classes():
    probs = one_hot(np.arange(10000) % 10, 10)
    assert quality.inception_score(probs, splits=1)[0] == pytest.approx(10.0, abs=1e-9)
    assert quality.inception_score(probs, splits=10, seed=None)[0] == pytest.approx(10.0, abs=1e-9)
    # shuffled chunks of n = 1000 hold each class about 100 times: exp(entropy of the chunk's histogram)
    # ~ C exp(-(C - 1) / 2n) = 9.955
    assert quality.inception_score(probs)[0] == pytest.approx(10.0, rel=0.02)


def test_inception_score_shuffles_a_class_sorted_set():
    probs = one_hot(np.repeat(np.arange(10), 100), 10)  # sorted by class, as mnist5k's test split is
    assert quality.inception_score(probs, seed=None)[0] == pytest.approx(1.0)  # each chunk: one class
    assert quality.inception_score(probs)[0] > 9.5


def test_mode_coverage_of_hand_made_predictions():
    half = quality.mode_coverage(one_hot(np.array([0, 0, 1, 1]), 4))
    assert half["classes_covered"] == 0.5
    assert half["kl_to_uniform"] == pytest.approx(math.log(2))
    assert half["histogram"] == [0.5, 0.5, 0.0, 0.0]
    even = quality.mode_coverage(one_hot(np.arange(8) % 4, 4) * 0.7 + 0.075)  # soft, argmax still balanced
    assert even["classes_covered"] == 1.0 and even["kl_to_uniform"] == pytest.approx(0.0, abs=1e-12)
    # 97 of one class and one stray each of three others: 1% < the default share 1 / (10 C) = 2.5%
    skewed = one_hot(np.array([0] * 97 + [1, 2, 3]), 4)
    assert quality.mode_coverage(skewed)["classes_covered"] == 0.25
    assert quality.mode_coverage(skewed, min_share=0.0)["classes_covered"] == 1.0
    expected = 0.97 * math.log(0.97 * 4) + 3 * 0.01 * math.log(0.01 * 4)
    assert quality.mode_coverage(skewed)["kl_to_uniform"] == pytest.approx(expected)


@functools.cache
def dataset(name: str):
    """Each dataset loaded once (about 2 s each)."""
    return {"mnist5k": mnist5k, "mnist5k-binarized": mnist5k_binarized}[name]()


@pytest.fixture(scope="module")
def trained():
    """A classifier trained briefly: 3 epochs over mnist5k's 4,500 train images (about 3 s on one thread)."""
    torch.set_num_threads(1)
    split = dataset("mnist5k")
    return quality.train_classifier(split, epochs=3, seed=0), split


def test_short_training_classifies_real_digits(trained):
    model, split = trained
    assert quality.accuracy(model, split.x_test, split.y_test, split.levels) > 0.85  # chance: 0.1
    binary = dataset("mnist5k-binarized")  # also half of its training batches were binarized
    assert quality.accuracy(model, binary.x_test, binary.y_test, binary.levels) > 0.85


def test_real_test_split_scores_near_the_ceiling(trained):
    model, split = trained
    probs, features = quality.classify(model, split.x_test, split.levels)
    # IS = exp(H(p(y)) - E H(p(y | x))) <= C = 10 for balanced classes; a briefly trained classifier is not
    # fully confident (E H(y | x) ~ 0.3 nats after 3 epochs, IS ~ 7), so the bound is 0.6 C, not 0.8 C
    # (about 9 after the CLI's default 12 epochs)
    assert quality.inception_score(probs)[0] > 0.6 * split.num_classes
    assert quality.mode_coverage(probs)["classes_covered"] == 1.0
    assert quality.mode_coverage(probs)["kl_to_uniform"] < 0.02
    noise = np.random.default_rng(0).integers(0, split.levels, size=split.x_test.shape)
    noise_probs, noise_features = quality.classify(model, noise, split.levels)
    train_features = quality.classify(model, split.x_train[:1000], split.levels)[1]
    assert quality.fid(features, features) == pytest.approx(0.0, abs=1e-6)
    real = quality.fid(train_features, features)
    assert quality.fid(noise_features, features) > 20 * real > 0


def test_cli_trains_saves_and_scores_real_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quality, "load", dataset)
    quality.main(["train", "--run-dir", str(tmp_path), "--epochs", "1"])
    info = json.loads((tmp_path / "classifier.json").read_text())
    assert info["test_accuracy"] > 0.8 and info["test_accuracy_binarized"] > 0.8
    model, _ = quality.load_classifier(tmp_path)
    split = dataset("mnist5k")
    assert quality.accuracy(model, split.x_test, split.y_test, split.levels) == info["test_accuracy"]
    quality.main(["real", "--run-dir", str(tmp_path)])
    report = json.loads((tmp_path / "real.json").read_text())
    assert set(report) == {"mnist5k", "mnist5k-binarized"}
    assert report["mnist5k"]["accuracy"] == info["test_accuracy"]
    assert "FID(train, test)" in capsys.readouterr().out
