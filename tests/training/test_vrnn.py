"""VRNN maths: the per-sample output distribution normalizes, the analytic KL is the Monte Carlo one, the bounds
order as ELBO <= IWAE_k <= log p(x) against a log-likelihood computed by quadrature, Box-Muller draws standard
normals, the shipped VRNN and its baseline have the same parameter count, and export parity of every function."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from training.export import export_function
from training.families import vrnn
from training.families.vae import log_mean_exp

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def tiny_split(frames: int, frame: int, voices: int = 2, n: int = 6) -> SimpleNamespace:
    """What build reads of a speech split: levels, voices, segment shape, the training voices."""
    return SimpleNamespace(levels=256, num_classes=voices, shape=(frames * frame,), sample_rate=16000,
                           y_train=np.arange(n) % voices)


def tiny_model(seed: int = 0, frames: int = 3, frame: int = 8, latent: int = 3, **config) -> vrnn.VRNN:
    torch.manual_seed(seed)
    model_config = {"frame": frame, "hidden": 8, "features": 8, "latent": latent, "voice": 2, "mixtures": 2} | config
    return vrnn.build(model_config, tiny_split(frames, frame)).eval()


def codes(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_each_samples_distribution_sums_to_one_over_the_256_codes(one_thread):
    model = tiny_model()
    with torch.no_grad():
        params = model.output(torch.randn(5, 8), model.phi_z(torch.randn(5, 3)))  # [5, F, 3K]
        every = torch.arange(256)[:, None, None].expand(256, 5, 8)  # [256 codes, 5, F]
        log_p = vrnn.logistic_mixture.log_prob(params.expand(256, *params.shape), every, 256)  # [256, 5, F]
    assert torch.allclose(torch.logsumexp(log_p.double(), dim=0), torch.zeros(5, 8, dtype=torch.float64), atol=1e-5)


def test_the_analytic_kl_equals_a_monte_carlo_estimate(one_thread):
    model, x, label = tiny_model(frames=1), codes(2, 8), torch.tensor([0, 1])
    n = 40000
    with torch.no_grad():
        eps = vrnn.draw_eps(model, (n, 2), 1, torch.Generator().manual_seed(1))  # [n, B, 1, Dz]
        (_, log_q, log_p, kl, _), = model.filter(x, label, eps)  # one frame: h_0 = 0, so kl is one value per row
    mc = (log_q - log_p).double()  # [n, B]
    stderr = mc.std(0) / math.sqrt(n)
    assert (kl[0] - kl).abs().max() < 1e-6
    assert ((mc.mean(0) - kl[0]).abs() < 4 * stderr + 1e-4).all(), (mc.mean(0), kl[0], stderr)


def exact_log_likelihood(model: vrnn.VRNN, x: torch.Tensor, label: torch.Tensor, nodes: int = 48) -> float:
    """log p(x | voice) of one 2-frame input with a 1-d latent, by Gauss-Hermite quadrature over z_1 and z_2
    under their priors: log E_{z1 ~ p(z1 | h0)}[p(x1 | z1, h0) E_{z2 ~ p(z2 | h1)} p(x2 | z2, h1)]."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, log_w = torch.tensor(t), torch.log(torch.tensor(w) / math.sqrt(math.pi))  # [N] each
    m = model.double()
    x1, x2 = m.frames(x)[0]  # [F] each
    v = m.voice(label)  # [1, V]

    def inner(h: torch.Tensor, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [N, H] -> z at the nodes of p(z | h) [N, nodes, 1] and log p(frame | z, h) [N, nodes]."""
        mean, log_var = m.moments(m.prior, h)  # [N, 1]
        z = mean[:, None] + math.sqrt(2) * torch.exp(0.5 * log_var)[:, None] * t[None, :, None]
        hz = h[:, None].expand(-1, nodes, -1)
        return z, m.frame_log_prob(m.output(hz, m.phi_z(z)), frame.expand(*z.shape[:2], -1))

    with torch.no_grad():
        z1, log_p1 = inner(torch.zeros(1, m.config.hidden, dtype=torch.float64), x1)  # [1, N, 1], [1, N]
        h1 = m.recur(torch.zeros(nodes, m.config.hidden, dtype=torch.float64), m.phi_x(m.amplitudes(x1)).expand(
            nodes, -1), m.phi_z(z1[0]), v.expand(nodes, -1))  # [N, H]
        _, log_p2 = inner(h1, x2)  # [N, N]
        inner_log = torch.logsumexp(log_p2 + log_w, dim=1)  # [N]
        return torch.logsumexp(log_p1[0] + inner_log + log_w, dim=0).item()


def test_elbo_below_iwae_below_the_quadrature_log_likelihood(one_thread):
    model, x, label = tiny_model(seed=3, frames=2, frame=4, latent=1), codes(1, 8, seed=2), torch.tensor([1])
    log_p = exact_log_likelihood(model, x, label)
    model = model.float()
    with torch.no_grad():
        eps = vrnn.draw_eps(model, (200, 16, 1), 2, torch.Generator().manual_seed(0))  # [200, 16, B, T, 1]
        log_w = vrnn.log_weights(model, x, label, eps)[..., 0].double()  # [200, 16]
        elbo = vrnn.elbo(model, x, label, eps[:, 0]).double()  # [200, 1], analytic KL
    iwae_16 = log_mean_exp(log_w.t())[0]  # [200]: 200 independent IWAE_16 estimates
    iwae_3200 = log_mean_exp(log_w.reshape(-1, 1))[0].item()
    assert elbo.mean() < iwae_16.mean() < log_p + 3 * iwae_16.std().item() / math.sqrt(200)
    assert log_w.mean() < iwae_16.mean()  # the Monte Carlo ELBO too
    assert abs(iwae_3200 - log_p) < 0.02, (iwae_3200, log_p)  # the bound tightens to log p(x) as k grows


def test_box_muller_draws_standard_normals():
    u = torch.rand(20000, 2, generator=torch.Generator().manual_seed(0))
    assert stats.kstest(vrnn.box_muller(u).numpy(), "norm").pvalue > 0.01


def test_the_shipped_vrnn_and_its_baseline_have_the_same_parameter_count_and_budget():
    configs = [json.loads((CONFIGS / f"{name}.json").read_text()) for name in ("vrnn", "vrnn-baseline")]
    split = tiny_split(40, 200, voices=4)
    counts = [sum(p.numel() for p in vrnn.build(c["model"], split).parameters()) for c in configs]
    assert configs[1]["model"]["latent"] == 0 < configs[0]["model"]["latent"]
    assert abs(counts[0] - counts[1]) < 0.05 * counts[0], counts
    assert configs[0]["train"] == configs[1]["train"] and configs[0]["dataset"] == configs[1]["dataset"]


def test_a_wholly_observed_frame_is_kept_and_filtered_through_the_posterior(one_thread):
    model = tiny_model()
    step = vrnn.Step(model)
    noise = torch.rand(2, *step.noise_shape(), generator=torch.Generator().manual_seed(0))
    h, observed, label, ones = torch.randn(2, 8), codes(2, 8), torch.tensor([0, 1]), torch.ones(2)
    with torch.no_grad():
        x, next_h = step(h, noise, ones, label, observed, torch.ones_like(observed))
        mean, log_var = model.moments(model.encoder, torch.cat([model.phi_x(model.amplitudes(observed)), h], -1))
        z = mean + torch.exp(0.5 * log_var) * vrnn.box_muller(noise[:, 8:])
        expected = model.recur(h, model.phi_x(model.amplitudes(observed)), model.phi_z(z), model.voice(label))
    assert torch.equal(x, observed) and torch.allclose(next_h, expected, atol=1e-6)


def parity_input(name: str, example: torch.Tensor, rows: int) -> torch.Tensor:
    """A random input like `example` for `rows` rows: codes, a mask observing row 0 only, voices, noise."""
    shape = (rows, *example.shape[1:])
    if name in ("x", "observed"):
        return codes(rows, shape[1], seed=5)
    if name == "mask":
        return (torch.arange(rows)[:, None] == 0).long().expand(shape).clone()
    if name == "label":
        return torch.arange(rows) % 2
    if name in ("noise", "temperature"):
        return torch.rand(shape) + (name == "temperature")
    return torch.randn(shape)


@pytest.mark.parametrize("latent", [3, 0])
def test_export_parity_of_every_function(latent, tmp_path, three_ways, one_thread):
    model = tiny_model(latent=latent)
    functions, capabilities = vrnn.exported_functions(model, tiny_split(3, 8))
    assert capabilities["score"]["procedure"] == ("importance" if latent else "direct")
    for name, (module, inputs, outputs) in functions.items():
        export_function(tmp_path, name, module, inputs, outputs)
        feeds = {k: parity_input(k, v, rows=3) for k, v in inputs.items()}  # another batch size than the trace's
        eager, onnx, scripted = three_ways(tmp_path, name, module, feeds)
        for e, o, s in zip(eager, onnx, scripted, strict=True):
            assert np.allclose(e, o, rtol=1e-4, atol=1e-3) and np.allclose(e, s, rtol=1e-4, atol=1e-3), name
