"""The density-flow family: exact round trips, log_prob against the change of variables by hand, the
preprocessing Jacobian against autograd, and export parity (eager, ONNX Runtime, TorchScript) for every kind."""

import math

import numpy as np
import pytest
import torch

from training.export import export_function
from training.families import flow
from training.families.flow import DensityFlow, FlowConfig
from training.nn import coupling

TINY = {
    "nice": {"kind": "nice", "layers": 2, "hidden": 16, "depth": 1},
    "realnvp": {"kind": "realnvp", "layers": 1, "hidden": 4},
    "maf": {"kind": "maf", "layers": 2, "hidden": 16, "depth": 1},
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def perturb(model: DensityFlow, seed: int = 0) -> DensityFlow:
    """Random weights everywhere, including the zero-initialised last layers, so no step is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def model_of(kind: str, seed: int = 0) -> DensityFlow:
    torch.manual_seed(seed)
    return perturb(DensityFlow(FlowConfig(**TINY[kind])), seed).eval()


def images(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", TINY)
def test_decode_of_encode_is_the_identity(kind):
    model = model_of(kind)
    x = images()
    x[0] = 0  # the extremes too
    x[1, 0, :14] = 255
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (3, 784)
        assert torch.equal(model.decode(z), x)


@pytest.mark.parametrize("kind", TINY)
def test_log_prob_is_the_change_of_variables_by_hand(kind):
    model = model_of(kind).double()
    x = images(2, seed=1)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = (x.double() + u) / 256
    p = 0.05 + 0.9 * y
    v = torch.log(p / (1 - p))
    log_jac = (math.log(0.9) - torch.log(p) - torch.log(1 - p)).flatten(1).sum(1)
    h = v if kind == "realnvp" else v.flatten(1)
    log_det = torch.zeros(2, dtype=torch.float64)
    for step in model.flow.transforms:  # each transform by hand
        h, ld = step(h)
        log_det = log_det + ld
    z = h.flatten(1)
    log_base = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(1)
    expected = log_base + log_det + log_jac - 784 * math.log(256)
    with torch.no_grad():
        assert torch.allclose(model.log_prob(x, u), expected, atol=1e-8)
        u = torch.rand(x.shape, dtype=torch.float64)  # the exported score is the bound at the given draw
        assert torch.allclose(flow.LogProb(model)(x, u), model.log_prob(x, u))


def test_maf_log_det_is_the_log_abs_det_of_the_jacobian():
    model = DensityFlow(FlowConfig(kind="maf", layers=2, hidden=8, depth=1))
    model = perturb(model).double().eval()
    v = torch.randn(1, 784, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: model.flow(t)[0], v)[0, :, 0]  # [784, 784]
    assert torch.allclose(model.flow(v)[1], torch.linalg.slogdet(jac)[1], atol=1e-6)


def test_preprocessing_jacobian_equals_autograd():
    model = model_of("nice").double()
    x = images(1, seed=3)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, log_jac = model.preprocess(x, u)
    total = 0.0
    for pixel in range(784):  # dv/dy is diagonal: each pixel's derivative by autograd
        y = ((x.double().flatten()[pixel] + u.flatten()[pixel]) / 256).requires_grad_()
        p = 0.05 + 0.9 * y
        (dv,) = torch.autograd.grad(torch.log(p) - torch.log1p(-p), y)
        total += math.log(abs(dv.item()))
    assert log_jac.item() == pytest.approx(total, abs=1e-8)
    # and the full Jacobian of a few pixels is diagonal with those entries
    y = ((x.double() + u) / 256).flatten()[:5].requires_grad_()
    jac = torch.autograd.functional.jacobian(lambda t: torch.logit(0.05 + 0.9 * t), y)
    assert torch.allclose(jac, torch.diag(torch.diagonal(jac)))


def test_one_dimensional_dequantized_probabilities_sum_to_at_most_one():
    """The same preprocessing and a 1-D affine flow: sum over the 256 levels of exp(bound at one u) <= 1 in
    expectation; at the bin centre the density times the bin width sums to about 1."""
    scale, shift = torch.tensor(1.7, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    x = torch.arange(256, dtype=torch.float64)

    def log_p(u):
        p = 0.05 + 0.9 * (x + u) / 256
        v = torch.log(p / (1 - p))
        z = (v - shift) / scale
        return -0.5 * z * z - 0.5 * math.log(2 * math.pi) - torch.log(scale) + torch.log(0.9 / (p * (1 - p))) \
            - math.log(256)

    mass = torch.stack([log_p(u).exp().sum() for u in torch.rand(200, dtype=torch.float64)]).mean()
    assert mass <= 1.0 and mass > 0.9
    assert log_p(torch.tensor(0.5, dtype=torch.float64)).exp().sum().item() == pytest.approx(mass.item(), abs=0.05)


@pytest.mark.parametrize("kind", TINY)
def test_every_exported_function_agrees_across_eager_onnx_and_torchscript(kind, tmp_path, three_ways):
    model = model_of(kind)
    functions, capabilities = flow.exported_functions(model, split=None)
    assert set(functions) == {"log_prob", "sample", "encode", "decode", "complete_step"}
    assert capabilities["score"] == {"procedure": "direct", "function": "log_prob", "method": "dequantized",
                                     "is_lower_bound": True,
                                     "noise": {"noise": {"distribution": "uniform", "shape": [1, 28, 28]}}}
    g = torch.Generator().manual_seed(1)
    x = images(3, seed=5)
    with torch.no_grad():
        z = model.encode(x)
    feeds = {"x": x, "z": z, "eps": torch.randn(3, 784, generator=g), "temperature": torch.rand(3, generator=g) + 0.5,
             "noise": torch.rand(3, 1, 28, 28, generator=g)}
    for name, (module, example, outputs) in functions.items():
        export_function(tmp_path, name, module, example, outputs)
        inputs = {n: feeds[n] for n in example} if name != "complete_step" else {
            "x": x, "noise": torch.rand(3, 1, 28, 28, 2, generator=g), "accept": torch.rand(3, 1, generator=g),
            "observed": images(3, seed=6), "mask": torch.randint(0, 2, (3, 1, 28, 28), generator=g)}
        eager, onnx_out, scripted = three_ways(tmp_path, name, module, inputs)
        for got in (onnx_out, scripted):
            for a, e in zip(got, eager, strict=True):
                assert a.shape == e.shape and a.dtype == e.dtype, name
                if name in ("sample", "decode", "complete_step"):  # levels: may flip only at a boundary
                    assert (a != e).mean() < 1e-3, name
                else:
                    assert np.allclose(a, e, rtol=1e-4, atol=1e-3), name
    with torch.no_grad():
        assert np.array_equal(functions["decode"][0](z).numpy(), x.float().numpy())  # decode(encode(x)) = x
        z = feeds["temperature"].unsqueeze(1) * feeds["eps"]  # sample = decode(temperature * eps), eager flow
        assert (functions["sample"][0](feeds["eps"], feeds["temperature"]) != model.decode(z)).float().mean() < 1e-3


def test_build_requires_256_level_28x28_images():
    class Split:
        levels, shape = 2, (1, 28, 28)

    with pytest.raises(ValueError):
        flow.build({"kind": "nice"}, Split())
    Split.levels = 256
    assert isinstance(flow.build({"kind": "nice", "hidden": 8, "layers": 2}, Split()).flow, coupling.FlowSequence)


def test_loss_trains_and_evaluate_test_reports_per_image_bounds():
    class Split:
        x_test = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28)).astype(np.uint8)

    model = model_of("nice")
    x = torch.from_numpy(Split.x_test).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first = flow.loss(model, x, None)
    for _ in range(5):
        loss = flow.loss(model, x, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert flow.loss(model, x, None).item() < first.item()
    report = flow.evaluate_test(model, Split())
    assert len(report["test_nll_per_example"]) == 5 and report["method"] == "dequantized"
    assert report == flow.evaluate_test(model, Split())  # a fixed seed
    samples = flow.sample_grid(model, torch.Generator().manual_seed(0), n=4)
    assert samples.shape == (4, 1, 28, 28) and samples.dtype == torch.int64


@pytest.mark.parametrize("kind", ["nice", "realnvp"])
def test_complete_step_keeps_observed_pixels_and_moves_the_rest(kind):
    model = model_of(kind)
    step = flow.CompleteStep(model)
    g = torch.Generator().manual_seed(9)
    x, observed = images(4, seed=7), images(4, seed=8)
    mask = torch.zeros_like(x)
    mask[..., :14, :] = 1
    out = x
    with torch.no_grad():
        for _ in range(20):
            out = step(out, torch.rand(4, 1, 28, 28, 2, generator=g, dtype=torch.float64),
                       torch.rand(4, 1, generator=g, dtype=torch.float64), observed, mask)
    assert torch.equal(out[mask == 1], observed[mask == 1])
    assert not torch.equal(out[mask == 0], x[mask == 0]) and out.min() >= 0 and out.max() <= 255
