"""cyclegan: the cycle loss (zero for inverse generators, exact for others), the LSGAN losses' signs, domain b
(scikit-learn's digits upscaled) and its step-seeded batches, a training step that never reads labels, and export
parity of both directions across eager, ONNX and TorchScript."""

import numpy as np
import pytest
import torch
from torch import nn

from training.export import export_function
from training.families import cyclegan

pytestmark = pytest.mark.usefixtures("one_thread")


class Shift(nn.Module):
    def __init__(self, by: float):
        super().__init__()
        self.by = by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.by


def test_cycle_loss_is_zero_for_inverse_generators_and_exact_otherwise():
    a, b = torch.rand(4, 1, 28, 28) * 2 - 1, torch.rand(3, 1, 28, 28) * 2 - 1
    assert cyclegan.cycle_loss(nn.Identity(), nn.Identity(), a, b) == 0
    assert cyclegan.cycle_loss(Shift(0.25), Shift(-0.25), a, b).item() == pytest.approx(0, abs=1e-6)
    # two shifts the same way: each cycle is off by 0.5 at every pixel, so the two means sum to 1
    assert cyclegan.cycle_loss(Shift(0.25), Shift(0.25), a, b).item() == pytest.approx(1.0, rel=1e-6)


def test_lsgan_losses_point_the_right_way():
    ones, zeros = torch.ones(2, 7, 7), torch.zeros(2, 7, 7)
    assert cyclegan.critic_loss(real=ones, fake=zeros) == 0  # a perfect discriminator
    assert cyclegan.critic_loss(real=zeros, fake=ones) == 1  # the worst one
    assert cyclegan.generator_loss(ones) == 0 < cyclegan.generator_loss(zeros) == 1  # fooled vs not
    fake = torch.full((2, 7, 7), 0.3, requires_grad=True)
    cyclegan.generator_loss(fake).backward()
    assert (fake.grad < 0).all()  # descent raises the score of generated images towards "real"


def test_domain_b_is_the_upscaled_sklearn_digits_drawn_by_step():
    from training.data import digits

    flat = np.full((1, 1, 8, 8), 4)
    assert np.array_equal(cyclegan.upscale(flat), np.full((1, 1, 28, 28), 64))  # 4 / 16 * 255 = 63.75
    half = np.zeros((1, 1, 8, 8), int)
    half[..., 4:] = 16  # the right half lit: so are the right 12 of 28 columns, the left 12 dark, a ramp between
    row = cyclegan.upscale(half)[0, 0, 0].astype(int)
    assert (row[:12] == 0).all() and (row[16:] == 255).all() and (np.diff(row[11:17]) > 0).all()
    b, small = cyclegan.digits28(), digits()
    assert b.shape == (1, 28, 28) and b.levels == 256 and np.array_equal(b.y_test, small.y_test)
    assert torch.equal(cyclegan.domain_b_batch(8, 3), cyclegan.domain_b_batch(8, 3))
    assert not torch.equal(cyclegan.domain_b_batch(8, 3), cyclegan.domain_b_batch(8, 4))


@pytest.mark.parametrize("b_grid", [False, True])
def test_a_training_step_updates_all_four_networks_without_labels(b_grid):
    torch.manual_seed(0)
    model = cyclegan.CycleGAN(cyclegan.CycleGANConfig(channels=4, residual_blocks=1, critic_channels=4,
                                                      mnist_frame=b_grid, b_grid=b_grid))
    before = {name: [p.clone() for p in net.parameters()] for name, net in model.named_children()}
    optimizers = cyclegan.optimizers(model, {"lr": 1e-3})
    losses = cyclegan.train_step(model, optimizers, torch.randint(0, 256, (4, 1, 28, 28)), None, 0)
    assert set(losses) == {"critics", "adversarial", "cycle"} and all(np.isfinite(list(losses.values())))
    for name, net in model.named_children():
        assert any(not torch.equal(p, q) for p, q in zip(before[name], net.parameters(), strict=True)), name


def test_patch_scores_see_only_their_window():
    critic = cyclegan.PatchGAN(4)
    image = torch.randn(2, 1, 28, 28, requires_grad=True)
    scores = critic(image)
    assert scores.shape == (2, 7, 7)
    scores[0, 0, 0].backward()
    assert image.grad[1].abs().sum() == 0 and image.grad[0, 0, 11:, :].abs().sum() == 0  # rows 0..10 only


def test_on_grid_draws_as_b_is_drawn_and_reads_back_through_noise():
    assert torch.allclose(cyclegan.area_matrix(20, 8).sum(1), torch.ones(8))  # each cell an average
    ramp = torch.arange(20.0).expand(20, 20)  # [20, 20]: column j holds j
    cells = cyclegan.area_matrix(20, 8) @ ramp @ cyclegan.area_matrix(20, 8).T  # [8, 8]
    # cell 0 covers pixels 0, 1 and half of 2: (0 + 1 + 2 / 2) / 2.5; cell 1 half of 2, then 3 and 4; mirrored
    assert torch.allclose(cells[0, :2], torch.tensor([0.8, 3.2])) and torch.allclose(cells[0] + cells[0].flip(0),
                                                                                      torch.full((8,), 19.0))
    on_grid = cyclegan.OnGrid(cyclegan.Generator(4, 1), border=4)
    grid = torch.randint(0, 17, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    drawn = cyclegan.levels(on_grid.draw(grid.float() / 8 - 1)).numpy()  # levels 0..16 as [-1, 1]
    assert np.abs(drawn - cyclegan.upscale(grid.numpy().astype(np.uint8), border=4)).max() <= 1  # rounding
    a = cyclegan.unit(torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(1)))
    fake_b, read_back = cyclegan.a_to_b_and_read_back(on_grid, a)
    assert torch.equal(fake_b, on_grid(a))
    assert fake_b[:, :, :4].eq(-1).all() and 0 < (read_back - fake_b).abs().max() <= cyclegan.GRID_NOISE
    plain = cyclegan.Generator(4, 1)
    assert all(torch.equal(t, plain(a)) for t in cyclegan.a_to_b_and_read_back(plain, a))


@pytest.mark.parametrize("b_grid", [False, True])
@pytest.mark.parametrize("direction", ["a_to_b", "b_to_a"])
def test_both_directions_export_with_parity(tmp_path, three_ways, direction, b_grid):
    torch.manual_seed(0)
    config = cyclegan.CycleGANConfig(channels=4, residual_blocks=1, critic_channels=4, mnist_frame=b_grid,
                                     b_grid=b_grid)
    model = cyclegan.CycleGAN(config).eval()
    functions, capabilities = cyclegan.exported_functions(model, cyclegan.digits28())
    assert capabilities["translate"]["directions"][direction]["function"] == direction
    module, _, outputs = functions[direction]
    inputs = {"source": torch.randint(0, 256, (5, 1, 28, 28), generator=torch.Generator().manual_seed(1))}
    export_function(tmp_path, direction, module, inputs, outputs)
    eager, onnx_out, scripted = three_ways(tmp_path, direction, module, inputs)
    assert eager[0].shape == (5, 1, 28, 28) and eager[0].dtype == np.int64
    assert 0 <= eager[0].min() and eager[0].max() <= 255
    assert np.abs(onnx_out[0] - eager[0]).max() <= 1 and (onnx_out[0] != eager[0]).mean() < 0.01  # rounding ties
    assert np.array_equal(scripted[0], eager[0])
