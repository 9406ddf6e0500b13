"""VAE: a convolutional variational auto-encoder on 28x28 images (Kingma & Welling 2014, "Auto-Encoding
Variational Bayes"), scored with the importance-weighted bound of Burda et al. 2016 ("Importance Weighted
Autoencoders"), with optional flow posteriors: planar (Rezende & Mohamed 2015, "Variational Inference with
Normalizing Flows") or inverse autoregressive (Kingma et al. 2016, "Improved Variational Inference with
Inverse Autoregressive Flow").

p(z) = N(0, I) over D latents; p(x | z) is a Bernoulli per pixel (binarized images, `decoder: bernoulli`) or
a discretized mixture of logistics per pixel (256 levels, `decoder: logistic`); q(z | x) is
N(mean(x), diag(exp(log_var(x)))), or that Gaussian pushed through K planar or IAF steps whose parameters
(planar, through a linear map) or context (IAF) come from a context h that the encoder also outputs.
All bounds are in nats per image:
    ELBO(x)   = E_q[log p(x | z)] - KL(q(z | x) || p(z))        (KL analytic for a Gaussian q, one z per image)
    IWAE_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i | x),  z_i ~ q  (ELBO <= E IWAE_k <= log p(x))

Training minimises the negative ELBO with two optional changes to the objective only, never to the
reported bounds: KL warm-up (Bowman et al. 2016), beta = min(1, steps / warmup_steps) over training
steps, and free bits (Kingma et al. 2016): each latent's batch-mean KL is clamped below at free_bits nats
(with a flow posterior, whose KL is a one-sample estimate, the total is clamped at D * free_bits).
In eval mode `loss` is the plain negative ELBO, which train.py reports as the test NLL.

Usage (mnist5k-binarized: x [B, 1, 28, 28] in {0, 1}; mnist5k with `decoder: logistic`):
    model = build({"latent": 32, "channels": 32}, split)
    elbo(model, x)                        # [B] nats
    iwae(model, x, k=500, chunk=100)      # ([B] nats, [B] standard error)
    model.encode(x)                       # (mean, std) [B, D] each
    model.decode(z)                       # z [B, D] -> E[x | z] in level units [B, 1, 28, 28]
The exported functions and capabilities follow docs/latent-variable-models.md.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.distributions import bernoulli, gaussian, logistic_mixture
from training.nn import flows

SIDE = 28  # image height = width; two stride-2 convolutions take it to 7


@dataclass
class VAEConfig:
    latent: int = 32  # D
    channels: int = 32  # C: the first conv's channels; the second has 2C
    free_bits: float = 0.0  # nats per latent dimension, training objective only
    warmup_steps: int = 0  # linear KL warm-up over this many training steps (0: none)
    decoder: str = "bernoulli"  # or "logistic": a discretized logistic mixture over 256 levels
    components: int = 5  # logistic mixture components per pixel
    posterior: str = "gaussian"  # or "planar" or "iaf": flow steps after the Gaussian
    flow_steps: int = 0  # K
    flow_hidden: int = 128  # the flow's context h from the encoder; IAF: also MADE's hidden units
    refine_lr: float = 1e-2  # served refinement: the gradient-ascent step on (mean, log std)
    served_k: int = 1000  # importance samples of the served default score, which calibrates anomalies
    eval_k: int = 5000  # importance samples of the reported test bound, and the most a request may ask

    def to_dict(self) -> dict:
        return asdict(self)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = c = config
        if c.decoder not in ("bernoulli", "logistic") or c.posterior not in ("gaussian", "planar", "iaf"):
            raise ValueError(f"decoder must be bernoulli or logistic, posterior gaussian, planar or iaf; got {c}")
        s, d = SIDE // 4, c.latent
        extra = 0 if c.posterior == "gaussian" else c.flow_hidden  # the flow's context h
        out = 1 if c.decoder == "bernoulli" else 3 * c.components
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c.channels, 4, 2, 1), nn.ReLU(),  # [B, C, 14, 14]
            nn.Conv2d(c.channels, 2 * c.channels, 4, 2, 1), nn.ReLU(),  # [B, 2C, 7, 7]
            nn.Flatten(), nn.Linear(2 * c.channels * s * s, 2 * d + extra))  # [B, 2D + E]
        self.decoder = nn.Sequential(
            nn.Linear(d, 2 * c.channels * s * s), nn.ReLU(), nn.Unflatten(1, (2 * c.channels, s, s)),
            nn.ConvTranspose2d(2 * c.channels, c.channels, 4, 2, 1), nn.ReLU(),  # [B, C, 14, 14]
            nn.ConvTranspose2d(c.channels, out, 4, 2, 1))  # [B, 1 or 3K, 28, 28]: logits or mixture params
        if c.posterior == "planar":  # h -> K planar steps' (u, w, b)
            self.planar = nn.Linear(c.flow_hidden, c.flow_steps * (2 * d + 1))
        self.iaf = nn.ModuleList(flows.IAFStep(d, c.flow_hidden, c.flow_hidden, "natural" if k % 2 == 0 else "reversed")
                                 for k in range(c.flow_steps if c.posterior == "iaf" else 0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps, for warm-up

    @property
    def levels(self) -> int:
        return 2 if self.config.decoder == "bernoulli" else 256

    def encode_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] levels -> q0's (mean, log_var) [B, D] each, and the flow's context h [B, E]."""
        d = self.config.latent
        h = self.encoder(x.to(self.decoder[-1].weight.dtype) / (self.levels - 1))
        return h[:, :d], h[:, d: 2 * d], h[:, 2 * d:]

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] -> the Gaussian q0(z | x)'s (mean, log_var), [B, D] each."""
        mean, log_var, _ = self.encode_all(x)
        return mean, log_var

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] -> (mean, std) of q0(z | x), [B, D] each."""
        mean, log_var = self.posterior(x)
        return mean, torch.exp(0.5 * log_var)

    def flow(self, z0: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z0 [S, B, D] from q0, context [B, E] -> (z_K [S, B, D], sum of log|det| [S, B])."""
        log_det = torch.zeros(z0.shape[:-1], dtype=z0.dtype)
        z, d = z0, self.config.latent
        if self.config.posterior == "planar":
            for u, w, b in (p.split([d, d, 1], dim=1) for p in self.planar(context).split(2 * d + 1, dim=1)):
                z, ld = flows.planar(z, u, w, b)
                log_det = log_det + ld
        for step in self.iaf:
            z, ld = step(z, context.expand(*z.shape[:-1], context.shape[-1]))
            log_det = log_det + ld
        return z, log_det

    def params(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> p(x | z)'s parameters [B, 1, 28, 28, P]: a logit (P = 1) or mixture params (P = 3K)."""
        return self.decoder(z).permute(0, 2, 3, 1).unsqueeze(1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z): x [B, 1, 28, 28], z [B, D] -> [B]."""
        params = self.params(z)
        log_p = bernoulli.log_prob(params.squeeze(-1), x) if self.config.decoder == "bernoulli" \
            else logistic_mixture.log_prob(params, x, self.levels)
        return log_p.sum(dim=(1, 2, 3))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> E[x | z] in level units [B, 1, 28, 28] (binary: p(x = 1 | z)), exact over every level."""
        params = self.params(z)
        if self.config.decoder == "bernoulli":
            return torch.sigmoid(params.squeeze(-1))
        values = torch.arange(self.levels).view(-1, 1, 1, 1, 1)  # [L, 1, 1, 1, 1], broadcast over the batch
        log_p = logistic_mixture.log_prob(params.unsqueeze(0), values, self.levels)  # [L, B, 1, 28, 28]
        return (log_p.exp() * values.to(log_p.dtype)).sum(0)

    def sample_x(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x ~ p(x | z) by inverse CDF: z [B, D], u uniform [B, 1, 28, 28, P'] (P' = 1 or 2) -> int64 levels."""
        params, one = self.params(z), torch.ones((), dtype=u.dtype)
        if self.config.decoder == "bernoulli":
            return bernoulli.sample(params.squeeze(-1), u.squeeze(-1), one)
        return logistic_mixture.sample(params, u, one, self.levels)

    def noise_shape(self) -> list[int]:
        """The uniforms one image's x ~ p(x | z) takes."""
        return [1, SIDE, SIDE, 1 if self.config.decoder == "bernoulli" else 2]

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


def latent_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z ~ q(z | x) at eps [S, B, D] -> (z_K [S, B, D], log p(z_K) - log q(z_K | x) [S, B], log p(x | z_K) [S, B])."""
    mean, log_var, context = model.encode_all(x)  # [B, D], [B, D], [B, E]
    z0 = reparameterize(mean, log_var, eps)  # [S, B, D]
    z, log_det = model.flow(z0, context)
    log_pz = gaussian.log_prob(torch.zeros_like(z), torch.zeros_like(z), z).sum(dim=-1)  # [S, B]
    log_qz = gaussian.log_prob(mean, 0.5 * log_var, z0).sum(dim=-1) - log_det  # [S, B]
    s, b, d = z.shape
    xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])  # [S * B, 1, 28, 28]
    return z, log_pz - log_qz, model.log_likelihood(xs, z.reshape(s * b, d)).view(s, b)


def objective(model: VAE, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over the batch of -E_q log p(x | z) + beta * max(free bits, batch-mean KL), a scalar.

    A Gaussian q clamps each latent's analytic KL at free_bits; a flow q its one-sample KL at D * free_bits.
    beta = 1, free_bits = 0 is the mean negative ELBO; free_bits > 0 can only raise it.
    """
    if model.config.posterior != "gaussian":
        eps = torch.randn(1, len(x), model.config.latent, generator=generator, dtype=model.decoder[-1].weight.dtype)
        _, log_ratio, log_px = latent_terms(model, x, eps)  # [1, B] each
        kl = (-log_ratio).mean().clamp(min=free_bits * model.config.latent)
        return -log_px.mean() + beta * kl
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
    """The ELBO with one reparameterised z per image (the KL analytic for a Gaussian q): x [B, ...] -> [B] nats."""
    if model.config.posterior != "gaussian":
        eps = torch.randn(1, len(x), model.config.latent, generator=generator, dtype=model.decoder[-1].weight.dtype)
        return log_weights(model, x, eps)[0]
    mean, log_var = model.posterior(x)  # [B, D] each
    z = reparameterize(mean, log_var, torch.randn(mean.shape, generator=generator, dtype=mean.dtype))
    return model.log_likelihood(x, z) - kl_per_dim(mean, log_var).sum(dim=1)


def log_weights(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x, z) - log q(z | x) at z = flow(mean + std * eps): x [B, 1, 28, 28], eps [S, B, D] -> [S, B]."""
    _, log_ratio, log_px = latent_terms(model, x, eps)
    return log_px + log_ratio


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
    return log_mean_exp(log_w)


def log_mean_exp(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k log-weights [k, B] -> (log mean w [B], its delta-method standard error std(w) / (sqrt(k) mean w) [B])."""
    k = len(log_w)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # [B]
    normalised = torch.exp(log_w - bound)  # [k, B], mean 1
    std = normalised.std(dim=0) if k > 1 else torch.zeros_like(bound)
    return bound, std / math.sqrt(k)


def build(model_config: dict, split) -> VAE:
    """A VAE for `split`'s 28x28 images: binarized with a Bernoulli decoder, 256 levels with a logistic one."""
    model = VAE(VAEConfig(**model_config))
    if split.levels != model.levels or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"a {model.config.decoder} vae needs 1x{SIDE}x{SIDE} images of {model.levels} levels, "
                         f"got levels {split.levels}, {split.shape}")
    return model


@torch.no_grad()
def sample_grid(model: VAE, generator: torch.Generator, n: int = 80) -> torch.Tensor:
    """n ancestral samples, z ~ N(0, I) then x ~ p(x | z): [n, 1, 28, 28] int64 levels."""
    dtype = model.decoder[-1].weight.dtype
    z = torch.randn(n, model.config.latent, generator=generator, dtype=dtype)  # [n, D]
    return model.sample_x(z, torch.rand(n, *model.noise_shape(), generator=generator, dtype=dtype))


@torch.no_grad()
def test_bounds(log_weights_of, x_test, latent: int, served_k: int, eval_k: int, dtype: torch.dtype = torch.float32,
                images: int = 10) -> dict:
    """eval_k log-weights per test image, once: -IWAE_served_k per image (the anomaly calibration), and the
    mean negative ELBO, IWAE_served_k and IWAE_eval_k. log_weights_of(x [B, ...], eps [S, B, D]) -> [S, B]."""
    generator, per_image, sums = torch.Generator().manual_seed(0), [], {"elbo": 0.0, "served": 0.0, "eval": 0.0}
    for i in tqdm(range(0, len(x_test), images), desc=f"IWAE-{eval_k} of the test set", leave=False):
        x = torch.from_numpy(x_test[i: i + images]).long()
        eps = torch.randn(eval_k, len(x), latent, generator=generator, dtype=dtype)  # [k, B, D]
        log_w = torch.cat([log_weights_of(x, e) for e in eps.split(500)]).double()  # [k, B]
        served = log_mean_exp(log_w[:served_k])[0]
        per_image.append(-served)
        sums["elbo"] -= log_w.mean(0).sum().item()
        sums["served"] -= served.sum().item()
        sums["eval"] -= log_mean_exp(log_w)[0].sum().item()
    n = len(x_test)
    return {"test_nll_per_example": torch.cat(per_image).tolist(), "method": "iwae", "k": served_k,
            "test_elbo_nats": sums["elbo"] / n, "test_iwae_served_k_nats": sums["served"] / n,
            "test_iwae_eval_k_nats": sums["eval"] / n, "served_k": served_k, "eval_k": eval_k}


def evaluate_test(model: VAE, split) -> dict:
    """The test split's negative ELBO and IWAE bounds (see test_bounds), for training.evaluate."""
    model.eval()
    c = model.config
    return test_bounds(lambda x, eps: log_weights(model, x, eps), split.x_test, c.latent, c.served_k, c.eval_k,
                       model.decoder[-1].weight.dtype)


def decoder_vjp(model: VAE, z: torch.Tensor, grad_logits: torch.Tensor) -> torch.Tensor:
    """d <grad_logits, logits(z)> / dz by hand, so that it exports to ONNX: z [N, D], grad [N, 1, 28, 28] -> [N, D].

    The adjoint of a transposed convolution is the convolution with the same weight."""
    linear, _, unflatten, up1, _, up2 = model.decoder
    a1 = linear(z)  # [N, 2C * 49]
    a2 = up1(unflatten(F.relu(a1)))  # [N, C, 14, 14]
    g = F.conv2d(grad_logits, up2.weight, stride=2, padding=1) * (a2 > 0)  # [N, C, 14, 14]
    g = F.conv2d(g, up1.weight, stride=2, padding=1).flatten(1) * (a1 > 0)  # [N, 2C * 49]
    return g @ linear.weight  # [N, D]


def elbo_gradients(model: VAE, x, mean, std, eps) -> tuple[torch.Tensor, torch.Tensor]:
    """A Monte Carlo ELBO's gradient over q's (mean, log std), by hand so that it exports to ONNX (Bernoulli
    decoder, Gaussian q): x [B, 1, 28, 28], mean [B, D], std [B, D], eps [B, S, D] -> ([B, D], [B, D])."""
    b, s, d = eps.shape
    z = (mean.unsqueeze(1) + std.unsqueeze(1) * eps).reshape(b * s, d)  # [B * S, D]
    xs = x.unsqueeze(1).expand(b, s, *x.shape[1:]).reshape(b * s, *x.shape[1:]).to(z.dtype)
    grad_z = decoder_vjp(model, z, xs - torch.sigmoid(model.decoder(z))).view(b, s, d)
    grad_mean = grad_z.mean(1) - mean  # the KL's gradient is analytic
    grad_log_std = (grad_z * eps).mean(1) * std + 1.0 - std.square()
    return grad_mean, grad_log_std


class RefineStep(nn.Module):
    """One gradient-ascent step on a Monte Carlo ELBO over q's (mean, log std) (Marino et al. 2018, "Iterative
    Amortized Inference", with plain gradients): x, mean [B, D], std [B, D], eps [B, S, D] -> mean, std."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model, self.lr = model, model.config.refine_lr

    def forward(self, x, mean, std, eps):
        grad_mean, grad_log_std = elbo_gradients(self.model, x, mean, std, eps)
        return mean + self.lr * grad_mean, std * torch.exp(self.lr * grad_log_std)


class Encode(nn.Module):
    """x -> (mean, std): q(z | x)'s, exact for a Gaussian q; Monte Carlo over eps [B, S, D] for a flow q."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, x, eps=None):
        if eps is None:
            return self.model.encode(x)
        mean, log_var, context = self.model.encode_all(x)
        z, _ = self.model.flow(reparameterize(mean, log_var, eps.transpose(0, 1)), context)  # [S, B, D]
        return z.mean(0), z.std(0)


class LogWeight(nn.Module):
    """log p(x, z) - log q(z | x) at one z per row: (x, mean, std, eps) for a Gaussian q, whose (mean, std) the
    service may have refined; (x, eps) for a flow q."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, x, *args):
        if len(args) == 1:
            return log_weights(self.model, x, args[0].unsqueeze(0))[0]
        mean, std, eps = args
        z = mean + std * eps  # [B, D]
        zeros = torch.zeros_like(z)
        log_ratio = gaussian.log_prob(zeros, zeros, z).sum(-1) - gaussian.log_prob(mean, torch.log(std), z).sum(-1)
        return self.model.log_likelihood(x, z) + log_ratio


class Sample(nn.Module):
    """Ancestral: z = temperature * eps, x ~ p(x | z) with uniforms noise [B, 1, 28, 28, P']."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, eps, noise, temperature):
        return self.model.sample_x(temperature.unsqueeze(1) * eps, noise)


class CompleteStep(nn.Module):
    """One pseudo-Gibbs step (Rezende et al. 2014): z ~ q(z | x), x' ~ p(x | z), observed pixels kept."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, x, eps, noise, observed, mask):
        mean, log_var, context = self.model.encode_all(x)
        z, _ = self.model.flow(reparameterize(mean, log_var, eps.unsqueeze(0)), context)  # [1, B, D]
        return torch.where(mask == 1, observed, self.model.sample_x(z[0], noise))


class Decode(nn.Module):
    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model.decode(z)


REFINE_SAMPLES = 8  # Monte Carlo samples per refinement step


def exported_functions(model: VAE, split) -> tuple[dict, dict]:
    """(functions, capabilities) of docs/latent-variable-models.md."""
    c, b = model.config, 2
    x = torch.zeros(b, 1, SIDE, SIDE, dtype=torch.long)
    eps, z = torch.randn(b, c.latent), torch.randn(b, c.latent)
    gaussian_q = c.posterior == "gaussian"
    mean, std = torch.zeros(b, c.latent), torch.ones(b, c.latent)
    normal = {"distribution": "normal", "shape": [c.latent]}
    pixels = {"distribution": "uniform", "shape": model.noise_shape()}
    encode_noise = {} if gaussian_q else {"eps": {"distribution": "normal", "shape": [64, c.latent]}}
    functions = {
        "encode": (Encode(model), {"x": x, **{n: torch.randn(b, *s["shape"]) for n, s in encode_noise.items()}},
                   ["mean", "std"]),
        "decode": (Decode(model), {"z": z}, ["mean"]),
        "sample": (Sample(model), {"eps": eps, "noise": torch.rand(b, *pixels["shape"]),
                                   "temperature": torch.ones(b)}, ["x"]),
        "log_weight": (LogWeight(model), {"x": x, **({"mean": mean, "std": std} if gaussian_q else {}), "eps": eps},
                       ["log_weight"]),
        "complete_step": (CompleteStep(model), {"x": x, "eps": eps, "noise": torch.rand(b, *pixels["shape"]),
                                                "observed": x, "mask": x}, ["next_x"]),
    }
    encode = {"procedure": "direct", "function": "encode", **({"noise": encode_noise} if encode_noise else {})}
    if gaussian_q and c.decoder == "bernoulli":
        functions["refine_step"] = (RefineStep(model), {"x": x, "mean": mean, "std": std,
                                                        "eps": torch.randn(b, REFINE_SAMPLES, c.latent)},
                                    ["next_mean", "next_std"])
        encode["refine"] = {"function": "refine_step", "max_steps": 100,
                            "noise": {"eps": {"distribution": "normal", "shape": [REFINE_SAMPLES, c.latent]}}}
    capabilities = {
        "sample": {"procedure": "ancestral", "function": "sample", "noise": {"eps": normal, "noise": pixels}},
        "encode": encode,
        "decode": {"procedure": "direct", "function": "decode"},
        "score": {"procedure": "importance", "function": "log_weight", "methods": ["iwae", "elbo"],
                  "method": "iwae", "k": c.served_k, "max_k": max(c.eval_k, 5000), "noise": {"eps": normal}},
        "complete": {"procedure": "markov_chain", "function": "complete_step", "steps": 50, "max_steps": 1000,
                     "noise": {"eps": normal, "noise": pixels}},
    }
    return functions, capabilities
