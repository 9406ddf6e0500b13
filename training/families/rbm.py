"""RBM: a Bernoulli-Bernoulli restricted Boltzmann machine on binary images, trained by persistent contrastive
divergence (Tieleman 2008, "Training Restricted Boltzmann Machines using Approximations to the Likelihood
Gradient") and scored with log Z estimated by annealed importance sampling (Salakhutdinov & Murray 2008, "On
the Quantitative Analysis of Deep Belief Networks", after Neal 2001, "Annealed Importance Sampling").

Over V visible units v and H hidden units h, all in {0, 1}:
    E(v, h) = -b.v - c.h - h.W v,   F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + W_j.v)
    log p(v) = -F(v) - log Z,       Z = sum_v exp(-F(v)) = sum_h exp(c.h + sum_i softplus(b_i + (h W)_i))

Training: in train mode `loss` advances `pcd_chains` persistent Gibbs chains (a buffer, saved with the
weights) by `cd_steps` steps and returns a surrogate whose gradient is the PCD estimate of the NLL gradient,
E_data[dF/dθ] - E_chains[dF/dθ] (+ L2 weight decay on W), and whose value is the batch's mean free energy.
In eval mode `loss` is the mean free energy F(x): log Z is too dear to estimate every epoch, so the training
curve (labelled "NLL" by train.py) shows the unnormalised free energy, in nats; it is an NLL up to the
unknown constant log Z, which drifts as training goes on.

log Z: AIS from the base-rate RBM (W = 0, visible biases the smoothed log-odds of the training pixels' means)
along the geometric path p_beta(v) ~ exp((1 - beta) b_A.v + beta b.v) prod_j (1 + exp(beta (c_j + W_j.v))),
`ais_runs` independent runs over `ais_betas` intermediate distributions, in float64. log Z = log mean w with
the delta-method standard error std(w) / (sqrt(runs) mean w). Being the log of an unbiased estimate of Z, it
underestimates log Z on average, so the reported NLL tends to be optimistic. `log_partition` computes it
once with a fixed seed and caches it in buffers (any training step clears them): the exported log_prob and
`evaluate_test` use the same value, and two loads of the same weights compute the same value.

Usage (mnist5k-binarized: x [B, 1, 28, 28] in {0, 1}):
    model = build({"hidden": 500}, split)
    free_energy(model, x)                 # [B] nats
    log_partition(model)                  # (log Z, stderr), AIS, cached
    exact_log_partition(model)            # log Z by enumerating 2^H hidden states (small H only)
The exported functions and capabilities follow docs/latent-variable-models.md.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.families.vae import log_mean_exp


@dataclass
class RBMConfig:
    hidden: int = 500  # H
    pcd_chains: int = 100  # persistent chains of the negative phase
    cd_steps: int = 1  # Gibbs steps of the chains per training step
    weight_decay: float = 0.0  # L2 coefficient on W, training objective only
    init_std: float = 0.01  # W's initial standard deviation
    ais_betas: int = 10000  # intermediate distributions of AIS
    ais_runs: int = 100  # independent AIS runs
    sample_steps: int = 1000  # Gibbs steps of samples (the served default and samples.png)

    def to_dict(self) -> dict:
        return asdict(self)


class RBM(nn.Module):
    def __init__(self, config: RBMConfig, shape: tuple[int, ...], base_bias: torch.Tensor | None = None):
        super().__init__()
        self.config, self.shape = config, tuple(shape)
        v, h = math.prod(shape), config.hidden
        base = torch.zeros(v) if base_bias is None else base_bias.float()
        self.W = nn.Parameter(config.init_std * torch.randn(h, v))  # [H, V]
        self.b = nn.Parameter(base.clone())  # [V] visible biases, starting at the base rate
        self.c = nn.Parameter(torch.zeros(h))  # [H] hidden biases
        self.register_buffer("base_bias", base)  # [V] AIS's base-rate RBM
        self.register_buffer("chains", torch.bernoulli(torch.sigmoid(base).expand(config.pcd_chains, v)))  # [P, V]
        self.register_buffer("log_z", torch.tensor(math.nan, dtype=torch.float64))  # cached AIS estimate
        self.register_buffer("log_z_stderr", torch.tensor(math.nan, dtype=torch.float64))

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        """p(h_j = 1 | v): v [B, V] -> [B, H]."""
        return torch.sigmoid(v @ self.W.t() + self.c)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        """p(v_i = 1 | h): h [B, H] -> [B, V]."""
        return torch.sigmoid(h @ self.W + self.b)

    def gibbs(self, v: torch.Tensor, u_h: torch.Tensor, u_v: torch.Tensor) -> torch.Tensor:
        """One Gibbs sweep by inverse CDF: v [B, V], uniforms u_h [B, H], u_v [B, V] -> v' [B, V] (v's dtype)."""
        h = (u_h < self.hidden_probs(v)).to(v.dtype)
        return (u_v < self.visible_probs(h)).to(v.dtype)

    def run_chain(self, v: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`steps` Gibbs sweeps from v [B, V] float -> [B, V]."""
        for _ in range(steps):
            u_h = torch.rand(len(v), self.config.hidden, generator=generator, dtype=v.dtype)
            v = self.gibbs(v, u_h, torch.rand(v.shape, generator=generator, dtype=v.dtype))
        return v


