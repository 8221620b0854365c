"""Mahalanobis (Gaussian-AD, Rippel et al.; as SROC configures it, spec A3.2, seed 000): one Gaussian
per feature level on globally pooled features, Ledoit-Wolf covariance, distances summed over levels.

embedding: the aligned stage grid (grid_features.AlignedStageGrid); its `level_sizes` say which
           channels belong to which backbone stage.
fit:       per level l: the global average pool of that level's channels over the N training images ->
           scikit-learn's LedoitWolf mean and covariance (float64) -> whitening factor W_l with
           (x - mu)^T S^-1 (x - mu) = ||W_l (x - mu)||^2 (gaussian.whitening_factor). The factors are
           stored as one block-diagonal matrix so the head is one matrix product.
score:     image score = sum over levels of sqrt((f - mu_l)^T S_l^-1 (f - mu_l)) (Eq. 2).
map:       DEVIATION (labelled): the paper localises with Grad-CAM of the score (spec P-A11), which needs
           backpropagation through the backbone and cannot be exported as a forward graph. Instead each
           grid position's feature vector is scored under the same per-level Gaussians (the same
           formula, applied per position). It is exportable and localises where features differ from
           the pooled training distribution; its AU-PRO is not the paper's Grad-CAM AU-PRO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.gaussian import whitening_factor
from adtk.toolkit.grid_features import AlignedStageGrid
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, register_method


@dataclass(frozen=True)
class MahalanobisState:
    mean: np.ndarray  # float32 [D]: the per-level means, concatenated
    factor: np.ndarray  # float32 [D, D]: block-diagonal, one lower-triangular W_l per level
    level_sizes: np.ndarray  # int64 [L]: channels of each level (sum = D)
    shrinkage: np.ndarray  # float64 [L]: the Ledoit-Wolf shrinkage of each level (for the record)


class MahalanobisHead(nn.Module):
    """features [B, D, h, w] -> HeadOutput(patch_scores [B, h, w], image_score [B])."""

    def __init__(self, state: MahalanobisState):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(state.mean.astype(np.float32)))
        self.register_buffer("factor_t", torch.from_numpy(np.ascontiguousarray(state.factor.T, dtype=np.float32)))
        level_of_row = np.repeat(np.arange(len(state.level_sizes)), state.level_sizes)
        one_hot = (level_of_row[:, None] == np.arange(len(state.level_sizes))[None]).astype(np.float32)
        self.register_buffer("level_sum", torch.from_numpy(one_hot))  # [D, L]: sums squares per level

    def distances(self, vectors: torch.Tensor) -> torch.Tensor:
        """[..., D] -> sum over levels of the Mahalanobis distance, [...]."""
        whitened = torch.matmul(vectors - self.mean, self.factor_t)  # (W r) as a row vector
        per_level = torch.matmul(whitened * whitened, self.level_sum).clamp(min=0.0).sqrt()
        return per_level.sum(dim=-1)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        image_score = self.distances(features.mean(dim=(2, 3)))
        patch_scores = self.distances(features.permute(0, 2, 3, 1))  # [B, h, w]
        return HeadOutput(patch_scores, image_score)


@register_method("mahalanobis")
class Mahalanobis(AnomalyMethod):
    """One Ledoit-Wolf Gaussian per feature level on pooled features (spec A3.2)."""

    refines_in_sample = True  # one Gaussian: in-sample distance ~ leave-one-out (base.py)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return AlignedStageGrid(channels)

    def fit(self, inputs: FitInputs) -> MahalanobisState:
        """inputs.features [N, D, h, w] (from this method's embedding of inputs.channels) -> MahalanobisState:
        one Gaussian per backbone stage, whose channels the embedding concatenated in order."""
        features, level_sizes = inputs.features, tuple(int(c) for c in inputs.channels)
        if sum(level_sizes) != features.shape[1]:
            raise ConfigError(f"mahalanobis: the features have {features.shape[1]} channels, not the "
                              f"{sum(level_sizes)} of the stages {list(level_sizes)}; fit on this method's embedding")
        pooled = features.astype(np.float64).mean(axis=(2, 3))  # [N, D]
        dims = pooled.shape[1]
        mean = np.empty(dims)
        factor = np.zeros((dims, dims))
        shrinkage = []
        start = 0
        for size in level_sizes:
            level = slice(start, start + size)
            from sklearn.covariance import LedoitWolf  # fit time only

            if pooled.shape[0] < 2:
                raise DataError(f"mahalanobis needs at least 2 training images, got {pooled.shape[0]}")
            model = LedoitWolf().fit(pooled[:, level])
            mean[level] = model.location_
            factor[level, level] = whitening_factor(model.covariance_[None])[0]
            shrinkage.append(float(model.shrinkage_))
            start += size
        return MahalanobisState(mean=mean.astype(np.float32), factor=factor.astype(np.float32),
                                level_sizes=np.asarray(level_sizes, dtype=np.int64),
                                shrinkage=np.asarray(shrinkage))

    def head(self, state: MahalanobisState) -> MahalanobisHead:
        return MahalanobisHead(state)

    def fit_report(self, state: MahalanobisState) -> dict:
        return {"level_sizes": state.level_sizes.tolist(),
                "ledoit_wolf_shrinkage": [round(float(s), 6) for s in state.shrinkage]}
