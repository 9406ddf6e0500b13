"""The sample-quality scores at small sample sizes, and `genserve eval --quality`'s refusals: FID holds for
singular covariances (fewer samples than features), the inception score refuses fewer samples than chunks, and the
table refuses, in one line before anything is sampled, a store without the classifier or too small an n."""

from pathlib import Path

import numpy as np
import pytest

import genserve.quality
from training import quality

CLASSIFIER = Path(__file__).resolve().parents[2] / "models" / "evaluation"


def sample_trace_root(a: np.ndarray, b: np.ndarray) -> float:
    """tr (S_a S_b)^(1/2) of two sample covariances, S = A'A / (n - 1) with A centred: the square roots of the
    eigenvalues of S_a S_b are the singular values of A_a A_b' / (n - 1) (n the same for both)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.svd(a @ b.T / (len(a) - 1), compute_uv=False).sum())


@pytest.mark.parametrize("n", [2, 5, 8, 20])
def test_fid_of_fewer_samples_than_features_is_the_closed_form(n):
    """Features as the classifier's (ReLU, some dead): rank n - 1 covariances of 128 features, whose product's
    sqrtm came out with a large imaginary part (the old code raised for n = 2, 5, 8 here)."""
    rng = np.random.default_rng(n)
    a, b = np.maximum(rng.normal(size=(2, n, 128)), 0)
    a[:, :64], b[:, 32:96] = 0, 0
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    expected = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * sample_trace_root(a, b)
    assert quality.fid(a, b) == pytest.approx(expected, rel=1e-6)  # trace_root: ~1e-8


def test_inception_score_refuses_fewer_samples_than_chunks():
    probs = np.eye(10)[np.arange(5)]
    with pytest.raises(ValueError, match="5 samples: the inception score needs at least 10"):
        quality.inception_score(probs)
    assert quality.inception_score(np.eye(10)[np.arange(20) % 10])[0] > 1


@pytest.fixture
def no_engine(monkeypatch):
    """The serving engine must not start (nothing is sampled) before a refusal."""
    def refuse(*args, **kwargs):
        raise AssertionError("the engine started")

    monkeypatch.setattr(genserve.quality, "Engine", refuse)


def test_quality_without_the_classifier_is_refused_in_one_line(tmp_path, no_engine):
    with pytest.raises(SystemExit) as refused:
        genserve.quality.table(tmp_path, tmp_path / "evaluation", n=500)
    message = str(refused.value.code)
    assert message.startswith(f"genserve eval --quality: {tmp_path / 'evaluation'} has no classifier.json")
    assert "python -m training.quality train" in message and "\n" not in message


def test_quality_with_too_small_an_n_is_refused_in_one_line(tmp_path, no_engine):
    with pytest.raises(SystemExit) as refused:
        genserve.quality.table(tmp_path, CLASSIFIER, n=5)
    message = str(refused.value.code)
    assert message == (f"genserve eval --quality: --n 5 is too few samples: the inception score's "
                       f"{quality.IS_SPLITS} chunks need {quality.MIN_SAMPLES} or more")
