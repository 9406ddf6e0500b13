"""HVAE: a two-layer hierarchical VAE on binarized 28x28 images, the stacked model of Burda et al. 2016
("Importance Weighted Autoencoders") with a top-down inference order as in Sønderby et al. 2016 ("Ladder
Variational Autoencoders"), so that both KL terms are analytic.

Generative model:  p(z2) = N(0, I) over D2 latents, p(z1 | z2) = N(mu_p(z2), diag(exp(lv_p(z2)))) over D1,
                   p(x | z1) = prod_pixels Bernoulli(sigmoid(decoder(z1))) (the conv decoder of vae.py).
Inference model:   q(z2 | x) = N(mu_2(h), ...), q(z1 | x, z2) = N(mu_1(h, z2), ...), h = conv features of x.
The latent z = (z1, z2) is concatenated in that order, [B, D1 + D2], and so is the noise eps = (eps1, eps2).
Bounds in nats per image:
    ELBO(x)   = E_q[log p(x | z1) - KL(q(z1 | x, z2) || p(z1 | z2))] - KL(q(z2 | x) || p(z2))  (KLs analytic)
    IWAE_k(x) = log (1/k) sum_i p(x, z1_i, z2_i) / q(z1_i, z2_i | x)
Training: KL warm-up and free bits per latent dimension (both layers) as in vae.py, objective only.
The exported functions follow docs/latent-variable-models.md; complete_step is the pseudo-Gibbs step of
Rezende et al. 2014 ("Stochastic Backpropagation and Approximate Inference in Deep Generative Models").

Usage (mnist5k-binarized: x [B, 1, 28, 28] in {0, 1}):
    model = build({"z1": 32, "z2": 16, "channels": 32, "hidden": 256}, split)
    elbo(model, x); iwae(model, x, k=500)  # [B] nats; ([B], [B] standard error)
    model.encode(x)                        # (mean, std) [B, D1 + D2]: z2's from q(z2 | x), z1's from q(z1 | x, mean2)
    model.decode(z)                        # p(x = 1 | z1) [B, 1, 28, 28]; z2 only shapes z1's prior
"""

from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.distributions import bernoulli, gaussian
from training.families.vae import SIDE, kl_per_dim, log_mean_exp, reparameterize, test_bounds

K_SERVED, K_EVAL = 1000, 5000  # the served default IWAE k (anomaly calibration) and the reported bound's
STEP_OUTPUT = "next_x"  # complete_step's output: an ONNX graph cannot name an output like its input `x`
LAYERS = 2  # stochastic layers (z1, z2): the columns of log_weights_above


