"""Aligned stage grid: the patch features of the Gaussian and k-NN methods (PaDiM, PaIRE, KNN,
Mahalanobis), as one exportable module.

Every tapped stage map is upsampled bilinearly (align_corners=False, spec P-A7) onto the grid of the
first (shallowest) stage and the maps are concatenated along channels -- PaDiM's embedding, and the
spec's A3.3 / B2 alignment. Unlike PatchCore's embedding there is no 3x3 neighbourhood averaging.
Two optional steps, both fixed at construction so the module exports without data-dependent code:

* ``pool_kernel``/``pool_stride``: PaIRE's neighbourhood fusion (spec B2 Eq. 3), an average pool with
  padding 0 (spec P-B6).
* ``channel_index``: PaDiM's random channel subset, a fixed Gather over the concatenated channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def random_channel_subset(total_channels: int, num_channels: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of `num_channels` of `total_channels`, drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total_channels, size=min(num_channels, total_channels), replace=False)).astype(np.int64)


class AlignedStageGrid(nn.Module):
    """list of stage maps [B, C_i, H_i, W_i] -> features [B, D, h, w] on the first stage's grid.

    D = sum(C_i), or len(channel_index) when a subset is given; (h, w) shrinks with the optional pool.
    `level_sizes` gives the channel count of each stage after the subset (Mahalanobis fits one
    Gaussian per level).
    """

    def __init__(self, channels: Sequence[int], pool_kernel: int | None = None, pool_stride: int | None = None,
                 channel_index: np.ndarray | None = None):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.pool_kernel = int(pool_kernel) if pool_kernel else None
        self.pool_stride = int(pool_stride or pool_kernel) if pool_kernel else None
        level_of_channel = np.repeat(np.arange(len(self.channels)), self.channels)
        if channel_index is not None:
            index = np.asarray(channel_index, dtype=np.int64)
            self.register_buffer("channel_index", torch.from_numpy(index))
            level_of_channel = level_of_channel[index]
        else:
            self.channel_index = None
        self.level_sizes = tuple(int((level_of_channel == level).sum()) for level in range(len(self.channels)))
        self.out_dim = int(sum(self.level_sizes))

    def forward(self, stage_maps: list[torch.Tensor]) -> torch.Tensor:
        grid = stage_maps[0].shape[-2:]
        aligned = [stage_maps[0]] + [
            F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in stage_maps[1:]
        ]
        features = torch.cat(aligned, dim=1)
        if self.channel_index is not None:
            features = features.index_select(1, self.channel_index)
        if self.pool_kernel is not None:
            features = F.avg_pool2d(features, self.pool_kernel, stride=self.pool_stride, padding=0)
        return features
