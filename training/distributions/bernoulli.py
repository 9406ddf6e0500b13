"""Bernoulli over {0, 1}, parameterised by the logit of p(x = 1)."""

import torch
import torch.nn.functional as F


def log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits [...], x [...] in {0, 1} -> log p(x) [...] = -softplus(-logits) for 1, -softplus(logits) for 0.

    Written with softplus, not binary_cross_entropy_with_logits, whose ONNX export (opset 17) computes
    log(sigmoid) and returns NaN once a logit passes about +-17 in float32."""
    return -F.softplus(torch.where(x == 1, -logits, logits))


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample: logits [...], u [...] in [0, 1), temperature broadcastable to u -> int64 [...].

    Returns 0 when u < p(x = 0) and 1 otherwise, as categorical.sample does with two levels.
    """
    return (u >= torch.sigmoid(-logits / temperature)).long()
