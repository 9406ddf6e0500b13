"""The DVBF's maths (training/families/dvbf.py): the locally linear transition, its KL terms, the filter its
exported functions compose, and export parity (eager, ONNX, TorchScript)."""

import numpy as np
import pytest
import torch

from training.data.pendulum import pendulum_frames_tiny
from training.export import export_function
from training.families import dvbf


@pytest.fixture(scope="module")
def split():
    return pendulum_frames_tiny()


@pytest.fixture(scope="module")
def model(split):
    torch.manual_seed(0)
    return dvbf.build({"latent": 3, "noise": 2, "hidden": 8, "matrices": 4, "init_frames": 2}, split).eval()


def test_mixture_weights_are_a_distribution_and_mix_the_linear_systems(model):
    z, u, w = torch.randn(5, 3) * 3, torch.randn(5, 1), torch.randn(5, 2)
    alpha = model.alpha(z)
    assert (alpha > 0).all() and torch.allclose(alpha.sum(-1), torch.ones(5))
    for b in range(5):  # z' = sum_i alpha_i (A_i z + B_i u + C_i w), row by row
        moved = sum(alpha[b, i] * (model.A[i] @ z[b] + model.B[i] @ u[b] + model.C[i] @ w[b]) for i in range(4))
        assert torch.allclose(model.transition(z, u, w)[b], moved, atol=1e-5)


def test_transition_is_linear_in_action_and_noise_for_a_fixed_state(model):
    z, u, w = torch.randn(4, 3), torch.randn(4, 1), torch.randn(4, 2)
    base = model.transition(z, torch.zeros_like(u), torch.zeros_like(w))
    assert torch.allclose(model.transition(z, 2 * u, 3 * w) - base,
                          2 * (model.transition(z, u, torch.zeros_like(w)) - base)
                          + 3 * (model.transition(z, torch.zeros_like(u), w) - base), atol=1e-5)


def test_the_analytic_kl_matches_a_monte_carlo_estimate():
    torch.manual_seed(1)
    mean, log_std = torch.randn(3, 4), 0.5 * torch.randn(3, 4)
    w = mean + log_std.exp() * torch.randn(200_000, 3, 4)  # draws from q
    log_q = torch.distributions.Normal(mean, log_std.exp()).log_prob(w).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(w).sum(-1)
    estimate, stderr = (log_q - log_p).mean(0), (log_q - log_p).std(0) / 200_000 ** 0.5
    assert (torch.abs(dvbf.kl_normal(mean, log_std) - estimate) < 4 * stderr).all()


def test_the_filter_is_the_exported_steps_in_sequence(model, split):
    x, u = torch.from_numpy(split.x_test[:3]).long(), torch.from_numpy(split.y_test[:3])
    initial, noise = model.noise(3, x.shape[1])
    states, kl = model.filter(x, u, initial, noise)
    z = dvbf.FilterInit(model)(x[:, :2], initial)
    step = dvbf.FilterStep(model)
    for t in range(x.shape[1] - 1):
        assert torch.allclose(z, states[:, t], atol=1e-5)
        z = step(z, u[:, t], x[:, t + 1], noise[:, t])
    assert torch.allclose(z, states[:, -1], atol=1e-5) and (kl > 0).all()


def test_prediction_rolls_the_transitions_mean(model, split):
    x, u = torch.from_numpy(split.x_test[:2]).long(), torch.from_numpy(split.y_test[:2])
    predicted = model.predict(x[:, :4], u, 3)  # [2, 3, 256] intensities
    z = model.filter(x[:, :4], u, *model.noise(2, 4, torch.zeros))[0][:, -1]
    for t in range(3):
        z = model.transition(z, u[:, 3 + t], torch.zeros(2, 2))
        assert torch.allclose(predicted[:, t], torch.sigmoid(model.emit_logits(z)), atol=1e-6)


def test_export_parity(tmp_path, three_ways, model, split):
    functions, capabilities = dvbf.exported_functions(model, split)
    assert capabilities["predict"]["procedure"] == "state_space" and capabilities["encode"]["function"] == "filter_step"
    for name, (module, inputs, outputs) in functions.items():
        export_function(tmp_path, name, module, inputs, outputs)
        batch = {k: torch.cat([v, v[:1]]) for k, v in inputs.items()}  # another batch size than traced
        eager, onnx_out, scripted = three_ways(tmp_path, name, module, batch)
        if name == "emit":  # levels: rounding ties may differ by one
            assert np.abs(onnx_out[0] - eager[0]).max() <= 1 and np.array_equal(scripted[0], eager[0])
        else:
            assert np.allclose(onnx_out[0], eager[0], atol=1e-5) and np.allclose(scripted[0], eager[0], atol=1e-6)


def test_the_baseline_has_no_transition_and_predicts_by_its_rnn(split):
    torch.manual_seed(0)
    baseline = dvbf.build({"kind": "vae-rnn", "latent": 3, "hidden": 8}, split).eval()
    x, u = torch.from_numpy(split.x_test[:2]).long(), torch.from_numpy(split.y_test[:2])
    assert not hasattr(baseline, "A") and baseline.predict(x[:, :4], u, 3).shape == (2, 3, 256)
    with pytest.raises(ValueError, match="baseline"):
        dvbf.exported_functions(baseline, split)


def test_a_noise_scale_bounds_every_process_noise_matrix(split):
    torch.manual_seed(0)
    bounded = dvbf.build({"latent": 3, "noise": 2, "noise_scale": 0.05, "hidden": 8, "matrices": 4}, split)
    with torch.no_grad():
        bounded.C.mul_(100)  # far past the bound before tanh
    assert bounded.noise_matrices().abs().max() <= 0.05 and bounded.noise_matrices().abs().max() > 0.049
