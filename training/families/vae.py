"""VAE: a convolutional variational auto-encoder on binarized 28x28 images (Kingma & Welling 2014,
"Auto-Encoding Variational Bayes"), scored with the importance-weighted bound of Burda et al. 2016
("Importance Weighted Autoencoders").

p(z) = N(0, I) over D latents, p(x | z) = prod_pixels Bernoulli(sigmoid(decoder(z))) and
q(z | x) = N(mean(x), diag(exp(log_var(x)))). All bounds are in nats per image:
    ELBO(x)   = E_q[log p(x | z)] - KL(q(z | x) || p(z))        (KL analytic, one z per image)
    IWAE_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i | x),  z_i ~ q  (ELBO <= E IWAE_k <= log p(x))

Training minimises the negative ELBO with two optional changes to the objective only, never to the
reported bounds: KL warm-up (Bowman et al. 2016), beta = min(1, steps / warmup_steps) over training
steps, and free bits (Kingma et al. 2016): each latent's batch-mean KL is clamped below at free_bits nats.
In eval mode `loss` is the plain negative ELBO, which train.py reports as the test NLL.

Usage (mnist5k-binarized: x [B, 1, 28, 28] in {0, 1}):
    model = build({"latent": 32, "channels": 32}, split)
    elbo(model, x)                        # [B] nats
    iwae(model, x, k=500, chunk=100)      # ([B] nats, [B] standard error)
    model.encode(x)                       # (mean, std) [B, D] each
    model.decode(z)                       # z [B, D] -> p(x = 1 | z) [B, 1, 28, 28]
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.distributions import bernoulli, gaussian

SIDE = 28  # image height = width; two stride-2 convolutions take it to 7


@dataclass
class VAEConfig:
    latent: int = 32  # D
    channels: int = 32  # C: the first conv's channels; the second has 2C
    free_bits: float = 0.0  # nats per latent dimension, training objective only
    warmup_steps: int = 0  # linear KL warm-up over this many training steps (0: none)

    def to_dict(self) -> dict:
        return asdict(self)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = c = config
        s = SIDE // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c.channels, 4, 2, 1), nn.ReLU(),  # [B, C, 14, 14]
            nn.Conv2d(c.channels, 2 * c.channels, 4, 2, 1), nn.ReLU(),  # [B, 2C, 7, 7]
            nn.Flatten(), nn.Linear(2 * c.channels * s * s, 2 * c.latent))  # [B, 2D]
        self.decoder = nn.Sequential(
            nn.Linear(c.latent, 2 * c.channels * s * s), nn.ReLU(), nn.Unflatten(1, (2 * c.channels, s, s)),
            nn.ConvTranspose2d(2 * c.channels, c.channels, 4, 2, 1), nn.ReLU(),  # [B, C, 14, 14]
            nn.ConvTranspose2d(c.channels, 1, 4, 2, 1))  # [B, 1, 28, 28] logits
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps, for warm-up

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] in {0, 1} -> q(z | x)'s (mean, log_var), [B, D] each."""
        mean, log_var = self.encoder(x.to(self.decoder[-1].weight.dtype)).chunk(2, dim=1)
        return mean, log_var

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] -> (mean, std) of q(z | x), [B, D] each."""
        mean, log_var = self.posterior(x)
        return mean, torch.exp(0.5 * log_var)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> Bernoulli logits [B, 1, 28, 28]."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> p(x = 1 | z) [B, 1, 28, 28]."""
        return torch.sigmoid(self.logits(z))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z): x [B, 1, 28, 28], z [B, D] -> [B]."""
        return bernoulli.log_prob(self.logits(z), x).sum(dim=(1, 2, 3))

    def beta(self) -> float:
        """The KL weight of the training objective now: linear warm-up to 1."""
        w = self.config.warmup_steps
        return 1.0 if w <= 0 else min(1.0, self.steps.item() / w)


def kl_per_dim(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, 1)) per dimension, analytic: [B, D] -> [B, D]."""
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var)


def reparameterize(mean, log_var, eps: torch.Tensor) -> torch.Tensor:
    """mean, log_var [B, D], eps [..., B, D] standard normal -> z [..., B, D]."""
    return mean + torch.exp(0.5 * log_var) * eps


