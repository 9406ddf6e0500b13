"""The maths of the VAE: encode/decode shapes, the analytic KL, ELBO <= IWAE_k, IWAE_1 ~ ELBO, IWAE_k rising
with k, chunking, free bits, and one step of the tiny config."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.distributions import gaussian
from training.families import vae
from training.families.vae import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def small_model(seed=0, latent=3, free_bits=0.0) -> VAE:
    torch.manual_seed(seed)
    model = VAE(VAEConfig(latent=latent, channels=2, free_bits=free_bits)).double().eval()
    with torch.no_grad():  # a decoder that depends strongly on z, so that the bounds differ visibly
        model.decoder[0].weight.mul_(10.0)
    return model


def images(b=4, seed=0) -> torch.Tensor:
    return torch.randint(0, 2, (b, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def test_encode_decode_shapes_and_ranges():
    model = small_model(latent=5)
    mean, std = model.encode(images(3))
    assert mean.shape == std.shape == (3, 5) and (std > 0).all()
    p = model.decode(torch.randn(3, 5, dtype=torch.float64))
    assert p.shape == (3, 1, 28, 28) and ((p > 0) & (p < 1)).all()
    grid = vae.sample_grid(model, torch.Generator().manual_seed(0), n=6)
    assert grid.shape == (6, 1, 28, 28) and grid.dtype == torch.long and set(grid.unique().tolist()) <= {0, 1}


def test_analytic_kl_equals_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(2, 3, generator=g, dtype=torch.float64)
    log_var = torch.randn(2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(200_000, 2, 3, generator=g, dtype=torch.float64)
    z = vae.reparameterize(mean, log_var, eps)  # [N, 2, 3]
    zeros = torch.zeros_like(z)
    terms = gaussian.log_prob(mean, 0.5 * log_var, z) - gaussian.log_prob(zeros, zeros, z)  # [N, 2, 3]
    stderr = terms.std(dim=0) / np.sqrt(len(z))
    assert ((terms.mean(dim=0) - vae.kl_per_dim(mean, log_var)).abs() < 5 * stderr).all()


def test_iwae_is_at_least_the_mean_log_weight_under_the_same_noise():
    """Jensen, draw by draw: log mean w >= mean log w, whose expectation is the ELBO."""
    model, x = small_model(), images()
    for k in (1, 2, 10):
        bound, _ = vae.iwae(model, x, k, generator=torch.Generator().manual_seed(k))
        eps = torch.randn(k, len(x), 3, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        mean_log_w = vae.log_weights(model, x, eps).mean(dim=0)
        assert (bound >= mean_log_w - 1e-9).all()
        if k == 1:
            assert torch.allclose(bound, mean_log_w)


@torch.no_grad()
def test_iwae_1_has_the_expectation_of_the_elbo():
    model, x = small_model(), images(2)
    xs = x.repeat(4000, 1, 1, 1)  # [8000, 1, 28, 28]: two images, 4000 draws each
    g = torch.Generator().manual_seed(2)
    iwae_1 = vae.iwae(model, xs, 1, generator=g)[0].view(4000, 2)
    elbo = vae.elbo(model, xs, generator=g).view(4000, 2)
    stderr = ((iwae_1.var(dim=0) + elbo.var(dim=0)) / 4000).sqrt()
    assert ((iwae_1.mean(dim=0) - elbo.mean(dim=0)).abs() < 5 * stderr).all()


@torch.no_grad()
def test_elbo_is_below_iwae_k_which_rises_with_k_in_expectation():
    model, x = small_model(), images(2)
    repeats, g = 200, torch.Generator().manual_seed(3)
    xs = x.repeat(repeats, 1, 1, 1)  # [2 * repeats, ...]
    means, errors = [], []
    for estimate in [vae.elbo(model, xs, generator=g)] + [vae.iwae(model, xs, k, generator=g)[0] for k in (1, 4, 32)]:
        draws = estimate.view(repeats, 2)
        means.append(draws.mean(dim=0))
        errors.append(draws.std(dim=0) / np.sqrt(repeats))
    def rises(i, j):  # independent draws: the difference's standard error is the root sum of squares
        return (means[j] - means[i] > 3 * (errors[i].square() + errors[j].square()).sqrt()).all()

    assert rises(1, 2) and rises(2, 3), means  # IWAE_1 < IWAE_4 < IWAE_32, beyond the noise
    assert rises(0, 3), means  # ELBO < IWAE_32


def test_chunked_iwae_equals_unchunked_under_the_same_noise():
    model, x = small_model(), images(3)
    whole = vae.iwae(model, x, 12, chunk=12, generator=torch.Generator().manual_seed(4))
    chunked = vae.iwae(model, x, 12, chunk=5, generator=torch.Generator().manual_seed(4))
    for a, b in zip(whole, chunked, strict=True):
        assert torch.allclose(a, b)
    assert (whole[1] > 0).all()  # a standard error, not degenerate


def test_free_bits_only_raise_the_objective_and_eval_loss_is_the_negative_elbo():
    model, x = small_model(), images(4)
    plain = vae.objective(model, x, generator=torch.Generator().manual_seed(5))
    free = vae.objective(model, x, free_bits=2.0, generator=torch.Generator().manual_seed(5))
    assert free > plain  # random weights: some latent's KL is under 2 nats
    elbo = vae.elbo(model, x, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(plain, -elbo.mean())
    model.config.free_bits = 2.0  # train-mode extras never touch the reported bound
    torch.manual_seed(6)
    eval_loss = vae.loss(model, x, torch.zeros(4, dtype=torch.long))
    torch.manual_seed(6)
    assert torch.allclose(eval_loss, -vae.elbo(model, x).mean())


def test_warm_up_is_linear_in_training_steps():
    model = VAE(VAEConfig(latent=2, channels=2, warmup_steps=4)).train()
    x = images(2)
    betas = []
    for _ in range(6):
        betas.append(model.beta())
        vae.loss(model, x, torch.zeros(2, dtype=torch.long))
    assert betas == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0] and model.steps.item() == 6


def test_tiny_config_takes_a_finite_training_step():
    from training.data import load
    from training.train import _epoch, load_config

    config = load_config(REPO / "training" / "configs" / "vae-tiny.json")
    assert config["family"] == "vae" and config["dataset"] == "mnist5k-binarized"
    load_config(REPO / "training" / "configs" / "vae.json")
    split = load(config["dataset"])
    torch.manual_seed(0)
    model = vae.build(config["model"], split)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["train"]["lr"])
    nll = _epoch(vae, model, optimizer, split, config["train"], 0)
    assert np.isfinite(nll) and all(torch.isfinite(p).all() for p in model.parameters())
    x = torch.from_numpy(split.x_test[:4]).long()
    bound, stderr = vae.iwae(model.eval(), x, 8, chunk=3)
    assert torch.isfinite(bound).all() and torch.isfinite(stderr).all()


def test_delta_method_standard_error():
    w = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [6.0, 60.0]], dtype=torch.float64)  # [k = 4, B = 2]
    bound, stderr = vae.log_mean_exp(w.log() - 100.0)  # scale-free: any common factor of w cancels
    assert torch.allclose(bound, w.mean(0).log() - 100.0)
    assert torch.allclose(stderr, torch.full((2,), np.sqrt(14 / 3) / (2 * 3), dtype=torch.float64))
