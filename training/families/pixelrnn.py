"""PixelRNN, class-conditional: Row LSTM or Diagonal BiLSTM (van den Oord et al. 2016).

The paper is "Pixel Recurrent Neural Networks"; config.cell picks its layer. "row_lstm": each layer is an
LSTM that runs down the image one row at a time. The gates of row i are a masked 1 x k convolution over the
layer's input at row i (mask 'A' in the first layer: column j sees columns < j; mask 'B' later: columns
<= j), plus a 1 x k convolution over the layer's hidden state at row i - 1, plus class-conditional biases.
The first layer also sees the input row i - 1 in full through a 1 x k convolution (a 2 x k kernel with
mask 'A', as in the paper's masked input convolution), so the last pixel of a row is seen by the next one.

"diagonal_bilstm": a k x k mask 'A' convolution (rows above in full, the row's pixels to the left), then
Diagonal BiLSTM layers (training/nn/diagonal_lstm.py: the skew trick, both directions, the right-to-left
output shifted down one row), whose state reaches every earlier pixel but one: the last pixel of the row
above, beyond the first convolution's k // 2 columns (tests/training/test_pixelrnn_diag.py says why).

Layers after the first are residual (every Diagonal BiLSTM layer is). A head of 1 x 1 convolutions gives
each pixel's distribution (pixelcnn's output distributions).

Pixel (i, j) depends only on rows < i and on row i columns < j. Fast sampling produces one image row per
call (`RowStep`, `DiagonalStep`) with the previous row's LSTM states as explicit state. The Row LSTM's
pixel j recomputes the layers over columns 0..j only, the only ones that can affect it; the Diagonal
BiLSTM's runs the left-to-right LSTMs one pixel at a time and, once the row is drawn, the right-to-left
ones over the row. It is exact: `sample_fast` equals `sample_naive` under the same noise.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.families import raster
from training.nn.diagonal_lstm import DiagonalBiLSTM

CELLS = ("row_lstm", "diagonal_bilstm")


@dataclass
class PixelRNNConfig:
    height: int = 28
    width: int = 28
    levels: int = 2
    num_classes: int = 10
    channels: int = 32
    n_layers: int = 4
    cell: str = "row_lstm"  # or "diagonal_bilstm"
    first_kernel: int = 5  # the first layer's widths (row_lstm: mask 'A' and row above; diagonal: k x k mask 'A')
    kernel: int = 3  # row_lstm only: later layers' input-to-state (mask 'B') and every state-to-state width
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


class MaskedConvA(nn.Module):
    """k x k convolution with mask 'A' on the scaled image: the k // 2 rows above in full (level 0 above the
    image, as x_prev = 0 gives) plus the row's k // 2 pixels to the left."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        if kernel < 5 or kernel % 2 == 0:
            raise ValueError(f"model.first_kernel must be odd and at least 5 for the diagonal_bilstm, not {kernel}")
        self.pad = kernel // 2
        self.above = nn.Conv2d(1, channels, (self.pad, kernel), padding=(0, self.pad))
        self.left = nn.Conv2d(1, channels, (1, self.pad), bias=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s [B, 1, H, W] -> [B, C, H, W]."""
        rows_above = F.pad(s, (0, 0, self.pad, 0), value=-1.0)[:, :, :-1]  # [B, 1, H + pad - 1, W]
        return self.above(rows_above) + self.left_of(s)

    def left_of(self, s: torch.Tensor) -> torch.Tensor:
        """s [B, 1, R, W'] -> [B, C, R, W']: column j sees columns j - pad .. j - 1 (zeros left of the image)."""
        return self.left(F.pad(s, (self.pad, 0)))[..., : s.shape[-1]]


class DiagonalPixelRNN(raster.RasterModel):
    """The mask 'A' convolution, then residual Diagonal BiLSTM layers, then the head."""

    def __init__(self, config: PixelRNNConfig):
        super().__init__(config)
        c = config
        self.first = MaskedConvA(c.channels, c.first_kernel)
        self.layers = nn.ModuleList(DiagonalBiLSTM(c.channels, c.channels, c.num_classes) for _ in range(c.n_layers))
        self.head = self.make_head()

    def params(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x [B, 1, H, W] levels, label [B] -> each pixel's distribution parameters [B, H, W, channels]."""
        h = self.first(self.scale(x))
        for layer in self.layers:
            h = layer(h, label) + h
        return self.head(h).permute(0, 2, 3, 1)

    def row_step(self) -> "DiagonalStep":
        """The exported sampling step: one image row per call."""
        return DiagonalStep(self)


class DiagonalStep(nn.Module):
    """One autoregressive step = one image row of the Diagonal BiLSTM.

    State: rows [B, pad - 1, W], the levels of the image rows i - pad .. i - 2 (x_prev is row i - 1), which
    the mask 'A' convolution reads; h_left, h_right [B, L, C, W], each layer's left-to-right and
    right-to-left LSTM outputs at row i - 1. All zeros before row 0. The cell states run along a row only.
    """

    def __init__(self, model: DiagonalPixelRNN):
        super().__init__()
        self.model = model

    def state_shapes(self) -> dict[str, list[int]]:
        c = self.model.config
        return {"rows": [self.model.first.pad - 1, c.width], "h_left": [c.n_layers, c.channels, c.width],
                "h_right": [c.n_layers, c.channels, c.width]}

    def forward(self, x_prev, rows, h_left, h_right, noise, temperature, label, observed, mask):
        """x_prev, observed, mask [B, W] int64; rows [B, pad-1, W]; h_left, h_right [B, L, C, W]; noise
        [B, W, *noise_shape]; temperature [B] -> (row [B, W] int64, next_rows, next_h_left, next_h_right).

        Where mask is 1 the row takes the observed value (completion); elsewhere it is sampled.
        """
        model, width = self.model, self.model.config.width
        rows = torch.cat([rows, x_prev[:, None].to(rows.dtype)], dim=1)  # [B, pad, W] levels
        above = model.first.above(model.scale(rows)[:, None])[:, :, 0]  # [B, C, W]
        scaled = [torch.zeros_like(above[:, 0, 0])] * model.first.pad  # [B] each: zeros left of the image
        side = [(torch.zeros_like(above[..., 0]),) * 2 for _ in model.layers]  # (h, c) [B, C] left of column j
        columns, lefts, right_pres = [], [[] for _ in model.layers], [[] for _ in model.layers]
        for j in range(width):
            window = torch.stack(scaled[-model.first.pad:], dim=1)[:, None, None]  # [B, 1, 1, pad]
            inp = above[..., j] + model.first.left(window)[:, :, 0, 0]  # [B, C]
            for n, layer in enumerate(model.layers):
                pre = layer.input_gates(inp[:, :, None, None], label)[..., 0, 0]  # [B, 2, 4C]
                side[n] = layer.cell(0, pre[:, 0], h_left[:, n, :, j], *side[n])
                lefts[n].append(side[n][0])
                right_pres[n].append(pre[:, 1])
                inp = side[n][0] + h_right[:, n, :, j] + inp
            params = model.head(inp[:, :, None, None])[:, :, 0, 0]  # [B, channels]
            drawn = model.output.sample(params, noise[:, j], temperature)
            columns.append(torch.where(mask[:, j] > 0, observed[:, j], drawn))
            scaled.append(model.scale(columns[-1]))
        rights = [self.right_to_left(n, pres, h_right[:, n]) for n, pres in enumerate(right_pres)]
        row = torch.stack(columns, dim=1)
        return row, rows[:, 1:], torch.stack([torch.stack(h, dim=-1) for h in lefts], dim=1), torch.stack(rights, 1)

    def right_to_left(self, n: int, pres: list, h_above: torch.Tensor) -> torch.Tensor:
        """Layer n's right-to-left LSTM over the drawn row: pres W of [B, 4C], h_above [B, C, W] -> [B, C, W]."""
        layer = self.model.layers[n]
        h = c = torch.zeros_like(h_above[..., 0])
        states = []
        for j in reversed(range(len(pres))):
            h, c = layer.cell(1, pres[j], h_above[..., j], h, c)
            states.append(h)
        return torch.stack(states[::-1], dim=-1)


def build(model_config: dict, split) -> PixelRNN | DiagonalPixelRNN:
    """A PixelRNN sized for `split` (image shape, levels, classes) with `model_config` hyper-parameters."""
    _, height, width = split.shape
    config = PixelRNNConfig(height=height, width=width, levels=split.levels, num_classes=split.num_classes,
                            **model_config)
    if config.cell not in CELLS:
        raise ValueError(f"model.cell: {config.cell!r} is not one of {list(CELLS)}")
    return DiagonalPixelRNN(config) if config.cell == "diagonal_bilstm" else PixelRNN(config)


exported_functions = raster.exported_functions
loss = raster.loss
initial_state = raster.initial_state
sample_fast = raster.sample_fast
sample_grid = raster.sample_grid
sample_naive = raster.sample_naive
