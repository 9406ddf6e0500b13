"""A non-deep baseline for binarized images: a mixture of Bernoullis fitted by EM.

This is the standard finite mixture of multivariate Bernoulli distributions,

    p(x) = sum_k w_k prod_d p_kd^x_d (1 - p_kd)^(1 - x_d),

fitted by maximum likelihood with expectation-maximization (Bishop, "Pattern
Recognition and Machine Learning", 2006, section 9.3.3). Its exact test NLL puts
the PixelCNN's NLL on the same split in context. Everything runs in log space.
"""

import math

import numpy as np
from scipy.special import logsumexp
from tqdm.auto import tqdm

# The Bernoulli means are clipped to [EPS, 1 - EPS]; there is no Beta prior. The per-pixel
# objective of the M-step is concave in p_kd, so the clipped weighted mean is the exact M-step
# under that box constraint and EM stays monotone in the training log-likelihood itself.
EPS = 1e-3


class BernoulliMixture:
    """K-component mixture of D-dimensional Bernoullis: weights [K], probs [K, D]."""

    def __init__(self, weights: np.ndarray | None = None, probs: np.ndarray | None = None):
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)  # [K]
        self.probs = None if probs is None else np.asarray(probs, dtype=np.float64)  # [K, D]
        self.history: list[float] = []  # mean train log-lik (nats) after each EM iteration

    def _log_joint(self, x: np.ndarray) -> np.ndarray:
        """log w_k + log p(x_n | k) for x [N, D] -> [N, K]."""
        log_p, log_q = np.log(self.probs), np.log1p(-self.probs)  # [K, D] each
        with np.errstate(divide="ignore"):  # an empty component has weight 0 -> log 0 = -inf
            log_w = np.log(self.weights)  # [K]
        return x @ (log_p - log_q).T + log_q.sum(axis=1) + log_w  # [N, K]

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Exact log p(x) in nats for binary x [N, D] -> [N]."""
        return logsumexp(self._log_joint(np.asarray(x, dtype=np.float64)), axis=1)

    def _init(self, x: np.ndarray, n_components: int, rng: np.random.Generator) -> None:
        """Uniform weights; each mean halfway between the data mean and a random training vector."""
        rows = rng.choice(len(x), size=n_components, replace=len(x) < n_components)
        self.weights = np.full(n_components, 1.0 / n_components)  # [K]
        self.probs = np.clip(0.5 * x.mean(axis=0) + 0.5 * x[rows], EPS, 1 - EPS)  # [K, D]

    def _m_step(self, x: np.ndarray, resp: np.ndarray) -> None:
        """Maximize the expected complete-data log-lik given responsibilities resp [N, K]."""
        counts = resp.sum(axis=0)  # [K]
        self.weights = counts / counts.sum()  # [K]
        alive = counts > 0  # an empty component keeps its old means (they do not affect p(x))
        means = (resp.T @ x)[alive] / counts[alive, None]  # [K_alive, D]
        self.probs[alive] = np.clip(means, EPS, 1 - EPS)

    def fit(self, x: np.ndarray, n_components: int = 100, n_iter: int = 50, seed: int = 0,
            tol: float = 1e-5, progress: bool = True) -> "BernoulliMixture":
        """EM on binary x [N, D]; stops after n_iter or when the mean log-lik gains less than tol nats."""
        x = np.asarray(x, dtype=np.float64)  # [N, D]
        self._init(x, n_components, np.random.default_rng(seed))
        self.history = []
        log_joint = self._log_joint(x)  # [N, K]
        bar = tqdm(range(n_iter), desc="EM", leave=False, disable=not progress)
        for _ in bar:
            log_px = logsumexp(log_joint, axis=1, keepdims=True)  # [N, 1]
            self._m_step(x, np.exp(log_joint - log_px))  # E-step: responsibilities [N, K]
            log_joint = self._log_joint(x)
            self.history.append(float(logsumexp(log_joint, axis=1).mean()))
            bar.set_postfix(loglik=f"{self.history[-1]:.4f}")
            if len(self.history) > 1 and self.history[-1] - self.history[-2] < tol:
                break
        bar.close()
        return self


def fit_baseline(split, n_components: int = 100, n_iter: int = 50, seed: int = 0) -> dict:
    """Fit a BernoulliMixture on split.x_train ([N, 1, H, W], levels 2) and score split.x_test."""
    if split.levels != 2:
        raise ValueError(f"the Bernoulli mixture needs binary images; {split.name} has {split.levels} levels")
    x_train = split.x_train.reshape(len(split.x_train), -1)  # [N, D]
    x_test = split.x_test.reshape(len(split.x_test), -1)  # [M, D]
    model = BernoulliMixture().fit(x_train, n_components=n_components, n_iter=n_iter, seed=seed)
    nll = float(-model.log_prob(x_test).mean())  # nats per image
    return {
        "name": "bernoulli_mixture",
        "components": n_components,
        "test_nll_nats": nll,
        "test_bits_per_dim": nll / (x_test.shape[1] * math.log(2)),
    }
