"""StackGAN on mnist5k: captions -> 14x14 drafts (Stage I) -> 28x28 digits (Stage II).

Zhang et al. 2017, "StackGAN: Text to Photo-realistic Image Synthesis with Stacked Generative Adversarial
Networks". Captions are written from each image (training/data/captions.py: "a small thick seven slanted to the
right"). A small bag-of-words encoder turns the caption's word ids into a text embedding phi; conditioning
augmentation draws c = mu(phi) + sigma(phi) * eps_c, with the KL term KL(N(mu, sigma^2) || N(0, I)) in the
generator's loss. Stage I draws a 14x14 image from (z, c); Stage II encodes it, joins its own conditioning
augmentation of phi and refines it to 28x28 through residual blocks. Each discriminator has its own caption
encoder, compressed and tiled over its 7x7 features, and is matching-aware: real images with their captions are
real, generated images and real images with another row's caption are fake (the paper's loss). Unlike the paper,
whose text encoder is pre-trained and whose Stage II is trained after Stage I, the encoder learns with the
generators and both stages train together, Stage II on Stage I's current (detached) drafts; Stage I sees the real
digits average-pooled to 14x14.

Exported: `sample` (eps [B, latent], eps_c [B, 2, condition], temperature [B], caption [B, MAX_WORDS] word ids)
-> x [B, 1, 28, 28] int64 levels, z = temperature * eps and c = mu + temperature * sigma * eps_c. The sample
capability declares the caption as its `prompt` input: the vocabulary and the word count, so the service turns
free text into word ids without knowing this family. `evaluate_test` (no likelihood): the shipped classifier's
agreement with the caption's digit on one sample per test caption, and the measured attributes of samples whose
captions differ in one word only.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training import quality
from training.data import captions as words
from training.nn import adversarial as adv

SIDE, LOW, LEVELS = 28, 7, 256


@dataclass
class StackGANConfig:
    latent: int = 32  # z's width
    embedding: int = 64  # the caption encoder's text embedding phi
    condition: int = 16  # c's width (conditioning augmentation)
    compressed: int = 16  # each discriminator's tiled text width
    channels: int = 32  # C: Stage I 2C x 7 x 7 -> C x 14 x 14; Stage II C x 14 x 14 -> C x 28 x 28
    residual_blocks: int = 2
    kl_weight: float = 0.02  # the paper weighs the KL 2, averaged over its 128 widths: ~0.016 per summed nat
    drop: float = 0.3  # each caption's attribute phrases are dropped with this probability in training
    eval_per_word: int = 20  # noise draws per digit and word in evaluate_test's attribute table


class CaptionEncoder(nn.Module):
    """Word ids [B, W] (0: padding) -> the mean of the words' embeddings, through a linear layer: [B, out]."""

    def __init__(self, out: int):
        super().__init__()
        self.words = nn.Embedding(len(words.VOCABULARY), out, padding_idx=0)
        self.linear = nn.Linear(out, out)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        present = (caption > 0).float().unsqueeze(2)  # [B, W, 1]
        mean = (self.words(caption) * present).sum(1) / present.sum(1).clamp(min=1)
        return F.leaky_relu(self.linear(mean), 0.2)


