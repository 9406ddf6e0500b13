"""GSN: a generative stochastic network built from a denoising auto-encoder on binary images, trained with
walkback (Bengio et al. 2013, "Generalized Denoising Auto-Encoders as Generative Models"; Bengio et al. 2014,
"Deep Generative Stochastic Networks Trainable by Backprop").

Corruption C(x~ | x): salt-and-pepper, each pixel with probability p replaced by a fair coin. One uniform u
per pixel decides both: x~ = 1 where u < p/2, 0 where p/2 <= u < p, x elsewhere.
Reconstruction P(x | x~): independent Bernoullis whose logits an MLP computes from x~ (V -> H -> ... -> V).
The GSN's Markov chain alternates the two: x_t -> x~_t ~ C(. | x_t) -> x_{t+1} ~ P(. | x~_t); its stationary
distribution estimates the data distribution when P(x | x~) is a consistent estimator of the true one.

Walkback training: from a data point x, k steps of that chain, x~_1 ~ C(. | x), x*_1 ~ P(. | x~_1),
x~_2 ~ C(. | x*_1), ..., and the loss -log P(x | x~_t) at every step, so that the reconstruction also learns
to pull back the spurious modes a chain wanders into. `loss` is the mean of the k terms, in nats per image
(k = 1: the plain denoising loss); train.py's curves label it "NLL", but it is NOT a likelihood of the data
nor a bound on one. The family has no tractable p(x), hence no `score` capability and no per-example test
NLL (no anomaly calibration); `evaluate_test` reports the test denoising losses and sample quality instead.

Usage (mnist5k-binarized: x [B, 1, 28, 28] in {0, 1}):
    model = build({"hidden": 512, "layers": 2, "corruption": 0.4, "walkback": 4}, split)
    model(x_tilde)                        # logits of P(x | x~) [B, 1, 28, 28]
    model.step(x, noise)                  # one chain transition, noise [B, 1, 28, 28, 2] uniform
    walkback_nll(model, x, noise)         # noise [K, B, 1, 28, 28, 2] -> [B] nats
The exported functions and capabilities follow docs/latent-variable-models.md.
"""

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training import quality
from training.distributions import bernoulli

NOISE = 2  # uniforms per pixel and step: [..., 0] the corruption, [..., 1] the draw from P(x | x~)


@dataclass
class GSNConfig:
    hidden: int = 512  # H: units of each hidden layer
    layers: int = 2  # hidden layers of the reconstruction MLP
    corruption: float = 0.4  # p: the share of pixels replaced by a fair coin
    walkback: int = 4  # k: chain steps per training example
    sample_steps: int = 200  # chain steps of samples (the served default and samples.png)
    eval_samples: int = 500  # chain samples scored by the evaluation classifier

    def to_dict(self) -> dict:
        return asdict(self)


