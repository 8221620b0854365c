"""Locally aware patch features (PatchCore, seed 000 / spec A.2), as one exportable module.

For every tapped backbone stage: average each position with its 3x3 neighbourhood (zero padded, as the
official unfold + mean; count_include_pad=True), upsample the deeper stages bilinearly onto the grid of
the first (shallowest) stage, concatenate along channels, and optionally reduce the channels to
`embed_dim` by adaptive average pooling over the channel axis (the official `target_embed_dimension`
step). The pooling is written as a fixed matrix so it exports as one MatMul-like 1x1 convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_pool_matrix(in_dim: int, out_dim: int) -> torch.Tensor:
    """[out_dim, in_dim] matrix M with M @ v == adaptive_avg_pool1d(v, out_dim) (torch's bin rule)."""
    matrix = torch.zeros(out_dim, in_dim)
    for i in range(out_dim):
        start = (i * in_dim) // out_dim
        end = -((-(i + 1) * in_dim) // out_dim)  # ceil, as torch's adaptive pooling
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class PatchEmbedding(nn.Module):
    """list of stage maps [B, C_i, H_i, W_i] -> patch features [B, D, H_0, W_0].

    D = sum(C_i), or embed_dim when given.
    """

    def __init__(self, channels: Sequence[int], neighbourhood: int = 3, embed_dim: int | None = None,
                 upsample: str = "bilinear"):
        super().__init__()
        # "bilinear": official PatchCore; "nearest": anomalib's variant, which seed 003's SEMLP and Labeled
        # PatchCore were trained with (spec softcore_semlp_labeled_patchcore.md, B.2 and part C).
        if upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        self.upsample = upsample
        self.channels = tuple(int(c) for c in channels)
        self.neighbourhood = int(neighbourhood)
        total = sum(self.channels)
        self.embed_dim = int(embed_dim) if embed_dim else None
        if self.embed_dim is not None and self.embed_dim < total:
            self.register_buffer("projection", adaptive_pool_matrix(total, self.embed_dim)[:, :, None, None])
        else:
            self.projection = None
        self.out_dim = self.embed_dim if self.projection is not None else total

    def forward(self, stage_maps: list[torch.Tensor]) -> torch.Tensor:
        pad = self.neighbourhood // 2
        pooled = [F.avg_pool2d(m, self.neighbourhood, stride=1, padding=pad) for m in stage_maps]
        grid = pooled[0].shape[-2:]
        resize = (dict(mode="bilinear", align_corners=False) if self.upsample == "bilinear" else dict(mode="nearest"))
        aligned = [pooled[0]] + [F.interpolate(m, size=grid, **resize) for m in pooled[1:]]
        features = torch.cat(aligned, dim=1)
        if self.projection is not None:
            features = F.conv2d(features, self.projection)
        return features
