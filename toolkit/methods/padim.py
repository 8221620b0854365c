"""PaDiM (Defard et al. 2020; as SROC configures it, spec A3.3, seed 000): one Gaussian per grid
position over the training images' patch features.

embedding: the aligned stage grid (grid_features.AlignedStageGrid) restricted to a random subset of
           `num_channels` channels, drawn once from `seed` and recorded in the state and the manifest
           (PaDiM's Rd100 step; the spec's edge variant A9: the full 832-D/1792-D Gaussians of P-A6 do
           not fit an edge artefact, 576 x 832^2 x 4 B = 1.6 GB).
fit:       per position, sklearn-identical Ledoit-Wolf covariance (spec P-A2), computed batched in
           float64 (gaussian.ledoit_wolf), then the whitening factor W = C^-1 of its Cholesky factor C,
           so the squared distance is ||W (x - mu)||^2 = ||L^T (x - mu)||^2 with precision L L^T.
           W and mu are stored in float32 (tested against float64 distances).
score:     patch score = Mahalanobis distance at each position; image score = max over positions (Eq. 3).
map:       the patch scores, upsampled and blurred by the shared post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError
from adtk.toolkit.gaussian import ledoit_wolf, whitening_factor
from adtk.toolkit.grid_features import AlignedStageGrid, random_channel_subset
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, register_method

MAX_STATE_BYTES = 1_800_000_000  # leaves room for the backbone under the artefact's 2 GB limit
POSITIONS_PER_CHUNK = 64  # bounds the float64 fit temporaries to ~ 64 x N x d x 8 B


@dataclass(frozen=True)
class PadimState:
    channel_index: np.ndarray  # int64 [d]: the channel subset (also inside the embedding)
    mean: np.ndarray  # float32 [P, d], P = h * w positions
    factor: np.ndarray  # float32 [P, d, d]: lower-triangular W per position
    grid: tuple[int, int]  # (h, w)


class PadimHead(nn.Module):
    """features [B, d, h, w] -> HeadOutput(patch_scores [B, h, w], image_score [B])."""

    def __init__(self, state: PadimState):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.ascontiguousarray(state.mean, dtype=np.float32)))
        self.register_buffer("factor", torch.from_numpy(np.ascontiguousarray(state.factor, dtype=np.float32)))

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, dims, height, width = features.shape
        centred = features.flatten(2).transpose(1, 2) - self.mean  # [B, P, d]
        whitened = torch.matmul(self.factor, centred.unsqueeze(-1)).squeeze(-1)  # [B, P, d]: batched over P
        distances = (whitened * whitened).sum(dim=-1).clamp(min=0.0).sqrt()
        patch_scores = distances.view(batch, height, width)
        return HeadOutput(patch_scores, distances.max(dim=1).values)


@register_method("padim")
class Padim(AnomalyMethod):
    """Per-position Ledoit-Wolf Gaussians on a seeded random channel subset (spec A3.3, A9)."""

    refines_in_sample = True  # per-position Gaussians: in-sample distance ~ leave-one-out (base.py)

    def __init__(self, num_channels: int = 100, seed: int = 0):
        if num_channels < 1:
            raise ConfigError(f"padim: num_channels must be >= 1, got {num_channels}")
        self.num_channels, self.seed = int(num_channels), int(seed)

    def channel_index(self, channels: tuple[int, ...]) -> np.ndarray:
        """The seeded channel subset for these backbone stage channels (the same every time it is asked)."""
        return random_channel_subset(int(sum(channels)), self.num_channels, self.seed)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return AlignedStageGrid(channels, channel_index=self.channel_index(channels))

    def fit(self, inputs: FitInputs) -> PadimState:
        """inputs.features [N, d, h, w] (from this method's embedding of inputs.channels) -> PadimState."""
        features, progress = inputs.features, inputs.progress
        channel_index = self.channel_index(inputs.channels)
        if len(channel_index) != features.shape[1]:
            raise ConfigError(f"padim: the features have {features.shape[1]} channels, not the {len(channel_index)} "
                              "of this method's channel subset; fit on this method's embedding")
        num_images, dims, height, width = features.shape
        positions = height * width
        state_bytes = positions * dims * dims * 4
        if state_bytes > MAX_STATE_BYTES:
            fits = int(np.sqrt(MAX_STATE_BYTES / (positions * 4)))
            raise ConfigError(f"padim: {positions} positions x {dims}^2 precision factors take "
                              f"{state_bytes / 1e9:.2f} GB, over the artefact's 2 GB limit; pass "
                              f"--param num_channels={fits} or less, or a smaller --size")
        by_position = features.reshape(num_images, dims, positions)
        mean = np.empty((positions, dims), dtype=np.float32)
        factor = np.empty((positions, dims, dims), dtype=np.float32)
        for start in range(0, positions, POSITIONS_PER_CHUNK):
            part = slice(start, min(start + POSITIONS_PER_CHUNK, positions))
            samples = np.ascontiguousarray(by_position[:, :, part].transpose(2, 0, 1), dtype=np.float64)
            part_mean, cov, _ = ledoit_wolf(samples)  # [G, d], [G, d, d]
            mean[part] = part_mean
            factor[part] = whitening_factor(cov)
            if progress is not None:
                progress(part.stop, positions)
        return PadimState(channel_index=channel_index, mean=mean, factor=factor, grid=(height, width))

    def head(self, state: PadimState) -> PadimHead:
        return PadimHead(state)

    def fit_report(self, state: PadimState) -> dict:
        return {"positions": int(state.mean.shape[0]), "grid": list(state.grid), "dims": int(state.mean.shape[1]),
                "channel_index": state.channel_index.tolist(), "state_mb": round(state.factor.nbytes / 1e6, 1)}
