"""Location-aware GAN for 25x25 jet images, conditioned on the jet class, beside a DCGAN of the same size.

LAGAN (de Oliveira, Paganini & Nachman 2017, "Learning Particle Physics by Example: Location-Aware Generative
Adversarial Networks for Physics Synthesis"): the generator multiplies the noise by an embedding of the class,
goes through a dense layer to 7x7, a convolution, then upsampling and locally connected layers (each pixel its
own filter: a jet image's pixels are not translation invariant) to 25x25 with a ReLU output, so pixels are
non-negative and exactly 0 where empty. The discriminator is a convolution then locally connected layers, with
an auxiliary classifier head for the class (ACGAN, Odena et al. 2017) beside the real/fake logit; the
non-saturating loss plus the class cross-entropy on real (discriminator) and generated (both) jets. Minibatch
discrimination is left out. architecture "dcgan" swaps every locally connected layer for a convolution of the
same kernel, with widths chosen so the parameter count is within 10% (the baseline).

The images live in the store as 256 log-pT levels (training/data/jets.py); the networks see pixel pT / 100 GeV, as
the paper trains on pT, real levels dequantized within their log bin; samples are rounded to levels inside the
exported graph (jets.to_levels' rounding).

Exported: `sample` (eps [B, latent], temperature [B], class [B]) -> x [B, 1, 25, 25] int64 levels, z = temperature
* eps; the class is the sample control "class" (0 qcd, 1 w). `evaluate_test`: the 1-D Wasserstein distance of jet
mass, pT and tau21 between 1,000 samples (eval_per_class) and the 1,000 test jets of each class (no likelihood).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.data import jets
from training.nn import adversarial as adv
from training.nn.local import LocallyConnected2d

SIDE, LOW, LEVELS = jets.SIDE, 7, jets.LEVELS
PT_SCALE = 100.0  # GeV: the networks see pixel pT / PT_SCALE


@dataclass
class LAGANConfig:
    architecture: str = "lagan"  # or "dcgan": convolutions where LAGAN is locally connected
    latent: int = 64
    generator: list[int] = field(default_factory=lambda: [32, 8, 4])  # dense 7x7 width, conv, upsampled widths
    critic: list[int] = field(default_factory=lambda: [8, 8])  # conv width, strided widths
    classes: int = 2
    aux_weight: float = 1.0  # the class cross-entropy's weight
    dropout: float = 0.2
    eval_per_class: int = 1000  # samples per class that evaluate_test compares with the test jets


def _layer(local: bool, c_in: int, c_out: int, kernel: int, in_size: int, stride: int = 1,
           bias: bool = True) -> nn.Module:
    """A locally connected layer or a convolution of the same kernel and stride (unpadded)."""
    if local:
        return LocallyConnected2d(c_in, c_out, kernel, in_size, stride, bias)
    return nn.Conv2d(c_in, c_out, kernel, stride, bias=bias)


class Generator(nn.Module):
    """z [B, latent] * embed(class) -> dense -> C0 x 7 x 7 -> conv 5 -> up 14, pad 2, local 5 -> up 28, local 3 (26)
    -> local 2 (25) -> ReLU: u [B, 1, 25, 25] >= 0."""

    def __init__(self, c: LAGANConfig):
        super().__init__()
        local, (c0, c1, c2) = c.architecture == "lagan", c.generator
        self.c0 = c0
        self.embed = nn.Embedding(c.classes, c.latent)
        self.dense = nn.Linear(c.latent, c0 * LOW * LOW)
        self.net = nn.Sequential(
            nn.Conv2d(c0, c1, 5, padding=2), nn.LeakyReLU(0.2), nn.BatchNorm2d(c1),  # [B, C1, 7, 7]
            nn.Upsample(scale_factor=2), nn.ZeroPad2d(2),  # [B, C1, 18, 18]
            _layer(local, c1, c2, 5, 18), nn.LeakyReLU(0.2), nn.BatchNorm2d(c2),  # [B, C2, 14, 14]
            nn.Upsample(scale_factor=2),  # [B, C2, 28, 28]
            _layer(local, c2, c2, 3, 28), nn.LeakyReLU(0.2),  # [B, C2, 26, 26]
            _layer(local, c2, 1, 2, 26, bias=False), nn.ReLU())  # [B, 1, 25, 25]

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.dense(z * self.embed(label)).view(-1, self.c0, LOW, LOW)
        return self.net(h)


class Critic(nn.Module):
    """u [B, 1, 25, 25] -> conv 5 (same) -> pad 2, local 5 stride 2 (13) -> local 3 stride 2 (6) -> features ->
    (real/fake logit [B], class logits [B, classes])."""

    def __init__(self, c: LAGANConfig):
        super().__init__()
        local, (d1, d2) = c.architecture == "lagan", c.critic
        self.trunk = nn.Sequential(
            nn.Conv2d(1, d1, 5, padding=2), nn.LeakyReLU(0.2), nn.Dropout(c.dropout),  # [B, D1, 25, 25]
            nn.ZeroPad2d(2), _layer(local, d1, d2, 5, 29, stride=2), nn.LeakyReLU(0.2), nn.Dropout(c.dropout),
            _layer(local, d2, d2, 3, 13, stride=2), nn.LeakyReLU(0.2), nn.Flatten())  # [B, D2 * 36]
        self.real = nn.Linear(d2 * 36, 1)
        self.classify = nn.Linear(d2 * 36, c.classes)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(u)
        return self.real(h).squeeze(1), self.classify(h)


class LAGAN(nn.Module):
    def __init__(self, config: LAGANConfig):
        super().__init__()
        if config.architecture not in ("lagan", "dcgan"):
            raise ValueError(f"architecture must be lagan or dcgan, not {config.architecture!r}")
        self.config = config
        self.generator, self.critic = Generator(config), Critic(config)

    def prior(self, b: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(b, self.config.latent, generator=generator)


def build(model_config: dict, split) -> LAGAN:
    if split.levels != LEVELS or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"LAGAN needs 1x{SIDE}x{SIDE} jet images of {LEVELS} levels, got {split.shape}")
    return LAGAN(LAGANConfig(**{**model_config, "classes": split.num_classes}))


def to_unit(x: torch.Tensor, dequantize: bool = True) -> torch.Tensor:
    """Levels [B, 1, 25, 25] -> u = pixel pT / PT_SCALE; with `dequantize`, nonzero levels move by U(-1/2, 1/2) on
    the log scale (within their rounding bin)."""
    k = x.float() - 1 + (torch.rand(x.shape) - 0.5 if dequantize else 0.0)
    return torch.where(x > 0, jets.PT_MIN * torch.exp(k * jets.STEP), torch.zeros(())) / PT_SCALE


def to_levels(u: torch.Tensor) -> torch.Tensor:
    """u = pT / PT_SCALE >= 0 -> int64 levels as jets.to_levels rounds them: 0 for empty (or under ~PT_MIN)."""
    pt = u * PT_SCALE
    k = 1 + torch.round(torch.log(torch.clamp(pt, min=jets.PT_MIN * 1e-3) / jets.PT_MIN) / jets.STEP)
    return torch.clamp(torch.where(pt > 0, k, torch.zeros(())), 0, LEVELS - 1).long()


def optimizers(model: LAGAN, settings: dict) -> dict[str, torch.optim.Optimizer]:
    betas = tuple(settings.get("betas", (0.5, 0.999)))
    return {"critic": torch.optim.Adam(model.critic.parameters(), lr=settings["lr"], betas=betas),
            "generator": torch.optim.Adam(model.generator.parameters(), lr=settings["lr"], betas=betas)}


def _losses(model: LAGAN, real: torch.Tensor, y: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's loss: non-saturating real/fake plus aux_weight times the class cross-entropy of both."""
    (real_logit, real_class), (fake_logit, fake_class) = model.critic(real), model.critic(fake)
    aux = F.cross_entropy(real_class, y) + F.cross_entropy(fake_class, y)
    return adv.critic_loss("ns", real_logit, fake_logit) + model.config.aux_weight * aux


