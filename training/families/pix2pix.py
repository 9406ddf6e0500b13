"""pix2pix on mnist5k: a U-Net translates a digit's edge map into the digit, beside a PatchGAN discriminator.

Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks": the generator G is a U-Net
(an encoder-decoder whose decoder also takes each encoder level's features, concatenated), the discriminator D a
PatchGAN that scores every 18x18 window of the (source, image) pair as real or fake (a 7x7 map of logits), and G
minimizes the non-saturating adversarial loss plus l1_weight * |G(s) - x|_1 (the paper's lambda = 100). With
adversarial_weight 0 the same U-Net trains on the L1 loss alone (the baseline; D is not trained). No dropout:
translation is deterministic.

The pairs are (edge map, digit) with training/data/edges.py's edge maps (levels 0/1) of mnist5k's digits (levels
0..255); the networks see both in [-1, 1]. Exported: `translate` source [B, 1, 28, 28] edge levels 0/1 -> x [B, 1,
28, 28] int64 digit levels (capability translate, procedure direct). `evaluate_test`: the mean L1 error on 0..1
intensities over the 500 test pairs and the shipped classifier's accuracy on the translations against the source
digits' labels.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training import quality
from training.data import mnist5k
from training.data.edges import edge_map
from training.nn import adversarial as adv

SIDE, LEVELS, SOURCE_LEVELS = 28, 256, 2
PATCH, PATCH_STRIDE, PATCH_OFFSET = 18, 4, 7  # the PatchGAN's window: output (i, j) sees rows 4i - 7 .. 4i + 10


@dataclass
class Pix2PixConfig:
    channels: int = 32  # C: the U-Net's levels have C (28), 2C (14), 4C (7) channels
    critic_channels: int = 32  # the PatchGAN's C -> 2C -> 1
    l1_weight: float = 100.0
    adversarial_weight: float = 1.0  # 0: the U-Net trains on L1 alone


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (stride 1: same size; stride 2: halved, 4x4 kernel), batch norm, LeakyReLU."""
    kernel = 4 if stride == 2 else 3
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Transposed 4x4 convolution doubling the size, batch norm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    """s [B, 1, 28, 28] in [-1, 1] -> image [B, 1, 28, 28] in [-1, 1] (tanh), with skip connections."""

    def __init__(self, c: int):
        super().__init__()
        self.enc1, self.enc2, self.enc3 = _conv(1, c), _conv(c, 2 * c, 2), _conv(2 * c, 4 * c, 2)
        self.bottleneck = _conv(4 * c, 4 * c)
        self.dec3, self.dec2 = _up(8 * c, 2 * c), _up(4 * c, c)
        self.out = nn.Conv2d(2 * c, 1, 3, padding=1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(s)  # [B, C, 28, 28]
        e2 = self.enc2(e1)  # [B, 2C, 14, 14]
        e3 = self.enc3(e2)  # [B, 4C, 7, 7]
        d3 = self.dec3(torch.cat([self.bottleneck(e3), e3], 1))  # [B, 2C, 14, 14]
        d2 = self.dec2(torch.cat([d3, e2], 1))  # [B, C, 28, 28]
        return torch.tanh(self.out(torch.cat([d2, e1], 1)))


class PatchGAN(nn.Module):
    """(s, image) [B, 1, 28, 28] each -> logits [B, 7, 7], one per 18x18 window (PATCH, PATCH_STRIDE,
    PATCH_OFFSET): conv 4 stride 2 (14) -> conv 4 stride 2 (7) -> conv 3 (7), no batch norm, so that each logit
    depends on its own window of its own pair only."""

    def __init__(self, c: int):
        super().__init__()
        self.net = adv.PatchCritic(2, c)  # the pair as two channels

    def forward(self, s: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s, image], 1)).squeeze(1)


def window(i: int, j: int) -> tuple[slice, slice]:
    """The input rows and columns (inside the image) that the PatchGAN's logit (i, j) depends on."""
    def span(k: int) -> slice:
        start = PATCH_STRIDE * k - PATCH_OFFSET
        return slice(max(start, 0), min(start + PATCH, SIDE))
    return span(i), span(j)


class Pix2Pix(nn.Module):
    def __init__(self, config: Pix2PixConfig):
        super().__init__()
        self.config = config
        self.generator, self.critic = UNet(config.channels), PatchGAN(config.critic_channels)


def build(model_config: dict, split) -> Pix2Pix:
    if split.levels != LEVELS or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"pix2pix needs 1x{SIDE}x{SIDE} digits of {LEVELS} levels, got {split.levels}, {split.shape}")
    return Pix2Pix(Pix2PixConfig(**model_config))


def pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit levels x [B, 1, 28, 28] -> (edge map, digit), both in [-1, 1]."""
    return edge_map(x).float() * 2 - 1, x.float() / 255 * 2 - 1


def levels(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> int64 levels 0..255."""
    return torch.clamp(torch.round((image + 1) / 2 * 255), 0, 255).long()


def optimizers(model: Pix2Pix, settings: dict) -> dict[str, torch.optim.Optimizer]:
    betas = tuple(settings.get("betas", (0.5, 0.999)))
    return {"critic": torch.optim.Adam(model.critic.parameters(), lr=settings["lr"], betas=betas),
            "generator": torch.optim.Adam(model.generator.parameters(), lr=settings["lr"], betas=betas)}


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def train_step(model: Pix2Pix, optimizers: dict, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
    """A PatchGAN update (skipped for the L1 baseline) and a U-Net update on the pairs of digits x [B, 1, 28, 28]."""
    c, (s, real) = model.config, pair(x)
    fake = model.generator(s)
    losses = {}
    if c.adversarial_weight > 0:
        critic = adv.critic_loss("ns", model.critic(s, real).flatten(), model.critic(s, fake.detach()).flatten())
        _step(optimizers["critic"], critic)
        losses["critic"] = critic.item()
    l1 = (fake - real).abs().mean()
    generator = c.l1_weight * l1
    if c.adversarial_weight > 0:
        generator = generator + c.adversarial_weight * adv.generator_loss("ns", model.critic(s, fake).flatten())
    _step(optimizers["generator"], generator)
    return {**losses, "generator": generator.item(), "l1": l1.item()}


def loss(model: Pix2Pix, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NOT a likelihood: the U-Net's mean L1 error in [-1, 1] on the pairs of the batch."""
    s, real = pair(x)
    return (model.generator(s) - real).abs().mean()


@torch.no_grad()
def translate(model: Pix2Pix, x: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Digits [N, 1, 28, 28] levels -> the translations of their edge maps, int64 levels [N, 1, 28, 28]."""
    model.eval()
    out = [levels(model.generator(pair(torch.from_numpy(x[i: i + batch_size]))[0]))
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


@functools.cache
def grid_digits(n: int = 8) -> np.ndarray:
    """The first mnist5k test digit of each class 0..n-1: [n, 1, 28, 28] levels (loaded once)."""
    split = mnist5k()
    return split.x_test[[int(np.flatnonzero(split.y_test == k)[0]) for k in range(n)]]


@torch.no_grad()
def sample_grid(model: Pix2Pix, generator: torch.Generator, n: int = 8) -> torch.Tensor:
    """Rows of n: edge maps, their translations and the digits (grid_digits; the generator is unused:
    translation is deterministic): [3n, 1, 28, 28] levels 0..255."""
    x = torch.from_numpy(grid_digits(n)).long()
    return torch.cat([edge_map(x) * 255, torch.from_numpy(translate(model, x.numpy())), x])


def evaluate_test(model: Pix2Pix, split, classifier_dir: Path = quality.SHIPPED) -> dict:
    """The mean L1 error on 0..1 intensities over the test pairs, and the shipped classifier's accuracy on the
    translations against the source digits' labels (and on the real test digits, for reference)."""
    out = translate(model, split.x_test)
    classifier, _ = quality.load_classifier(classifier_dir)
    return {"test_l1": float(np.abs(out / 255 - split.x_test / 255).mean()),
            "translation_accuracy": quality.accuracy(classifier, out, split.y_test, LEVELS),
            "real_accuracy": quality.accuracy(classifier, split.x_test, split.y_test, LEVELS),
            "test_pairs": len(out)}


class Translate(nn.Module):
    """Edge levels source [B, 1, 28, 28] in {0, 1} -> digit levels x [B, 1, 28, 28] int64."""

    def __init__(self, model: Pix2Pix):
        super().__init__()
        self.generator = model.generator

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return levels(self.generator(source.float() * 2 - 1))


def exported_functions(model: Pix2Pix, split) -> tuple[dict, dict]:
    """(functions, capabilities): see the module docstring."""
    model.eval()
    source = torch.randint(0, SOURCE_LEVELS, (2, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(0))
    translate_capability = {"procedure": "direct", "function": "translate",
                            "input": {"shape": [1, SIDE, SIDE], "levels": SOURCE_LEVELS}}
    return {"translate": (Translate(model), {"source": source}, ["x"])}, {"translate": translate_capability}
