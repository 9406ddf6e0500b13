"""A locally connected 2-d layer: a convolution whose filter is not shared, each output position having its own
(Keras' LocallyConnected2D; de Oliveira et al. 2017 use it where a jet image's pixels mean different things).

    y[b, o, p] = bias[o, p] + sum_k W[p, k, o] * patch_k(x[b], p)

over the output positions p of an unpadded convolution with `kernel` and `stride`, the patch's k = (c, i, j)
flattened as F.unfold orders it. Exports to ONNX (unfold is im2col there) and TorchScript.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class LocallyConnected2d(nn.Module):
    """x [B, C_in, H, W] -> [B, C_out, H', W'], H' = (H - kernel) // stride + 1 (pad the input beforehand)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, in_size: int, stride: int = 1,
                 bias: bool = True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.out_size = (in_size - kernel) // stride + 1
        taps = in_channels * kernel * kernel
        bound = 1 / math.sqrt(taps)  # Conv2d's default initialisation, per position
        self.weight = nn.Parameter(torch.empty(self.out_size ** 2, taps, out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels, self.out_size ** 2)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.kernel, stride=self.stride).permute(2, 0, 1)  # [L, B, taps]
        y = torch.bmm(patches, self.weight).permute(1, 2, 0)  # [B, C_out, L]
        if self.bias is not None:
            y = y + self.bias
        return y.unflatten(2, (self.out_size, self.out_size))  # [B, C_out, H', W']
