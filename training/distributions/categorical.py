"""Categorical over `levels` values, parameterised by logits on the last axis."""

import torch
import torch.nn.functional as F


def log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits [..., K], x [...] integer in 0..K-1 -> log p(x) [...]."""
    return F.log_softmax(logits, dim=-1).gather(-1, x.long().unsqueeze(-1)).squeeze(-1)


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample: logits [..., K], u [...] in [0, 1), temperature broadcastable to u -> int64 [...].

    Returns the smallest k with u < CDF(k); the same u always gives the same k.
    """
    probs = F.softmax(logits / temperature.unsqueeze(-1), dim=-1)  # [..., K]
    cdf = torch.cumsum(probs, dim=-1)
    k = (u.unsqueeze(-1) >= cdf).long().sum(-1)  # [...]
    return k.clamp(max=logits.shape[-1] - 1)
