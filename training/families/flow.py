"""Density flows on 256-level 28x28 images: NICE (Dinh, Krueger & Bengio 2014), Real NVP (Dinh, Sohl-Dickstein &
Bengio 2016) and MAF (Papamakarios, Pavlakou & Murray 2017), scored by the change of variables.

Preprocessing, as in Real NVP: levels x in 0..255 -> y = (x + u) / 256 in [0, 1) with dequantization noise
u in [0, 1)^D, then v = logit(alpha + (1 - 2 alpha) y), alpha = 0.05. The flow maps v to z with log p_v(v) =
log N(z; 0, I) + log|det dz/dv|, and the discrete x is scored, in nats, with both Jacobians corrected for:
    log p(x) >= E_u [log p_v(v) + log|dv/dy| - D log 256]        (D = 784)
the variational dequantization bound (Theis et al. 2016; Ho et al. 2019): with u ~ U[0, 1)^D, one u is an
unbiased estimate of a lower bound on log p(x). Training minimises its negative with fresh torch noise per step;
`evaluate_test` reports it on the test split with one u per image from a fixed seed.

The exported `log_prob` takes x and the dequantization draw u as `noise`, which the service draws from the
request's seed: it serves the same one-sample bound that calibrated the anomaly scores (method "dequantized",
a lower bound on log p(x) in expectation). The bin centre, u = 1/2, gives a far higher number on a peaked
model (realnvp: 661 against 948 nats), which is not a bound, so it is only reported beside it.
`sample`: z = temperature * eps -> inverse flow -> inverse logit -> floor(256 y), clamped to 0..255.
`encode`: x -> z = f(v at the bin centre), as `mean` [B, 784] with `std` 0 (the encoder is deterministic);
`decode`: z -> the levels, as float32 `mean` [B, 1, 28, 28] (integer valued); decode(encode(x)) = x.
MAF's inverse takes D sequential passes per layer: its `sample` and `decode` are scripted modules, a loop around
each layer's traced pass, exported as a TorchScript loop and an ONNX Loop (not 784 unrolled passes).
`complete`: Metropolis-Hastings over the unobserved pixels (training/nn/mcmc.py), targeting the density at the
bin centres, with observed pixels fixed; 500 steps by default.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.nn import coupling, flows, mcmc

SIDE, D, LEVELS = 28, 784, 256
ALPHA = 0.05
LOG_2PI = math.log(2 * math.pi)


@dataclass
class FlowConfig:
    kind: str = "nice"  # or "realnvp" or "maf"
    layers: int = 4  # nice: couplings; realnvp: couplings per stage (3 stages); maf: MaskedAffine layers
    hidden: int = 256  # MLP width (nice), conv channels (realnvp), MADE width (maf; >= 784 lets every input count)
    depth: int = 2  # hidden layers per coupling MLP (nice) or MADE (maf)
    scale_bound: float = 3.0  # realnvp and maf: the bound on each log scale

    def to_dict(self) -> dict:
        return asdict(self)


class DensityFlow(nn.Module):
    """v -> z by `self.flow` (forward: data to noise). NICE and MAF act on [B, 784]; Real NVP on [B, 1, 28, 28],
    with 3 x `layers` couplings: checkerboard at 1x28x28, squeeze, channel masks then checkerboard at 4x14x14."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = c = config
        if c.kind == "nice":
            steps = [coupling.AdditiveCoupling(D, c.hidden, mask=k % 2, layers=c.depth) for k in range(c.layers)]
            steps.append(coupling.DiagonalScaling(D))
        elif c.kind == "realnvp":
            steps = [coupling.ActNorm(1)]
            for k in range(c.layers):
                steps += [coupling.AffineCoupling(1, c.hidden, "checkerboard", k % 2, c.scale_bound)]
            steps += [coupling.Squeeze(), coupling.ActNorm(4)]
            for k in range(c.layers):
                steps += [coupling.AffineCoupling(4, c.hidden, "channel", k % 2, c.scale_bound), coupling.ActNorm(4)]
            for k in range(c.layers):
                steps += [coupling.AffineCoupling(4, c.hidden, "checkerboard", k % 2, c.scale_bound),
                          coupling.ActNorm(4)]
        elif c.kind == "maf":
            steps = []
            for k in range(c.layers):
                if k > 0:
                    steps.append(coupling.Permutation(D, "random", seed=k))
                steps.append(flows.MaskedAffine(D, c.hidden, layers=c.depth, scale_bound=c.scale_bound))
        else:
            raise ValueError(f"kind must be nice, realnvp or maf, not {c.kind!r}")
        self.flow = coupling.FlowSequence(steps)

    @property
    def image_flow(self) -> bool:
        return self.config.kind == "realnvp"

    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def preprocess(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] levels, u in [0, 1) broadcastable to x -> (v in the flow's shape, log|dv/dy| [B])."""
        y = (x.to(u.dtype) + u) / LEVELS
        p = ALPHA + (1 - 2 * ALPHA) * y
        v = torch.log(p) - torch.log1p(-p)
        log_jac = (math.log(1 - 2 * ALPHA) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return (v if self.image_flow else v.flatten(1)), log_jac

    def postprocess(self, v: torch.Tensor) -> torch.Tensor:
        """v in the flow's shape -> levels floor(256 y) clamped to 0..255, int64 [B, 1, 28, 28]."""
        return levels(v)

    def log_prob(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log p_v(v) + log|dv/dy| - D log 256 at y = (x + u) / 256: [B] nats (one draw of the bound, or the bin
        centre's density times the bin width at u = 1/2)."""
        v, log_jac = self.preprocess(x, u)
        z, log_det = self.flow(v)
        z = z.flatten(1)
        log_base = -0.5 * (z.square().sum(1) + D * LOG_2PI)
        return log_base + log_det + log_jac - D * math.log(LEVELS)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, 28, 28] -> z = f(v at the bin centres) [B, 784]."""
        v, _ = self.preprocess(x, torch.full((), 0.5, dtype=self.dtype()))
        return self.flow(v)[0].flatten(1)

    def unflatten(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, 784] -> the flow's output shape (Real NVP: [B, 4, 14, 14])."""
        return z.reshape(-1, 4, SIDE // 2, SIDE // 2) if self.image_flow else z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, 784] -> levels int64 [B, 1, 28, 28] (eager: MAF's inverse runs its D passes per layer here)."""
        return self.postprocess(self.flow.inverse(self.unflatten(z)))


def build(model_config: dict, split) -> DensityFlow:
    if split.levels != LEVELS or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"a flow needs 1x{SIDE}x{SIDE} images of {LEVELS} levels, got {split.levels}, {split.shape}")
    return DensityFlow(FlowConfig(**model_config))


def loss(model: DensityFlow, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean negative dequantization bound, nats per image, with u ~ U[0, 1) from torch's generator."""
    return -model.log_prob(x, torch.rand(x.shape, dtype=model.dtype())).mean()


@torch.no_grad()
def sample_grid(model: DensityFlow, generator: torch.Generator, n: int = 80) -> torch.Tensor:
    """n samples at temperature 1: [n, 1, 28, 28] int64 levels."""
    return model.decode(torch.randn(n, D, generator=generator, dtype=model.dtype()))


@torch.no_grad()
def evaluate_test(model: DensityFlow, split, batch_size: int = 100) -> dict:
    """-log p(x) per test image from one uniform dequantization draw per image, fixed seed 0: the variational
    dequantization bound, in expectation an upper bound on -log p(x) (a lower bound on log p(x)); beside it the
    mean of the served bin-centre score, -log p_x+u(x + 1/2)."""
    model.eval()
    generator, bound, centre = torch.Generator().manual_seed(0), [], []
    for i in range(0, len(split.x_test), batch_size):
        x = torch.from_numpy(split.x_test[i: i + batch_size]).long()
        u = torch.rand(x.shape, generator=generator, dtype=model.dtype())
        bound.append(-model.log_prob(x, u).double())
        centre.append(-model.log_prob(x, torch.full((), 0.5, dtype=model.dtype())).double())
    nll = torch.cat(bound)
    return {"test_nll_per_example": nll.tolist(), "method": "dequantized", "dequantization": "uniform, 1 sample",
            "test_nll_bin_centre_nats": torch.cat(centre).mean().item()}


class LogProb(nn.Module):
    def __init__(self, model: DensityFlow):
        super().__init__()
        self.model = model

    def forward(self, x, noise):
        return self.model.log_prob(x, noise)  # noise [B, 1, 28, 28] uniform: the dequantization draw u


class Encode(nn.Module):
    def __init__(self, model: DensityFlow):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model.encode(x)
        return z, torch.zeros_like(z)


class Decode(nn.Module):
    """z [B, 784] -> levels as float32 `mean` [B, 1, 28, 28]."""

    def __init__(self, model: DensityFlow):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model.decode(z).float()


class Sample(nn.Module):
    """eps [B, 784] standard normal, temperature [B] -> x int64 levels, z = temperature * eps."""

    def __init__(self, model: DensityFlow):
        super().__init__()
        self.model = model

    def forward(self, eps, temperature):
        return self.model.decode(temperature.unsqueeze(1) * eps)


class AffineParams(nn.Module):
    """One MaskedAffine layer's (mu, alpha) of x [B, D], traced inside MAFInverse's loop: MADE's layers written out,
    with strided slices instead of its unflatten, which ONNX cannot export where the input's rank is unknown."""

    def __init__(self, layer: flows.MaskedAffine):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        net = self.layer.made.net
        h = net[0](x)
        for linear in net[1:]:
            h = linear(F.elu(h))
        bound = self.layer.scale_bound
        return h[:, 0::2], bound * torch.tanh(h[:, 1::2] / bound)  # output (d, p) at 2 d + p


class MAFInverse(nn.Module):
    """MAF's inverse z [B, D] -> v [B, D] as a TorchScript loop: per layer, last first, D passes x = mu(x) + z
    exp(alpha(x)) from x = 0 (pass k fixes the input of degree k), then the permutation before it undone."""

    dim: int

    def __init__(self, params: list[nn.Module], inverse_perms: torch.Tensor):
        super().__init__()
        self.params = nn.ModuleList(params)  # last layer first
        self.register_buffer("inverse_perms", inverse_perms)  # [K, D]: undoes the permutation before layer k
        self.dim = inverse_perms.shape[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for k, params in enumerate(self.params):
            x = torch.zeros_like(z)
            for _ in range(self.dim):
                mu, alpha = params(x)
                x = mu + z * torch.exp(alpha)
            z = x.index_select(1, self.inverse_perms[k])
        return z


class ScriptedSample(nn.Module):
    """MAF's `sample` around the scripted inverse, exported scripted: export_function's trace of a ScriptModule is
    the module itself, and torch.onnx.export writes its loops as ONNX Loops."""

    def __init__(self, inverse: nn.Module):
        super().__init__()
        self.inverse = inverse

    def forward(self, eps: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        return levels(self.inverse(temperature.unsqueeze(1) * eps))


class ScriptedDecode(ScriptedSample):
    """MAF's `decode` around the scripted inverse: z -> float32 levels."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return levels(self.inverse(z)).float()


class CompleteStep(nn.Module):
    """One Metropolis-Hastings step over the unobserved pixels (training/nn/mcmc.py) targeting the dequantized
    density at the bin centres, log p_x+u(x + 1/2): x, noise [B, 1, 28, 28, 2], accept [B, 1], observed, mask."""

    def __init__(self, model: DensityFlow):
        super().__init__()
        self.model = model

    def forward(self, x, noise, accept, observed, mask):
        centre = torch.full((), 0.5, dtype=self.model.dtype())
        return mcmc.metropolis_step(lambda v: self.model.log_prob(v, centre), x, noise, accept, observed, mask,
                                    LEVELS)


def levels(v: torch.Tensor) -> torch.Tensor:
    """v in the flow's shape -> levels floor(256 y) clamped to 0..255, int64 [B, 1, 28, 28]. Scriptable, so the
    constants are literals: SIDE = 28, ALPHA = 0.05, LEVELS = 256."""
    y = (torch.sigmoid(v.reshape(-1, 1, 28, 28)) - 0.05) / 0.9
    return torch.clamp(torch.floor(y * 256), 0, 255).long()


def maf_inverse(model: DensityFlow) -> nn.Module:
    """The scripted MAF inverse: each layer's (mu, alpha) traced once, inside a scripted loop."""
    transforms = list(model.flow.transforms)
    example = torch.zeros(2, D, dtype=model.dtype())
    params, perms = [], []
    for i, t in enumerate(transforms):
        if isinstance(t, flows.MaskedAffine):
            before = transforms[i - 1] if i > 0 else None
            params.append(torch.jit.trace(AffineParams(t).eval(), example, check_trace=False))
            perms.append(before.inverse_perm if isinstance(before, coupling.Permutation) else torch.arange(D))
    return torch.jit.script(MAFInverse(params[::-1], torch.stack(perms[::-1])))


def exported_functions(model: DensityFlow, split) -> tuple[dict, dict]:
    """(functions, capabilities) of docs/latent-variable-models.md; see the module docstring."""
    model.eval()
    b = 2
    x = torch.randint(0, LEVELS, (b, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(0))
    z, eps = torch.randn(b, D), torch.randn(b, D)
    inverse = maf_inverse(model) if model.config.kind == "maf" else None
    sample = Sample(model) if inverse is None else torch.jit.script(ScriptedSample(inverse).eval())
    decode = Decode(model) if inverse is None else torch.jit.script(ScriptedDecode(inverse).eval())
    functions = {
        "log_prob": (LogProb(model), {"x": x, "noise": torch.rand(b, 1, SIDE, SIDE)}, ["log_prob"]),
        "sample": (sample, {"eps": eps, "temperature": torch.ones(b)}, ["x"]),
        "encode": (Encode(model), {"x": x}, ["mean", "std"]),
        "decode": (decode, {"z": z}, ["mean"]),
        "complete_step": (CompleteStep(model), {"x": x, "noise": torch.rand(b, 1, SIDE, SIDE, 2),
                                                "accept": torch.rand(b, 1), "observed": x, "mask": x % 2},
                          ["next_x"]),
    }
    capabilities = {
        "score": {"procedure": "direct", "function": "log_prob", "method": "dequantized", "is_lower_bound": True,
                  "noise": {"noise": {"distribution": "uniform", "shape": [1, SIDE, SIDE]}}},
        "sample": {"procedure": "ancestral", "function": "sample",
                   "noise": {"eps": {"distribution": "normal", "shape": [D]}}},
        "encode": {"procedure": "direct", "function": "encode"},
        "decode": {"procedure": "direct", "function": "decode"},
        "complete": {"procedure": "markov_chain", "function": "complete_step", "steps": 500, "max_steps": 5000,
                     "noise": {"noise": {"distribution": "uniform", "shape": [1, SIDE, SIDE, 2]},
                               "accept": {"distribution": "uniform", "shape": [1]}}},
    }
    return functions, capabilities
