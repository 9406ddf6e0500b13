"""Metropolis-Hastings over discrete pixels with an exact log-density, for completion (inpainting) by models
whose log p(x) is exact and cheap (flows): one step proposes new values for a random subset of the unobserved
pixels by a reflected random walk over the levels, and accepts or rejects the whole proposal
(Metropolis et al. 1953; Hastings 1970).

The walk adds round(scale * Logistic(0, 1)), cut to +-(L - 1), to each selected pixel and reflects at the edges
(-1 -> 0, L -> L - 1);
that kernel is symmetric, so the acceptance ratio is p(x') / p(x). Observed pixels are never proposed, so they
stay fixed and the chain targets p(unobserved | observed). All randomness enters through `noise`, so the step
exports (ONNX, TorchScript) like any function.
"""

from collections.abc import Callable

import torch


def reflect(v: torch.Tensor, levels: int) -> torch.Tensor:
    """Integers -> 0..levels-1, mirrored at the edges (-1 -> 0, -2 -> 1, levels -> levels - 1): [...] -> [...]."""
    v = torch.where(v < 0, -v - 1, v)
    return torch.where(v > levels - 1, 2 * levels - 1 - v, v)


def metropolis_step(log_prob: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, noise: torch.Tensor,
                    accept: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor, levels: int,
                    fraction: float = 0.05, scale: float = 16.0) -> torch.Tensor:
    """One Metropolis-Hastings step: x, observed, mask [B, ...] int64, noise [B, ..., 2] and accept [B, 1]
    uniform in [0, 1) -> the next x, with observed values wherever mask is 1.

    noise[..., 0] selects each unobserved pixel with probability `fraction`; noise[..., 1] draws its step.
    """
    x = torch.where(mask == 1, observed, x)
    selected = (noise[..., 0] < fraction) & (mask == 0)
    eps = torch.finfo(noise.dtype).eps
    u = noise[..., 1].clamp(eps, 1 - eps)
    step = torch.round(scale * (torch.log(u) - torch.log1p(-u)))  # a logistic step: symmetric, and ONNX has no ndtri
    step = step.clamp(-(levels - 1), levels - 1).long()  # a symmetric cut, so one reflection always lands
    proposal = torch.where(selected, reflect(x + step, levels), x)
    log_ratio = log_prob(proposal) - log_prob(x)  # [B]
    take = torch.log(accept[:, 0].clamp(min=eps)) < log_ratio  # [B]
    return torch.where(take.view(-1, *[1] * (x.dim() - 1)), proposal, x)
