"""Bernoulli over {0, 1}, parameterised by the logit of p(x = 1)."""

import torch
import torch.nn.functional as F


def log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits [...], x [...] in {0, 1} -> log p(x) [...]."""
    return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample: logits [...], u [...] in [0, 1), temperature broadcastable to u -> int64 [...].

    Returns 0 when u < p(x = 0) and 1 otherwise, as categorical.sample does with two levels.
    """
    return (u >= torch.sigmoid(-logits / temperature)).long()
