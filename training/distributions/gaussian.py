"""Diagonal Gaussian, parameterised by its mean and log standard deviation."""

import math

import torch


def log_prob(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean, log_scale, x broadcastable to [...] -> log N(x; mean, exp(log_scale)^2) [...]."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z.square() - log_scale - 0.5 * math.log(2 * math.pi)


def sample(mean: torch.Tensor, log_scale: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample: mean, log_scale, u in [0, 1], temperature broadcastable to [...] -> float [...].

    u is clamped to [eps, 1 - eps] so that u = 0 or 1 gives a finite value; temperature scales the std.
    """
    eps = torch.finfo(u.dtype).eps
    return mean + temperature * torch.exp(log_scale) * torch.special.ndtri(u.clamp(eps, 1 - eps))
