"""Adversarial objectives and the small DCGAN networks for 28x28 images (Radford, Metz & Chintala 2016,
"Unsupervised Representation Learning with Deep Convolutional GANs").

Objectives, on critic logits (higher = more real):
    minimax   D: -log D(x) - log(1 - D(G(z))),  G: log(1 - D(G(z)))        (Goodfellow et al. 2014)
    ns        D: as minimax,                    G: -log D(G(z))            (the non-saturating generator loss)
    wgan      C: f(G(z)) - f(x),                G: -f(G(z)); critic weights clipped to [-c, c]
              (Arjovsky, Chintala & Bottou 2017, "Wasserstein GAN")
    wgan-gp   C: f(G(z)) - f(x) + lambda E (||grad f(x_hat)||_2 - 1)^2, x_hat = eps x + (1 - eps) G(z),
              eps ~ U[0, 1] per example (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs")
with D = sigmoid(logit), so -log D = softplus(-logit) and -log(1 - D) = softplus(logit).

The generator's vector-Jacobian product is written out by hand (`Generator.vjp`, eval mode), so that latent
optimisation exports to ONNX, which has no autograd.
"""

import torch
import torch.nn.functional as F
from torch import nn

SIDE = 28  # image height = width; two stride-2 (transposed) convolutions go to and from 7
LOW = SIDE // 4  # 7
OBJECTIVES = ("minimax", "ns", "wgan", "wgan-gp")


def critic_loss(objective: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's (discriminator's) loss from its logits on real [B] and generated [B] inputs, a scalar
    (the gradient penalty of wgan-gp comes separately)."""
    if objective in ("wgan", "wgan-gp"):
        return fake.mean() - real.mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_loss(objective: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss from the critic's logits on generated inputs [B], a scalar."""
    if objective == "minimax":
        return -F.softplus(fake).mean()  # log(1 - D(G(z)))
    if objective == "ns":
        return F.softplus(-fake).mean()  # -log D(G(z))
    return -fake.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor,
                     weight: float) -> torch.Tensor:
    """weight * mean_i (||d critic / d x_hat_i||_2 - 1)^2 at x_hat = eps x + (1 - eps) G(z), each example's
    gradient flattened before its norm: real, fake [B, ...], eps [B, 1, ...] -> a scalar, differentiable in
    the critic's parameters. critic: [B, ...] -> [B], each row depending on its own input only."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)  # [B, ...]
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)  # [B, ...]
    norms = grad.flatten(1).norm(dim=1)  # [B]
    return weight * (norms - 1).square().mean()


@torch.no_grad()
def clip_(module: nn.Module, bound: float) -> None:
    """WGAN's weight clipping: every parameter into [-bound, bound], in place."""
    for p in module.parameters():
        p.clamp_(-bound, bound)


