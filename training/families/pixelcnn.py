"""Gated PixelCNN with class conditioning (van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders").

Two stacks remove the blind spot: the vertical stack sees every row above the
current one, the horizontal stack sees the pixels to the left in the current
row. Each layer is a gated unit tanh(W_f * x + V_f y) * sigmoid(W_g * x + V_g y).

Fast sampling produces one image row per call (`RowStep`). The vertical stack
is cached across rows: each layer keeps the last few rows of its input, so a
new row costs one row of vertical convolutions. Inside a row, pixel j runs the
horizontal stack over columns 0..j only, the only ones that can affect it.
Both are exact: `sample_fast` equals `sample_naive` under the same noise.

Each pixel's distribution over its `levels` values is a categorical (`output:
"categorical"`, the default: binarized data) or the discretized logistic
mixture of PixelCNN++ (`output: "logistic_mixture"`: 256-level data, 3K
parameters per pixel instead of 256, and two uniforms of noise per pixel).
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.families import raster


@dataclass
class PixelCNNConfig:
    height: int = 28
    width: int = 28
    levels: int = 2
    num_classes: int = 10
    channels: int = 32
    n_layers: int = 8
    first_kernel: int = 7
    kernel: int = 3
    head_channels: int = 64
    output: str = "categorical"  # or "logistic_mixture"
    mixtures: int = 5  # components of the logistic mixture

    def to_dict(self) -> dict:
        return asdict(self)


def gate(x: torch.Tensor) -> torch.Tensor:
    """[B, 2C, ...] -> [B, C, ...]: tanh(a) * sigmoid(b)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W]: row i takes row i-1; row 0 is zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W]: column j takes column j-1; column 0 is zeros."""
    return F.pad(x, (1, 0))[..., :-1]


class GatedLayer(nn.Module):
    """One gated layer of both stacks. The first layer is masked ('A'): its
    horizontal input is shifted right so pixel j never sees itself."""

    def __init__(self, in_channels: int, channels: int, kernel: int, num_classes: int, first: bool):
        super().__init__()
        self.pad = kernel // 2
        self.first = first
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (self.pad + 1, kernel))
        self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, self.pad + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.cond = nn.Embedding(num_classes, 4 * channels)

    def conditioning(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """label [B] -> vertical and horizontal gate biases, each [B, 2C, 1, 1]."""
        c = self.cond(label)[:, :, None, None]
        return c.chunk(2, dim=1)

    def vertical(self, v_in: torch.Tensor, cond_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v_in [B, Cin, R + pad, W] with `pad` rows of context on top -> (pre-gate [B, 2C, R, W], out [B, C, R, W])."""
        v = self.v_conv(F.pad(v_in, (self.pad, self.pad, 0, 0)))
        return v, gate(v + cond_v)

    def horizontal(self, h_in: torch.Tensor, link: torch.Tensor, cond_h: torch.Tensor) -> torch.Tensor:
        """h_in [B, Cin, R, W'], link [B, 2C, R, W'] -> [B, C, R, W']; column j sees columns <= j of h_in."""
        src = shift_right(h_in) if self.first else h_in
        h = self.h_conv(F.pad(src, (self.pad, 0, 0, 0))) + link + cond_h
        out = self.h_out(gate(h))
        return out if self.first else out + h_in

    def forward(self, v_in, h_in, label):
        """Whole image: v_in, h_in [B, Cin, H, W] -> (v_out, h_out) [B, C, H, W]."""
        cond_v, cond_h = self.conditioning(label)
        v, v_out = self.vertical(F.pad(v_in, (0, 0, self.pad, 0)), cond_v)
        link = shift_down(self.v_to_h(v))  # row i sees vertical rows < i only
        return v_out, self.horizontal(h_in, link, cond_h)


