"""Normalizing-flow transforms shared by the families. Each maps inputs to outputs of the same shape and returns
(outputs, log|det J|) per example, J = d outputs / d inputs, one Jacobian per example over the last axis.

- `planar`: an amortized planar step (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows"),
  its parameters (u, w, b) produced per example by an encoder.
- `MADE`: a masked MLP whose output d sees only the inputs before d in a fixed order (Germain et al. 2015,
  "MADE: Masked Autoencoder for Distribution Estimation").
- `IAFStep`: one inverse-autoregressive step with the gated, numerically stable update of Kingma et al. 2016
  ("Improved Variational Inference with Inverse Autoregressive Flow"), for posteriors: sampling is one pass.
- `MaskedAffine`: a masked-autoregressive affine layer (Papamakarios et al. 2017, "Masked Autoregressive Flow
  for Density Estimation"), for densities: x -> u is one pass, u -> x takes D passes.

Change of variables: a sample z ~ q pushed through a transform has log q(z_new) = log q(z) - log_det; a density
flow scores x by log p(x) = log N(u; 0, I) + log_det at u = forward(x).

All work in the inputs' float dtype, and `planar`, `MADE` and `IAFStep` have no data-dependent Python control flow,
so they trace with torch.jit.trace and export with torch.onnx.export.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Order = Literal["natural", "reversed"]

# Inside planar's log: 1 + w . u_hat (1 - tanh^2) >= 0 under the constraint, but it reaches 0 in floating point
# when w . u is very negative and tanh is near 0; the epsilon keeps log_det and its gradient finite there.
PLANAR_EPS = 1e-8


def planar_u_hat(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The invertibility constraint: u, w [B, D] -> u_hat [B, D] with w . u_hat = m(w . u) = -1 + softplus(w . u).

    u_hat = u + (m(w . u) - w . u) w / ||w||^2; ||w||^2 is floored at the dtype's smallest normal, so w = 0 gives
    u_hat = u (the step is then a shift along u by tanh(b), with log_det 0).
    """
    wu = (w * u).sum(dim=-1, keepdim=True)  # [B, 1]
    w_sq = (w * w).sum(dim=-1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)  # [B, 1]
    return u + (F.softplus(wu) - 1.0 - wu) * w / w_sq