def batch_norm_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode batch norm is x -> scale * x + shift per channel: the scale [C]."""
    return bn.weight / torch.sqrt(bn.running_var + bn.eps)


class Generator(nn.Module):
    """[z, embed(label)] -> Linear -> 2C x 7 x 7 -> BN, ReLU -> ConvT(2C, C) -> BN, ReLU -> ConvT(C, 1) -> tanh:
    images in [-1, 1], [B, 1, 28, 28]. `inputs` is z's width; `classes` > 0 adds a label embedding."""

    def __init__(self, inputs: int, channels: int, classes: int = 0, label_dim: int = 0):
        super().__init__()
        self.inputs, self.channels = inputs, channels
        self.embed = nn.Embedding(classes, label_dim) if classes else None
        self.linear = nn.Linear(inputs + (label_dim if classes else 0), 2 * channels * LOW * LOW)
        self.bn0 = nn.BatchNorm2d(2 * channels)
        self.up1 = nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.up2 = nn.ConvTranspose2d(channels, 1, 4, 2, 1)

    def joined(self, z: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """z [B, inputs], label [B] or None -> the linear layer's input [B, inputs (+ label_dim)]."""
        return z if self.embed is None else torch.cat([z, self.embed(label)], dim=1)

    def activations(self, z: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The pre-ReLU batch-norm outputs b0 [B, 2C, 7, 7], b1 [B, C, 14, 14] and the image y [B, 1, 28, 28]."""
        b0 = self.bn0(self.linear(self.joined(z, label)).view(-1, 2 * self.channels, LOW, LOW))
        b1 = self.bn1(self.up1(F.relu(b0)))
        return b0, b1, torch.tanh(self.up2(F.relu(b1)))

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.activations(z, label)[-1]

    def vjp(self, z: torch.Tensor, grad_y: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """d <grad_y, G(z)> / dz by hand, in eval mode: z [B, inputs], grad_y [B, 1, 28, 28] -> [B, inputs].

        tanh' = 1 - y^2; the adjoint of a stride-2 transposed convolution is the stride-2 convolution with the
        same weight; ReLU passes where its input is positive; eval BN multiplies by its per-channel scale."""
        return self.pullback(self.activations(z, label), grad_y)

    def pullback(self, activations: tuple[torch.Tensor, ...], grad_y: torch.Tensor) -> torch.Tensor:
        """vjp from the forward pass's activations (b0, b1, y) and grad_y [B, 1, 28, 28] -> [B, inputs]."""
        b0, b1, y = activations
        g = grad_y * (1 - y.square())  # [B, 1, 28, 28]
        g = F.conv2d(g, self.up2.weight, stride=2, padding=1) * (b1 > 0)  # [B, C, 14, 14]
        g = g * batch_norm_scale(self.bn1).view(1, -1, 1, 1)
        g = F.conv2d(g, self.up1.weight, stride=2, padding=1) * (b0 > 0)  # [B, 2C, 7, 7]
        g = g * batch_norm_scale(self.bn0).view(1, -1, 1, 1)
        return g.flatten(1) @ self.linear.weight[:, : self.inputs]  # [B, inputs]


class ConvTrunk(nn.Sequential):
    """x [B, 1, 28, 28] in [-1, 1] -> features [B, 2C * 49]: Conv(1, C) LReLU -> Conv(C, 2C) LReLU, no batch
    norm (the gradient penalty is per example)."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2),  # [B, C, 14, 14]
            nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.LeakyReLU(0.2),  # [B, 2C, 7, 7]
            nn.Flatten())  # [B, 2C * 49]


class PatchCritic(nn.Sequential):
    """images [B, in_channels, 28, 28] -> logits [B, 1, 7, 7], one per 18x18 window: Conv 4 stride 2 (14) LReLU
    -> Conv 4 stride 2 (7) LReLU -> Conv 3 (7), no batch norm, so that each logit depends on its own window of its
    own example only (the PatchGAN of pix2pix and CycleGAN)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(
            nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2),  # [B, C, 14, 14]
            nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.LeakyReLU(0.2),  # [B, 2C, 7, 7]
            nn.Conv2d(2 * channels, 1, 3, 1, 1))  # [B, 1, 7, 7]


class Critic(nn.Module):
    """The DCGAN critic: trunk -> Linear -> a logit [B]; with `classes`, plus the projection <embed(y), h>
    (Miyato & Koyama 2018, "cGANs with Projection Discriminator")."""

    def __init__(self, channels: int, classes: int = 0):
        super().__init__()
        features = 2 * channels * LOW * LOW
        self.trunk = ConvTrunk(channels)
        self.head = nn.Linear(features, 1)
        self.project = nn.Embedding(classes, features) if classes else None

    def score(self, h: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Trunk features h [B, F] (and labels [B]) -> logits [B]."""
        logit = self.head(h).squeeze(1)
        return logit if self.project is None else logit + (self.project(label) * h).sum(1)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.trunk(x), label)


class Encoder(nn.Module):
    """BiGAN's deterministic encoder: x [B, 1, 28, 28] in [-1, 1] -> z [B, latent]."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        self.net = nn.Sequential(ConvTrunk(channels), nn.Linear(2 * channels * LOW * LOW, latent))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class JointCritic(nn.Module):
    """BiGAN's discriminator of (x, z) pairs: [trunk(x), z] -> Linear -> LReLU -> Linear -> a logit [B]."""

    def __init__(self, channels: int, latent: int, hidden: int):
        super().__init__()
        self.trunk = ConvTrunk(channels)
        self.head = nn.Sequential(nn.Linear(2 * channels * LOW * LOW + latent, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.trunk(x), z], dim=1)).squeeze(1)


class LatentGradient(nn.Module):
    """The gradient in z of sum_pixels weight * (G(z) - target)^2 + prior_weight / 2 ||z||^2, by hand (eval
    mode): z [B, inputs], target [B, 1, 28, 28] in [-1, 1], weight [B, 1, 28, 28] (1 = observed), label [B] when
    the generator is conditional -> [B, inputs]."""

    def __init__(self, generator: Generator, prior_weight: float):
        super().__init__()
        self.generator, self.prior_weight = generator, prior_weight

    def forward(self, z, target, weight, *label):
        activations = self.generator.activations(z, *label)
        grad_y = 2 * weight * (activations[-1] - target)  # [B, 1, 28, 28]
        return self.generator.pullback(activations, grad_y) + self.prior_weight * z


def adam_step(z: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int,
              lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam's step t >= 1 (Kingma & Ba 2015; beta1 0.9, beta2 0.999), written out: -> (z, m, v)."""
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad * grad
    m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
    return z - lr * m_hat / (torch.sqrt(v_hat) + 1e-8), m, v


class LatentAdam(nn.Module):
    """Latent-optimisation completion, to be scripted: `steps` Adam steps on z from the start z [B, inputs]
    with the traced `gradient` (a LatentGradient), then the traced `render` z -> levels, observed levels kept:
    observed, mask [B, 1, 28, 28] int64 -> [B, 1, 28, 28] int64."""

    steps: int
    lr: float

    def __init__(self, gradient: nn.Module, render: nn.Module, steps: int, lr: float):
        super().__init__()
        self.gradient, self.render, self.steps, self.lr = gradient, render, steps, lr

    def forward(self, observed: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.where(mask == 1, observed, self.render(self.optimise(observed, mask, z)))

    def optimise(self, observed: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The start z [B, inputs] -> z after the Adam steps."""
        target, weight = observed.to(z.dtype) / 255 * 2 - 1, mask.to(z.dtype)
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        for t in range(self.steps):
            z, m, v = adam_step(z, self.gradient(z, target, weight), m, v, t + 1, self.lr)
        return z


class ConditionalLatentAdam(LatentAdam):
    """LatentAdam for a class-conditional generator: the label [B] goes to the gradient and the render."""

    def forward(self, observed: torch.Tensor, mask: torch.Tensor, z: torch.Tensor,  # type: ignore[override]
                label: torch.Tensor) -> torch.Tensor:
        return torch.where(mask == 1, observed, self.render(self.optimise(observed, mask, z, label), label))

    def optimise(self, observed: torch.Tensor, mask: torch.Tensor, z: torch.Tensor,  # type: ignore[override]
                 label: torch.Tensor) -> torch.Tensor:
        target, weight = observed.to(z.dtype) / 255 * 2 - 1, mask.to(z.dtype)
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        for t in range(self.steps):
            z, m, v = adam_step(z, self.gradient(z, target, weight, label), m, v, t + 1, self.lr)
        return z