class Augmentation(nn.Module):
    """Conditioning augmentation: phi [B, E] -> (mu, log_var) [B, condition] each."""

    def __init__(self, embedding: int, condition: int):
        super().__init__()
        self.linear = nn.Linear(embedding, 2 * condition)

    def forward(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(phi).chunk(2, dim=1)


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(log_var)) || N(0, I)) summed over the width, averaged over the batch: a scalar."""
    return 0.5 * (mu.square() + log_var.exp() - 1 - log_var).sum(1).mean()


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Nearest upsampling x2, 3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                 nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h + self.net(h))


class StageOne(nn.Module):
    """(z [B, latent], c [B, condition]) -> 2C x 7 x 7 -> C x 14 x 14 -> draft [B, 1, 14, 14] in [-1, 1]."""

    def __init__(self, cfg: StackGANConfig):
        super().__init__()
        self.c = cfg.channels
        self.linear = nn.Sequential(nn.Linear(cfg.latent + cfg.condition, 2 * cfg.channels * LOW * LOW),
                                    nn.BatchNorm1d(2 * cfg.channels * LOW * LOW), nn.ReLU())
        self.net = nn.Sequential(_up(2 * cfg.channels, cfg.channels), nn.Conv2d(cfg.channels, 1, 3, padding=1),
                                 nn.Tanh())

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(self.linear(torch.cat([z, c], 1)).view(-1, 2 * self.c, LOW, LOW))


class StageTwo(nn.Module):
    """(draft [B, 1, 14, 14], c [B, condition]) -> C x 14 x 14, joined with c tiled -> residual blocks ->
    C x 28 x 28 -> image [B, 1, 28, 28] in [-1, 1]."""

    def __init__(self, cfg: StackGANConfig):
        super().__init__()
        c = cfg.channels
        self.encode = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU())
        self.join = nn.Sequential(nn.Conv2d(c + cfg.condition, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  *[Residual(c) for _ in range(cfg.residual_blocks)])
        self.net = nn.Sequential(_up(c, c), nn.Conv2d(c, 1, 3, padding=1), nn.Tanh())

    def forward(self, draft: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.encode(draft)  # [B, C, 14, 14]
        tiled = c[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        return self.net(self.join(torch.cat([h, tiled], 1)))


class Discriminator(nn.Module):
    """(image [B, 1, S, S] in [-1, 1], caption [B, W]) -> logit [B]: convolutions to 2C x 7 x 7 (S = 14 or 28), joined
    with the caption's own embedding compressed and tiled, a 1x1 convolution, a linear layer."""

    def __init__(self, cfg: StackGANConfig, side: int):
        super().__init__()
        c = cfg.channels
        second = nn.Conv2d(c, 2 * c, 4, 2, 1) if side == 4 * LOW else nn.Conv2d(c, 2 * c, 3, 1, 1)
        self.trunk = nn.Sequential(nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2), second, nn.LeakyReLU(0.2))
        self.text = nn.Sequential(CaptionEncoder(cfg.embedding), nn.Linear(cfg.embedding, cfg.compressed),
                                  nn.LeakyReLU(0.2))
        self.join = nn.Sequential(nn.Conv2d(2 * c + cfg.compressed, 2 * c, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                                  nn.Linear(2 * c * LOW * LOW, 1))

    def forward(self, image: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
        h = self.trunk(image)  # [B, 2C, 7, 7]
        t = self.text(caption)[:, :, None, None].expand(-1, -1, LOW, LOW)  # [B, compressed, 7, 7]
        return self.join(torch.cat([h, t], 1)).squeeze(1)


class StackGAN(nn.Module):
    """The caption encoder, two conditioning augmentations, the two stages and their discriminators; the
    caption thresholds fitted on the training digits (buffers, so a checkpoint carries them)."""

    def __init__(self, cfg: StackGANConfig, thresholds: words.Thresholds):
        super().__init__()
        self.config = cfg
        self.encoder = CaptionEncoder(cfg.embedding)
        self.augment1, self.augment2 = Augmentation(cfg.embedding, cfg.condition), Augmentation(cfg.embedding,
                                                                                                cfg.condition)
        self.stage1, self.stage2 = StageOne(cfg), StageTwo(cfg)
        self.critic1, self.critic2 = Discriminator(cfg, 2 * LOW), Discriminator(cfg, SIDE)
        self.register_buffer("thickness_cuts", torch.as_tensor(thresholds.thickness, dtype=torch.float64))
        self.register_buffer("size_cuts", torch.as_tensor(thresholds.size, dtype=torch.float64))

    def thresholds(self) -> words.Thresholds:
        return words.Thresholds(self.thickness_cuts.numpy(), self.size_cuts.numpy())

    def generate(self, caption: torch.Tensor, eps: torch.Tensor, eps_c: torch.Tensor,
                 temperature: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Word ids [B, W], eps [B, latent], eps_c [B, 2, condition] -> (draft [B, 1, 14, 14], image [B, 1, 28,
        28], both in [-1, 1]; the KL terms of both augmentations, a scalar)."""
        t = torch.as_tensor(temperature, dtype=eps.dtype).reshape(-1, 1)
        phi = self.encoder(caption)
        (mu1, log_var1), (mu2, log_var2) = self.augment1(phi), self.augment2(phi)
        c1 = mu1 + t * (0.5 * log_var1).exp() * eps_c[:, 0]
        c2 = mu2 + t * (0.5 * log_var2).exp() * eps_c[:, 1]
        draft = self.stage1(t * eps, c1)
        image = self.stage2(draft.detach(), c2)  # Stage II learns on Stage I's drafts, not Stage I through it
        return draft, image, kl_divergence(mu1, log_var1) + kl_divergence(mu2, log_var2)

    def noise(self, b: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps [b, latent], eps_c [b, 2, condition]), standard normal."""
        c = self.config
        return torch.randn(b, c.latent, generator=generator), torch.randn(b, 2, c.condition, generator=generator)


def build(model_config: dict, split) -> StackGAN:
    if split.levels != LEVELS or split.shape != (1, SIDE, SIDE):
        raise ValueError(f"StackGAN needs 1x{SIDE}x{SIDE} digits of {LEVELS} levels, got {split.levels}, {split.shape}")
    return StackGAN(StackGANConfig(**model_config), words.Thresholds.fit(split.x_train, split.y_train))


def scaled(x: torch.Tensor) -> torch.Tensor:
    """Levels 0..255 -> [-1, 1]."""
    return x.float() / 255 * 2 - 1


def levels(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> int64 levels 0..255."""
    return torch.clamp(torch.round((image + 1) / 2 * 255), 0, 255).long()


def caption_ids(model: StackGAN, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator | None = None,
                drop: float = 0.0) -> torch.Tensor:
    """The captions of digits x [B, 1, 28, 28] levels with labels y [B], attribute phrases dropped with
    probability drop: word ids [B, MAX_WORDS]."""
    labels = y.numpy()
    choices = words.attributes(words.measure(x), labels, model.thresholds())
    return words.tokens(words.captions(choices, labels, rng, drop))


def optimizers(model: StackGAN, settings: dict) -> dict[str, torch.optim.Optimizer]:
    betas = tuple(settings.get("betas", (0.5, 0.999)))
    generator = [model.encoder, model.augment1, model.augment2, model.stage1, model.stage2]
    def adam(modules: list[nn.Module]) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=settings["lr"], betas=betas)
    return {"critic": adam([model.critic1, model.critic2]), "generator": adam(generator)}


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _critic_loss(critic: Discriminator, real: torch.Tensor, fake: torch.Tensor, caption: torch.Tensor,
                 wrong: torch.Tensor) -> torch.Tensor:
    """Matching-aware: real with its caption is real; fake, and real with a wrong caption, are fake."""
    real_logit = critic(real, caption)
    return F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) + 0.5 * (
        F.binary_cross_entropy_with_logits(critic(fake, caption), torch.zeros_like(real_logit))
        + F.binary_cross_entropy_with_logits(critic(real, wrong), torch.zeros_like(real_logit)))


def train_step(model: StackGAN, optimizers: dict, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
    """One update of both discriminators, then of the encoder and both stages, on digits x [B, 1, 28, 28] levels
    with labels y [B]; captions written from the digits, attribute phrases dropped at random."""
    caption = caption_ids(model, x, y, np.random.default_rng(step), model.config.drop)
    wrong = caption.roll(1, 0)
    real2 = scaled(x)
    real1 = F.avg_pool2d(real2, 2)  # [B, 1, 14, 14]
    draft, image, kl = model.generate(caption, *model.noise(len(x)))
    critic = _critic_loss(model.critic1, real1, draft.detach(), caption, wrong) \
        + _critic_loss(model.critic2, real2, image.detach(), caption, wrong)
    _step(optimizers["critic"], critic)
    adversarial = adv.generator_loss("ns", model.critic1(draft, caption)) \
        + adv.generator_loss("ns", model.critic2(image, caption))
    _step(optimizers["generator"], adversarial + model.config.kl_weight * kl)
    return {"critic": critic.item(), "generator": adversarial.item(), "kl": kl.item()}


def loss(model: StackGAN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NOT a likelihood: Stage II's matching-aware discriminator loss on the batch's full captions against as
    many fresh samples."""
    caption = caption_ids(model, x, y)
    _, image, _ = model.generate(caption, *model.noise(len(x)))
    return _critic_loss(model.critic2, scaled(x), image, caption, caption.roll(1, 0))


@torch.no_grad()
def draw(model: StackGAN, texts: list[str], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample per caption: (drafts [n, 1, 14, 14], images [n, 1, 28, 28]), int64 levels."""
    model.eval()
    draft, image, _ = model.generate(words.tokens(texts), *model.noise(len(texts), generator))
    return levels(draft), levels(image)


GRID_CAPTIONS = ["a {} upright", "a thin {}", "a thick {}", "a small {}", "a large {}", "a {} slanted to the left",
                 "a {} slanted to the right", "a small thick {} slanted to the right"]


def grid_captions(digits: range = range(10)) -> list[str]:
    """One row per digit, one column per GRID_CAPTIONS pattern (with "an" before "eight")."""
    return [words.caption_article(p.format(words.DIGITS[k])) for k in digits for p in GRID_CAPTIONS]


def sample_grid(model: StackGAN, generator: torch.Generator) -> torch.Tensor:
    """A row per digit, a column per GRID_CAPTIONS pattern: [80, 1, 28, 28] levels."""
    return draw(model, grid_captions(), generator)[1]


WORD_PAIRS = {"thickness": (("thin", "a thin {}"), ("thick", "a thick {}")),
              "size": (("small", "a small {}"), ("large", "a large {}")),
              "slant": (("left", "a {} slanted to the left"), ("right", "a {} slanted to the right"))}


def one_word_apart(pattern: str, draws: int) -> list[str]:
    """A caption pattern filled with every digit, `draws` times each: [10 * draws] captions."""
    return [words.caption_article(pattern.format(d)) for d in words.DIGITS for _ in range(draws)]


@torch.no_grad()
def attribute_table(model: StackGAN, generator: torch.Generator) -> dict:
    """For every digit, eval_per_word noise draws each drawn under captions that differ in one word only
    (WORD_PAIRS: "a thin seven" / "a thick seven", ...): the mean measure under each word over all digits, and the
    share of (digit, noise) pairs in which the measure moves the way the words say."""
    model.eval()
    n, table = model.config.eval_per_word, {}
    for attribute, pair in WORD_PAIRS.items():
        eps, eps_c = model.noise(10 * n, generator)
        measured = [words.measure(levels(model.generate(words.tokens(one_word_apart(pattern, n)), eps, eps_c)[1]))
                    [attribute] for _, pattern in pair]
        table[attribute] = {**{word: m.mean().item() for (word, _), m in zip(pair, measured, strict=True)},
                            "share_ordered": (measured[1] > measured[0]).double().mean().item()}
    return table


def evaluate_test(model: StackGAN, split, classifier_dir: Path = quality.SHIPPED) -> dict:
    """One sample (seed 0) per test digit's full caption: the shipped classifier's agreement with the caption's
    digit, and how often the sample's measured words equal the caption's; the attribute table (seed 1); the
    same classifier's accuracy on the real test digits, for reference."""
    x, y = torch.from_numpy(split.x_test).long(), torch.from_numpy(split.y_test)
    caption = caption_ids(model, x, y)
    model.eval()
    with torch.no_grad():
        samples = levels(model.generate(caption, *model.noise(len(x), torch.Generator().manual_seed(0)))[1])
    classifier, _ = quality.load_classifier(classifier_dir)
    asked = words.attributes(words.measure(x), split.y_test, model.thresholds())
    got = words.attributes(words.measure(samples), split.y_test, model.thresholds())
    return {"caption_digit_agreement": quality.accuracy(classifier, samples.numpy(), split.y_test, LEVELS),
            "real_accuracy": quality.accuracy(classifier, split.x_test, split.y_test, LEVELS),
            "word_agreement": dict(zip(["size", "thickness", "slant"], (asked == got).mean(0).tolist(),
                                       strict=True)),
            "attribute_table": attribute_table(model, torch.Generator().manual_seed(1)),
            "thresholds": model.thresholds().as_dict(), "test_captions": len(x)}


class Sample(nn.Module):
    """eps [B, latent], eps_c [B, 2, condition] standard normal, temperature [B], caption [B, MAX_WORDS] word ids
    -> x [B, 1, 28, 28] int64 levels."""

    def __init__(self, model: StackGAN):
        super().__init__()
        self.model = model

    def forward(self, eps: torch.Tensor, eps_c: torch.Tensor, temperature: torch.Tensor,
                caption: torch.Tensor) -> torch.Tensor:
        return levels(self.model.generate(caption, eps, eps_c, temperature)[1])


def exported_functions(model: StackGAN, split) -> tuple[dict, dict]:
    """(functions, capabilities): see the module docstring."""
    model.eval()
    c, g = model.config, torch.Generator().manual_seed(0)
    eps, eps_c = model.noise(2, g)
    caption = words.tokens(["a thick seven slanted to the right", "a small two"])
    sample = {"procedure": "ancestral", "function": "sample",
              "noise": {"eps": {"distribution": "normal", "shape": [c.latent]},
                        "eps_c": {"distribution": "normal", "shape": [2, c.condition]}},
              "prompt": {"kind": "words", "input": "caption", "vocabulary": list(words.VOCABULARY),
                         "max_words": words.MAX_WORDS, "lowercase": True, "separators": ",.;:!?"}}
    inputs = {"eps": eps, "eps_c": eps_c, "temperature": torch.ones(2), "caption": caption}
    return {"sample": (Sample(model), inputs, ["x"])}, {"sample": sample}
