"""The maths of the GSN: the salt-and-pepper corruption's rate, the denoising loss against a hand-computed
binary cross-entropy, walkback against its one-step and two-step definitions, the chain step's clamping of
observed pixels, a few training steps lowering the loss, and export parity (eager / ONNX / TorchScript)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.export import export_function
from training.families import gsn
from training.families.gsn import GSN, GSNConfig

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "gsn-tiny.json"
SHAPE = (1, 28, 28)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_gsn(seed: int = 0, **config) -> GSN:
    torch.manual_seed(seed)
    return GSN(GSNConfig(hidden=16, layers=1, **config), SHAPE).eval()


def bits(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("p", [0.4, 0.1])
def test_corruption_replaces_a_share_p_of_pixels_by_a_fair_coin(p):
    """From all-zero and all-one images a share p/2 of pixels flips (sd ~0.001 over 156,800 pixels; the
    tolerance is 5 sd): rate p, not p/2 or 2p, and a fair coin, so flips are equally frequent both ways."""
    u = torch.rand(200, *SHAPE, generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros(200, *SHAPE, dtype=torch.long)
    up = gsn.corrupt(zeros, u, p).double().mean().item()  # pixels set to 1
    down = 1 - gsn.corrupt(zeros + 1, u, p).double().mean().item()  # pixels set to 0
    sd = math.sqrt(p / 2 * (1 - p / 2) / u.numel())
    assert abs(up - p / 2) < 5 * sd and abs(down - p / 2) < 5 * sd, (up, down, p / 2)
    x = bits(200, *SHAPE)
    out = gsn.corrupt(x, u, p)
    assert out.dtype == torch.long and torch.equal(out[u >= p], x[u >= p])  # the rest is untouched


def test_denoising_nll_is_the_binary_cross_entropy_by_hand():
    model = tiny_gsn().double()
    x, x_tilde = bits(3, *SHAPE, seed=2), bits(3, *SHAPE, seed=3)
    with torch.no_grad():
        q = torch.sigmoid(model(x_tilde))  # P(x = 1 | x~)
        expected = -(x * torch.log(q) + (1 - x) * torch.log(1 - q)).flatten(1).sum(1)
        assert torch.allclose(gsn.denoising_nll(model, x, x_tilde), expected, atol=1e-9)


def test_walkback_of_one_step_is_the_denoising_loss_and_two_steps_follow_the_chain():
    model = tiny_gsn().double()
    x = bits(4, *SHAPE, seed=4)
    noise = torch.rand(2, 4, *SHAPE, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    p = model.config.corruption
    with torch.no_grad():
        first = gsn.denoising_nll(model, x, gsn.corrupt(x, noise[0, ..., 0], p))
        assert torch.allclose(gsn.walkback_nll(model, x, noise[:1]), first, atol=1e-12)
        x_star = model.step(x, noise[0])  # where the chain goes after the first step
        second = gsn.denoising_nll(model, x, gsn.corrupt(x_star, noise[1, ..., 0], p))
        assert torch.allclose(gsn.walkback_nll(model, x, noise), (first + second) / 2, atol=1e-12)


def test_step_keeps_observed_pixels_and_is_a_function_of_its_noise():
    model = tiny_gsn()
    step = gsn.Step(model)
    x, observed = bits(3, *SHAPE, seed=6), bits(3, *SHAPE, seed=7)
    mask = torch.zeros_like(x)
    mask[..., :14, :] = 1
    noise = torch.rand(3, *SHAPE, 2, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out, again = step(x, noise, observed, mask), step(x, noise, observed, mask)
        assert out.dtype == torch.long and torch.equal(out, again) and set(out.unique().tolist()) <= {0, 1}
        assert torch.equal(out[mask == 1], observed[mask == 1])
        assert torch.equal(out[mask == 0], model.step(x, noise)[mask == 0])  # the rest is the chain's move
        none = torch.zeros_like(x)  # inverse CDF: a uniform of 0 draws 0 and one of 1 draws 1
        assert (step(x, torch.zeros(3, *SHAPE, 2), observed, none) == 0).all()
        assert (step(x, torch.ones(3, *SHAPE, 2), observed, none) == 1).all()


def test_a_few_training_steps_lower_the_walkback_loss():
    from training.data import load
    from training.train import _epoch, load_config

    config = load_config(TINY_CONFIG)
    load_config(REPO / "training" / "configs" / "gsn.json")
    split = load("mnist5k-binarized")
    torch.manual_seed(0)
    model = gsn.build(config["model"], split)
    x = torch.from_numpy(split.x_train[:64]).long()
    noise = gsn.draw_noise(model, model.config.walkback, len(x), torch.Generator().manual_seed(9))

    def fixed_loss() -> float:
        with torch.no_grad():
            return gsn.walkback_nll(model, x, noise).mean().item()

    before = fixed_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(5):  # 2 steps each
        assert np.isfinite(_epoch(gsn, model, optimizer, split, config["train"], epoch))
    assert fixed_loss() < before - 100, (before, fixed_loss())  # from ~543 (uniform logits: 784 log 2)
    with pytest.raises(ValueError):
        gsn.build({}, SimpleNamespace(levels=256, shape=SHAPE))


def test_evaluate_test_reports_denoising_losses_and_sample_quality():
    model = tiny_gsn(walkback=2, sample_steps=3, eval_samples=200)  # FID needs more samples than features
    split = SimpleNamespace(x_test=bits(200, *SHAPE, seed=10).numpy().astype(np.uint8), levels=2)
    report = gsn.evaluate_test(model, split)
    assert report["test_denoising_nll"] > 0 and report["test_walkback_nll"] > 0
    assert 1 <= report["inception_score"] <= 10 and np.isfinite(report["fid"])
    assert {"inception_score_std", "classes_covered", "class_kl"} <= set(report)
    assert "test_nll_per_example" not in report  # no likelihood to report
    assert json.loads(json.dumps(report)) == report
    assert gsn.evaluate_test(model, split)["test_denoising_nll"] == report["test_denoising_nll"]  # seeded


def test_export_parity_eager_onnx_torchscript(tmp_path, three_ways):
    model = tiny_gsn(seed=11)
    functions, capabilities = gsn.exported_functions(model, None)
    assert set(functions) == {"step"} and set(capabilities) == {"sample", "complete"}
    chain = capabilities["sample"]
    assert chain["procedure"] == "markov_chain" and chain["function"] == "step"
    assert chain["noise"] == {"noise": {"distribution": "uniform", "shape": [1, 28, 28, 2]}}
    export_function(tmp_path, "step", *functions["step"])
    g, b = torch.Generator().manual_seed(12), 3  # another batch size than the trace's
    inputs = {"x": bits(b, *SHAPE, seed=13), "noise": torch.rand(b, *SHAPE, 2, generator=g),
              "observed": bits(b, *SHAPE, seed=14), "mask": bits(b, *SHAPE, seed=15)}
    eager, onnx_out, scripted = three_ways(tmp_path, "step", functions["step"][0], inputs)
    for got in (onnx_out, scripted):
        assert got[0].shape == eager[0].shape and got[0].dtype == eager[0].dtype == np.int64
        assert (got[0] != eager[0]).mean() < 1e-3  # an inverse-CDF draw may flip only at a boundary