def free_energy(model: RBM, v: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """F(v) = -b.v - sum_j softplus(c_j + W_j.v): v [B, *shape] (or [B, V]) in {0, 1} -> [B] nats."""
    w, b, c = (p.to(dtype or model.W.dtype) for p in (model.W, model.b, model.c))
    v = v.flatten(1).to(w.dtype)  # [B, V]
    return -(v @ b) - F.softplus(v @ w.t() + c).sum(1)


def loss(model: RBM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Train mode: the PCD surrogate (value: mean F(x); gradient: PCD's), chains advanced; eval: mean F(x)."""
    f_data = free_energy(model, x).mean()
    if not model.training:
        return f_data
    with torch.no_grad():
        model.chains.copy_(model.run_chain(model.chains, model.config.cd_steps))
        model.log_z.fill_(math.nan)  # the weights are about to change
        model.log_z_stderr.fill_(math.nan)
    rest = -free_energy(model, model.chains).mean() + 0.5 * model.config.weight_decay * model.W.square().sum()
    return f_data + rest - rest.detach()


def beta_schedule(k: int) -> torch.Tensor:
    """k + 1 inverse temperatures 0 = beta_0 < ... < beta_k = 1, spaced as Salakhutdinov & Murray's 500 / 4000 /
    10000 over [0, 0.5], [0.5, 0.9], [0.9, 1]: float64 [k + 1]."""
    n1 = max(1, round(k * 500 / 14500))
    n2 = max(1, round(k * 4000 / 14500))
    n3 = max(1, k - n1 - n2)
    f64 = torch.float64
    return torch.cat([torch.linspace(0.0, 0.5, n1 + 1, dtype=f64)[:-1],
                      torch.linspace(0.5, 0.9, n2 + 1, dtype=f64)[:-1], torch.linspace(0.9, 1.0, n3 + 1, dtype=f64)])


@torch.no_grad()
def ais(model: RBM, betas: int | torch.Tensor, runs: int, generator: torch.Generator | None = None,
        progress: bool = True) -> tuple[float, float]:
    """(log Z estimate, stderr) by AIS from the base-rate RBM; betas: a count (beta_schedule) or [K + 1] 0..1."""
    betas = (beta_schedule(betas) if isinstance(betas, int) else torch.as_tensor(betas)).double().tolist()
    w, b, c, b_a = (t.detach().double() for t in (model.W, model.b, model.c, model.base_bias))
    v = (torch.rand(runs, len(b), generator=generator, dtype=torch.float64) < torch.sigmoid(b_a)).double()  # ~ p_0
    log_w = torch.zeros(runs, dtype=torch.float64)  # [R]
    bar = tqdm(range(1, len(betas)), desc=f"AIS: {len(betas) - 1} betas x {runs} runs", leave=False,
               disable=not progress)
    for k in bar:
        lo, hi = betas[k - 1], betas[k]
        a = v @ w.t() + c  # [R, H]
        log_w += (hi - lo) * (v @ (b - b_a)) + (F.softplus(hi * a) - F.softplus(lo * a)).sum(1)
        if k < len(betas) - 1:  # T_k: a Gibbs sweep that leaves p_k invariant
            h = (torch.rand(a.shape, generator=generator, dtype=a.dtype) < torch.sigmoid(hi * a)).double()
            p_v = torch.sigmoid((1 - hi) * b_a + hi * (b + h @ w))  # [R, V]
            v = (torch.rand(p_v.shape, generator=generator, dtype=a.dtype) < p_v).double()
    log_z0 = w.shape[0] * math.log(2) + F.softplus(b_a).sum().item()  # Z_0 = 2^H prod_i (1 + exp(b_A,i))
    estimate, stderr = (t.item() for t in log_mean_exp(log_w))  # [R] -> scalars
    return log_z0 + estimate, stderr


def log_partition(model: RBM) -> tuple[float, float]:
    """(log Z, stderr) by AIS with the config's betas and runs and seed 0, cached in the model's buffers."""
    if math.isnan(model.log_z.item()):
        log_z, stderr = ais(model, model.config.ais_betas, model.config.ais_runs, torch.Generator().manual_seed(0))
        model.log_z.fill_(log_z)
        model.log_z_stderr.fill_(stderr)
    return model.log_z.item(), model.log_z_stderr.item()


@torch.no_grad()
def exact_log_partition(model: RBM, chunk: int = 1 << 14) -> float:
    """log Z = log sum_h exp(c.h + sum_i softplus(b_i + (h W)_i)), enumerating all 2^H hidden states (H <= 24)."""
    hidden = model.config.hidden
    if hidden > 24:
        raise ValueError(f"enumerating 2^{hidden} hidden states is out of reach")
    w, b, c = (p.detach().double() for p in (model.W, model.b, model.c))
    bits = torch.arange(hidden)
    terms = []
    for start in range(0, 1 << hidden, chunk):
        codes = torch.arange(start, min(start + chunk, 1 << hidden))
        h = ((codes.unsqueeze(1) >> bits) & 1).double()  # [N, H]
        terms.append(torch.logsumexp(h @ c + F.softplus(h @ w + b).sum(1), 0))
    return torch.logsumexp(torch.stack(terms), 0).item()


def build(model_config: dict, split) -> RBM:
    """An RBM over `split`'s binary inputs, visible biases at the training pixels' smoothed log-odds."""
    if split.levels != 2:
        raise ValueError(f"an rbm models binary data (2 levels), got {split.levels} levels")
    x = torch.from_numpy(split.x_train).flatten(1).double()  # [N, V]
    mean = (x.sum(0) + 1) / (len(x) + 2)  # [V], Laplace-smoothed
    return RBM(RBMConfig(**model_config), split.shape, torch.logit(mean).float())


@torch.no_grad()
def sample_grid(model: RBM, generator: torch.Generator, n: int = 80) -> torch.Tensor:
    """n Gibbs chains of `sample_steps` sweeps from uniformly random images: [n, *shape] int64 in {0, 1}."""
    dtype = model.W.dtype
    v = (torch.rand(n, model.W.shape[1], generator=generator, dtype=dtype) < 0.5).to(dtype)  # [n, V]
    return model.run_chain(v, model.config.sample_steps, generator).long().view(n, *model.shape)


def evaluate_test(model: RBM, split) -> dict:
    """-log p(x) = F(x) + log Z per test input (float64, AIS's log Z), for training.evaluate."""
    model.eval()
    log_z, stderr = log_partition(model)
    with torch.no_grad():
        nll = free_energy(model, torch.from_numpy(split.x_test), torch.float64) + log_z  # [N]
    c = model.config
    return {"test_nll_per_example": nll.tolist(), "method": "ais", "test_log_partition": log_z,
            "test_log_partition_stderr": stderr, "test_free_energy_nats": (nll - log_z).mean().item(),
            "ais_runs": c.ais_runs, "ais_betas": c.ais_betas}


class GibbsStep(nn.Module):
    """One Gibbs sweep against the given uniforms: x, noise_h [B, H], noise_v [B, *shape], observed, mask ->
    next_x, with observed pixels kept where mask is 1."""

    def __init__(self, model: RBM):
        super().__init__()
        self.model = model

    def forward(self, x, noise_h, noise_v, observed, mask):
        v = self.model.gibbs(x.flatten(1).to(self.model.W.dtype), noise_h, noise_v.flatten(1))  # [B, V]
        return torch.where(mask == 1, observed, v.long().view_as(x))


class LogProb(nn.Module):
    """log p(x) = -F(x) - log Z, log Z a constant: x [B, *shape] -> [B]."""

    def __init__(self, model: RBM, log_z: float):
        super().__init__()
        self.model, self.log_z = model, log_z

    def forward(self, x):
        return -free_energy(self.model, x) - self.log_z


def exported_functions(model: RBM, split) -> tuple[dict, dict]:
    """(functions, capabilities) of docs/latent-variable-models.md; log Z from `log_partition`."""
    log_z, stderr = log_partition(model)
    b, h = 2, model.config.hidden
    x = torch.zeros(b, *model.shape, dtype=torch.long)
    step_inputs = {"x": x, "noise_h": torch.rand(b, h), "noise_v": torch.rand(b, *model.shape),
                   "observed": x, "mask": x}
    functions = {"gibbs_step": (GibbsStep(model), step_inputs, ["next_x"]),
                 "log_prob": (LogProb(model, log_z), {"x": x}, ["log_prob"])}
    chain = {"procedure": "markov_chain", "function": "gibbs_step", "steps": model.config.sample_steps,
             "max_steps": 10000, "noise": {"noise_h": {"distribution": "uniform", "shape": [h]},
                                           "noise_v": {"distribution": "uniform", "shape": list(model.shape)}}}
    capabilities = {"sample": chain, "complete": dict(chain),
                    "score": {"procedure": "direct", "function": "log_prob", "method": "ais",
                              "log_partition": log_z, "log_partition_stderr": stderr}}
    return functions, capabilities
