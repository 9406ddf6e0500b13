"""Invertible transforms for coupling flows on vectors [B, D] and images [B, C, H, W]. Each maps inputs to outputs
of the same number of elements, forward(x) -> (y, log|det J| [B]) with J = dy/dx per example over all non-batch
axes, and inverse(y) -> x.

- `AdditiveCoupling`, `DiagonalScaling`: NICE (Dinh, Krueger & Bengio 2014, "NICE: Non-linear Independent
  Components Estimation"): volume-preserving shifts of half the features, and a final diagonal scaling.
- `AffineCoupling`, `squeeze` / `Squeeze`: Real NVP (Dinh, Sohl-Dickstein & Bengio 2016, "Density estimation using
  Real NVP"): checkerboard and channel masks, and the space-to-depth reshape between scales.
- `ActNorm`, `Invertible1x1Conv`: Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1
  Convolutions").
- `Permutation` (a fixed reordering of axis 1) and `FlowSequence` (a chain) have no paper of their own.

Direction, as in `flows`: forward maps data to noise, so log p(x) = log N(forward(x)[0]; 0, I) + log_det; inverse
maps noise to data. Every transform works in its inputs' float dtype and has no data-dependent Python control flow,
so forward and inverse trace with torch.jit.trace and export with torch.onnx.export (opset 17); export in eval mode.
Masks are 0/1 tensors multiplied in, 1 marking the conditioning half that a coupling passes through unchanged.
No multi-scale factor-out helper here: a model splits channels with `chunk` after a `Squeeze`.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

MaskKind = Literal["checkerboard", "channel"]


def zero_log_det(x: torch.Tensor) -> torch.Tensor:
    """x [B, ...] -> zeros [B] in x's dtype (x.shape[0] is traced, so the batch size stays dynamic)."""
    return x.new_zeros(x.shape[0])


def parity_mask(dim: int, mask: int | torch.Tensor) -> torch.Tensor:
    """An int parity p -> the 0/1 float mask [D] with 1 at the features i % 2 == p; a tensor [D] -> it as 0/1 float."""
    if isinstance(mask, torch.Tensor):
        if mask.shape != (dim,):
            raise ValueError(f"mask must have shape ({dim},), not {tuple(mask.shape)}")
        return (mask != 0).float()
    if mask not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, not {mask!r}")
    return (torch.arange(dim) % 2 == mask).float()


