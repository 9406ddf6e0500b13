"""The maths of the two-layer HVAE: shapes, the analytic KL, log-weights against the densities, ELBO <= IWAE_k
rising with k, IWAE_1 ~ ELBO, the test-set bounds, pseudo-Gibbs completion, sampling, export parity and one
training epoch of the tiny config."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.distributions import Bernoulli, Normal

from training.families import hvae
from training.families.hvae import HVAE, HVAEConfig

REPO = Path(__file__).resolve().parents[2]
D1, D2 = 3, 2


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def small_model(seed=0, dtype=torch.float64, free_bits=0.0) -> HVAE:
    torch.manual_seed(seed)
    model = HVAE(HVAEConfig(z1=D1, z2=D2, channels=2, hidden=8, free_bits=free_bits)).to(dtype).eval()
    with torch.no_grad():  # a decoder that depends strongly on z1, and posteriors away from the priors
        model.decoder[0].weight.mul_(10.0)
        for layer, d, scale in ((model.q2, D2, 40.0), (model.q1[-1], D1, 8.0), (model.p1[-1], D1, 8.0)):
            layer.weight[:d].mul_(scale)  # the means (the first d outputs), not the variances
    return model


def images(b=4, seed=0) -> torch.Tensor:
    return torch.randint(0, 2, (b, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def normal(shape, seed, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_encode_decode_shapes_and_decode_reads_z1_only():
    model = small_model()
    mean, std = model.encode(images(3))
    assert mean.shape == std.shape == (3, D1 + D2) and (std > 0).all()
    z = normal((3, D1 + D2), 0)
    p = model.decode(z)
    assert p.shape == (3, 1, 28, 28) and ((p > 0) & (p < 1)).all()
    z_other = z.clone()
    z_other[:, D1:] += 5.0  # another z2: the same image distribution
    assert torch.equal(model.decode(z_other), p) and not torch.equal(model.decode(z_other.flip(0)), p)
    grid = hvae.sample_grid(model, torch.Generator().manual_seed(0), n=6)
    assert grid.shape == (6, 1, 28, 28) and grid.dtype == torch.long and set(grid.unique().tolist()) == {0, 1}


def test_encode_gives_z1_moments_given_the_mean_of_z2():
    model, x = small_model(), images(2)
    mean, std = model.encode(x)
    h = model.encoder(x.double())
    mean2, log_var2 = model.q2(h).chunk(2, dim=1)
    mean1, log_var1 = model.q1(torch.cat([h, mean2], dim=1)).chunk(2, dim=1)
    assert torch.allclose(mean, torch.cat([mean1, mean2], 1))
    assert torch.allclose(std, torch.cat([log_var1, log_var2], 1).mul(0.5).exp())


def test_gaussian_kl_equals_monte_carlo():
    mq, lq, mp, lp = (normal((2, 3), seed) for seed in range(4))
    z = mq + (0.5 * lq).exp() * normal((200_000, 2, 3), 4)
    terms = Normal(mq, (0.5 * lq).exp()).log_prob(z) - Normal(mp, (0.5 * lp).exp()).log_prob(z)
    stderr = terms.std(dim=0) / np.sqrt(len(z))
    assert ((terms.mean(dim=0) - hvae.gaussian_kl(mq, lq, mp, lp)).abs() < 5 * stderr).all()


@torch.no_grad()
def test_log_weights_match_a_hand_computation_from_the_densities():
    model, x = small_model(), images(3)
    eps = normal((4, 3, D1 + D2), 1)
    got = hvae.log_weights(model, x, eps)  # [4, 3]
    h = model.encoder(x.double())
    for s in range(4):
        m2, lv2 = model.q2(h).chunk(2, dim=1)
        q2 = Normal(m2, (0.5 * lv2).exp())
        z2 = m2 + q2.scale * eps[s, :, D1:]
        m1, lv1 = model.q1(torch.cat([h, z2], dim=1)).chunk(2, dim=1)
        q1 = Normal(m1, (0.5 * lv1).exp())
        z1 = m1 + q1.scale * eps[s, :, :D1]
        pm, plv = model.p1(z2).chunk(2, dim=1)
        log_p = (Bernoulli(logits=model.decoder(z1)).log_prob(x.double()).sum((1, 2, 3))
                 + Normal(pm, (0.5 * plv).exp()).log_prob(z1).sum(1) + Normal(0.0, 1.0).log_prob(z2).sum(1))
        log_q = q1.log_prob(z1).sum(1) + q2.log_prob(z2).sum(1)
        assert torch.allclose(got[s], log_p - log_q)


def test_iwae_is_at_least_the_mean_log_weight_under_the_same_noise_and_chunking_does_not_matter():
    """Jensen, draw by draw: log mean w >= mean log w, whose expectation is the ELBO."""
    model, x = small_model(), images()
    for k in (1, 2, 10):
        bound, stderr = hvae.iwae(model, x, k, generator=torch.Generator().manual_seed(k))
        mean_log_w = hvae.log_weights(model, x, normal((k, len(x), D1 + D2), k)).mean(dim=0)
        assert (bound >= mean_log_w - 1e-9).all() and (bound > mean_log_w + 1e-3).any() == (k > 1)
        chunked = hvae.iwae(model, x, k, chunk=3, generator=torch.Generator().manual_seed(k))
        assert torch.allclose(bound, chunked[0]) and torch.allclose(stderr, chunked[1])
        assert ((stderr > 0).all() if k > 1 else (stderr == 0).all())


@torch.no_grad()
def test_iwae_1_has_the_expectation_of_the_elbo():
    """Under the same z the two differ by the latent terms only: log p(z) - log q(z | x) + analytic KL, of mean 0."""
    model, x = small_model(), images(2)
    xs = x.repeat(4000, 1, 1, 1)  # [8000, 1, 28, 28]: two images, 4000 draws each
    iwae_1 = hvae.iwae(model, xs, 1, generator=torch.Generator().manual_seed(2))[0].view(4000, 2)
    elbo = hvae.elbo(model, xs, generator=torch.Generator().manual_seed(2)).view(4000, 2)  # the same eps
    difference = iwae_1 - elbo
    assert (difference.std(dim=0) > 0.1).all()  # the latent terms' Monte Carlo noise
    assert (difference.mean(dim=0).abs() < 5 * difference.std(dim=0) / np.sqrt(4000)).all()


@torch.no_grad()
def test_elbo_is_below_iwae_k_which_rises_with_k_in_expectation():
    model, x = small_model(), images(2)
    repeats, g = 100, torch.Generator().manual_seed(3)
    xs = x.repeat(repeats, 1, 1, 1)  # [2 * repeats, ...]: independent seeds per repeat
    estimates = [hvae.elbo(model, xs, generator=g)] + [hvae.iwae(model, xs, k, generator=g)[0] for k in (1, 10, 100)]
    draws = [e.view(repeats, 2) for e in estimates]
    means = [d.mean(dim=0) for d in draws]
    errors = [d.std(dim=0) / np.sqrt(repeats) for d in draws]

    def rises(i, j):  # independent draws: the difference's standard error is the root sum of squares
        return (means[j] - means[i] > 3 * (errors[i].square() + errors[j].square()).sqrt()).all()

    assert rises(1, 2) and rises(2, 3), means  # IWAE_1 < IWAE_10 < IWAE_100, beyond the noise
    assert rises(0, 3), means  # ELBO < IWAE_100


def test_free_bits_only_raise_the_objective_eval_loss_is_the_negative_elbo_and_warm_up_is_linear():
    model, x = small_model(), images(4)
    plain = hvae.objective(model, x, generator=torch.Generator().manual_seed(5))
    free = hvae.objective(model, x, free_bits=2.0, generator=torch.Generator().manual_seed(5))
    assert free > plain  # random weights: some latent's KL is under 2 nats
    assert torch.allclose(plain, -hvae.elbo(model, x, generator=torch.Generator().manual_seed(5)).mean())
    model.config.free_bits = 2.0  # train-mode extras never touch the reported bound
    torch.manual_seed(6)
    eval_loss = hvae.loss(model, x, torch.zeros(4, dtype=torch.long))
    torch.manual_seed(6)
    assert torch.allclose(eval_loss, -hvae.elbo(model, x).mean())
    model = HVAE(HVAEConfig(z1=2, z2=1, channels=2, hidden=4, warmup_steps=4)).train()
    betas = []
    for _ in range(6):
        betas.append(model.beta())
        hvae.loss(model, x, torch.zeros(4, dtype=torch.long))
    assert betas == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0] and model.steps.item() == 6


def test_evaluate_test_takes_the_served_bound_from_the_first_log_weights():
    model, x = small_model(), images(3).numpy()
    report = hvae.evaluate_test(model, SimpleNamespace(x_test=x), served_k=8, eval_k=40)
    eps = torch.randn(40, 3, D1 + D2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # its draws
    with torch.no_grad():
        log_w = hvae.log_weights(model, torch.from_numpy(x).long(), eps)  # [40, 3]
    served = torch.logsumexp(log_w[:8], 0) - np.log(8)
    assert np.allclose(report["test_nll_per_example"], -served.numpy())
    assert np.isclose(report["test_iwae_eval_k_nats"], -(torch.logsumexp(log_w, 0) - np.log(40)).mean().item())
    assert report["test_iwae_eval_k_nats"] < report["test_elbo_nats"] == pytest.approx(-log_w.mean().item())
    assert (report["method"], report["k"], report["eval_k"]) == ("iwae", 8, 40)


def test_complete_step_keeps_observed_pixels_and_is_deterministic_given_the_noise():
    model, b = small_model(), 3
    x, observed = images(b, seed=1), images(b, seed=2)
    mask = images(b, seed=3)
    eps = normal((b, D1 + D2), 7)
    noise = torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = hvae.complete_step(model, x, eps, noise, observed, mask)
    assert out.dtype == torch.long and torch.equal(out[mask == 1], observed[mask == 1])
    assert torch.equal(out, hvae.complete_step(model, x, eps, noise, observed, mask))
    assert not torch.equal(out, hvae.complete_step(model, x, eps, 1 - noise, observed, mask))
    p = model.decode(model.infer(x, eps)[0])  # no mask: the inverse CDF of p(x | z1), z from q(z | x)
    free = hvae.complete_step(model, x, eps, noise, observed, torch.zeros_like(mask))
    assert torch.equal(free, (noise >= 1 - p).long())


@torch.no_grad()
def test_sample_is_ancestral_with_temperature_scaling_the_prior_std():
    model, b = small_model(), 4000
    eps = normal((b, D1 + D2), 9)
    noise = torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    cold = model.generate(eps, noise, torch.zeros(b, dtype=torch.float64))  # z2 = 0, z1 = mean of p(z1 | 0)
    zeros = torch.zeros(1, D2, dtype=torch.float64)
    z_cold = torch.cat([model.p1(zeros).chunk(2, dim=1)[0], zeros], 1)
    assert torch.equal(cold, (noise >= 1 - model.decode(z_cold)).long())
    t = torch.full((b,), 0.5, dtype=torch.float64)
    z2 = 0.5 * eps[:, D1:]
    mean1, log_var1 = model.p1(z2).chunk(2, dim=1)
    z1 = mean1 + 0.5 * (0.5 * log_var1).exp() * eps[:, :D1]
    p = model.decode(torch.cat([z1, z2], 1))
    assert torch.equal(model.generate(eps, noise, t), (noise >= 1 - p).long())
    frequency = model.generate(eps[:1].expand(b, -1), noise, t[:1].expand(b)).double().mean(0)  # one z, many x
    assert (frequency - p[0]).abs().max() < 5 * (0.25 / b) ** 0.5


def test_export_parity_eager_onnx_torchscript(tmp_path):
    from training.export import export_function

    model = small_model(dtype=torch.float32)
    functions, capabilities = hvae.exported_functions(model, SimpleNamespace(levels=2, shape=(1, 28, 28)))
    assert set(functions) == {"encode", "decode", "sample", "log_weight", "complete_step", "log_weight_above"}
    assert {c["function"] for c in capabilities.values()} | {capabilities["score"]["hierarchy"]["function"]} \
        == set(functions)
    assert capabilities["score"]["noise"]["eps"]["shape"] == [D1 + D2]
    g, b = torch.Generator().manual_seed(11), 3  # a batch other than the example's: the batch axis is dynamic
    inputs = {"x": images(b, 4), "z": torch.randn(b, D1 + D2, generator=g), "eps": torch.randn(b, D1 + D2, generator=g),
              "noise": torch.rand(b, 1, 28, 28, generator=g), "temperature": torch.full((b,), 0.8),
              "observed": images(b, 5), "mask": images(b, 6)}
    for name, (module, example, outputs) in functions.items():
        export_function(tmp_path, name, module, example, outputs)
        args = {k: inputs[k] for k in example}
        with torch.no_grad():
            eager = module(*args.values())
            eager = [t.numpy() for t in (eager if isinstance(eager, tuple) else (eager,))]
            scripted = torch.jit.load(str(tmp_path / f"{name}.pt"))(*args.values())
            scripted = [t.numpy() for t in (scripted if isinstance(scripted, tuple) else (scripted,))]
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        onnx = session.run(None, {k: v.numpy() for k, v in args.items()})
        for got in (onnx, scripted):
            for a, e in zip(got, eager, strict=True):
                assert a.dtype == e.dtype and a.shape == e.shape, name
                assert np.allclose(a, e, rtol=1e-4, atol=1e-4), name


def test_tiny_config_trains_one_epoch(tmp_path):
    from training.train import train

    config = REPO / "training" / "configs" / "hvae-tiny.json"
    assert json.loads(config.read_text())["family"] == "hvae"
    assert json.loads((REPO / "training" / "configs" / "hvae.json").read_text())["family"] == "hvae"
    run = train(config, tmp_path / "run")
    history = json.loads((run / "state.json").read_text())["history"]
    assert len(history) == 1 and np.isfinite(history[0]["train_nll"]) and np.isfinite(history[0]["test_nll"])
    assert (run / "samples.png").is_file()
