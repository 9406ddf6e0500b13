"""cyclegan's `mnist_frame` option: domain b's digits upscaled to MNIST's 20x20 box inside a dark 4-pixel border,
the same digits and labels as the unframed domain, and named so in the exported directions."""

import numpy as np
import torch

from training.families import cyclegan


def test_framing_centres_the_upscaled_digit_in_a_4_pixel_border():
    flat = np.full((1, 1, 8, 8), 4)
    framed = cyclegan.upscale(flat, border=4)[0, 0]
    assert framed.shape == (28, 28) and (framed[4:24, 4:24] == 64).all()  # 4 / 16 * 255 = 63.75
    framed[4:24, 4:24] = 0
    assert not framed.any()  # the border is dark
    x = np.random.default_rng(0).integers(0, 17, (3, 1, 8, 8))
    inner = torch.nn.functional.interpolate(torch.from_numpy(x).float() / 16, size=(20, 20), mode="bilinear")
    assert np.array_equal(cyclegan.upscale(x, border=4)[..., 4:24, 4:24], torch.round(inner * 255).numpy())


def test_framed_domain_b_keeps_the_digits_and_their_draws():
    plain, framed = cyclegan.digits28(), cyclegan.digits28(mnist_frame=True)
    assert np.array_equal(plain.y_train, framed.y_train) and np.array_equal(plain.y_test, framed.y_test)
    assert framed.x_train[..., :4, :].max() == 0 and framed.x_train[..., 24:].max() == 0
    assert plain.x_train[..., :4, :].max() > 0  # unframed digits reach the edge
    batch = cyclegan.domain_b_batch(8, 3, mnist_frame=True)
    indices = np.random.default_rng(3).choice(len(framed.x_train), 8, replace=False)
    assert torch.equal(batch, torch.from_numpy(framed.x_train[indices]).long())


def test_a_framed_model_names_its_domain_in_the_exported_directions():
    config = cyclegan.CycleGANConfig(channels=4, residual_blocks=1, critic_channels=4, mnist_frame=True)
    _, capabilities = cyclegan.exported_functions(cyclegan.CycleGAN(config), cyclegan.digits28(mnist_frame=True))
    directions = capabilities["translate"]["directions"]
    assert directions["a_to_b"]["to"] == directions["b_to_a"]["from"] == cyclegan.DOMAINS["b-framed"]
