"""The VAE's exported functions: export parity for every decoder and posterior, the hand-written decoder
gradient of the served refinement against autograd, the observed-pixel invariant of completion, and the
flow posteriors' log-weights against a direct computation."""

import numpy as np
import pytest
import torch

from training.distributions import gaussian
from training.export import export_function
from training.families import vae
from training.families.vae import VAE, VAEConfig

VARIANTS = {
    "bernoulli-gaussian": {},
    "logistic-gaussian": {"decoder": "logistic", "components": 2},
    "bernoulli-planar": {"posterior": "planar", "flow_steps": 2},
    "bernoulli-iaf": {"posterior": "iaf", "flow_steps": 2, "flow_hidden": 8},
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def model_of(variant: str, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig(latent=3, channels=2, **VARIANTS[variant])).eval()


def images(model: VAE, b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.levels, (b, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_exported_function_agrees_across_eager_onnx_and_torchscript(variant, tmp_path, three_ways):
    model = model_of(variant)
    functions, capabilities = vae.exported_functions(model, split=None)
    assert set(capabilities) == {"sample", "encode", "decode", "score", "complete"}
    g = torch.Generator().manual_seed(1)
    for name, (module, example, outputs) in functions.items():
        export_function(tmp_path, name, module, example, outputs)
        b = 3  # another batch size than the trace's
        inputs = {}
        for input_name, t in example.items():
            shape = (b, *t.shape[1:])
            if t.dtype == torch.long:
                inputs[input_name] = torch.randint(0, 2 if input_name == "mask" else model.levels, shape, generator=g)
            elif input_name in ("std", "temperature"):
                inputs[input_name] = torch.rand(shape, generator=g) + 0.5
            elif input_name == "noise":
                inputs[input_name] = torch.rand(shape, generator=g)
            else:
                inputs[input_name] = torch.randn(shape, generator=g)
        eager, onnx_out, scripted = three_ways(tmp_path, name, module, inputs)
        for got in (onnx_out, scripted):
            for a, e in zip(got, eager, strict=True):
                assert a.shape == e.shape, name
                if e.dtype == np.int64:  # sampled levels: an inverse-CDF draw may flip only at a boundary
                    assert (a != e).mean() < 1e-3, name
                else:
                    assert np.allclose(a, e, rtol=1e-4, atol=1e-4), name


def test_decoder_vjp_equals_autograd():
    model = model_of("bernoulli-gaussian").double()
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    g_logits = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    (expected,) = torch.autograd.grad((model.decoder(z) * g_logits).sum(), z)
    assert torch.allclose(vae.decoder_vjp(model, z.detach(), g_logits), expected, atol=1e-10)


def test_refine_step_is_a_gradient_ascent_step_on_the_monte_carlo_elbo():
    model = model_of("bernoulli-gaussian").double()
    x = images(model, 2)
    mean = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    log_std = (0.3 * torch.randn(2, 3, dtype=torch.float64)).requires_grad_()
    eps = torch.randn(2, 5, 3, dtype=torch.float64)  # [B, S, D]
    z = mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * eps  # [B, S, D]
    log_px = model.log_likelihood(x.repeat_interleave(5, 0), z.reshape(10, 3)).view(2, 5).mean(1)
    elbo = log_px - vae.kl_per_dim(mean, 2 * log_std).sum(1)
    g_mean, g_log_std = torch.autograd.grad(elbo.sum(), [mean, log_std])
    step = vae.RefineStep(model)
    new_mean, new_std = step(x, mean.detach(), log_std.exp().detach(), eps)
    assert torch.allclose(new_mean, mean + step.lr * g_mean, atol=1e-10)
    assert torch.allclose(new_std.log(), log_std + step.lr * g_log_std, atol=1e-10)


@pytest.mark.parametrize("variant", ["bernoulli-gaussian", "logistic-gaussian", "bernoulli-iaf"])
def test_complete_step_keeps_observed_pixels_and_is_a_function_of_its_noise(variant):
    model = model_of(variant)
    step = vae.CompleteStep(model)
    x, observed = images(model, 3, seed=1), images(model, 3, seed=2)
    mask = torch.zeros_like(x)
    mask[..., :14, :] = 1
    g = torch.Generator().manual_seed(3)
    eps, noise = torch.randn(3, 3, generator=g), torch.rand(3, *model.noise_shape(), generator=g)
    with torch.no_grad():
        out, again = step(x, eps, noise, observed, mask), step(x, eps, noise, observed, mask)
    assert torch.equal(out[mask == 1], observed[mask == 1])
    assert torch.equal(out, again) and out.min() >= 0 and out.max() < model.levels
    assert not torch.equal(out[mask == 0], observed[mask == 0])  # the rest is drawn, not copied


@pytest.mark.parametrize("variant", ["bernoulli-planar", "bernoulli-iaf"])
def test_flow_log_weights_equal_the_densities_computed_by_hand(variant):
    model = model_of(variant).double()
    x = images(model, 2)
    eps = torch.randn(4, 2, 3, dtype=torch.float64)  # [S, B, D]
    mean, log_var, context = model.encode_all(x)
    z0 = mean + (0.5 * log_var).exp() * eps
    z, log_det = z0, torch.zeros(4, 2, dtype=torch.float64)
    for s in range(4):  # one sample at a time, each flow step by hand
        zs, total = z0[s], torch.zeros(2, dtype=torch.float64)
        if model.config.posterior == "planar":
            for p in model.planar(context).split(2 * 3 + 1, dim=1):
                zs, ld = vae.flows.planar(zs, p[:, :3], p[:, 3:6], p[:, 6:])
                total = total + ld
        else:
            for iaf_step in model.iaf:
                zs, ld = iaf_step(zs, context)
                total = total + ld
        z = z.clone()
        z[s], log_det[s] = zs, total
    zeros = torch.zeros_like(z)
    log_q = gaussian.log_prob(mean, 0.5 * log_var, z0).sum(-1) - log_det
    log_px = torch.stack([model.log_likelihood(x, z[s]) for s in range(4)])
    expected = log_px + gaussian.log_prob(zeros, zeros, z).sum(-1) - log_q
    assert torch.allclose(vae.log_weights(model, x, eps), expected, atol=1e-8)
    bound, _ = vae.log_mean_exp(vae.log_weights(model, x, eps))
    assert (bound >= vae.log_weights(model, x, eps).mean(0) - 1e-9).all()  # IWAE_k >= ELBO draw by draw


def test_decode_is_the_expected_level():
    model = model_of("logistic-gaussian").double()
    z = torch.randn(2, 3, dtype=torch.float64)
    params = model.params(z)  # [2, 1, 28, 28, 6]
    from training.distributions import logistic_mixture

    levels = torch.arange(256)
    probs = torch.stack([logistic_mixture.log_prob(params, torch.full((2, 1, 28, 28), v), 256).exp() for v in levels])
    assert torch.allclose(probs.sum(0), torch.ones(2, 1, 28, 28, dtype=torch.float64), atol=1e-6)
    exact = (probs * levels.view(256, 1, 1, 1, 1)).sum(0)
    assert torch.allclose(model.decode(z), exact, atol=1e-6)