class PixelCNN(raster.RasterModel):
    def __init__(self, config: PixelCNNConfig):
        super().__init__(config)
        c = config
        self.layers = nn.ModuleList(
            GatedLayer(1 if i == 0 else c.channels, c.channels,
                       c.first_kernel if i == 0 else c.kernel, c.num_classes, first=i == 0)
            for i in range(c.n_layers)
        )
        self.head = self.make_head()

    def row_step(self) -> "RowStep":
        """The exported sampling step: one image row per call."""
        return RowStep(self)

    def params(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x [B, 1, H, W] levels, label [B] -> each pixel's distribution parameters [B, H, W, channels]."""
        v = h = self.scale(x)
        for layer in self.layers:
            v, h = layer(v, h, label)
        return self.head(h).permute(0, 2, 3, 1)


class RowStep(nn.Module):
    """One autoregressive step = one image row, with the vertical stack's cache as explicit state.

    State: x_hist [B, 1, P0, W] and v_hist [B, L-1, C, P, W] (the last input
    rows of each layer's vertical stack), and started [B] (0 before row 0).
    """

    def __init__(self, model: PixelCNN):
        super().__init__()
        self.model = model

    def state_shapes(self) -> dict[str, list[int]]:
        c = self.model.config
        return {
            "x_hist": [1, c.first_kernel // 2, c.width],
            "v_hist": [c.n_layers - 1, c.channels, c.kernel // 2, c.width],
            "started": [],
        }

    def vertical_row(self, x_prev, x_hist, v_hist, started, label):
        """Advance the vertical stacks by the finished row x_prev [B, W].

        Returns links (L of [B, 2C, 1, W]) and the new caches.
        """
        v_in = self.model.scale(x_prev)[:, None, None, :]  # [B, 1, 1, W]
        keep = started[:, None, None, None]
        hists, links = [x_hist] + list(v_hist.unbind(1)), []
        new_hists = []
        for layer, hist in zip(self.model.layers, hists, strict=True):
            window = torch.cat([hist, v_in], dim=2)  # [B, Cin, pad + 1, W]
            v, v_in = layer.vertical(window, layer.conditioning(label)[0])
            links.append(layer.v_to_h(v) * keep)  # zero above row 0, as in shift_down
            new_hists.append(keep * window[:, :, 1:] + (1 - keep) * hist)
        return links, new_hists[0], torch.stack(new_hists[1:], dim=1)

    def forward(self, x_prev, x_hist, v_hist, started, noise, temperature, label, observed, mask):
        """x_prev, observed, mask [B, W] int64; noise [B, W, *noise_shape] uniform; temperature [B]; label [B].

        Returns (row [B, W] int64, x_hist, v_hist, started). Where mask is 1 the
        row takes the observed value (completion); elsewhere it is sampled.
        """
        links, x_hist, v_hist = self.vertical_row(x_prev, x_hist, v_hist, started, label)
        conds = [layer.conditioning(label)[1] for layer in self.model.layers]
        columns = []
        for j in range(self.model.config.width):
            prefix = torch.stack(columns + [torch.zeros_like(mask[:, j])], dim=1)  # [B, j+1]; column j is unseen
            h = self.model.scale(prefix)[:, None, None, :]  # [B, 1, 1, j+1]
            for layer, link, cond_h in zip(self.model.layers, links, conds, strict=True):
                h = layer.horizontal(h, link[..., : j + 1], cond_h)
            params = self.model.head(h[..., j:])[:, :, 0, 0]  # [B, channels]
            drawn = self.model.output.sample(params, noise[:, j], temperature)
            columns.append(torch.where(mask[:, j] > 0, observed[:, j], drawn))
        return torch.stack(columns, dim=1), x_hist, v_hist, torch.ones_like(started)


def build(model_config: dict, split) -> PixelCNN:
    """A PixelCNN sized for `split` (image shape, levels, classes) with `model_config` hyper-parameters."""
    _, height, width = split.shape
    return PixelCNN(PixelCNNConfig(height=height, width=width, levels=split.levels,
                                   num_classes=split.num_classes, **model_config))


exported_functions = raster.exported_functions
loss = raster.loss
initial_state = raster.initial_state
sample_fast = raster.sample_fast
sample_grid = raster.sample_grid
sample_naive = raster.sample_naive
