"""The maths of the output distributions: normalisation, samplers match log_prob, stable gradients, mu-law."""

import io
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from scipy.stats import chisquare

from training.distributions import bernoulli, categorical, gaussian, logistic_mixture, mu_law


def uniform(*shape, seed=0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def mixture_params(batch: int, k: int, seed=0, dtype=torch.float64) -> torch.Tensor:
    """[batch, 3k]: logits in [-10, 10], means in [-5, 5], log scales in [-20, 20] (clamped and fallback)."""
    u = uniform(batch, 3, k, seed=seed, dtype=dtype)
    return torch.cat([20 * u[:, 0] - 10, 10 * u[:, 1] - 5, 40 * u[:, 2] - 20], dim=-1)


def assert_fits(samples: torch.Tensor, log_probs: torch.Tensor) -> None:
    """Chi-square goodness of fit of integer samples to exp(log_probs) [levels], pooling rare levels."""
    n = samples.numel()
    observed = np.bincount(samples.numpy(), minlength=log_probs.numel()).astype(float)
    expected = log_probs.exp().numpy() * n
    rare = expected < 5
    if rare.any():
        observed = np.append(observed[~rare], observed[rare].sum())
        expected = np.append(expected[~rare], expected[rare].sum())
    assert chisquare(observed, expected * n / expected.sum()).pvalue > 1e-3


def test_categorical_sums_to_one_and_samples_fit():
    logits = torch.tensor([[-30.0, 0.0, 30.0, 29.0], [0.1, -2.0, 1.5, 0.0]], dtype=torch.float64)
    total = torch.stack([categorical.log_prob(logits, torch.full((2,), v)) for v in range(4)]).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), atol=1e-5, rtol=0)
    n = 4000
    samples = categorical.sample(logits[1].expand(n, 4), uniform(n), torch.ones(n))
    assert_fits(samples, categorical.log_prob(logits[1].expand(4, 4), torch.arange(4)))


def test_bernoulli_sums_to_one_and_samples_fit():
    logits = torch.tensor([-50.0, -3.0, 0.0, 0.7, 50.0], dtype=torch.float64)
    total = bernoulli.log_prob(logits, torch.zeros(5)).exp() + bernoulli.log_prob(logits, torch.ones(5)).exp()
    torch.testing.assert_close(total, torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
    n = 4000
    logit = torch.full((n,), 0.7, dtype=torch.float64)
    samples = bernoulli.sample(logit, uniform(n), torch.ones(n))
    assert_fits(samples, bernoulli.log_prob(logit[:2], torch.arange(2)))


@pytest.mark.parametrize("levels", [2, 8, 256])
def test_logistic_mixture_sums_to_one(levels):
    params = mixture_params(64, 5, seed=levels)
    x = torch.arange(levels).unsqueeze(-1).expand(levels, 64)
    total = logistic_mixture.log_prob(params.expand(levels, 64, 15), x, levels).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(64, dtype=torch.float64), atol=1e-5, rtol=0)


def test_logistic_mixture_sums_to_one_in_float32():
    params = mixture_params(64, 5, dtype=torch.float32)
    x = torch.arange(256).unsqueeze(-1).expand(256, 64)
    total = logistic_mixture.log_prob(params.expand(256, 64, 15), x, 256).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(64), atol=1e-4, rtol=0)


def test_logistic_mixture_samples_fit():
    levels, n = 8, 5000
    params = torch.tensor([0.5, -1.0, 0.2, -0.7, 0.1, 0.9, -1.5, -2.5, -1.0], dtype=torch.float64)
    samples = logistic_mixture.sample(params.expand(n, 9), uniform(n, 2), torch.ones(n), levels)
    assert_fits(samples, logistic_mixture.log_prob(params.expand(levels, 9), torch.arange(levels), levels))


def test_logistic_mixture_temperature_goes_to_the_mode_of_the_heaviest_component():
    params = torch.tensor([3.0, 0.0, 0.3, -0.6, -1.0, -1.0], dtype=torch.float64)
    samples = logistic_mixture.sample(params.expand(100, 6), uniform(100, 2), torch.full((100,), 1e-3), 256)
    assert (samples == round(1.3 * 255 / 2)).all()


def test_logistic_mixture_gradients_are_finite_at_edges_and_extremes():
    levels = 256
    logits = torch.tensor([[0.0, 30.0, -30.0]]).expand(6, 3)
    means = torch.tensor([[-5.0, 5.0, 0.0], [5.0, -5.0, 0.0], [-5.0, 5.0, 1.0]]).repeat(2, 1)
    log_scales = torch.tensor([[-20.0, -20.0, 20.0]]).expand(6, 3)
    x = torch.tensor([0, levels - 1, 1, levels - 2, 3, 128])
    for dtype in (torch.float32, torch.float64):
        params = torch.cat([logits, means, log_scales], dim=-1).to(dtype).requires_grad_()
        lp = logistic_mixture.log_prob(params, x, levels)
        (grad,) = torch.autograd.grad(lp.sum(), params)
        assert torch.isfinite(lp).all() and torch.isfinite(grad).all()