def bounded(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """bound tanh(raw / bound): close to raw for |raw| << bound, in (-bound, bound) (+-bound once tanh rounds to 1)."""
    return bound * torch.tanh(raw / bound)


class AdditiveCoupling(nn.Module):
    """NICE coupling, x [B, D] -> y = m x + (1 - m) (x + net(m x)), log_det = 0 (the Jacobian is unit triangular).

    `mask` is a parity (0 or 1: the features i % 2 == parity condition) or a 0/1 tensor [D]. `net` is an MLP with
    `layers` ReLU hidden layers of width `hidden` and a zero-initialised output layer, so the step starts as the
    identity. inverse: x = m y + (1 - m) (y - net(m y)), since m y = m x.
    """

    def __init__(self, dim: int, hidden: int, mask: int | torch.Tensor = 0, layers: int = 2):
        super().__init__()
        self.register_buffer("mask", parity_mask(dim, mask))  # [D]
        sizes = [dim] + [hidden] * layers
        hidden_layers = [m for a, b in zip(sizes, sizes[1:], strict=False) for m in (nn.Linear(a, b), nn.ReLU())]
        self.net = nn.Sequential(*hidden_layers, nn.Linear(sizes[-1], dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D] -> the shift [B, D], zero on the conditioning half and a function of it only."""
        return (1.0 - self.mask) * self.net(x * self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.shift(x), zero_log_det(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y - self.shift(y)


class DiagonalScaling(nn.Module):
    """NICE's last layer, x [B, D] -> y = x exp(s), log_det = sum_d s_d; s [D] starts at 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.log_scale.exp(), zero_log_det(x) + self.log_scale.sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale)


class Permutation(nn.Module):
    """A fixed reordering of axis 1 (the features of [B, D] or the channels of [B, C, ...]), log_det = 0.

    kind "reverse" flips the order; "random" draws one permutation from `seed` at construction. The permutation is
    a buffer, so it is saved with the module.
    """

    def __init__(self, dim: int, kind: Literal["reverse", "random"] = "reverse", seed: int = 0):
        super().__init__()
        if kind == "reverse":
            perm = torch.arange(dim - 1, -1, -1)
        elif kind == "random":
            perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        else:
            raise ValueError(f"kind must be 'reverse' or 'random', not {kind!r}")
        self.register_buffer("perm", perm)  # [D] long
        self.register_buffer("inverse_perm", torch.argsort(perm))  # [D] long

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.index_select(1, self.perm), zero_log_det(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.index_select(1, self.inverse_perm)


def checkerboard(x: torch.Tensor, parity: int) -> torch.Tensor:
    """x [B, C, H, W] -> the 0/1 mask [1, 1, H, W] in x's dtype, 1 where (h + w) % 2 == parity."""
    h = torch.arange(x.shape[-2], device=x.device)
    w = torch.arange(x.shape[-1], device=x.device)
    return ((h[:, None] + w[None, :]) % 2 == parity).to(x.dtype)[None, None]


class AffineCoupling(nn.Module):
    """Real NVP coupling on images, x [B, C, H, W] -> y = x exp(s) + t, s and t functions of m x, zero where m = 1.

    log_det = sum of s over the transformed half. mask "checkerboard": m = 1 where (h + w) % 2 == parity;
    "channel": m = 1 on the first C // 2 channels (parity 0) or on the others (parity 1). The scale is
    s = scale_bound tanh(raw / scale_bound) (not a softplus), so exp(+-s) and log_det stay finite whatever the
    network outputs. The network, 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> 3x3 conv (`hidden` channels, zero
    padding), reads all C channels of m x and writes raw and t for all C channels, of which (1 - m) is kept; its
    last layer starts at zero, so the step starts as the identity.
    """

    def __init__(self, channels: int, hidden: int, mask: MaskKind = "checkerboard", parity: int = 0,
                 scale_bound: float = 3.0):
        super().__init__()
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, not {parity!r}")
        if mask == "channel":
            if channels < 2:
                raise ValueError("a channel mask needs at least two channels")
            first = (torch.arange(channels) < channels // 2).float()
            self.register_buffer("channel_mask", (first if parity == 0 else 1.0 - first)[None, :, None, None])
        elif mask == "checkerboard":
            self.register_buffer("channel_mask", None)
        else:
            raise ValueError(f"mask must be 'checkerboard' or 'channel', not {mask!r}")
        self.kind, self.parity, self.scale_bound = mask, parity, scale_bound
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The 0/1 conditioning mask, broadcastable to x: [1, C, 1, 1] or [1, 1, H, W]."""
        return checkerboard(x, self.parity) if self.channel_mask is None else self.channel_mask.to(x.dtype)

    def scale_and_shift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> (s, t) [B, C, H, W] each, zero on the conditioning half and a function of it only."""
        m = self.mask(x)
        raw, t = self.net(x * m).chunk(2, dim=1)
        return (1.0 - m) * bounded(raw, self.scale_bound), (1.0 - m) * t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.scale_and_shift(x)
        return x * s.exp() + t, s.sum(dim=(1, 2, 3))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self.scale_and_shift(y)  # m y = m x
        return (y - t) * torch.exp(-s)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """Space to depth, x [B, C, H, W] -> [B, 4C, H/2, W/2]: output channel 4c + 2i + j holds x[:, c, i::2, j::2].

    pixel_unshuffle, not unflatten / flatten, whose ONNX export fixes the batch size to the traced one.
    """
    return F.pixel_unshuffle(x, 2)


def unsqueeze(z: torch.Tensor) -> torch.Tensor:
    """Depth to space, the exact inverse of `squeeze`: z [B, 4C, H/2, W/2] -> [B, C, H, W]."""
    return F.pixel_shuffle(z, 2)


class Squeeze(nn.Module):
    """`squeeze` as a transform: forward -> (squeeze(x), 0), inverse -> unsqueeze(y). H and W must be even."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return squeeze(x), zero_log_det(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return unsqueeze(y)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] -> H W [B] in x's dtype, as a tensor so that the spatial size stays dynamic under tracing."""
    return torch.ones_like(x[:, 0]).sum(dim=(1, 2))


class ActNorm(nn.Module):
    """Per-channel affine, x [B, C, H, W] -> y = (x - loc) exp(log_scale), log_det = H W sum_c log_scale_c.

    The scale is exp(log_scale), so log|scale| = log_scale and it never crosses zero. Data-dependent
    initialisation: the first forward in training mode (outside tracing) sets loc and log_scale so that that batch
    comes out with zero mean and unit variance per channel, and sets the `initialized` buffer, which is saved with
    the module, so a loaded module is not re-initialised. Before that the step is the identity.
    """

    def __init__(self, channels: int, min_std: float = 1e-6):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.min_std = min_std

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set loc to the per-channel mean of x and log_scale to -log of its std (floored at min_std)."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, correction=0).clamp(min=self.min_std)
        self.loc.copy_(mean)
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not torch.jit.is_tracing() and not self.initialized:
            self.initialize(x)
        return (x - self.loc) * self.log_scale.exp(), pixels(x) * self.log_scale.sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) + self.loc


class Invertible1x1Conv(nn.Module):
    """Glow's channel mixing, x [B, C, H, W] -> y = W x at every pixel, log_det = H W log|det W|.

    W [C, C] is a plain parameter (not LU-factored) starting as a random orthogonal matrix (log|det W| = 0);
    inverse applies W^-1. ONNX opset 17 has no slogdet and no matrix inverse: under torch.onnx.export, both are
    computed eagerly from the weight's values and enter the graph as constants (the weight is one anyway).
    """

    def __init__(self, channels: int, seed: int | None = None):
        super().__init__()
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        self.weight = nn.Parameter(q)

    def log_abs_det(self) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.linalg.slogdet(self.weight.data)[1]
        return torch.linalg.slogdet(self.weight)[1]

    def inverse_weight(self) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.linalg.inv(self.weight.data)
        return torch.linalg.inv(self.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(x, self.weight[:, :, None, None]), pixels(x) * self.log_abs_det()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, self.inverse_weight()[:, :, None, None])


class FlowSequence(nn.Module):
    """A chain of transforms: forward applies them in order and sums their log-dets; inverse undoes them in
    reverse order."""

    def __init__(self, transforms: list[nn.Module]):
        super().__init__()
        if not transforms:
            raise ValueError("a FlowSequence needs at least one transform")
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = zero_log_det(x)
        for transform in self.transforms:
            x, step_log_det = transform(x)
            log_det = log_det + step_log_det
        return x, log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for transform in reversed(self.transforms):
            y = transform.inverse(y)
        return y