def objective(model: VAE, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over the batch of -E_q log p(x | z) + beta * sum_d max(free_bits, batch-mean KL_d), a scalar.

    beta = 1, free_bits = 0 is the mean negative ELBO; free_bits > 0 can only raise it.
    """
    mean, log_var = model.posterior(x)  # [B, D] each
    z = reparameterize(mean, log_var, torch.randn(mean.shape, generator=generator, dtype=mean.dtype))
    kl = kl_per_dim(mean, log_var).mean(dim=0).clamp(min=free_bits).sum()
    return -model.log_likelihood(x, z).mean() + beta * kl


def loss(model: VAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Train mode: the warmed-up, free-bits objective (and one more step counted); eval mode: -ELBO. y is unused."""
    if not model.training:
        return -elbo(model, x).mean()
    beta = model.beta()
    model.steps += 1
    return objective(model, x, beta, model.config.free_bits)


def elbo(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ELBO with one reparameterised z per image and the analytic KL: x [B, 1, 28, 28] -> [B] nats."""
    mean, log_var = model.posterior(x)  # [B, D] each
    z = reparameterize(mean, log_var, torch.randn(mean.shape, generator=generator, dtype=mean.dtype))
    return model.log_likelihood(x, z) - kl_per_dim(mean, log_var).sum(dim=1)


def log_weights(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x, z) - log q(z | x) at z = mean + std * eps: x [B, 1, 28, 28], eps [S, B, D] -> [S, B]."""
    mean, log_var = model.posterior(x)  # [B, D] each
    z = reparameterize(mean, log_var, eps)  # [S, B, D]
    s, b, d = z.shape
    xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])  # [S * B, 1, 28, 28]
    log_px = model.log_likelihood(xs, z.reshape(s * b, d)).view(s, b)
    zeros = torch.zeros_like(z)
    log_pz = gaussian.log_prob(zeros, zeros, z).sum(dim=-1)  # [S, B]
    log_qz = gaussian.log_prob(mean, 0.5 * log_var, z).sum(dim=-1)  # [S, B]
    return log_px + log_pz - log_qz


@torch.no_grad()
def iwae(model: VAE, x: torch.Tensor, k: int, chunk: int = 100,
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IWAE_k bound and its delta-method standard error: x [B, 1, 28, 28] -> ([B], [B]) nats.

    The decoder sees at most chunk * B images at once; all noise eps [k, B, D] is drawn first, so the
    result does not depend on `chunk` under the same generator.
    """
    dtype = model.decoder[-1].weight.dtype
    eps = torch.randn(k, len(x), model.config.latent, generator=generator, dtype=dtype)  # [k, B, D]
    log_w = torch.cat([log_weights(model, x, e) for e in eps.split(chunk)])  # [k, B]
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # [B]
    # se(log mean w) ~ std(w) / (sqrt(k) mean w), with w normalised by its mean in log space
    normalised = torch.exp(log_w - bound)  # [k, B], mean 1
    std = normalised.std(dim=0) if k > 1 else torch.zeros_like(bound)
    return bound, std / math.sqrt(k)


def build(model_config: dict, split) -> VAE:
    """A VAE for `split`'s binarized 28x28 images with `model_config` hyper-parameters."""
    if split.levels != 2 or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"vae needs binarized 1x{SIDE}x{SIDE} images, got levels {split.levels}, {split.shape}")
    return VAE(VAEConfig(**model_config))


@torch.no_grad()
def sample_grid(model: VAE, generator: torch.Generator, n: int = 80) -> torch.Tensor:
    """n ancestral samples, z ~ N(0, I) then a Bernoulli draw per pixel: [n, 1, 28, 28] int64 in {0, 1}."""
    dtype = model.decoder[-1].weight.dtype
    z = torch.randn(n, model.config.latent, generator=generator, dtype=dtype)  # [n, D]
    u = torch.rand(n, 1, SIDE, SIDE, generator=generator, dtype=dtype)
    return bernoulli.sample(model.logits(z), u, torch.ones((), dtype=dtype))
