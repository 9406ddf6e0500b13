"""Edge maps of digits, the sources of pix2pix's pairs (edge map -> digit).

A digit's edge map is the morphological gradient of its binarized image: dilation minus erosion by a 3x3 square,
so a pixel is 1 where the digit's mask (level > THRESHOLD) changes within its 3x3 neighbourhood. Deterministic:
the pairs are (edge_map(x), x) for every image x of a split (mnist5k's fixed train and test).
"""

import numpy as np
import torch
import torch.nn.functional as F

THRESHOLD = 127  # a digit's mask: levels above it


def edge_map(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Levels [B, 1, H, W] -> int64 edge map [B, 1, H, W] in {0, 1}."""
    mask = (torch.as_tensor(x) > THRESHOLD).float()
    dilated = F.max_pool2d(mask, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-mask, 3, stride=1, padding=1)
    return (dilated - eroded).long()