def planar(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor,
           b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z_new = z + u_hat tanh(w . z + b): z [..., B, D], u, w [B, D], b [B, 1] -> (z_new [..., B, D], log_det [..., B]).

    Leading sample axes of z broadcast against the per-example parameters (S samples per image: z [S, B, D]).
    log_det = log(|1 + u_hat . w (1 - tanh^2(w . z + b))| + PLANAR_EPS) by the matrix determinant lemma.
    """
    u_hat = planar_u_hat(u, w)  # [B, D]
    h = torch.tanh((z * w).sum(dim=-1, keepdim=True) + b)  # [..., B, 1]
    w_u_hat = (w * u_hat).sum(dim=-1, keepdim=True)  # [B, 1], >= -1
    log_det = torch.log((1.0 + (1.0 - h.square()) * w_u_hat).abs() + PLANAR_EPS)  # [..., B, 1]
    return z + u_hat * h, log_det.squeeze(-1)


def input_degrees(dim: int, order: Order) -> torch.Tensor:
    """Degree 1..D of each input: its position in the autoregressive order, [D] long."""
    degrees = torch.arange(1, dim + 1)
    if order == "reversed":
        return degrees.flip(0)
    if order != "natural":
        raise ValueError(f"order must be 'natural' or 'reversed', not {order!r}")
    return degrees


class MaskedLinear(nn.Linear):
    """A linear layer whose weight [out, in] is multiplied by a fixed 0/1 mask, a buffer in the weight's dtype."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def fold_mask(self) -> None:
        """For export: multiply the mask into the weight and keep a scalar 1 as the mask, so that an exported
        module does not carry a second weight-sized tensor (the outputs are unchanged)."""
        with torch.no_grad():
            self.weight.mul_(self.mask)
        self.mask = torch.ones((), dtype=self.weight.dtype)


def fold_masks(module: nn.Module) -> None:
    """MaskedLinear.fold_mask on every masked layer of `module`, in place: what `genserve export` exports."""
    for layer in module.modules():
        if isinstance(layer, MaskedLinear):
            layer.fold_mask()


class MADE(nn.Module):
    """z [..., D], context [..., C] or None -> [..., D, outputs_per_dim]; output d depends on z only through the
    inputs of lower degree (those before d in `order`) and on the context freely.

    `layers` masked hidden layers of width `hidden` with ELU activations. Hidden unit k has degree m_k and sees
    inputs and units of degree <= m_k; output d sees hidden units of degree < degree(d). The degrees cycle through
    1..D-1, or 0..D-1 with a context: units of degree 0 see the context only, so that the first output in the
    order depends on it too (hidden >= D gives every degree a unit). The context enters through an unmasked
    linear (no bias) added to the first hidden layer's pre-activation, broadcasting over leading axes.
    """

    def __init__(self, dim: int, hidden: int, outputs_per_dim: int, context: int = 0, layers: int = 2,
                 order: Order = "natural"):
        super().__init__()
        if layers < 1:
            raise ValueError("MADE needs at least one hidden layer")
        self.dim, self.outputs_per_dim = dim, outputs_per_dim
        self.register_buffer("degrees", input_degrees(dim, order), persistent=False)  # [D]
        d_in = self.degrees
        lowest = 0 if context > 0 or dim == 1 else 1
        d_hidden = lowest + torch.arange(hidden) % (dim - lowest)  # [H]
        d_out = d_in.repeat_interleave(outputs_per_dim)  # [D * P], output (d, p) at d * P + p
        masks = [d_hidden[:, None] >= d_in[None, :]]  # [H, D]
        masks += [d_hidden[:, None] >= d_hidden[None, :]] * (layers - 1)  # [H, H] each
        masks += [d_out[:, None] > d_hidden[None, :]]  # [D * P, H]
        self.net = nn.ModuleList(MaskedLinear(mask) for mask in masks)
        self.context = nn.Linear(context, hidden, bias=False) if context > 0 else None

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if (context is None) != (self.context is None):
            raise ValueError("pass a context exactly when the MADE was built with context > 0")
        x = self.net[0](z)  # [..., H]
        if self.context is not None:
            x = x + self.context(context)
        for layer in self.net[1:]:
            x = layer(F.elu(x))
        return x.unflatten(-1, (self.dim, self.outputs_per_dim))  # [..., D, P]


class IAFStep(nn.Module):
    """One IAF step: (m, s) = MADE(z, h), sigma = sigmoid(s + forget_bias), z_new = sigma z + (1 - sigma) m.

    z [..., D], h [..., C] (or None when context = 0) -> (z_new [..., D], log_det [...]), log_det = sum_d log sigma_d.
    h broadcasts against z's leading axes without a copy: z [S, B, D] takes h [B, C] or [S, B, C], and the
    outputs have the broadcast leading shape. The positive forget bias starts sigma near sigmoid(1) ~ 0.73, so an
    untrained stack stays close to the identity. The Jacobian is triangular in `order`, diagonal sigma.
    """

    def __init__(self, dim: int, hidden: int, context: int = 0, order: Order = "natural",
                 forget_bias: float = 1.0):
        super().__init__()
        self.made = MADE(dim, hidden, 2, context, order=order)
        self.forget_bias = forget_bias

    def forward(self, z: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = self.made(z, h).unbind(dim=-1)  # [..., D] each
        gate = s + self.forget_bias
        sigma = torch.sigmoid(gate)
        return sigma * z + (1.0 - sigma) * m, F.logsigmoid(gate).sum(dim=-1)


class MaskedAffine(nn.Module):
    """MAF layer, data to noise: u = (x - mu(x_<d)) exp(-alpha(x_<d)), log_det = -sum_d alpha_d.

    x [..., D] -> (u [..., D], log_det [...]). alpha = scale_bound tanh(raw / scale_bound) is bounded in
    (-scale_bound, scale_bound), so exp(+-alpha) and log_det stay finite whatever the network outputs;
    it is close to raw for |raw| << scale_bound. `inverse` maps noise to data in D sequential passes.
    """

    def __init__(self, dim: int, hidden: int, layers: int = 2, order: Order = "natural", scale_bound: float = 3.0):
        super().__init__()
        self.made = MADE(dim, hidden, 2, layers=layers, order=order)
        self.scale_bound = scale_bound

    def shift_and_log_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., D] -> (mu, alpha) [..., D] each, output d a function of x_<d."""
        mu, raw = self.made(x).unbind(dim=-1)
        return mu, self.scale_bound * torch.tanh(raw / self.scale_bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, alpha = self.shift_and_log_scale(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(dim=-1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """u [..., D] -> x [..., D]: pass k fixes the input of degree k, whose mu, alpha see only degrees < k."""
        x = torch.zeros_like(u)
        for _ in range(self.made.dim):
            mu, alpha = self.shift_and_log_scale(x)
            x = mu + u * torch.exp(alpha)
        return x