class GSN(nn.Module):
    def __init__(self, config: GSNConfig, shape: tuple[int, ...]):
        super().__init__()
        self.config, self.shape = config, tuple(shape)
        v, h = math.prod(shape), config.hidden
        sizes = [v] + [h] * config.layers
        blocks = [m for a, b in itertools.pairwise(sizes) for m in (nn.Linear(a, b), nn.ReLU())]
        self.net = nn.Sequential(*blocks, nn.Linear(sizes[-1], v))

    def forward(self, x_tilde: torch.Tensor) -> torch.Tensor:
        """Logits of P(x | x~): x~ [B, *shape] in {0, 1} -> [B, *shape] float."""
        dtype = self.net[0].weight.dtype
        return self.net(x_tilde.flatten(1).to(dtype)).view_as(x_tilde)

    def step(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One chain transition: x [B, *shape] int64, noise [B, *shape, 2] uniform -> x' [B, *shape] int64."""
        logits = self(corrupt(x, noise[..., 0], self.config.corruption))
        return bernoulli.sample(logits, noise[..., 1], torch.ones((), dtype=noise.dtype))


def corrupt(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
    """Salt and pepper: x [...] int64, u [...] uniform -> x~ [...] int64; 1 where u < p/2, 0 where u < p."""
    return torch.where(u < p / 2, torch.ones_like(x), torch.where(u < p, torch.zeros_like(x), x))


def denoising_nll(model: GSN, x: torch.Tensor, x_tilde: torch.Tensor) -> torch.Tensor:
    """-log P(x | x~): x, x~ [B, *shape] in {0, 1} -> [B] nats."""
    return -bernoulli.log_prob(model(x_tilde), x).flatten(1).sum(1)


def walkback_nll(model: GSN, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean of -log P(x | x~_t) over the walkback's t = 1..K: x [B, *shape], noise [K, B, *shape, 2] -> [B]."""
    state, terms, one = x, [], torch.ones((), dtype=noise.dtype)
    for u in noise:  # u [B, *shape, 2]
        x_tilde = corrupt(state, u[..., 0], model.config.corruption)
        logits = model(x_tilde)  # [B, *shape]
        terms.append(-bernoulli.log_prob(logits, x).flatten(1).sum(1))
        state = bernoulli.sample(logits.detach(), u[..., 1], one)  # x*_t, where the chain goes next
    return torch.stack(terms).mean(0)


def draw_noise(model: GSN, steps: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniforms for `steps` transitions of `batch` chains: [steps, batch, *shape, 2]."""
    dtype = model.net[0].weight.dtype
    return torch.rand(steps, batch, *model.shape, NOISE, generator=generator, dtype=dtype)


def loss(model: GSN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The walkback denoising loss, mean over the batch (nats per image; not a likelihood), train and eval."""
    return walkback_nll(model, x, draw_noise(model, model.config.walkback, len(x))).mean()


def build(model_config: dict, split) -> GSN:
    if split.levels != 2:
        raise ValueError(f"a gsn models binary data (2 levels), got {split.levels} levels")
    return GSN(GSNConfig(**model_config), split.shape)


@torch.no_grad()
def run_chain(model: GSN, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """n chains of `steps` transitions from uniformly random images: [n, *shape] int64 in {0, 1}."""
    x = torch.randint(0, 2, (n, *model.shape), generator=generator)
    for _ in range(steps):
        x = model.step(x, draw_noise(model, 1, n, generator)[0])
    return x


def sample_grid(model: GSN, generator: torch.Generator, n: int = 80) -> torch.Tensor:
    """n chains of `sample_steps` transitions: [n, *shape] int64 in {0, 1}."""
    return run_chain(model, n, model.config.sample_steps, generator)


@torch.no_grad()
def test_losses(model: GSN, x_test: np.ndarray, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per test image (seed 0): the one-step denoising NLL and the walkback NLL, nats [N] each."""
    generator, one_step, walkback = torch.Generator().manual_seed(0), [], []
    for i in range(0, len(x_test), batch_size):
        x = torch.from_numpy(x_test[i: i + batch_size]).long()
        noise = draw_noise(model, model.config.walkback, len(x), generator)  # [K, B, *shape, 2]
        one_step.append(walkback_nll(model, x, noise[:1]).double().numpy())
        walkback.append(walkback_nll(model, x, noise).double().numpy())
    return np.concatenate(one_step), np.concatenate(walkback)


def evaluate_test(model: GSN, split, classifier_dir: Path = quality.SHIPPED) -> dict:
    """The test denoising losses (nats per image, not likelihoods) and the inception score, FID (to as many
    test images) and class coverage of `eval_samples` chains of `sample_steps` steps (seed 0)."""
    model.eval()
    one_step, walkback = test_losses(model, split.x_test)
    n, c = model.config.eval_samples, model.config
    samples = run_chain(model, n, c.sample_steps, torch.Generator().manual_seed(0)).numpy()
    return {"method": "denoising (no likelihood)",
            "test_denoising_nll": float(one_step.mean()),
            "test_denoising_nll_stderr": float(one_step.std(ddof=1) / math.sqrt(len(one_step))),
            "test_walkback_nll": float(walkback.mean()), "walkback": c.walkback, "corruption": c.corruption,
            **quality.sample_report(samples, split.x_test[:n], split.levels, classifier_dir),
            "quality_steps": c.sample_steps}


class Step(nn.Module):
    """One chain transition against the given uniforms: x, noise [B, *shape, 2], observed, mask -> next_x,
    with observed pixels kept where mask is 1."""

    def __init__(self, model: GSN):
        super().__init__()
        self.model = model

    def forward(self, x, noise, observed, mask):
        return torch.where(mask == 1, observed, self.model.step(x, noise))


def exported_functions(model: GSN, split) -> tuple[dict, dict]:
    """(functions, capabilities) of docs/latent-variable-models.md: sample and complete, no score."""
    b = 2
    x = torch.zeros(b, *model.shape, dtype=torch.long)
    inputs = {"x": x, "noise": torch.rand(b, *model.shape, NOISE), "observed": x, "mask": x}
    functions = {"step": (Step(model), inputs, ["next_x"])}
    chain = {"procedure": "markov_chain", "function": "step", "steps": model.config.sample_steps,
             "max_steps": 5000,
             "noise": {"noise": {"distribution": "uniform", "shape": [*model.shape, NOISE]}}}
    return functions, {"sample": chain, "complete": dict(chain)}
