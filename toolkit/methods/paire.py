"""PaIRE (Guo, Yu, Wang 2022; spec Part B, seed 001): per-position patch Gaussians fitted on the clean
subset found by iterative trimming of a dirty training set.

embedding: the aligned stage grid (grid_features.AlignedStageGrid) followed by PaIRE's neighbourhood
           average pool with padding 0 (spec B2 Eq. 3, P-B6). The paper pools kernel 10 / stride 4 on a
           stride-4 (64x64) grid; the toolkit's default stages start at stride 8, so the same receptive
           field is kernel 5 / stride 2 on that grid (14x14 at 256 px, as the paper's grid) [ours].
fit:       trimming.PaireTrimming (float64) -> D_clean -> final Gaussian per position on
           D_clean: unbiased covariance + lambda I, lambda = 1e-6, float64.
artefact:  the spec's exact low-rank form (B9.2): Sigma = U diag(s) U^T + lambda I with U the
           r = min(|D_clean| - 1, d) principal directions of the centred clean patches (float64 SVD), so
           M^2 = ||r - U(U^T r)||^2 / lambda + sum_k (U^T r)_k^2 / (s_k + lambda). Stored in fp32,
           never fp16 (B9.1: 1/lambda = 1e6 overflows fp16). The residual term is present only when
           r < d (a shape fact fixed at export, not a runtime branch).
score:     patch score = M at each position (unnormalised, spec B5); image score = max over positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError
from adtk.toolkit.grid_features import AlignedStageGrid
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, register_method
from adtk.toolkit.trimming import PaireTrimming

MAX_STATE_BYTES = 1_800_000_000
POSITIONS_PER_CHUNK = 16


@dataclass(frozen=True)
class PaireState:
    mean: np.ndarray  # float32 [P, d]
    basis: np.ndarray  # float32 [P, d, r]: orthonormal principal directions U
    inv_variance: np.ndarray  # float32 [P, r]: 1 / (s_k + lambda)
    ridge: float  # lambda
    grid: tuple[int, int]
    clean: np.ndarray  # int64 [K]: indices of the training images kept (D_clean)
    rounds: tuple  # per-round log of the trimming (dicts)


def low_rank_gaussians(features: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """features [K, P, d] -> (mean [P, d], U [P, d, r], s [P, r]) in float64, r = min(K - 1, d), with
    unbiased covariance = U diag(s) U^T exactly (the centred data have rank <= K - 1)."""
    num_images, positions, dims = features.shape
    rank = min(num_images - 1, dims)
    mean = np.empty((positions, dims))
    basis = np.empty((positions, dims, rank))
    variance = np.empty((positions, rank))
    for start in range(0, positions, POSITIONS_PER_CHUNK):
        part = slice(start, min(start + POSITIONS_PER_CHUNK, positions))
        samples = np.asarray(features[:, part], dtype=np.float64).transpose(1, 0, 2)  # [G, K, d]
        mean[part] = samples.mean(axis=1)
        _, singular, v_t = np.linalg.svd(samples - mean[part][:, None], full_matrices=False)
        basis[part] = v_t[:, :rank].transpose(0, 2, 1)
        variance[part] = singular[:, :rank] ** 2 / max(1, num_images - 1)
    return mean, basis, variance


class PaireHead(nn.Module):
    """features [B, d, h, w] -> HeadOutput(patch_scores [B, h, w], image_score [B])."""

    def __init__(self, state: PaireState):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.ascontiguousarray(state.mean, dtype=np.float32)))
        self.register_buffer("basis", torch.from_numpy(np.ascontiguousarray(state.basis, dtype=np.float32)))
        self.register_buffer("inv_variance", torch.from_numpy(state.inv_variance.astype(np.float32)))
        self.inv_ridge = float(1.0 / state.ridge)
        self.has_residual = state.basis.shape[2] < state.basis.shape[1]

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, dims, height, width = features.shape
        centred = (features.flatten(2).transpose(1, 2) - self.mean).unsqueeze(2)  # [B, P, 1, d]
        coefficients = torch.matmul(centred, self.basis)  # [B, P, 1, r] = (U^T r)^T
        squared = (coefficients * coefficients * self.inv_variance.unsqueeze(1)).sum(dim=(2, 3))
        if self.has_residual:
            residual = centred - torch.matmul(coefficients, self.basis.transpose(1, 2))
            squared = squared + (residual * residual).sum(dim=(2, 3)) * self.inv_ridge
        distances = squared.clamp(min=0.0).sqrt()  # [B, P]
        return HeadOutput(distances.view(batch, height, width), distances.max(dim=1).values)


@register_method("paire")
class Paire(AnomalyMethod):
    """Per-position Gaussians on the iteratively trimmed clean set (spec Part B)."""

    def __init__(self, pool_kernel: int = 5, pool_stride: int = 2, alpha: float = 0.05, beta: float = 3.0,
                 tau: float = 1.15, eta: float = 2.3, ridge: float = 1e-6):
        if pool_kernel < 1 or pool_stride < 1 or ridge <= 0:
            raise ConfigError("paire: pool_kernel and pool_stride must be >= 1 and ridge > 0")
        self.pool_kernel, self.pool_stride = int(pool_kernel), int(pool_stride)
        self.trimming = PaireTrimming(alpha=float(alpha), beta=float(beta), tau=float(tau), eta=float(eta),
                                      ridge=float(ridge))

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return AlignedStageGrid(channels, pool_kernel=self.pool_kernel, pool_stride=self.pool_stride)

    def fit(self, inputs: FitInputs) -> PaireState:
        """inputs.features [N, d, h, w] -> PaireState (trimming, then the low-rank Gaussians on D_clean)."""
        features, log = inputs.features, inputs.log
        num_images, dims, height, width = features.shape
        by_position = features.reshape(num_images, dims, height * width).transpose(0, 2, 1)  # [N, P, d]
        trimmed = self.trimming.select(by_position, log=log)
        rank = min(len(trimmed.clean) - 1, dims)
        state_bytes = height * width * dims * (rank + 1) * 4
        if state_bytes > MAX_STATE_BYTES:
            raise ConfigError(f"paire: {height * width} positions x {dims} x {rank} basis takes "
                              f"{state_bytes / 1e9:.2f} GB, over the artefact's 2 GB limit; use fewer stages "
                              "or a smaller --size")
        mean, basis, variance = low_rank_gaussians(by_position[trimmed.clean], self.trimming.ridge)
        return PaireState(mean=mean.astype(np.float32), basis=basis.astype(np.float32),
                          inv_variance=(1.0 / (variance + self.trimming.ridge)).astype(np.float32),
                          ridge=self.trimming.ridge, grid=(height, width), clean=trimmed.clean,
                          rounds=tuple(trimmed.rounds))

    def clean_subset(self, state: PaireState) -> np.ndarray:
        return np.sort(np.asarray(state.clean, dtype=np.int64))

    def clean_subset_record(self, state: PaireState) -> dict:
        return {"rounds": list(state.rounds)}

    def head(self, state: PaireState) -> PaireHead:
        return PaireHead(state)

    def fit_report(self, state: PaireState) -> dict:
        return {"grid": list(state.grid), "dims": int(state.mean.shape[1]), "rank": int(state.basis.shape[2]),
                "clean_images": int(len(state.clean)), "rounds": list(state.rounds),
                "state_mb": round(state.basis.nbytes / 1e6, 1)}
