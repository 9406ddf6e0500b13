"""cyclegan's judge and variants: the augmentation that b's judge trains on (an identity at zero strength, stroke
thickness that only thickens or only thins each image, blur and shifts that keep the ink), the validation images
held out of domain b's batches, and the whole-image critic beside each PatchGAN."""

import numpy as np
import pytest
import torch

from training.families import cyclegan

pytestmark = pytest.mark.usefixtures("one_thread")

STILL = dict(rotation=0, shift=0, scale=0, thickness=0, blur=0)


def _digits(n: int = 16) -> np.ndarray:
    return cyclegan.digits28(mnist_frame=True).x_train[:n]  # [n, 1, 28, 28] uint8, framed: ink inside the box


def test_augmentation_at_zero_strength_is_the_identity():
    x = _digits()
    assert np.array_equal(cyclegan.augment(x, cyclegan.Augmentation(**STILL), np.random.default_rng(0)), x)


def test_thickness_makes_each_image_thicker_or_thinner_everywhere():
    x = _digits().astype(int)
    out = cyclegan.augment(x.astype(np.uint8), cyclegan.Augmentation(**STILL | {"thickness": 1}),
                           np.random.default_rng(0)).astype(int)
    thicker = (out >= x - 1).all(axis=(1, 2, 3))  # one level of rounding
    thinner = (out <= x + 1).all(axis=(1, 2, 3))
    assert (thicker | thinner).all() and thicker.any() and thinner.any()
    assert not (out == x).all()


@pytest.mark.parametrize("change", [{"blur": 1}, {"shift": 2}])
def test_blur_and_shift_keep_the_ink_of_a_framed_digit(change):
    x = _digits()
    out = cyclegan.augment(x, cyclegan.Augmentation(**STILL | change), np.random.default_rng(0))
    ink_in, ink_out = x.astype(float).sum((1, 2, 3)), out.astype(float).sum((1, 2, 3))
    assert not np.array_equal(out, x)
    np.testing.assert_allclose(ink_out, ink_in, rtol=0.02)  # rounding and a little bilinear spread only


def test_domain_b_batches_never_draw_the_validation_images():
    train = cyclegan.digits28(mnist_frame=True).x_train
    held = {image.tobytes() for image in train[-300:]}
    drawn = torch.cat([cyclegan.domain_b_batch(64, step, True, validation=300) for step in range(40)]).numpy()
    assert not {image.astype(np.uint8).tobytes() for image in drawn} & held
    some = torch.cat([cyclegan.domain_b_batch(64, step, True) for step in range(40)]).numpy()
    assert {image.astype(np.uint8).tobytes() for image in some} & held  # without it, they are drawn


def test_whole_image_critic_scores_each_image_from_all_its_pixels_and_trains():
    torch.manual_seed(0)
    config = cyclegan.CycleGANConfig(channels=4, residual_blocks=1, critic_channels=4, whole_image_critic=True)
    model = cyclegan.CycleGAN(config)
    image = torch.randn(2, 1, 28, 28, requires_grad=True)
    patch, whole = model.scores("a", image)
    assert patch.shape == (2, 7, 7) and whole.shape == (2,)
    whole[0].backward()
    assert image.grad[1].abs().sum() == 0  # its own image only
    assert image.grad[0, 0, :4, :4].abs().sum() > 0 and image.grad[0, 0, -4:, -4:].abs().sum() > 0  # both corners
    before = {name: [p.clone() for p in net.parameters()] for name, net in model.named_children()}
    assert set(before) == {"g_ab", "g_ba", "d_a", "d_b", "d_a_whole", "d_b_whole"}
    cyclegan.train_step(model, cyclegan.optimizers(model, {"lr": 1e-3}), torch.randint(0, 256, (4, 1, 28, 28)), None, 0)
    for name, net in model.named_children():
        assert any(not torch.equal(p, q) for p, q in zip(before[name], net.parameters(), strict=True)), name
