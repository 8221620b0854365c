"""PatchCore (Roth et al. 2022; seed 000 baseline): nearest-neighbour distance to a coreset memory bank
of locally aware patch features.

fit:   all training patches [N*h*w, D] -> approximate greedy coreset (ratio, seeded) -> memory bank.
score: patch score = L2 distance to the nearest bank row; image score = max patch score, optionally
       re-weighted as in the paper (Eq. 7) and anomalib: s * (1 - softmax(distances to the nearest
       row's `num_neighbors` bank neighbours)[0]). The neighbours of every bank row are found at fit
       time (faiss) and stored, so the graph only gathers them.
map:   patch scores -> bilinear upsample -> Gaussian blur sigma 4 (in the shared post-processing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError
from adtk.toolkit.coreset import ApproximateGreedyCoreset
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.methods.base import AnomalyMethod, HeadOutput, SizingKnob
from adtk.toolkit.methods.registry import register_method
from adtk.toolkit.search import nearest_neighbours


@dataclass(frozen=True)
class PatchCoreState:
    memory_bank: np.ndarray  # float32 [M, D]
    bank_neighbours: np.ndarray  # int64 [M, k]: each row's k nearest bank rows (itself first); k = 0 if unused


def squared_distances(queries: torch.Tensor, bank: torch.Tensor, bank_sq_norms: torch.Tensor) -> torch.Tensor:
    """queries [B, P, D], bank [M, D] -> squared L2 [B, P, M] as |q|^2 - 2 q.m + |m|^2 (one GEMM), >= 0."""
    query_sq_norms = (queries * queries).sum(-1, keepdim=True)
    return (query_sq_norms - 2.0 * torch.matmul(queries, bank.t()) + bank_sq_norms).clamp(min=0.0)


class PatchCoreHead(nn.Module):
    """patch features [B, D, h, w] -> HeadOutput(patch_scores [B, h, w], image_score [B])."""

    def __init__(self, state: PatchCoreState):
        super().__init__()
        bank = torch.from_numpy(np.ascontiguousarray(state.memory_bank, dtype=np.float32))
        self.register_buffer("memory_bank", bank)
        self.register_buffer("bank_sq_norms", (bank * bank).sum(1))
        self.register_buffer("bank_neighbours", torch.from_numpy(state.bank_neighbours.astype(np.int64)))
        self.reweight = state.bank_neighbours.shape[1] > 1
        self.bank_rows = int(bank.shape[0])  # declared as data for graph passes (e.g. TensorRT chunking)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, dims, height, width = features.shape
        queries = features.flatten(2).transpose(1, 2)  # [B, P, D]
        sq_dists = squared_distances(queries, self.memory_bank, self.bank_sq_norms)
        nearest_sq, nearest_index = sq_dists.min(dim=-1)  # [B, P]
        patch_scores = nearest_sq.sqrt()
        max_score, max_patch = patch_scores.max(dim=1)  # [B]
        if self.reweight:
            max_patch_feature = torch.gather(queries, 1, max_patch.view(-1, 1, 1).expand(-1, 1, dims))
            nearest_row = torch.gather(nearest_index, 1, max_patch.view(-1, 1)).squeeze(1)
            support = self.memory_bank[self.bank_neighbours[nearest_row]]  # [B, k, D]
            support_dists = torch.linalg.vector_norm(max_patch_feature - support, dim=-1)  # [B, k]
            weight = 1.0 - torch.softmax(support_dists, dim=1)[:, 0]
            image_score = weight * max_score
        else:
            image_score = max_score
        return HeadOutput(patch_scores.view(batch, height, width), image_score)


@register_method("patchcore")
class PatchCore(AnomalyMethod):
    """Nearest-neighbour distance to a coreset memory bank (spec: PatchCore, seed 000)."""

    def __init__(self, coreset_ratio: float = 0.1, num_neighbors: int = 9, embed_dim: int | None = None,
                 projection_dim: int = 128, seed: int = 0):
        if num_neighbors < 1:
            raise ConfigError(f"patchcore: num_neighbors must be >= 1, got {num_neighbors}")
        self.coreset = ApproximateGreedyCoreset(coreset_ratio, projection_dim=projection_dim, seed=seed)
        self.num_neighbors = int(num_neighbors)
        self.embed_dim = embed_dim
        self._params = dict(coreset_ratio=float(coreset_ratio), num_neighbors=self.num_neighbors,
                            embed_dim=embed_dim, projection_dim=int(projection_dim), seed=int(seed))

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return PatchEmbedding(channels, embed_dim=self.embed_dim)

    def fit(self, features: np.ndarray, progress=None) -> PatchCoreState:
        """features [N, D, h, w] float32 -> PatchCoreState. progress(done, total) follows the coreset."""
        patches = np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1]))
        selected = self.coreset.select(patches, progress=progress)
        memory_bank = np.ascontiguousarray(patches[selected])
        return PatchCoreState(memory_bank=memory_bank, bank_neighbours=self._bank_neighbours(memory_bank))

    def _bank_neighbours(self, memory_bank: np.ndarray) -> np.ndarray:
        """[M, k] nearest bank rows of every bank row, the row itself first (the paper's N_b(m*))."""
        rows = memory_bank.shape[0]
        if self.num_neighbors <= 1:
            return np.zeros((rows, 0), dtype=np.int64)
        _, found = nearest_neighbours(memory_bank, memory_bank, self.num_neighbors + 1)
        own_row = np.arange(rows)[:, None]
        # Duplicate rows can push a row's own index out of first place: drop it wherever it is, put it first.
        others_first = np.argsort(found == own_row, axis=1, kind="stable")
        others = np.take_along_axis(found, others_first, axis=1)[:, : self.num_neighbors - 1]
        return np.concatenate([own_row, others], axis=1)

    def sizing_knobs(self) -> tuple[SizingKnob, ...]:
        # The head's cost (one GEMM against the bank, then a min over its rows) is linear in the bank rows.
        return (SizingKnob("coreset_ratio", minimum=0.001, cost_exponent=1.0),)

    def head(self, state: PatchCoreState) -> PatchCoreHead:
        return PatchCoreHead(state)

    def fit_report(self, state: PatchCoreState) -> dict:
        rows, dims = state.memory_bank.shape
        return {"memory_bank_rows": int(rows), "memory_bank_dims": int(dims)}
