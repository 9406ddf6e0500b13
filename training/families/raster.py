"""What the raster-order image families (PixelCNN, PixelRNN) share: one image row per sampling step.

Each pixel's distribution over `levels` values is a categorical (binarized data) or PixelCNN++'s
discretized logistic mixture (256-level data: 3K parameters instead of 256, two uniforms per pixel);
config.output picks one of OUTPUTS.

A family's model has `config` (height, width, num_classes), `output` (a per-pixel distribution with
`noise_shape` and `sample`), `head` (its last layer sets the dtype), `params(x, label)`,
`log_prob(x, label)` and `row_step()`, its RowStep module: the exported step, with inputs x_prev, <state...>,
noise, temperature, label, observed, mask; outputs the row and next_<state...>; `state_shapes()`
gives each state tensor's shape without the batch axis.
"""

import torch
from torch import nn

from training.distributions import categorical, logistic_mixture


class CategoricalOutput:
    """One logit per level; one uniform per pixel."""

    noise_shape: tuple[int, ...] = ()

    def __init__(self, config):
        self.channels = config.levels

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return categorical.log_prob(params, x)

    def sample(self, params: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        return categorical.sample(params, u, temperature)


class LogisticMixtureOutput:
    """3K parameters (mixture logits, means, log scales); two uniforms per pixel (component, value)."""

    noise_shape = (2,)

    def __init__(self, config):
        self.channels, self.levels = 3 * config.mixtures, config.levels

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return logistic_mixture.log_prob(params, x, self.levels)

    def sample(self, params: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        return logistic_mixture.sample(params, u, temperature, self.levels)


OUTPUTS = {"categorical": CategoricalOutput, "logistic_mixture": LogisticMixtureOutput}


class RasterModel(nn.Module):
    """A raster family's network: its config, per-pixel output distribution, and the likelihoods of params().

    A subclass builds its layers, then its head with make_head(), and defines params(x, label).
    """

    def __init__(self, config):
        super().__init__()
        if config.output not in OUTPUTS:
            raise ValueError(f"model.output: {config.output!r} is not one of {sorted(OUTPUTS)}")
        self.config, self.output = config, OUTPUTS[config.output](config)

    def make_head(self) -> nn.Sequential:
        """Features [B, channels, H, W] -> each pixel's distribution parameters [B, output.channels, H, W]."""
        c = self.config
        return nn.Sequential(nn.ReLU(), nn.Conv2d(c.channels, c.head_channels, 1),
                             nn.ReLU(), nn.Conv2d(c.head_channels, self.output.channels, 1))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels 0..L-1 -> floats in [-1, 1]."""
        dtype = self.head[-1].weight.dtype
        return x.to(dtype) * (2.0 / (self.config.levels - 1)) - 1.0

    def log_prob(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """log p(x | label) in nats: x [B, 1, H, W], label [B] -> [B]."""
        return self.output.log_prob(self.params(x, label), x[:, 0]).sum(dim=(1, 2))

    def log_prob_marginal(self, x: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
        """log p(x) = log sum_y p(x | y) p(y), exactly: x [B, 1, H, W], log_prior [K] -> [B]."""
        k = log_prior.shape[0]
        labels = torch.arange(k) + torch.zeros_like(x[:, :1, 0, 0])  # [B, K], batch-size agnostic for export
        per_class = self.log_prob(x.repeat_interleave(k, dim=0), labels.reshape(-1)).view(-1, k)
        return torch.logsumexp(per_class + log_prior, dim=1)


def loss(model: RasterModel, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in nats per image."""
    return -model.log_prob(x, label).mean()


def initial_state(step: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """Zero state for `batch` rows, in the model's dtype."""
    dtype = step.model.head[-1].weight.dtype
    return {name: torch.zeros([batch] + shape, dtype=dtype) for name, shape in step.state_shapes().items()}


@torch.no_grad()
def sample_fast(model: nn.Module, label, noise, temperature, observed=None, mask=None) -> torch.Tensor:
    """label [B], noise [B, H, W, *noise_shape], temperature [B] -> images [B, 1, H, W] int64, one step per row.

    Where mask [B, H, W] is 1 the image keeps `observed` (completion).
    """
    step = model.row_step()
    b, height, width = noise.shape[:3]
    observed = torch.zeros(b, height, width, dtype=torch.long) if observed is None else observed
    mask = torch.zeros_like(observed) if mask is None else mask
    state = initial_state(step, b)
    row, rows = torch.zeros(b, width, dtype=torch.long), []
    for i in range(height):
        row, *values = step(row, *state.values(), noise[:, i], temperature, label, observed[:, i], mask[:, i])
        state = dict(zip(state, values, strict=True))
        rows.append(row)
    return torch.stack(rows, dim=1)[:, None]


@torch.no_grad()
def sample_naive(model: nn.Module, label, noise, temperature, observed=None, mask=None) -> torch.Tensor:
    """Reference sampler: the whole network on the whole canvas, once per pixel."""
    b, height, width = noise.shape[:3]
    canvas = torch.zeros(b, 1, height, width, dtype=torch.long)
    for i in range(height):
        for j in range(width):
            params = model.params(canvas, label)[:, i, j]  # [B, channels]
            pixel = model.output.sample(params, noise[:, i, j], temperature)
            if mask is not None:
                pixel = torch.where(mask[:, i, j] > 0, observed[:, i, j], pixel)
            canvas[:, 0, i, j] = pixel
    return canvas


def sample_grid(model: nn.Module, generator: torch.Generator, per_class: int = 8) -> torch.Tensor:
    """Samples for every class, class by class: [num_classes * per_class, 1, H, W] int64."""
    c = model.config
    label = torch.arange(c.num_classes).repeat_interleave(per_class)
    noise = torch.rand(len(label), c.height, c.width, *model.output.noise_shape, generator=generator)
    return sample_fast(model, label, noise, torch.ones(len(label)))


class LogProb(nn.Module):
    """Exported `log_prob`: x [B, 1, H, W] int64 -> log p(x) [B], marginal over the class prior."""

    def __init__(self, model: nn.Module, class_prior: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("log_prior", class_prior.log())

    def forward(self, x):
        return self.model.log_prob_marginal(x, self.log_prior)


class LogProbGivenLabel(nn.Module):
    """Exported `log_prob_given_label`: x [B, 1, H, W] int64, label [B] -> log p(x | label) [B]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, label):
        return self.model.log_prob(x, label)


def exported_functions(model: nn.Module, split) -> tuple[dict, dict]:
    """(functions, capabilities): each function is (module, example inputs by name, output names).

    Unlabelled scores marginalise over the training split's class frequencies.
    """
    step = model.row_step()
    c, b = model.config, 2
    class_prior = torch.bincount(torch.from_numpy(split.y_train), minlength=c.num_classes).double()
    class_prior = (class_prior / class_prior.sum()).float()
    x = torch.zeros(b, 1, c.height, c.width, dtype=torch.long)
    row = torch.zeros(b, c.width, dtype=torch.long)
    state = initial_state(step, b)
    label = torch.zeros(b, dtype=torch.long)
    noise_shape = [c.width, *model.output.noise_shape]
    functions = {
        "log_prob": (LogProb(model, class_prior), {"x": x}, ["log_prob"]),
        "log_prob_given_label": (LogProbGivenLabel(model), {"x": x, "label": label}, ["log_prob"]),
        "sample_step": (step, {
            "x_prev": row, **state, "noise": torch.rand(b, *noise_shape), "temperature": torch.ones(b),
            "label": label, "observed": row, "mask": row,
        }, ["x"] + [f"next_{name}" for name in state]),
    }
    shapes = {name: {"dtype": "float32", "shape": shape} for name, shape in step.state_shapes().items()}
    autoregressive = {"procedure": "autoregressive", "function": "sample_step", "steps": c.height,
                      "step_shape": [c.width], "noise_shape": noise_shape, "state": shapes}
    capabilities = {
        "sample": autoregressive,
        "complete": autoregressive,
        "score": {"procedure": "direct", "function": "log_prob",
                  "conditional_function": "log_prob_given_label", "method": "exact"},
    }
    return functions, capabilities
