"""Mu-law companding of audio (mu = 255, 256 levels), in the ITU-T G.711 / WaveNet convention.

Companding: y = sign(x) ln(1 + mu |x|) / ln(1 + mu) maps x in [-1, 1] to y in [-1, 1].
Quantization: q = floor((y + 1) / 2 * mu + 0.5), i.e. y rounded to the nearest of mu + 1 evenly spaced
centres y_q = 2 q / mu - 1, giving q in 0..mu. Decoding returns the inverse companding of the bin centre y_q.
Inputs outside [-1, 1] are clipped first.
"""

import math

import torch

MU = 255


def encode(audio: torch.Tensor, mu: int = MU) -> torch.Tensor:
    """audio [...] float in [-1, 1] -> int64 [...] in 0..mu."""
    x = audio.clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((y + 1) / 2 * mu + 0.5).long()


def decode(q: torch.Tensor, mu: int = MU) -> torch.Tensor:
    """q [...] integer in 0..mu -> float32 [...] in [-1, 1], the audio value of the bin centre."""
    y = 2 * q.float() / mu - 1
    return torch.sign(y) * (torch.exp(y.abs() * math.log1p(mu)) - 1) / mu  # exp - 1: ONNX has no expm1