@dataclass
class HVAEConfig:
    z1: int = 32  # D1, the bottom latent (the decoder's input)
    z2: int = 16  # D2, the top latent
    channels: int = 32  # C: the convolutions' channels (C, then 2C), as in vae.py
    hidden: int = 256  # H: the encoder's feature size and the MLPs' width
    free_bits: float = 0.0  # nats per latent dimension, training objective only
    warmup_steps: int = 0  # linear KL warm-up over this many training steps (0: none)

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class HVAE(nn.Module):
    def __init__(self, config: HVAEConfig):
        super().__init__()
        self.config = c = config
        s = SIDE // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c.channels, 4, 2, 1), nn.ReLU(),  # [B, C, 14, 14]
            nn.Conv2d(c.channels, 2 * c.channels, 4, 2, 1), nn.ReLU(),  # [B, 2C, 7, 7]
            nn.Flatten(), nn.Linear(2 * c.channels * s * s, c.hidden), nn.ReLU())  # h [B, H]
        self.q2 = nn.Linear(c.hidden, 2 * c.z2)  # h -> q(z2 | x)'s (mean, log_var)
        self.q1 = mlp(c.hidden + c.z2, c.hidden, 2 * c.z1)  # (h, z2) -> q(z1 | x, z2)'s
        self.p1 = mlp(c.z2, c.hidden, 2 * c.z1)  # z2 -> p(z1 | z2)'s
        self.decoder = nn.Sequential(
            nn.Linear(c.z1, 2 * c.channels * s * s), nn.ReLU(), nn.Unflatten(1, (2 * c.channels, s, s)),
            nn.ConvTranspose2d(2 * c.channels, c.channels, 4, 2, 1), nn.ReLU(),  # [B, C, 14, 14]
            nn.ConvTranspose2d(c.channels, 1, 4, 2, 1))  # [B, 1, 28, 28] logits
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps, for warm-up

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[-1].weight.dtype

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, 28, 28] in {0, 1} -> h [B, H]."""
        return self.encoder(x.to(self.dtype))

    def posterior2(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, H] -> q(z2 | x)'s (mean, log_var), [B, D2] each."""
        return self.q2(h).chunk(2, dim=-1)

    def posterior1(self, h: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, H], z2 [..., B, D2] -> q(z1 | x, z2)'s (mean, log_var), [..., B, D1] each."""
        return self.q1(torch.cat([h.expand(*z2.shape[:-1], h.shape[-1]), z2], dim=-1)).chunk(2, dim=-1)

    def prior1(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z2 [..., D2] -> p(z1 | z2)'s (mean, log_var), [..., D1] each."""
        return self.p1(z2).chunk(2, dim=-1)

    def infer(self, x: torch.Tensor, eps: torch.Tensor):
        """x [B, 1, 28, 28], eps [..., B, D1 + D2] -> z1 [..., B, D1], z2 [..., B, D2] ~ q(z | x), and
        q's moments (mean1, log_var1) [..., B, D1], (mean2, log_var2) [B, D2]."""
        eps1, eps2 = eps.split([self.config.z1, self.config.z2], dim=-1)
        h = self.features(x)  # [B, H]
        mean2, log_var2 = self.posterior2(h)
        z2 = reparameterize(mean2, log_var2, eps2)
        mean1, log_var1 = self.posterior1(h, z2)
        return reparameterize(mean1, log_var1, eps1), z2, (mean1, log_var1), (mean2, log_var2)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] -> (mean, std) [B, D1 + D2]: q(z2 | x)'s, and q(z1 | x, z2 = mean2)'s for z1."""
        h = self.features(x)
        mean2, log_var2 = self.posterior2(h)
        mean1, log_var1 = self.posterior1(h, mean2)
        return torch.cat([mean1, mean2], dim=-1), torch.exp(0.5 * torch.cat([log_var1, log_var2], dim=-1))

    def logits(self, z1: torch.Tensor) -> torch.Tensor:
        """z1 [..., D1] -> Bernoulli logits [..., 1, 28, 28]."""
        return self.decoder(z1.reshape(-1, z1.shape[-1])).unflatten(0, z1.shape[:-1])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D1 + D2] -> p(x = 1 | z1) [B, 1, 28, 28]; z2 is ignored (it only shapes z1's prior)."""
        return torch.sigmoid(self.logits(z[:, : self.config.z1]))

    def log_likelihood(self, x: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """log p(x | z1): x [B, 1, 28, 28], z1 [..., B, D1] -> [..., B]."""
        logits = self.logits(z1)
        return bernoulli.log_prob(logits, x.expand_as(logits)).sum(dim=(-3, -2, -1))

    def generate(self, eps: torch.Tensor, noise: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """Ancestral sampling: eps [B, D1 + D2], noise [B, 1, 28, 28] uniform, temperature [B] -> x int64."""
        eps1, eps2 = eps.split([self.config.z1, self.config.z2], dim=-1)
        t = temperature.unsqueeze(-1)  # [B, 1]
        z2 = t * eps2
        mean1, log_var1 = self.prior1(z2)
        z1 = mean1 + t * torch.exp(0.5 * log_var1) * eps1
        return bernoulli.sample(self.logits(z1), noise, torch.ones((), dtype=noise.dtype))

    def beta(self) -> float:
        """The KL weight of the training objective now: linear warm-up to 1."""
        w = self.config.warmup_steps
        return 1.0 if w <= 0 else min(1.0, self.steps.item() / w)


def gaussian_kl(mean_q, log_var_q, mean_p, log_var_p) -> torch.Tensor:
    """KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) per dimension, analytic: [..., D]."""
    return 0.5 * (log_var_p - log_var_q + (log_var_q.exp() + (mean_q - mean_p).square()) / log_var_p.exp() - 1.0)


def elbo_terms(model: HVAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One z per image (eps [B, D1 + D2]) -> (log p(x | z1) [B], analytic KL per latent [B, D1 + D2])."""
    z1, z2, (mean1, log_var1), (mean2, log_var2) = model.infer(x, eps)
    kl1 = gaussian_kl(mean1, log_var1, *model.prior1(z2))  # [B, D1], given z2
    return model.log_likelihood(x, z1), torch.cat([kl1, kl_per_dim(mean2, log_var2)], dim=-1)


def draw_eps(model: HVAE, shape: tuple, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise [*shape, D1 + D2] in the model's dtype."""
    return torch.randn(*shape, model.config.z1 + model.config.z2, generator=generator, dtype=model.dtype)


def objective(model: HVAE, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over the batch of -log p(x | z1) + beta * sum_d max(free_bits, batch-mean KL_d), a scalar."""
    log_px, kl = elbo_terms(model, x, draw_eps(model, (len(x),), generator))
    return -log_px.mean() + beta * kl.mean(dim=0).clamp(min=free_bits).sum()


def loss(model: HVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Train mode: the warmed-up, free-bits objective (and one more step counted); eval mode: -ELBO. y is unused."""
    if not model.training:
        return -elbo(model, x).mean()
    beta = model.beta()
    model.steps += 1
    return objective(model, x, beta, model.config.free_bits)


def elbo(model: HVAE, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ELBO with one reparameterised z per image and analytic KLs: x [B, 1, 28, 28] -> [B] nats."""
    log_px, kl = elbo_terms(model, x, draw_eps(model, (len(x),), generator))
    return log_px - kl.sum(dim=-1)


def log_weights(model: HVAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x, z1, z2) - log q(z1, z2 | x) at the z of eps: x [B, 1, 28, 28], eps [..., B, D1 + D2] -> [..., B]."""
    z1, z2, (mean1, log_var1), (mean2, log_var2) = model.infer(x, eps)
    prior_mean1, prior_log_var1 = model.prior1(z2)
    zeros = torch.zeros_like(z2)
    log_p1 = gaussian.log_prob(prior_mean1, 0.5 * prior_log_var1, z1).sum(-1)  # [..., B]
    log_p2 = gaussian.log_prob(zeros, zeros, z2).sum(-1)
    log_q1 = gaussian.log_prob(mean1, 0.5 * log_var1, z1).sum(-1)
    log_q2 = gaussian.log_prob(mean2, 0.5 * log_var2, z2).sum(-1)
    return model.log_likelihood(x, z1) + log_p1 + log_p2 - log_q1 - log_q2


def log_weights_above(model: HVAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The log-weights of Havtorn et al. 2021's bounds L^{>k} ("Hierarchical VAEs Know What They Don't Know"),
    where the k lowest latent layers are drawn from the conditional prior instead of q, for k = 0..LAYERS - 1:
    x [B, 1, 28, 28], eps [..., B, D1 + D2] -> [..., B, LAYERS]. Column 0 is log_weights (the full bound's).
    Column 1 draws z2 ~ q(z2 | x) and z1 ~ p(z1 | z2) from the same eps; p(z1 | z2) is both in the joint and
    in the proposal, so its log-weight is log p(x | z1) + log p(z2) - log q(z2 | x)."""
    eps1, eps2 = eps.split([model.config.z1, model.config.z2], dim=-1)
    mean2, log_var2 = model.posterior2(model.features(x))
    z2 = reparameterize(mean2, log_var2, eps2)  # [..., B, D2]
    z1 = reparameterize(*model.prior1(z2), eps1)  # [..., B, D1]
    zeros = torch.zeros_like(z2)
    above1 = (model.log_likelihood(x, z1) + gaussian.log_prob(zeros, zeros, z2).sum(-1)
              - gaussian.log_prob(mean2, 0.5 * log_var2, z2).sum(-1))
    return torch.stack([log_weights(model, x, eps), above1], dim=-1)


@torch.no_grad()
def iwae(model: HVAE, x: torch.Tensor, k: int, chunk: int = 100,
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IWAE_k bound and its standard error: x [B, 1, 28, 28] -> ([B], [B]) nats; all noise is drawn first,
    so the result does not depend on `chunk` under the same generator."""
    eps = draw_eps(model, (k, len(x)), generator)  # [k, B, D]
    return log_mean_exp(torch.cat([log_weights(model, x, e) for e in eps.split(chunk)]))


def evaluate_test(model: HVAE, split, served_k: int = K_SERVED, eval_k: int = K_EVAL) -> dict:
    """The test split's negative ELBO and IWAE bounds, as the one-layer VAE reports them (vae.test_bounds)."""
    model.eval()
    return test_bounds(lambda x, eps: log_weights(model, x, eps), split.x_test,
                       model.config.z1 + model.config.z2, served_k, eval_k, model.dtype)


def build(model_config: dict, split) -> HVAE:
    """An HVAE for `split`'s binarized 28x28 images with `model_config` hyper-parameters."""
    if split.levels != 2 or tuple(split.shape) != (1, SIDE, SIDE):
        raise ValueError(f"hvae needs binarized 1x{SIDE}x{SIDE} images, got levels {split.levels}, {split.shape}")
    return HVAE(HVAEConfig(**model_config))


@torch.no_grad()
def sample_grid(model: HVAE, generator: torch.Generator, n: int = 80) -> torch.Tensor:
    """n ancestral samples z2, z1, x: [n, 1, 28, 28] int64 in {0, 1}."""
    eps = draw_eps(model, (n,), generator)
    noise = torch.rand(n, 1, SIDE, SIDE, generator=generator, dtype=model.dtype)
    return model.generate(eps, noise, torch.ones(n, dtype=model.dtype))


def complete_step(model: HVAE, x, eps, noise, observed, mask) -> torch.Tensor:
    """One pseudo-Gibbs step: z ~ q(z | x) with eps [B, D], x' ~ p(x | z1) with noise
    [B, 1, 28, 28], then observed where mask == 1: int64 [B, 1, 28, 28]."""
    z1 = model.infer(x, eps)[0]
    x_new = bernoulli.sample(model.logits(z1), noise, torch.ones((), dtype=noise.dtype))
    return torch.where(mask == 1, observed, x_new)


class Function(nn.Module):
    """An exported function: forward(*inputs) = fn(model, *inputs)."""

    def __init__(self, model: HVAE, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs):
        return self.fn(self.model, *inputs)


def exported_functions(model: HVAE, split) -> tuple[dict, dict]:
    """(functions, capabilities) per docs/latent-variable-models.md; each function is (module, example inputs,
    output names). z, eps = (z1, z2) / (eps1, eps2), [B, D1 + D2]."""
    b, d = 2, model.config.z1 + model.config.z2
    x = torch.zeros(b, 1, SIDE, SIDE, dtype=torch.long)
    eps, noise = torch.zeros(b, d), torch.rand(b, 1, SIDE, SIDE)
    functions = {
        "encode": (Function(model, HVAE.encode), {"x": x}, ["mean", "std"]),
        "decode": (Function(model, HVAE.decode), {"z": torch.zeros(b, d)}, ["mean"]),
        "sample": (Function(model, HVAE.generate), {"eps": eps, "noise": noise, "temperature": torch.ones(b)},
                   ["x"]),
        "log_weight": (Function(model, log_weights), {"x": x, "eps": eps}, ["log_weight"]),
        "complete_step": (Function(model, complete_step), {"x": x, "eps": eps, "noise": noise,
                                                            "observed": x.clone(), "mask": x.clone()}, [STEP_OUTPUT]),
        "log_weight_above": (Function(model, log_weights_above), {"x": x, "eps": eps}, ["log_weight"]),
    }
    eps_spec = {"distribution": "normal", "shape": [d]}
    noise_spec = {"eps": eps_spec, "noise": {"distribution": "uniform", "shape": [1, SIDE, SIDE]}}
    capabilities = {
        "sample": {"procedure": "ancestral", "function": "sample", "noise": noise_spec},
        "encode": {"procedure": "direct", "function": "encode"},
        "decode": {"procedure": "direct", "function": "decode"},
        "score": {"procedure": "importance", "function": "log_weight", "methods": ["iwae", "elbo"],
                  "method": "iwae", "k": K_SERVED, "max_k": K_EVAL, "noise": {"eps": eps_spec},
                  "hierarchy": {"function": "log_weight_above", "layers": LAYERS}},
        "complete": {"procedure": "markov_chain", "function": "complete_step", "steps": 50, "max_steps": 1000,
                     "noise": noise_spec},
    }
    return functions, capabilities
