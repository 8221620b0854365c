"""SoftCore (seed 002; spec softcore_semlp_labeled_patchcore.md part A): PatchCore for training sets that
contain anomalies.

fit:   1. project every training patch to 128-d (seeded random linear map, A.3);
       2. give every patch an outlier score W against the patches at the *same position* of all training
          images (the whole training set, A.9.4): LOF (k = 6, scikit-learn), nearest other image (+1) or
          per-position Gaussian (Mahalanobis, eps = 0.01, +1);
       3. drop the patches above the global (1 - tau) quantile of W (tau = 0.15, A.4 / A.9.2, A.9.7);
       4. greedy coreset over the kept patches only, sized on *all* patches (ratio x N*h*w, A.9.8);
       5. keep each bank entry's W as its soft weight (A.9.14: the weights travel in the artefact).
score: patch score = W[nearest entry] x distance to it, squared L2 by default (the reference code's faiss
       distance, A.9.9; "l2" for the paper's plain norm); image score = max patch score (k = 1, A.9.13).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.coreset import ApproximateGreedyCoreset
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, SizingKnob, register_method
from adtk.toolkit.search import nearest_bank_rows, register_search_bank

DISCRIMINATORS = ("lof", "nn", "gauss")
GAUSS_EPSILON = 0.01  # spec A.3(b): PaDiM/anomalib's covariance regulariser
POSITION_CHUNK = 64  # positions scored at once by the nn/gauss discriminators (bounded memory)


@dataclass(frozen=True)
class SoftCoreState:
    memory_bank: np.ndarray  # float32 [M, D]
    soft_weights: np.ndarray  # float32 [M], the outlier score W of each bank entry (>= 0)


def lof_scores(position_rows: np.ndarray, k: int) -> np.ndarray:
    """[P, N, d] -> [P, N] local outlier factors, one scikit-learn LOF fit per position (A.3(c))."""
    from sklearn.neighbors import LocalOutlierFactor

    k = min(k, position_rows.shape[1] - 1)  # LOF needs k < N; sklearn would clamp with a warning
    return np.stack([-LocalOutlierFactor(n_neighbors=k).fit(rows).negative_outlier_factor_
                     for rows in position_rows])


def nearest_other_scores(position_rows: np.ndarray) -> np.ndarray:
    """[P, N, d] -> [P, N]: 1 + distance to the nearest *other* image at the same position (A.3(a), A.9.1)."""
    out = np.empty(position_rows.shape[:2], dtype=np.float64)
    for start in range(0, len(position_rows), POSITION_CHUNK):
        rows = torch.from_numpy(np.ascontiguousarray(position_rows[start:start + POSITION_CHUNK], dtype=np.float64))
        dists = torch.cdist(rows, rows)
        dists.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        out[start:start + len(rows)] = 1.0 + dists.min(-1).values.numpy()
    return out


def gaussian_scores(position_rows: np.ndarray, epsilon: float = GAUSS_EPSILON) -> np.ndarray:
    """[P, N, d] -> [P, N]: 1 + Mahalanobis distance to the position's Gaussian (A.3(b), Eq. 2-3)."""
    out = np.empty(position_rows.shape[:2], dtype=np.float64)
    for start in range(0, len(position_rows), POSITION_CHUNK):
        rows = torch.from_numpy(np.ascontiguousarray(position_rows[start:start + POSITION_CHUNK], dtype=np.float64))
        centred = rows - rows.mean(1, keepdim=True)
        cov = centred.transpose(1, 2) @ centred / (rows.shape[1] - 1)
        cov += epsilon * torch.eye(rows.shape[2], dtype=cov.dtype)
        solved = torch.linalg.solve(cov, centred.transpose(1, 2)).transpose(1, 2)  # Sigma^-1 (x - mu)
        out[start:start + len(rows)] = 1.0 + (centred * solved).sum(-1).clamp(min=0).sqrt().numpy()
    return out


class SoftCoreHead(nn.Module):
    """patch features [B, D, h, w] -> HeadOutput(weighted nearest distances [B, h, w], their max [B])."""

    def __init__(self, state: SoftCoreState, squared: bool):
        super().__init__()
        register_search_bank(self, state.memory_bank)  # for search.nearest_bank_rows
        self.register_buffer("soft_weights", torch.from_numpy(state.soft_weights.astype(np.float32)))
        self.squared = bool(squared)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, _, height, width = features.shape
        queries = features.flatten(2).transpose(1, 2)  # [B, P, D]
        nearest_sq, nearest_index = nearest_bank_rows(queries, self.bank_t_neg2, self.bank_sq_norms)
        distance = nearest_sq if self.squared else nearest_sq.sqrt()
        patch_scores = self.soft_weights[nearest_index] * distance  # [B, P]
        return HeadOutput(patch_scores.view(batch, height, width), patch_scores.max(dim=1).values)


