"""cyclegan's class survival: `semantic_weight` (the source side of CyCADA's semantic consistency loss), the
cross-entropy of a frozen classifier of domain a on the translations a -> b, whose gradient reaches G_ab only and
whose labels steer the step while the classifier stays fixed; and `optdigits`, mnist digits made into 8x8 digits
the way scikit-learn's were (the rendered baseline of a -> b)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import quality
from training.families import cyclegan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def source_classifier(monkeypatch) -> quality.Classifier:
    torch.manual_seed(0)
    judge = quality.Classifier(quality.ClassifierConfig()).eval().requires_grad_(False)
    monkeypatch.setattr(cyclegan, "source_classifier", lambda: judge)
    return judge


def _model(semantic_weight: float) -> cyclegan.CycleGAN:
    torch.manual_seed(0)
    config = cyclegan.CycleGANConfig(channels=4, residual_blocks=1, critic_channels=4, semantic_weight=semantic_weight)
    return cyclegan.CycleGAN(config)


def test_semantic_loss_is_the_source_classifiers_cross_entropy_and_trains_g_ab_only(source_classifier):
    model, y = _model(1.0), torch.tensor([3, 1, 4, 1])
    fake_b = model.g_ab(cyclegan.unit(torch.randint(0, 256, (4, 1, 28, 28))))
    loss = cyclegan.semantic_loss(fake_b, y)
    log_p = F.log_softmax(source_classifier((fake_b + 1) / 2), dim=1)  # read on 0..1 intensities
    assert loss.item() == pytest.approx(-log_p[torch.arange(4), y].mean().item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.g_ab.parameters() if p.dim() > 1)
    assert all(p.grad is None for p in [*model.g_ba.parameters(), *source_classifier.parameters()])


def test_a_step_with_the_semantic_loss_follows_the_labels_and_leaves_the_classifier(source_classifier):
    x = torch.randint(0, 256, (4, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    frozen = [p.clone() for p in source_classifier.parameters()]
    after = []
    for y in (torch.tensor([0, 1, 2, 3]), torch.tensor([9, 8, 7, 6])):
        model = _model(1.0)
        cyclegan.train_step(model, cyclegan.optimizers(model, {"lr": 1e-3}), x, y, 0)
        after.append(torch.cat([p.flatten() for p in model.g_ab.parameters()]))
    assert not torch.equal(*after)  # the labels steer G_ab
    assert all(torch.equal(p, q) for p, q in zip(frozen, source_classifier.parameters(), strict=True))


def test_optdigits_counts_the_on_pixels_of_the_20x20_box_per_4x4_block_of_a_32x32_bitmap():
    x = np.zeros((2, 1, 28, 28), np.uint8)
    x[0, 0, 4:24, 4:24] = 255  # the whole box lit; the border is not read
    x[0, 0, :4] = x[1, 0, :4] = 255
    x[1, 0, 4:24, 4:14] = 200  # the box's left half lit (above half intensity)
    x[1, 0, 4:24, 14:24] = 100  # its right half below half: off
    small = cyclegan.optdigits(x)
    assert small.shape == (2, 1, 8, 8) and small.dtype == np.uint8
    assert (small[0] == 16).all()
    assert (small[1, 0, :, :4] == 16).all() and (small[1, 0, :, 4:] == 0).all()


def test_layout_loss_ignores_ink_moved_within_4x4_blocks_and_counts_ink_moved_across():
    source = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blocks = source.reshape(2, 1, 7, 4, 7, 4)
    within = blocks.flip(3, 5).reshape(2, 1, 28, 28)  # each 4x4 block mirrored: same means, other pixels
    assert not torch.equal(within, source)
    assert cyclegan.layout_loss(source, within).item() == pytest.approx(0, abs=1e-6)
    across = source.roll(4, dims=3)  # each column of blocks moved one block right
    expected = (F.avg_pool2d(source, 4).roll(1, dims=3) - F.avg_pool2d(source, 4)).abs().mean()
    assert cyclegan.layout_loss(source, across).item() == pytest.approx(expected.item(), rel=1e-6) and expected > 0


def test_a_step_with_the_layout_loss_moves_the_generators_towards_their_sources_layout():
    x = torch.randint(0, 256, (4, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    a = cyclegan.unit(x)
    layouts = []
    for weight in (0.0, 100.0):
        model = _model(0.0)
        model.config.layout_weight = weight
        optimizers = cyclegan.optimizers(model, {"lr": 1e-2})
        for step in range(3):
            cyclegan.train_step(model, optimizers, x, torch.zeros(4).long(), step)
        layouts.append(cyclegan.layout_loss(a, model.g_ab(a)).item())
    assert layouts[1] < layouts[0]
