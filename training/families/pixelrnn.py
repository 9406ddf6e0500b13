"""Row LSTM with class conditioning (van den Oord et al. 2016, "Pixel Recurrent Neural Networks").

Each layer is an LSTM that runs down the image one row at a time. The gates of
row i are a masked 1 x k convolution over the layer's input at row i (mask 'A'
in the first layer: column j sees columns < j; mask 'B' later: columns <= j),
plus a 1 x k convolution over the layer's hidden state at row i - 1, plus
class-conditional biases. The first layer also sees the input row i - 1 in
full through a 1 x k convolution (a 2 x k kernel with mask 'A', as in the
paper's masked input convolution), so the last pixel of a row is seen by the
next one. Layers after the first are residual. A head of 1 x 1 convolutions
gives each pixel's distribution (pixelcnn's output distributions).

Pixel (i, j) depends only on rows < i and on row i columns < j. Fast sampling
produces one image row per call (`RowStep`) with every layer's LSTM (h, c) of
the previous row as explicit state; inside a row, pixel j recomputes the
layers over columns 0..j only, the only ones that can affect it. It is exact:
`sample_fast` equals `sample_naive` under the same noise.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.families import raster


@dataclass
class PixelRNNConfig:
    height: int = 28
    width: int = 28
    levels: int = 2
    num_classes: int = 10
    channels: int = 32
    n_layers: int = 4
    first_kernel: int = 5  # the first layer's input-to-state (mask 'A') and row-above widths
    kernel: int = 3  # later layers' input-to-state (mask 'B') and every layer's state-to-state widths
    head_channels: int = 64
    output: str = "categorical"  # or "logistic_mixture"
    mixtures: int = 5  # components of the logistic mixture

    def to_dict(self) -> dict:
        return asdict(self)


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates [B, 4C, ...] (input, forget, output, cell), c_prev [B, C, ...] -> (h, c) [B, C, ...]."""
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def row_above(s: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] scaled input: row i takes row i-1; above row 0 is level 0 (-1), what x_prev = 0 gives."""
    return F.pad(s, (0, 0, 1, 0), value=-1.0)[:, :, :-1]


class RowLSTMLayer(nn.Module):
    """One Row LSTM layer; the first one is masked 'A' and also sees the input row above."""

    def __init__(self, in_channels: int, channels: int, kernel: int, state_kernel: int, num_classes: int,
                 first: bool):
        super().__init__()
        if min(kernel, state_kernel) < 3 or kernel % 2 == 0 or state_kernel % 2 == 0:
            raise ValueError(f"kernel sizes must be odd and at least 3, not {kernel} and {state_kernel}")
        self.pad, self.first, self.channels = kernel // 2, first, channels
        # masked 1 x k: the taps left of column j, and column j itself unless mask 'A'
        self.input_conv = nn.Conv2d(in_channels, 4 * channels, (1, self.pad if first else self.pad + 1))
        self.state_conv = nn.Conv2d(channels, 4 * channels, (1, state_kernel), padding=(0, state_kernel // 2),
                                    bias=False)
        self.above_conv = nn.Conv2d(in_channels, 4 * channels, (1, kernel), padding=(0, self.pad)) if first else None
        self.cond = nn.Embedding(num_classes, 4 * channels)
        with torch.no_grad():
            self.input_conv.bias[channels: 2 * channels].fill_(1.0)  # forget gates start open

    def input_to_state(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, Cin, R, W'] -> [B, 4C, R, W']: column j sees columns < j ('A') or <= j ('B') of its row."""
        return self.input_conv(F.pad(x, (self.pad, 0)))[..., : x.shape[-1]]

    def row_terms(self, h_prev: torch.Tensor, above: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """What does not depend on the current row: h_prev [B, C, 1, W], above [B, Cin, 1, W] -> [B, 4C, 1, W]."""
        out = self.state_conv(h_prev) + self.cond(label)[:, :, None, None]
        return out + self.above_conv(above) if self.first else out

    def forward(self, x: torch.Tensor, above: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Whole image, row by row: x, above [B, Cin, H, W] (above = the input row i-1) -> h [B, C, H, W]."""
        pre = self.input_to_state(x) + self.cond(label)[:, :, None, None]  # [B, 4C, H, W]
        if self.first:
            pre = pre + self.above_conv(above)
        h = c = torch.zeros_like(pre[:, : self.channels, :1])  # [B, C, 1, W]: the state above row 0
        rows = []
        for pre_row in pre.split(1, dim=2):  # [B, 4C, 1, W] each; one split backward, not H slice backwards
            h, c = lstm_cell(pre_row + self.state_conv(h), c)
            rows.append(h)
        return torch.cat(rows, dim=2)


class PixelRNN(raster.RasterModel):
    def __init__(self, config: PixelRNNConfig):
        super().__init__(config)
        c = config
        self.layers = nn.ModuleList(
            RowLSTMLayer(1 if n == 0 else c.channels, c.channels, c.first_kernel if n == 0 else c.kernel,
                         c.kernel, c.num_classes, first=n == 0)
            for n in range(c.n_layers)
        )
        self.head = self.make_head()

    def features(self, s: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """s [B, 1, H, W] scaled input, label [B] -> the head's input [B, C, H, W]."""
        above, h = row_above(s), s
        for n, layer in enumerate(self.layers):
            h = layer(h, above, label) + (h if n > 0 else 0)
        return h

    def row_step(self) -> "RowStep":
        """The exported sampling step: one image row per call."""
        return RowStep(self)

    def params(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x [B, 1, H, W] levels, label [B] -> each pixel's distribution parameters [B, H, W, channels]."""
        return self.head(self.features(self.scale(x), label)).permute(0, 2, 3, 1)


class RowStep(nn.Module):
    """One autoregressive step = one image row, with every layer's LSTM state of the previous row as state.

    State: h, c [B, L, C, W] (zeros before row 0: the LSTMs' initial state).
    """

    def __init__(self, model: PixelRNN):
        super().__init__()
        self.model = model

    def state_shapes(self) -> dict[str, list[int]]:
        c = self.model.config
        return {"h": [c.n_layers, c.channels, c.width], "c": [c.n_layers, c.channels, c.width]}

    def forward(self, x_prev, h, c, noise, temperature, label, observed, mask):
        """x_prev, observed, mask [B, W] int64; h, c [B, L, C, W]; noise [B, W, *noise_shape]; temperature [B].

        Returns (row [B, W] int64, next_h, next_c). Where mask is 1 the row takes
        the observed value (completion); elsewhere it is sampled.
        """
        model, width = self.model, self.model.config.width
        above = model.scale(x_prev)[:, None, None, :]  # [B, 1, 1, W]
        fixed = [layer.row_terms(h[:, n, :, None], above, label) for n, layer in enumerate(model.layers)]
        columns, hs, cs = [], [], []
        for j in range(width):
            prefix = torch.stack(columns + [torch.zeros_like(mask[:, j])], dim=1)  # [B, j+1]; column j is unseen
            inp = model.scale(prefix)[:, None, None, :]  # [B, 1, 1, j+1]
            hs, cs = [], []
            for n, layer in enumerate(model.layers):
                gates = layer.input_to_state(inp) + fixed[n][..., : j + 1]
                h_new, c_new = lstm_cell(gates, c[:, n, :, None, : j + 1])  # [B, C, 1, j+1]
                hs.append(h_new)
                cs.append(c_new)
                inp = h_new + inp if n > 0 else h_new
            params = model.head(inp[..., j:])[:, :, 0, 0]  # [B, channels]
            drawn = model.output.sample(params, noise[:, j], temperature)
            columns.append(torch.where(mask[:, j] > 0, observed[:, j], drawn))
        # the last pass covered every column, and no state depends on the pixel it left unseen
        return torch.stack(columns, dim=1), torch.stack(hs, dim=1)[:, :, :, 0], torch.stack(cs, dim=1)[:, :, :, 0]


def build(model_config: dict, split) -> PixelRNN:
    """A Row LSTM sized for `split` (image shape, levels, classes) with `model_config` hyper-parameters."""
    _, height, width = split.shape
    return PixelRNN(PixelRNNConfig(height=height, width=width, levels=split.levels,
                                   num_classes=split.num_classes, **model_config))


exported_functions = raster.exported_functions
loss = raster.loss
initial_state = raster.initial_state
sample_fast = raster.sample_fast
sample_grid = raster.sample_grid
sample_naive = raster.sample_naive
