"""KNN (SPADE-style, as SROC configures it; spec A3.1, seed 000): image-level k-nearest-neighbour
distance on globally pooled features, with same-position patch distances to the retrieved images.

embedding: the aligned stage grid (grid_features.AlignedStageGrid): stages upsampled bilinearly to the
           first stage's grid and concatenated.
fit:       image bank = global average pool of each training image's grid [N, D]; patch bank = the
           grids themselves [N, D, h, w] (optionally average-pooled by `map_pool` to bound the size).
score:     image score = mean squared L2 distance to the k = 5 nearest bank images (Eq. 1; squared as
           the equation and faiss, spec P-A4). Self-matches are not excluded when training images are
           scored in-sample (spec P-A1: the literal procedure).
map:       at each position, the mean squared L2 distance between the test patch and the patches at the
           SAME position of the k retrieved images (spec P-A5: the literal reading; SPADE's
           all-positions search is not implemented).

[ours] The global pool runs on the aligned grid rather than on each stage separately: bilinear 2x
upsampling with align_corners=False preserves a map's mean except at the border rows and columns, so
this differs from the paper's per-stage GAP only there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adtk.runtime.errors import ConfigError
from adtk.toolkit.grid_features import AlignedStageGrid
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, register_method
from adtk.toolkit.search import squared_distances

MAX_STATE_BYTES = 1_800_000_000  # leaves room for the backbone under the artefact's 2 GB limit


@dataclass(frozen=True)
class KnnState:
    image_bank: np.ndarray  # float32 [N, D]: pooled training features
    patch_bank: np.ndarray  # float32 [N, D, h, w]: training grids (after map_pool)
    num_neighbors: int  # k, at most N


class KnnHead(nn.Module):
    """features [B, D, h, w] -> HeadOutput(patch_scores [B, h', w'], image_score [B])."""

    def __init__(self, state: KnnState, map_pool: int):
        super().__init__()
        bank = torch.from_numpy(np.ascontiguousarray(state.image_bank, dtype=np.float32))
        self.register_buffer("image_bank", bank)
        self.register_buffer("bank_sq_norms", (bank * bank).sum(1))
        self.register_buffer("patch_bank", torch.from_numpy(np.ascontiguousarray(state.patch_bank, dtype=np.float32)))
        self.num_neighbors = int(state.num_neighbors)
        self.map_pool = int(map_pool)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        pooled = features.mean(dim=(2, 3))  # [B, D]
        sq_dists = squared_distances(pooled[:, None, :], self.image_bank, self.bank_sq_norms)[:, 0]  # [B, N]
        nearest_sq, nearest = torch.topk(sq_dists, self.num_neighbors, dim=1, largest=False)
        image_score = nearest_sq.mean(dim=1)
        grid = F.avg_pool2d(features, self.map_pool) if self.map_pool > 1 else features
        neighbours = self.patch_bank[nearest]  # [B, k, D, h, w]
        patch_scores = ((grid[:, None] - neighbours) ** 2).sum(dim=2).mean(dim=1)
        return HeadOutput(patch_scores, image_score)


@register_method("knn")
class Knn(AnomalyMethod):
    """Image-level k-NN on pooled features, same-position patch distances for the map (spec A3.1)."""

    def __init__(self, num_neighbors: int = 5, map_pool: int = 1):
        if num_neighbors < 1:
            raise ConfigError(f"knn: num_neighbors must be >= 1, got {num_neighbors}")
        if map_pool < 1:
            raise ConfigError(f"knn: map_pool must be >= 1, got {map_pool}")
        self.num_neighbors, self.map_pool = int(num_neighbors), int(map_pool)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return AlignedStageGrid(channels)

    def fit(self, inputs: FitInputs) -> KnnState:
        """inputs.features [N, D, h, w] float32 -> KnnState (k clamped to N)."""
        features = inputs.features
        patch_bank = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if self.map_pool > 1:
            patch_bank = F.avg_pool2d(patch_bank, self.map_pool)
        state_bytes = patch_bank.numel() * 4
        if state_bytes > MAX_STATE_BYTES:
            larger = self.map_pool * int(np.ceil(np.sqrt(state_bytes / MAX_STATE_BYTES)))
            raise ConfigError(f"knn: the patch bank would take {state_bytes / 1e9:.2f} GB, over the artefact's "
                              f"2 GB limit; pass --param map_pool={larger} (coarser maps) or use fewer images")
        return KnnState(image_bank=np.ascontiguousarray(features.mean(axis=(2, 3)), dtype=np.float32),
                        patch_bank=patch_bank.numpy(), num_neighbors=min(self.num_neighbors, features.shape[0]))

    def head(self, state: KnnState) -> KnnHead:
        return KnnHead(state, self.map_pool)

    def fit_report(self, state: KnnState) -> dict:
        return {"bank_images": int(state.image_bank.shape[0]), "dims": int(state.image_bank.shape[1]),
                "map_grid": list(state.patch_bank.shape[2:]), "num_neighbors": state.num_neighbors}
