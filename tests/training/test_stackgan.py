"""StackGAN: conditioning augmentation's KL against the closed form and its reparameterized draws, the two stages'
shapes, the matching-aware loss, and export parity of `sample` (eager, ONNX, TorchScript)."""

import numpy as np
import torch
from torch.distributions import Normal, kl_divergence

from training.data import captions
from training.export import export_function
from training.families import stackgan

TINY = stackgan.StackGANConfig(latent=4, embedding=8, condition=3, compressed=4, channels=4, residual_blocks=1)
THRESHOLDS = captions.Thresholds(np.tile([[1.5, 2.5]], (10, 1)), np.tile([[15.0, 18.0]], (10, 1)))


def tiny() -> stackgan.StackGAN:
    torch.manual_seed(0)
    return stackgan.StackGAN(TINY, THRESHOLDS).eval()


def test_conditioning_augmentation_kl_is_the_closed_form():
    torch.manual_seed(0)
    mu, log_var = torch.randn(5, 3), torch.randn(5, 3)
    expected = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(stackgan.kl_divergence(mu, log_var), expected, atol=1e-6)
    assert stackgan.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_conditioning_is_drawn_from_mu_and_sigma():
    """c = mu + sigma * eps_c: Stage I's input moves with eps_c by exactly sigma(phi) * eps_c."""
    model = tiny()
    caption = captions.tokens(["a thick seven"] * 2)
    seen = []
    model.stage1.forward = lambda z, c: seen.append(c) or torch.zeros(len(z), 1, 14, 14)
    eps = torch.zeros(2, TINY.latent)
    eps_c = torch.zeros(2, 2, TINY.condition)
    eps_c[1, 0] = 1.0
    with torch.no_grad():
        model.generate(caption, eps, eps_c)
        mu, log_var = model.augment1(model.encoder(caption))
    assert torch.allclose(seen[0][0], mu[0]) and torch.allclose(seen[0][1] - seen[0][0], (0.5 * log_var[1]).exp())


def test_stages_draw_14_then_28_and_the_loss_is_matching_aware():
    model = tiny()
    caption = captions.tokens(["a thin two", "a large nine slanted to the left"])
    draft, image, kl = model.generate(caption, *model.noise(2))
    assert draft.shape == (2, 1, 14, 14) and image.shape == (2, 1, 28, 28) and kl.item() > 0
    real = torch.rand(2, 1, 28, 28) * 2 - 1

    def loss(score) -> float:
        critic = stackgan.Discriminator(TINY, 28)
        critic.forward = lambda x, words: torch.full((2,), 20.0 if score(x, words) else -20.0)
        return stackgan._critic_loss(critic, real, image, caption, caption.roll(1, 0)).item()

    assert loss(lambda x, words: x is real and torch.equal(words, caption)) < 1e-6  # matches image and words
    assert abs(loss(lambda x, words: x is real) - 10.0) < 1e-6  # blind to the words: real with wrong ones costs


def test_sample_export_parity(tmp_path, three_ways):
    model = tiny()
    sample = stackgan.Sample(model).eval()
    eps, eps_c = model.noise(3, torch.Generator().manual_seed(1))
    inputs = {"eps": eps, "eps_c": eps_c, "temperature": torch.tensor([1.0, 0.5, 1.0]),
              "caption": captions.tokens(["a thick seven", "a small two upright", "an eight"])}
    export_function(tmp_path, "sample", sample, inputs, ["x"])
    eager, onnx_out, scripted = three_ways(tmp_path, "sample", sample, inputs)
    assert eager[0].shape == (3, 1, 28, 28) and eager[0].dtype == np.int64
    assert np.abs(onnx_out[0] - eager[0]).max() <= 1 and (onnx_out[0] != eager[0]).mean() < 0.01  # rounding ties
    assert np.array_equal(scripted[0], eager[0])