@register_method("softcore")
class SoftCore(AnomalyMethod):
    """Noise-discriminated, soft-weighted PatchCore (spec part A, seed 002)."""

    def __init__(self, coreset_ratio: float = 0.1, discriminator: str = "lof", lof_k: int = 6, tau: float = 0.15,
                 distance: str = "squared", soft_weights: bool = True, discriminator_dim: int = 128,
                 embed_dim: int | None = None, projection_dim: int = 128, seed: int = 0):
        if discriminator not in DISCRIMINATORS:
            raise ConfigError(f"softcore: discriminator must be one of {', '.join(DISCRIMINATORS)}, "
                              f"got {discriminator!r}")
        if distance not in ("squared", "l2"):
            raise ConfigError(f"softcore: distance must be 'squared' (reference code) or 'l2', got {distance!r}")
        if not 0.0 <= tau < 1.0:
            raise ConfigError(f"softcore: tau (the removed fraction) must be in [0, 1), got {tau}")
        if lof_k < 1:
            raise ConfigError(f"softcore: lof_k must be >= 1, got {lof_k}")
        self.coreset = ApproximateGreedyCoreset(coreset_ratio, projection_dim=projection_dim, seed=seed)
        self.discriminator, self.lof_k, self.tau = discriminator, int(lof_k), float(tau)
        self.distance, self.use_soft_weights = distance, bool(soft_weights)
        self.discriminator_dim, self.embed_dim, self.seed = int(discriminator_dim), embed_dim, int(seed)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        # the official PatchCore embedding (bilinear upsampling), as SoftCore uses (spec part C)
        return PatchEmbedding(channels, embed_dim=self.embed_dim)

    def outlier_scores(self, features: np.ndarray) -> np.ndarray:
        """features [N, D, h, w] -> W [N, h, w]: each patch against the same position of all N images."""
        num_images, dims, height, width = features.shape
        if num_images < 3:
            raise DataError(f"softcore scores each patch against the other training images at its position; "
                            f"it needs at least 3 fit images, got {num_images}")
        rows = np.ascontiguousarray(features.transpose(2, 3, 0, 1).reshape(height * width * num_images, dims))
        # the reference code's bias-free nn.Linear at default init, seeded here (A.3, A.9.5)
        projector = ApproximateGreedyCoreset(1.0, projection_dim=self.discriminator_dim)
        projected = projector.project(rows, torch.Generator().manual_seed(self.seed + 1)).numpy()
        position_rows = projected.reshape(height * width, num_images, -1)  # [P, N, d]
        if self.discriminator == "lof":
            scores = lof_scores(position_rows, self.lof_k)
        elif self.discriminator == "nn":
            scores = nearest_other_scores(position_rows)
        else:
            scores = gaussian_scores(position_rows)
        # clamp >= 0 as the code does (A.9.15); [P, N] -> [N, h, w]
        return np.maximum(scores, 0.0).T.reshape(num_images, height, width).astype(np.float32)

    def fit(self, inputs: FitInputs) -> SoftCoreState:
        """inputs.features [N, D, h, w] float32 -> SoftCoreState; inputs.progress(done, total) follows the coreset."""
        features, progress = inputs.features, inputs.progress
        weights = self.outlier_scores(features).reshape(-1)  # image-major, then row-major: as `patches`
        patches = np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1]))
        cutoff = float(np.quantile(weights, 1.0 - self.tau)) if self.tau > 0 else float("inf")
        kept = np.flatnonzero(weights <= cutoff)  # one global quantile (A.9.7)
        # coreset sized on all patches (the code's base, A.9.8), sampled from the kept ones only
        target = min(self.coreset.target_size(len(patches)), len(kept))
        selected = kept[self.coreset.select(patches[kept], progress=progress, num_selected=target)]
        soft = weights[selected] if self.use_soft_weights else np.ones(len(selected), dtype=np.float32)
        self.last_fit = {"num_patches": len(patches), "num_kept": len(kept), "cutoff": cutoff,
                         "weights_mean": float(weights.mean())}
        return SoftCoreState(memory_bank=np.ascontiguousarray(patches[selected]),
                             soft_weights=np.ascontiguousarray(soft, dtype=np.float32))

    def head(self, state: SoftCoreState) -> SoftCoreHead:
        return SoftCoreHead(state, squared=self.distance == "squared")

    def sizing_knobs(self) -> tuple[SizingKnob, ...]:
        return (SizingKnob("coreset_ratio", minimum=0.001, cost_exponent=1.0),)

    def fit_report(self, state: SoftCoreState) -> dict:
        rows, dims = state.memory_bank.shape
        report = {"memory_bank_rows": int(rows), "memory_bank_dims": int(dims), "distance": self.distance,
                  "soft_weight_min": float(state.soft_weights.min()),
                  "soft_weight_max": float(state.soft_weights.max())}
        if self.last_fit:
            report.update(removed_patches=self.last_fit["num_patches"] - self.last_fit["num_kept"],
                          removal_cutoff=self.last_fit["cutoff"], num_patches=self.last_fit["num_patches"])
        return report
