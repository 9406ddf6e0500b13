"""Discretized mixture of logistics (PixelCNN++, Salimans et al. 2017) for single-channel data.

Data take `levels` integer values 0..levels-1, mapped to evenly spaced centres in [-1, 1]. Bin i is the
interval of width 2 / (levels - 1) around its centre, except that the edge bins reach out to -inf and +inf.
Our data are grayscale images and mono audio, one channel, so there is none of PixelCNN++'s RGB coupling.

params [..., 3K] holds, on the last axis, K mixture logits, then K means, then K log scales; log scales
are clamped below at LOG_SCALE_MIN.

The mass of an interior bin [lo, hi] (in units of the scale, d = hi - lo) is computed in log space as
    log(sigmoid(hi) - sigmoid(lo)) = log sigmoid(hi) + log sigmoid(-lo) + log(1 - exp(-d)),
which has no cancellation, so far-tail bins and tiny scales stay exact; log(1 - exp(-d)) is evaluated as
log(2 tanh(d / 2)) - log1p(tanh(d / 2)) because ONNX export (opset 17) has no expm1. When the bin is so narrow
next to the scale that d < NARROW_BIN (so cdf_delta < NARROW_BIN / 4), that term would lose precision and then
underflow; there it falls back to log pdf(centre) + log(bin width), as PixelCNN++ does for low-probability
bins. Every branch is finite for finite params, so torch.where leaks no NaN gradient.
"""

import math

import torch
import torch.nn.functional as F

LOG_SCALE_MIN = -7.0
NARROW_BIN = 1e-6


def split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """params [..., 3K] -> (mixture logits, means, clamped log scales), each [..., K]."""
    logit_probs, means, log_scales = params.chunk(3, dim=-1)
    return logit_probs, means, log_scales.clamp(min=LOG_SCALE_MIN)


def log_prob(params: torch.Tensor, x_int: torch.Tensor, levels: int) -> torch.Tensor:
    """params [..., 3K], x_int [...] integer in 0..levels-1 -> log p(x) [...]."""
    logit_probs, means, log_scales = split(params)
    width = 2.0 / (levels - 1)
    x_k = x_int.unsqueeze(-1)  # [..., 1]
    inv_scale = torch.exp(-log_scales)  # [..., K]
    mid = inv_scale * (x_k.to(params.dtype) * width - 1.0 - means)
    log_cdf_hi = -F.softplus(-(mid + inv_scale * (width / 2)))  # log sigmoid(hi): the mass of bin 0
    log_sf_lo = -F.softplus(mid - inv_scale * (width / 2))  # log sigmoid(-lo): the mass of bin levels-1
    narrow = inv_scale * width < NARROW_BIN
    half_tanh = torch.tanh(torch.where(narrow, 1.0, inv_scale * (width / 2)))  # tanh(d / 2)
    log_interior = log_cdf_hi + log_sf_lo + torch.log(2 * half_tanh) - torch.log1p(half_tanh)
    log_centre = mid - log_scales - 2 * F.softplus(mid) + math.log(width)  # log pdf(centre) + log width
    log_bin = torch.where(narrow, log_centre, log_interior)
    log_bin = torch.where(x_k == 0, log_cdf_hi, torch.where(x_k == levels - 1, log_sf_lo, log_bin))
    return torch.logsumexp(F.log_softmax(logit_probs, dim=-1) + log_bin, dim=-1)


def sample(params: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse-CDF sample: params [..., 3K], u [..., 2] in [0, 1), temperature broadcastable to [...] -> int64 [...].

    u[..., 0] picks the component by the inverse CDF of the mixture weights (softmax of logits / temperature);
    u[..., 1] draws the logistic as mean + temperature * scale * logit(u). The value is rounded to the nearest
    level and clamped to 0..levels-1, which is exactly the binning of log_prob. The same u gives the same x.
    """
    logit_probs, means, log_scales = split(params)
    cdf = torch.cumsum(F.softmax(logit_probs / temperature.unsqueeze(-1), dim=-1), dim=-1)  # [..., K]
    k = (u[..., :1] >= cdf).long().sum(-1, keepdim=True).clamp(max=cdf.shape[-1] - 1)  # [..., 1]
    mean, log_scale = means.gather(-1, k).squeeze(-1), log_scales.gather(-1, k).squeeze(-1)  # [...]
    eps = torch.finfo(u.dtype).eps
    v = u[..., 1].clamp(eps, 1 - eps)
    x = mean + temperature * torch.exp(log_scale) * (torch.log(v) - torch.log1p(-v))
    return torch.round((x + 1) * ((levels - 1) / 2)).clamp(0, levels - 1).long()
