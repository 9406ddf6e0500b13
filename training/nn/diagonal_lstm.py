"""The Diagonal BiLSTM layer of PixelRNN (van den Oord et al. 2016, section 3.2), with the skew trick.

Skewing shifts row i of a map right by i columns, so that the image's diagonals become the columns of the
skewed map. One LSTM then runs over those columns left to right: at column t, position (i, t) is pixel
(i, t - i), and a 2 x 1 column convolution over the previous column's states reads (i - 1, t - 1) and
(i, t - 1): the pixel above and the pixel to the left. Unskewing gives each pixel a state that has seen
every pixel above and to its left. The cell state flows from the left neighbour.

The layer runs two such LSTMs: left-to-right on the image, and right-to-left on the mirrored image (the
pixel above and the pixel to the right). The right-to-left output at row i has seen row i to the right
of each pixel, so it is shifted down one row before it is added: output (i, j) = left(i, j) + right(i-1, j),
which sees only rows < i and row i columns <= j of the layer's input. Input-to-state is a 1 x 1
convolution (mask 'B': a pixel's own input position, which the layer below already made causal).

States at skewed positions outside the image are held at zero, so that the left neighbour of column 0 and
the state above row 0 are zero, as in the row-by-row form `cell` gives for fast sampling.
"""

import torch
import torch.nn.functional as F
from torch import nn


def skew(x: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., H, H + W - 1]: row i shifted right by i, zeros elsewhere."""
    height, width = x.shape[-2:]
    flat = F.pad(x, (0, height)).flatten(-2)  # rows of W + H, read back with a stride of W + H - 1
    return flat[..., : height * (height + width - 1)].unflatten(-1, (height, height + width - 1))


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """[..., H, H + W - 1] -> [..., H, W]: the inverse of skew."""
    height = x.shape[-2]
    flat = F.pad(x.flatten(-2), (0, height))  # read back with a stride of W + H
    return flat.unflatten(-1, (height, height + width))[..., :width]


def lstm(gates: torch.Tensor, c_prev: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gates with the 4 gates (input, forget, output, cell) on `axis`, c_prev the shape without it -> (h, c)."""
    i, f, o, g = gates.unbind(axis)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class DiagonalBiLSTM(nn.Module):
    """Both directions' LSTMs: channels [left 4C | right 4C] of one 1 x 1 input-to-state convolution, one
    2 x 1 state-to-state kernel per direction (state_weight [2, 4C, 2C]: taps on the pixel above, then on
    the pixel before), and class-conditional biases."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.channels = channels
        self.input_conv = nn.Conv2d(in_channels, 8 * channels, 1)
        bound = (2 * channels) ** -0.5  # nn.Conv1d's default for the same kernel
        self.state_weight = nn.Parameter(torch.empty(2, 4 * channels, 2 * channels).uniform_(-bound, bound))
        self.cond = nn.Embedding(num_classes, 8 * channels)
        with torch.no_grad():
            self.input_conv.bias.view(2, 4, channels)[:, 1].fill_(1.0)  # forget gates start open

    def input_gates(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x [B, Cin, H, W] -> [B, 2, 4C, H, W]: both directions' input-to-state terms and class biases."""
        pre = self.input_conv(x) + self.cond(label)[:, :, None, None]
        return pre.unflatten(1, (2, 4 * self.channels))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x [B, Cin, H, W] -> left(i, j) + right(i-1, j) [B, C, H, W]."""
        c_, (height, width) = self.channels, x.shape[-2:]
        x = torch.stack([x, x.flip(-1)], dim=1)  # [B, 2, Cin, H, W]: the right direction runs on the mirror
        columns = skew(x).permute(4, 0, 1, 2, 3).contiguous().unbind(0)  # T of [B, 2, Cin, H]
        bias = (self.input_conv.bias + self.cond(label)).view(-1, 2, 4 * c_, 1)  # [B, 2, 4C, 1]
        weight = torch.cat([self.input_conv.weight.view(2, 4 * c_, -1), self.state_weight], dim=2)  # [2, 4C, Cin+2C]
        h = c = torch.zeros_like(x[:, :, :1, :, 0]).expand(-1, -1, c_, -1)  # [B, 2, C, H]
        states = []
        for t, x_t in enumerate(columns):
            lo, hi = max(0, t - width + 1), min(height - 1, t)  # the rows of column t inside the image
            above = F.pad(h, (1, 0))[..., lo: hi + 1]  # [B, 2, C, n]: rows i - 1 of the previous column
            gates = bias + weight @ torch.cat([x_t[..., lo: hi + 1], above, h[..., lo: hi + 1]], dim=2)
            h, c = lstm(gates.unflatten(2, (4, c_)), c[..., lo: hi + 1], axis=2)  # [B, 2, C, n]
            h, c = F.pad(h, (lo, height - 1 - hi)), F.pad(c, (lo, height - 1 - hi))  # zero outside the image
            states.append(h)
        h = unskew(torch.stack(states, dim=-1), width)  # [B, 2, C, H, W]
        right = F.pad(h[:, 1].flip(-1), (0, 0, 1, 0))[:, :, :-1]  # row i takes row i-1
        return h[:, 0] + right

    def cell(self, direction: int, pre: torch.Tensor, h_above: torch.Tensor, h_side: torch.Tensor,
             c_side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pixel of one direction (0 left-to-right, 1 right-to-left), row by row: pre [B, 4C] (input_gates),
        h_above [B, C] (the pixel above), h_side, c_side [B, C] (the pixel before it in this direction)."""
        gates = pre + torch.cat([h_above, h_side], dim=1) @ self.state_weight[direction].T  # [B, 4C]
        return lstm(gates.unflatten(1, (4, self.channels)), c_side, axis=1)
