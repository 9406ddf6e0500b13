"""GANs on 256-level 28x28 digits: DCGAN, WGAN, WGAN-GP (optionally class-conditional), BiGAN and InfoGAN.

A small DCGAN (Radford et al. 2016) trained with the minimax or non-saturating loss (Goodfellow et al. 2014,
"Generative Adversarial Nets"), WGAN with weight clipping (Arjovsky et al. 2017) or WGAN-GP (Gulrajani et al.
2017); BiGAN/ALI (Donahue et al. 2017, "Adversarial Feature Learning"; Dumoulin et al. 2017, "Adversarially
Learned Inference"), whose discriminator scores (x, z) pairs and whose encoder E(x) is trained jointly; and
InfoGAN (Chen et al. 2016), whose generator also takes a categorical code c (one-hot) and continuous codes
s ~ U[-1, 1] that a Q head on the critic's trunk recovers (lambda * (cross-entropy of c + 1/2 ||s - Q_s(x)||^2),
a Gaussian of unit variance up to a constant). Objectives and networks: training/nn/adversarial.py.

Images enter as (x / 255) * 2 - 1 in [-1, 1]; samples leave as round((y + 1) / 2 * 255) in 0..255.
A GAN has no likelihood. `loss`, which train.py reports per epoch, is the critic's loss on a batch against as
many fresh samples (no gradient penalty, no info term): NOT a negative log-likelihood. The served `score` is
the critic's logit (method "critic", higher = more real); `evaluate_test` gives it per test image to calibrate
anomaly percentiles, beside Inception Score, FID and mode coverage of 500 samples (training/quality.py).

Exported functions: `sample` (eps, temperature [, label | code, style]) -> x; `decode` (the generator's whole
input z) -> float levels; `critic` x -> logit (BiGAN: D(x, E(x))); `complete` (observed, mask, z) -> x, latent
optimisation from the start z: `complete_steps` hand-written Adam steps on
    sum over observed pixels of (G(z) - target)^2 + prior_weight / 2 ||z||^2     (in the [-1, 1] scale)
with the generator's hand-written gradient, a TorchScript loop and an ONNX Loop, observed pixels kept exactly;
BiGAN's `encode` x -> (E(x), 0).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training import quality
from training.nn import adversarial as adv

SIDE, LEVELS = 28, 256
EVAL_SAMPLES = 500


@dataclass
class GANConfig:
    kind: str = "dcgan"  # or "bigan" or "infogan"
    objective: str = "ns"  # minimax, ns, wgan or wgan-gp (dcgan); minimax or ns (bigan, infogan)
    latent: int = 64  # the noise eps's width (infogan: the noise part of the generator's input)
    channels: int = 32  # C: the generator's 2C x 7 x 7 -> C -> 1, the critic's C -> 2C
    conditional: bool = False  # dcgan only: a label embedding in G, a projection term in the critic
    classes: int = 10
    label_dim: int = 16
    codes: int = 10  # infogan: the categorical code's classes
    styles: int = 2  # infogan: continuous codes, uniform in [-1, 1]
    info_weight: float = 1.0  # infogan: lambda
    joint_hidden: int = 128  # bigan: the (x, z) discriminator's hidden width
    critic_steps: int = 1  # critic updates per generator update
    clip: float = 0.01  # wgan
    gp_weight: float = 10.0  # wgan-gp
    complete_steps: int = 200
    complete_lr: float = 0.05
    prior_weight: float = 1.0


class GAN(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = c = config
        if c.kind not in ("dcgan", "bigan", "infogan") or c.objective not in adv.OBJECTIVES:
            raise ValueError(f"kind must be dcgan, bigan or infogan and objective one of {adv.OBJECTIVES}: {c}")
        if c.kind != "dcgan" and (c.conditional or c.objective not in ("minimax", "ns")):
            raise ValueError(f"{c.kind} is unconditional and trains with minimax or ns, not {c.objective}")
        classes = c.classes if c.conditional else 0
        self.generator = adv.Generator(self.inputs, c.channels, classes, c.label_dim)
        if c.kind == "bigan":
            self.encoder = adv.Encoder(c.channels, c.latent)
            self.critic = adv.JointCritic(c.channels, c.latent, c.joint_hidden)
        else:
            self.critic = adv.Critic(c.channels, classes)
        if c.kind == "infogan":
            self.q_head = nn.Sequential(nn.Linear(2 * c.channels * adv.LOW ** 2, 128), nn.LeakyReLU(0.2),
                                        nn.Linear(128, c.codes + c.styles))

    @property
    def inputs(self) -> int:
        """The generator's input width: eps, and for infogan the one-hot code and the styles."""
        c = self.config
        return c.latent + (c.codes + c.styles if c.kind == "infogan" else 0)

    def dtype(self) -> torch.dtype:
        return self.generator.linear.weight.dtype

    def generator_input(self, eps: torch.Tensor, code: torch.Tensor | None = None,
                        style: torch.Tensor | None = None) -> torch.Tensor:
        """eps [B, latent] (infogan: and code [B], style [B, styles]) -> the generator's input [B, inputs]."""
        if self.config.kind != "infogan":
            return eps
        return torch.cat([eps, F.one_hot(code, self.config.codes).to(eps.dtype), style], dim=1)

    def prior(self, b: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """b draws of the generator's input: (z [b, inputs], code [b], style [b, styles]) from eps ~ N(0, I), a
        uniform code and styles ~ U[-1, 1]; only InfoGAN's z holds the code and the styles."""
        c, dtype = self.config, self.dtype()
        eps = torch.randn(b, c.latent, generator=generator, dtype=dtype)
        code = torch.randint(0, c.codes, (b,), generator=generator)
        style = 2 * torch.rand(b, c.styles, generator=generator, dtype=dtype) - 1
        return self.generator_input(eps, code, style), code, style

    def label(self, y: torch.Tensor) -> torch.Tensor | None:
        """The labels the networks take: y [B] when conditional, else None."""
        return y if self.config.conditional else None

    def score(self, real: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """The critic's logit of images in [-1, 1] [B, 1, 28, 28] -> [B]; BiGAN scores (x, E(x))."""
        if self.config.kind == "bigan":
            return self.critic(real, self.encoder(real))
        return self.critic(real, label)


def scaled(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Levels 0..255 -> [-1, 1]."""
    return x.to(dtype) / 255 * 2 - 1


def levels(y: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> int64 levels round((y + 1) / 2 * 255), clamped to 0..255."""
    return torch.clamp(torch.round((y + 1) / 2 * 255), 0, 255).long()


def build(model_config: dict, split) -> GAN:
    if split.levels != LEVELS or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"a GAN needs 1x{SIDE}x{SIDE} images of {LEVELS} levels, got {split.levels}, {split.shape}")
    return GAN(GANConfig(**model_config))


def optimizers(model: GAN, settings: dict) -> dict[str, torch.optim.Optimizer]:
    """The critic's (with InfoGAN's Q head) and the generator's (with BiGAN's encoder) optimizers: Adam with
    settings' lr and betas, or RMSprop (WGAN) with `"optimizer": "rmsprop"`."""
    def make(modules: list[nn.Module]) -> torch.optim.Optimizer:
        params = [p for m in modules for p in m.parameters()]
        if settings.get("optimizer", "adam") == "rmsprop":
            return torch.optim.RMSprop(params, lr=settings["lr"])
        return torch.optim.Adam(params, lr=settings["lr"], betas=tuple(settings.get("betas", (0.5, 0.999))))

    critic = [model.critic] + ([model.q_head] if model.config.kind == "infogan" else [])
    generator = [model.generator] + ([model.encoder] if model.config.kind == "bigan" else [])
    return {"critic": make(critic), "generator": make(generator)}


def info_loss(model: GAN, h: torch.Tensor, code: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """InfoGAN's Q loss on trunk features h [B, F] of samples made with code [B], style [B, S]: the code's
    cross-entropy plus 1/2 ||style - Q_s||^2 (a unit-variance Gaussian's negative log-density, up to a constant)."""
    out = model.q_head(h)  # [B, codes + styles]
    codes = model.config.codes
    return F.cross_entropy(out[:, :codes], code) + 0.5 * (out[:, codes:] - style).square().sum(1).mean()


def critic_update(model: GAN, optimizer: torch.optim.Optimizer, real: torch.Tensor, y: torch.Tensor) -> dict:
    """One step on the critic's loss (+ gradient penalty, + info term) against fresh samples; WGAN clips."""
    c, label = model.config, model.label(y)
    with torch.no_grad():
        z, code, style = model.prior(len(real))
        fake = model.generator(z, label)  # [B, 1, 28, 28]
    if c.kind == "bigan":
        with torch.no_grad():
            encoded = model.encoder(real)  # [B, latent]
        real_logit, fake_logit, features = model.critic(real, encoded), model.critic(fake, z), None
    else:
        features = model.critic.trunk(fake)  # [B, F]
        real_logit, fake_logit = model.critic(real, label), model.critic.score(features, label)
    losses = {"critic": adv.critic_loss(c.objective, real_logit, fake_logit)}
    if c.objective == "wgan-gp":
        eps = torch.rand(len(real), 1, 1, 1, dtype=real.dtype)
        losses["penalty"] = adv.gradient_penalty(lambda v: model.critic(v, label), real, fake, eps, c.gp_weight)
    if c.kind == "infogan":
        losses["info"] = c.info_weight * info_loss(model, features, code, style)
    _step(optimizer, sum(losses.values()))
    if c.objective == "wgan":
        adv.clip_(model.critic, c.clip)
    return {k: v.item() for k, v in losses.items()}


def generator_update(model: GAN, optimizer: torch.optim.Optimizer, real: torch.Tensor, y: torch.Tensor) -> dict:
    """One step on the generator's loss (BiGAN: the generator's and encoder's, labels swapped; InfoGAN: + the
    info term)."""
    c, label = model.config, model.label(y)
    z, code, style = model.prior(len(real))
    fake = model.generator(z, label)
    if c.kind == "bigan":
        loss = adv.generator_loss(c.objective, model.critic(fake, z)) \
            + adv.generator_loss(c.objective, -model.critic(real, model.encoder(real)))
        _step(optimizer, loss)
        return {"generator": loss.item()}
    features = model.critic.trunk(fake)
    losses = {"generator": adv.generator_loss(c.objective, model.critic.score(features, label))}
    if c.kind == "infogan":
        losses["info_g"] = c.info_weight * info_loss(model, features, code, style)
    _step(optimizer, sum(losses.values()))
    return {k: v.item() for k, v in losses.items()}


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def train_step(model: GAN, optimizers: dict, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
    """A critic update on the batch x [B, 1, 28, 28] levels (labels y [B]); a generator update after every
    `critic_steps` of them. -> the losses computed, as floats."""
    real = scaled(x, model.dtype())
    losses = critic_update(model, optimizers["critic"], real, y)
    if (step + 1) % model.config.critic_steps == 0:
        losses.update(generator_update(model, optimizers["generator"], real, y))
    return losses


def loss(model: GAN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NOT a likelihood: the critic's loss on the batch against as many fresh samples.

    x [B, 1, 28, 28] levels, y [B] -> a scalar, without the gradient penalty or the info term; train.py
    reports it per epoch on the test split."""
    real, label = scaled(x, model.dtype()), model.label(y)
    z, _, _ = model.prior(len(x))
    fake = model.generator(z, label)
    fake_logit = model.critic(fake, z) if model.config.kind == "bigan" else model.critic(fake, label)
    return adv.critic_loss(model.config.objective, model.score(real, label), fake_logit)


@torch.no_grad()
def generate(model: GAN, n: int, generator: torch.Generator) -> torch.Tensor:
    """n samples from the prior (conditional: labels 0, 1, ..., cycling): [n, 1, 28, 28] int64 levels."""
    model.eval()
    z, _, _ = model.prior(n, generator)
    return levels(model.generator(z, model.label(torch.arange(n) % model.config.classes)))


@torch.no_grad()
def sample_grid(model: GAN, generator: torch.Generator, n: int = 80) -> torch.Tensor:
    """n samples, 8 a row, [n, 1, 28, 28] int64 levels; conditional: one row per class; InfoGAN: one row per
    code with one noise draw, the first style going from -1 to 1 along the row."""
    model.eval()
    row, column = torch.arange(n) // 8 % 10, torch.arange(n) % 8
    c = model.config
    if c.kind != "infogan":
        z = model.prior(n, generator)[0]
        return levels(model.generator(z, model.label(row % c.classes)))
    eps = torch.randn(n // 8 + 1, c.latent, generator=generator, dtype=model.dtype())[torch.arange(n) // 8]
    style = torch.zeros(n, c.styles, dtype=eps.dtype)
    style[:, 0] = column / 3.5 - 1
    return levels(model.generator(model.generator_input(eps, row % c.codes, style)))


@torch.no_grad()
def critic_scores(model: GAN, split, batch_size: int = 100) -> torch.Tensor:
    """The critic's logit of every test image (with its label when conditional): [N] float64."""
    model.eval()
    out = []
    for i in range(0, len(split.x_test), batch_size):
        x = torch.from_numpy(split.x_test[i: i + batch_size]).long()
        y = torch.from_numpy(split.y_test[i: i + batch_size])
        out.append(model.score(scaled(x, model.dtype()), model.label(y)).double())
    return torch.cat(out)


def evaluate_test(model: GAN, split, classifier_dir: Path = quality.SHIPPED) -> dict:
    """Inception Score, FID against the test split and mode coverage of 500 samples (seed 0), from the shipped
    evaluation classifier; and the critic's logit per test image (higher = more real), which calibrates the
    served score's anomaly percentiles. A GAN has no test NLL."""
    samples = generate(model, EVAL_SAMPLES, torch.Generator().manual_seed(0)).numpy()
    report = quality.sample_report(samples, split.x_test, LEVELS, classifier_dir)
    critic = critic_scores(model, split)
    return {**report, "test_critic_mean": critic.mean().item(), "test_critic_per_example": critic.tolist()}


class Sample(nn.Module):
    """eps [B, latent] standard normal, temperature [B] (and label [B] | code [B], style [B, styles]) -> x [B, 1,
    28, 28] int64 levels, from z = temperature * eps."""

    def __init__(self, model: GAN):
        super().__init__()
        self.model = model

    def forward(self, eps, temperature, *controls):
        z, label = temperature.unsqueeze(1) * eps, None
        if self.model.config.kind == "infogan":
            z = self.model.generator_input(z, *controls)
        elif controls:
            label = controls[0]
        return levels(self.model.generator(z, label))


class Decode(nn.Module):
    """The generator's whole input z [B, inputs] (and label [B]) -> float32 levels `mean` [B, 1, 28, 28]."""

    def __init__(self, model: GAN):
        super().__init__()
        self.model = model

    def forward(self, z, *label):
        return (self.model.generator(z, *label) + 1) / 2 * 255


class CriticScore(nn.Module):
    """x [B, 1, 28, 28] levels (and label [B]) -> the critic's logit [B]."""

    def __init__(self, model: GAN):
        super().__init__()
        self.model = model

    def forward(self, x, *label):
        return self.model.score(scaled(x, self.model.dtype()), *label)


class Encode(nn.Module):
    """BiGAN: x levels -> (E(x), zeros) [B, latent] each: the encoder is deterministic."""

    def __init__(self, model: GAN):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model.encoder(scaled(x, self.model.dtype()))
        return z, torch.zeros_like(z)


class Render(nn.Module):
    """z [B, inputs] (and label [B]) -> the generator's image as int64 levels."""

    def __init__(self, model: GAN):
        super().__init__()
        self.model = model

    def forward(self, z, *label):
        return levels(self.model.generator(z, *label))


def complete_module(model: GAN) -> torch.jit.ScriptModule:
    """The scripted `complete`: the latent gradient and the render traced once each, inside a scripted loop of
    `complete_steps` Adam steps (adversarial.LatentAdam), exported as a TorchScript loop and an ONNX Loop."""
    c = model.config
    b, conditional = 2, c.conditional
    z, label = torch.zeros(b, model.inputs, dtype=model.dtype()), torch.zeros(b, dtype=torch.long)
    image = torch.zeros(b, 1, SIDE, SIDE, dtype=model.dtype())
    extra = (label,) if conditional else ()
    gradient = adv.LatentGradient(model.generator, c.prior_weight).eval()
    traced_gradient = torch.jit.trace(gradient, (z, image, image, *extra), check_trace=False)
    traced_render = torch.jit.trace(Render(model).eval(), (z, *extra), check_trace=False)
    loop = adv.ConditionalLatentAdam if conditional else adv.LatentAdam
    return torch.jit.script(loop(traced_gradient, traced_render, c.complete_steps, c.complete_lr).eval())


def exported_functions(model: GAN, split) -> tuple[dict, dict]:
    """(functions, capabilities): see the module docstring."""
    model.eval()
    c, b, g = model.config, 2, torch.Generator().manual_seed(0)
    x = torch.randint(0, LEVELS, (b, 1, SIDE, SIDE), generator=g)
    label = torch.arange(b) % c.classes
    labels = {"label": label} if c.conditional else {}
    controls = {"code": label, "style": 2 * torch.rand(b, c.styles, generator=g) - 1} if c.kind == "infogan" \
        else labels
    functions = {
        "sample": (Sample(model), {"eps": torch.randn(b, c.latent, generator=g), "temperature": torch.ones(b),
                                   **controls}, ["x"]),
        "decode": (Decode(model), {"z": torch.randn(b, model.inputs, generator=g), **labels}, ["mean"]),
        "critic": (CriticScore(model), {"x": x, **labels}, ["critic"]),
        "complete": (complete_module(model), {"observed": x, "mask": x % 2,
                                              "z": torch.randn(b, model.inputs, generator=g), **labels}, ["x"]),
    }
    sample = {"procedure": "ancestral", "function": "sample",
              "noise": {"eps": {"distribution": "normal", "shape": [c.latent]}}}
    if c.kind == "infogan":
        sample["controls"] = {"code": {"kind": "categorical", "classes": c.codes},
                              "style": {"kind": "uniform", "low": -1.0, "high": 1.0, "shape": [c.styles]}}
    capabilities = {
        "sample": sample,
        "decode": {"procedure": "direct", "function": "decode"},
        "score": {"procedure": "direct", "function": "critic", "method": "critic"},
        "complete": {"procedure": "direct", "function": "complete",
                     "noise": {"z": {"distribution": "normal", "shape": [model.inputs]}}},
    }
    if c.kind == "bigan":
        functions["encode"] = (Encode(model), {"x": x}, ["mean", "std"])
        capabilities["encode"] = {"procedure": "direct", "function": "encode"}
    return functions, capabilities