def train_step(model: LAGAN, optimizers: dict, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
    """One critic and one generator update on levels x [B, 1, 25, 25] of classes y [B]; fakes share y."""
    real = to_unit(x)
    with torch.no_grad():
        fake = model.generator(model.prior(len(x)), y)
    critic = _losses(model, real, y, fake)
    _step(optimizers["critic"], critic)
    logit, classes = model.critic(model.generator(model.prior(len(x)), y))
    generator = adv.generator_loss("ns", logit) + model.config.aux_weight * F.cross_entropy(classes, y)
    _step(optimizers["generator"], generator)
    return {"critic": critic.item(), "generator": generator.item()}


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def loss(model: LAGAN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NOT a likelihood: the critic's loss (with the class term) on the batch against as many fresh samples."""
    return _losses(model, to_unit(x, dequantize=False), y, model.generator(model.prior(len(x)), y))


@torch.no_grad()
def generate(model: LAGAN, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample per label [n]: [n, 1, 25, 25] int64 levels."""
    model.eval()
    return to_levels(model.generator(model.prior(len(labels), generator), labels))


def sample_grid(model: LAGAN, generator: torch.Generator, n: int = 64) -> torch.Tensor:
    """n samples, 8 a row: the first half qcd, the second w."""
    return generate(model, (torch.arange(n) >= n // 2).long(), generator)


def evaluate_test(model: LAGAN, split) -> dict:
    """W1 of jet mass, pT (GeV) and tau21 per class between eval_per_class samples (seed 0) and the test jets."""
    n = model.config.eval_per_class
    report = {"eval_samples_per_class": n}
    g = torch.Generator().manual_seed(0)
    for label, name in enumerate(jets.CLASSES):
        samples = generate(model, torch.full((n,), label), g).numpy()
        reference = split.x_test[split.y_test == label]
        for quantity, value in jets.wasserstein(jets.to_pt(samples), jets.to_pt(reference)).items():
            report[f"w1_{quantity}_{name}"] = value
    return report


class Sample(nn.Module):
    """eps [B, latent] standard normal, temperature [B], class [B] -> x [B, 1, 25, 25] int64 levels."""

    def __init__(self, model: LAGAN):
        super().__init__()
        self.generator = model.generator

    def forward(self, eps: torch.Tensor, temperature: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return to_levels(self.generator(temperature.unsqueeze(1) * eps, label))


def exported_functions(model: LAGAN, split) -> tuple[dict, dict]:
    """(functions, capabilities): see the module docstring."""
    model.eval()
    c, g = model.config, torch.Generator().manual_seed(0)
    inputs = {"eps": torch.randn(2, c.latent, generator=g), "temperature": torch.ones(2),
              "class": torch.arange(2) % c.classes}
    sample = {"procedure": "ancestral", "function": "sample",
              "noise": {"eps": {"distribution": "normal", "shape": [c.latent]}},
              "controls": {"class": {"kind": "categorical", "classes": c.classes, "names": list(jets.CLASSES)}}}
    return {"sample": (Sample(model), inputs, ["x"])}, {"sample": sample}
