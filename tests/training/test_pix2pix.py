"""pix2pix: the edge maps, the U-Net's shapes, the PatchGAN's receptive field by input gradients, the L1 baseline
leaving the discriminator untouched, and export parity of `translate` across eager, ONNX and TorchScript."""

import numpy as np
import pytest
import torch

from training.data.edges import edge_map
from training.export import export_function
from training.families import pix2pix


def test_edge_map_is_the_morphological_gradient_of_the_mask():
    x = torch.zeros(1, 1, 28, 28, dtype=torch.long)
    x[..., 10:18, 8:20] = 200  # an 8x12 block
    edges = edge_map(x)[0, 0]
    ring = torch.zeros(28, 28, dtype=torch.long)
    ring[9:19, 7:21] = 1  # the dilated block ...
    ring[11:17, 9:19] = 0  # ... less the eroded one
    assert torch.equal(edges, ring)
    x[..., 10:18, 8:20] = 100  # under the threshold: no mask, no edges
    assert edge_map(x).sum() == 0


def test_unet_keeps_the_image_shape_and_range():
    net = pix2pix.UNet(4).eval()
    out = net(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 1, 28, 28) and out.abs().max() <= 1


@pytest.mark.parametrize("i, j", [(0, 0), (3, 3), (6, 2)])
def test_patch_logit_depends_only_on_its_window(i, j):
    torch.manual_seed(0)
    critic = pix2pix.PatchGAN(4)
    s, image = torch.randn(2, 1, 28, 28, requires_grad=True), torch.randn(2, 1, 28, 28, requires_grad=True)
    logits = critic(s, image)
    assert logits.shape == (2, 7, 7)
    logits[0, i, j].backward()
    rows, columns = pix2pix.window(i, j)
    for grad in (s.grad, image.grad):
        inside = torch.zeros(28, 28, dtype=torch.bool)
        inside[rows, columns] = True
        assert grad[1].abs().sum() == 0  # the other pair of the batch
        assert grad[0, 0][~inside].abs().sum() == 0
        corners = grad[0, 0][[rows.start, rows.start, rows.stop - 1, rows.stop - 1],
                             [columns.start, columns.stop - 1, columns.start, columns.stop - 1]]
        assert (corners != 0).all()  # the window is tight: its corners count


@pytest.mark.parametrize("adversarial_weight", [0.0, 1.0])
def test_only_the_adversarial_run_trains_the_patchgan(adversarial_weight):
    torch.manual_seed(0)
    model = pix2pix.Pix2Pix(pix2pix.Pix2PixConfig(channels=4, critic_channels=4,
                                                  adversarial_weight=adversarial_weight))
    before = [p.clone() for p in model.critic.parameters()]
    optimizers = pix2pix.optimizers(model, {"lr": 1e-3})
    losses = pix2pix.train_step(model, optimizers, torch.randint(0, 256, (4, 1, 28, 28)), None, 0)
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.critic.parameters(), strict=True))
    assert changed == (adversarial_weight > 0) and ("critic" in losses) == (adversarial_weight > 0)
    if adversarial_weight == 0:  # the baseline's loss is the weighted L1 alone
        assert losses["generator"] == pytest.approx(model.config.l1_weight * losses["l1"], rel=1e-5)


def test_translate_export_parity(tmp_path, three_ways):
    torch.manual_seed(0)
    model = pix2pix.Pix2Pix(pix2pix.Pix2PixConfig(channels=4, critic_channels=4)).eval()
    translate = pix2pix.Translate(model)
    inputs = {"source": torch.randint(0, 2, (5, 1, 28, 28))}
    export_function(tmp_path, "translate", translate, inputs, ["x"])
    eager, onnx_out, scripted = three_ways(tmp_path, "translate", translate, inputs)
    assert eager[0].shape == (5, 1, 28, 28) and eager[0].dtype == np.int64
    assert 0 <= eager[0].min() and eager[0].max() <= 255
    assert np.abs(onnx_out[0] - eager[0]).max() <= 1 and (onnx_out[0] != eager[0]).mean() < 0.01  # rounding ties
    assert np.array_equal(scripted[0], eager[0])
