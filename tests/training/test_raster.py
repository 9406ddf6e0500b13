"""The maths every raster-order image family must satisfy, for each family and output distribution.

Each pixel's parameters depend only on earlier pixels, the distribution sums to 1, the marginal is the
logsumexp over labels, and fast sampling (one row step per row) equals naive sampling (the whole network
once per pixel) under the same noise, completion included.
"""

import itertools

import pytest
import torch

from training.families import pixelcnn, pixelrnn

FAMILIES = {"pixelcnn": (pixelcnn, pixelcnn.PixelCNNConfig, pixelcnn.PixelCNN),
            "pixelrnn": (pixelrnn, pixelrnn.PixelRNNConfig, pixelrnn.PixelRNN)}
CASES = list(itertools.product(FAMILIES, ["categorical", "logistic_mixture"]))


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(family: str, output: str, height: int = 6, width: int = 7, layers: int = 3):
    """A float64 model with 3 levels and 4 classes."""
    _, config_class, model_class = FAMILIES[family]
    torch.manual_seed(0)
    config = config_class(height=height, width=width, levels=3, num_classes=4, channels=6, n_layers=layers,
                          first_kernel=5, kernel=3, head_channels=8, output=output, mixtures=2)
    return model_class(config).double().eval()


def uniforms(model, b: int, generator: torch.Generator) -> torch.Tensor:
    """[B, H, W, *noise_shape] float64 noise for the model's output distribution."""
    c = model.config
    return torch.rand(b, c.height, c.width, *model.output.noise_shape, generator=generator, dtype=torch.float64)


def params_and_input(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(params [1, H, W, channels], x [1, 1, H, W]): x a random image whose gradient the params carry."""
    h, w = model.config.height, model.config.width
    x = torch.randint(0, 3, (1, 1, h, w)).double().requires_grad_()
    return model.params(x, torch.tensor([1])), x


@pytest.mark.parametrize(("family", "output"), CASES)
def test_every_output_depends_only_on_earlier_pixels(family, output):
    """Causality by input gradients: params at (i, j) have zero gradient w.r.t. x at (i', j') >= (i, j)."""
    model = small_model(family, output)
    params, x = params_and_input(model)
    h, w = model.config.height, model.config.width
    for i, j in itertools.product(range(h), range(w)):
        (grad,) = torch.autograd.grad(params[0, i, j].sum(), x, retain_graph=True)
        seen = grad[0, 0] != 0
        allowed = torch.zeros(h, w, dtype=torch.bool)
        allowed[:i] = True
        allowed[i, :j] = True
        assert not (seen & ~allowed).any(), f"pixel ({i},{j}) sees the future"


@pytest.mark.parametrize(("family", "output"), CASES)
def test_model_distribution_sums_to_one(family, output):
    """Over every 2x2 image with 3 levels (81 of them), p(x | y) and the marginal p(x) sum to 1."""
    model = small_model(family, output, height=2, width=2, layers=2)
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    for label in range(4):
        total = model.log_prob(images, torch.full((81,), label)).exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-9)
    log_prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log()
    assert model.log_prob_marginal(images, log_prior).exp().sum().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_marginal_is_logsumexp_over_labels(family):
    model = small_model(family, "categorical")
    x = torch.randint(0, 3, (5, 1, 6, 7))
    log_prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log()
    per_class = torch.stack([model.log_prob(x, torch.full((5,), k)) for k in range(4)], dim=1)
    expected = torch.logsumexp(per_class + log_prior, dim=1)
    assert torch.allclose(model.log_prob_marginal(x, log_prior), expected)


@pytest.mark.parametrize(("family", "output"), CASES)
def test_fast_sampling_equals_naive_under_the_same_noise(family, output):
    module = FAMILIES[family][0]
    model = small_model(family, output)
    noise = uniforms(model, 4, torch.Generator().manual_seed(1))
    label, temperature = torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 0.7, 1.5], dtype=torch.float64)
    fast = module.sample_fast(model, label, noise, temperature)
    assert torch.equal(fast, module.sample_naive(model, label, noise, temperature))
    assert fast.unique().numel() > 1  # the samples are not degenerate


@pytest.mark.parametrize(("family", "output"), CASES)
def test_fast_completion_equals_naive_and_keeps_observed_pixels(family, output):
    module = FAMILIES[family][0]
    model = small_model(family, output)
    g = torch.Generator().manual_seed(2)
    noise = uniforms(model, 3, g)
    observed = torch.randint(0, 3, (3, 6, 7), generator=g)
    mask = (torch.rand(3, 6, 7, generator=g) < 0.5).long()
    label, temperature = torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.float64)
    fast = module.sample_fast(model, label, noise, temperature, observed, mask)
    assert torch.equal(fast, module.sample_naive(model, label, noise, temperature, observed, mask))
    assert torch.equal(fast[:, 0][mask > 0], observed[mask > 0])