def test_logistic_mixture_narrow_bins_fall_back_to_pdf_times_width():
    """With a scale of e^20 every interior bin is < NARROW_BIN scales wide and uses the fallback."""
    levels, mean, log_scale = 256, 0.3, 20.0
    params = torch.tensor([[0.0, mean, log_scale]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([1, 100, 254])
    lp = logistic_mixture.log_prob(params.expand(3, 3), x, levels)
    (grad,) = torch.autograd.grad(lp.sum(), params)
    centre = x.double() * 2 / (levels - 1) - 1
    z = (centre - mean) / math.exp(log_scale)
    log_pdf = -z - log_scale - 2 * torch.log1p(torch.exp(-z))
    assert torch.isfinite(lp).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(lp, log_pdf + math.log(2 / (levels - 1)), atol=1e-9, rtol=0)


def test_logistic_mixture_is_continuous_across_the_fallback_threshold():
    threshold = math.log(2 / 255 / logistic_mixture.NARROW_BIN)
    log_scales = torch.tensor([threshold - 1e-9, threshold + 1e-9], dtype=torch.float64)
    params = torch.stack([torch.zeros(2), torch.full((2,), 0.1), log_scales], dim=-1)
    lp = logistic_mixture.log_prob(params, torch.full((2,), 140), 256)
    torch.testing.assert_close(lp[0], lp[1], atol=1e-6, rtol=0)


def test_gaussian_log_prob_matches_torch():
    mean, log_scale, x = uniform(3, 50, seed=1).mul(8).sub(4).unbind(0)
    expected = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x)
    torch.testing.assert_close(gaussian.log_prob(mean, log_scale, x), expected)


def test_gaussian_samples_have_the_right_moments():
    n = 20000
    x = gaussian.sample(torch.tensor(1.5), torch.tensor(math.log(2.0)), uniform(n), torch.tensor(0.5))
    assert abs(x.mean().item() - 1.5) < 0.05 and abs(x.std().item() - 1.0) < 0.03
    edges = gaussian.sample(torch.zeros(2), torch.zeros(2), torch.tensor([0.0, 1.0]), torch.ones(2))
    assert torch.isfinite(edges).all() and edges[0] < -5 and edges[1] > 5


def test_sampling_is_deterministic_and_independent_of_the_batch():
    n = 50
    logits, params = uniform(n, 4, seed=2), mixture_params(n, 3, seed=3)
    u, u2, t = uniform(n, seed=4), uniform(n, 2, seed=5), torch.ones(n)
    draws = [
        lambda i: categorical.sample(logits[i], u[i], t[i]),
        lambda i: bernoulli.sample(logits[i, 0], u[i], t[i]),
        lambda i: gaussian.sample(logits[i, 0], logits[i, 1], u[i], t[i]),
        lambda i: logistic_mixture.sample(params[i], u2[i], t[i], 256),
    ]
    for draw in draws:
        whole = draw(slice(None))
        assert torch.equal(whole, draw(slice(None)))
        assert torch.equal(whole[7:9], draw(slice(7, 9)))


def test_mu_law_round_trip_within_a_bin():
    x = torch.linspace(-1, 1, 20001)
    q = mu_law.encode(x)
    centres = mu_law.decode(torch.arange(256))
    gaps = centres.diff()
    bin_width = torch.maximum(gaps[(q - 1).clamp(0, 254)], gaps[q.clamp(max=254)])
    assert ((mu_law.decode(q) - x).abs() <= bin_width).all()
    assert q.min() == 0 and q.max() == 255 and (q.diff() >= 0).all()


def test_mu_law_decode_then_encode_is_the_identity():
    q = torch.arange(256)
    assert torch.equal(mu_law.encode(mu_law.decode(q)), q)
    assert mu_law.encode(torch.tensor([0.0])).item() == 128


class Exported(torch.nn.Module):
    """The discrete distributions and mu-law as one graph, to check they export to ONNX as export.py does."""

    def forward(self, params, u, temperature, logits, x, audio):
        return (
            logistic_mixture.log_prob(params, x, 256),
            logistic_mixture.sample(params, u, temperature, 256),
            bernoulli.log_prob(logits[:, 0], x.clamp(max=1)),
            bernoulli.sample(logits[:, 0], u[:, 0], temperature),
            categorical.sample(logits, u[:, 0], temperature),
            mu_law.encode(audio),
            mu_law.decode(x),
        )


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_export_matches_torch():
    n = 64
    args = (
        mixture_params(n, 5, dtype=torch.float32),
        uniform(n, 2, dtype=torch.float32),
        torch.ones(n),
        uniform(n, 4, seed=1, dtype=torch.float32) * 6 - 3,
        torch.arange(n) * 4,
        torch.linspace(-1, 1, n),
    )
    onnx = io.BytesIO()
    torch.onnx.export(Exported(), args, onnx, dynamo=False, opset_version=17)
    session = ort.InferenceSession(onnx.getvalue())
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)})
    for actual, expected in zip(got, Exported()(*args), strict=True):
        np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_bernoulli_log_prob_exports_to_onnx_without_nan_at_large_logits(tmp_path):
    """A trained decoder's logits reach +-30; the exported graph must stay finite and equal eager there."""
    class LogProb(torch.nn.Module):
        def forward(self, logits, x):
            return bernoulli.log_prob(logits, x)

    logits = torch.tensor([[-80.0, -30.0, -1.0, 0.0, 1.0, 30.0, 80.0]])
    x = torch.tensor([[0, 1, 0, 1, 1, 0, 1]])
    torch.onnx.export(LogProb(), (logits, x), str(tmp_path / "b.onnx"), dynamo=False, opset_version=17,
                      input_names=["logits", "x"], output_names=["log_p"])
    session = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"logits": logits.numpy(), "x": x.numpy()})
    expected = torch.distributions.Bernoulli(logits=logits.double()).log_prob(x.double()).numpy()
    assert np.isfinite(got).all() and np.allclose(got, expected, rtol=1e-5, atol=1e-6)
