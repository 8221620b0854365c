"""PatchCore (Roth et al. 2022; seed 000 baseline): nearest-neighbour distance to a coreset memory bank
of locally aware patch features.

fit:   all training patches [N*h*w, D] -> approximate greedy coreset (ratio, seeded) -> memory bank.
       sampler="grouped" (default): the greedy runs within groups of `group_rows` patches (whole images,
       toolkit/coreset.py; by default 32,768, more below a 10% ratio so that each group still picks >= 3,277
       rows, coreset.default_group_rows), ~num_groups times less work than sampler="exact", the paper's one
       greedy over all patches (bench/coreset_speed.py measures both: time and AUROC).
       sampler="online": seed 003's online coreset instead (toolkit/online_coreset.py), fed
       `online_batch_images` images at a time as the build extracts them (fit_stream), so a large training
       set is fitted without ever holding all of its features. Each batch is compared with the rows stored
       within its window of `online_window_rows` patches (by default the grouped sampler's default group size
       at this ratio, so the two cost about the same); online_window_rows=0 compares it with every stored row,
       as the paper does.
score: patch score = L2 distance to the nearest bank row; image score = max patch score, optionally
       re-weighted as in the paper (Eq. 7) and anomalib: s * (1 - softmax(distances to the nearest
       row's `num_neighbors` bank neighbours)[0]). The neighbours of every bank row are found at fit
       time (faiss; an IVF-Flat index for banks of >= 16,384 rows, toolkit/search.py) and stored, so the
       graph only gathers them.
map:   patch scores -> bilinear upsample -> Gaussian blur sigma 4 (in the shared post-processing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError
from adtk.toolkit.coreset import ApproximateGreedyCoreset, default_group_rows, sampler_group_rows
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, SizingKnob, register_method
from adtk.toolkit.online_coreset import online_coreset_bank
from adtk.toolkit.search import (bank_neighbours, min_partial_sq_distances, partial_sq_distances, patch_rows,
                                 register_search_bank)


SAMPLERS = ("grouped", "exact", "greedy", "online")  # "greedy": the name "exact" had before grouping existed


@dataclass(frozen=True)
class PatchCoreState:
    memory_bank: np.ndarray  # float32 [M, D]
    bank_neighbours: np.ndarray  # int64 [M, k]: each row's k nearest bank rows (itself first); k = 0 if unused


class PatchCoreHead(nn.Module):
    """patch features [B, D, h, w] -> HeadOutput(patch_scores [B, h, w], image_score [B]).

    The bank is stored once, as -2 * bank^T [D, M] beside |m|^2 [M], so the nearest-row search is one GEMM
    with a bias (onnxruntime fuses MatMul + Add into Gemm) and a ReduceMin over the bank: |q|^2 is added
    after the min (it is constant along the bank) and no other pass runs over the [P, M] distance matrix.
    The nearest row index is needed only for the highest-scoring patch (the re-weighting), so the ArgMin
    runs over that one patch's row, recomputed as a [1, M] product, instead of over all P rows. Measured
    with onnxruntime on 1,024 patches x 1,843 rows x 152 dims: 2.9 ms against 4.4 ms for
    |q|^2 - 2 q.m + |m|^2 with a full min/argmin (bench/vs_anomalib.py times this head against faiss).
    """

    def __init__(self, state: PatchCoreState):
        super().__init__()
        register_search_bank(self, state.memory_bank)
        self.register_buffer("bank_neighbours", torch.from_numpy(state.bank_neighbours.astype(np.int64)))
        self.reweight = state.bank_neighbours.shape[1] > 1

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, dims, height, width = features.shape
        queries = features.flatten(2).transpose(1, 2)  # [B, P, D]
        query_sq_norms = (queries * queries).sum(-1)  # [B, P]
        # |m|^2 - 2 q.m for every (patch, row), as one 2-D GEMM + bias, then the min over the bank rows.
        nearest_partial = min_partial_sq_distances(queries.reshape(-1, dims), self.bank_t_neg2,
                                                   self.bank_sq_norms).view(batch, -1)
        patch_scores = (nearest_partial + query_sq_norms).clamp(min=0.0).sqrt()
        max_score, max_patch = patch_scores.max(dim=1)  # [B]
        if self.reweight:
            max_patch_feature = torch.gather(queries, 1, max_patch.view(-1, 1, 1).expand(-1, 1, dims)).squeeze(1)
            nearest_row = partial_sq_distances(max_patch_feature, self.bank_t_neg2, self.bank_sq_norms).argmin(dim=-1)
            support = self.bank_t_neg2[:, self.bank_neighbours[nearest_row]].permute(1, 2, 0) * -0.5  # [B, k, D]
            support_dists = torch.linalg.vector_norm(max_patch_feature.unsqueeze(1) - support, dim=-1)  # [B, k]
            weight = 1.0 - torch.softmax(support_dists, dim=1)[:, 0]
            image_score = weight * max_score
        else:
            image_score = max_score
        return HeadOutput(patch_scores.view(batch, height, width), image_score)


@register_method("patchcore")
class PatchCore(AnomalyMethod):
    """Nearest-neighbour distance to a coreset memory bank (spec: PatchCore, seed 000)."""

    # The smoothed map's maximum ranks images better than the re-weighted largest patch distance in full builds on
    # 5 data sets (+0.46 image AUROC points on the mean, 4 of 5 higher, the fifth -0.05; bench/results/image_score.md)
    default_image_score_from = "map_max"

    def __init__(self, coreset_ratio: float = 0.1, num_neighbors: int = 9, embed_dim: int | None = None,
                 projection_dim: int = 128, seed: int = 0, sampler: str = "grouped", online_batch_images: int = 8,
                 group_rows: int | None = None, online_window_rows: int | None = None):
        if num_neighbors < 1:
            raise ConfigError(f"patchcore: num_neighbors must be >= 1, got {num_neighbors}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"patchcore: sampler must be 'grouped' (greedy within groups of images, default), "
                              f"'exact' (the paper's greedy over all patches; 'greedy' is the same) or "
                              f"'online' (seed 003's bounded-memory coreset), got {sampler!r}")
        if int(online_batch_images) < 1:
            raise ConfigError(f"patchcore: online_batch_images must be >= 1, got {online_batch_images}")
        if online_window_rows is None:  # the default group size at this ratio (coreset.default_group_rows)
            online_window_rows = default_group_rows(coreset_ratio)
        if int(online_window_rows) < 0:
            raise ConfigError(f"patchcore: online_window_rows must be >= 0 (0: one window, the paper's), "
                              f"got {online_window_rows}")
        self.sampler, self.online_batch_images = sampler, int(online_batch_images)
        self.online_window_rows = int(online_window_rows) or None
        self.coreset = ApproximateGreedyCoreset(coreset_ratio, projection_dim=projection_dim, seed=seed,
                                                group_rows=sampler_group_rows(sampler, group_rows, coreset_ratio))
        self.num_neighbors = int(num_neighbors)
        self.embed_dim, self.seed = embed_dim, int(seed)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return PatchEmbedding(channels, embed_dim=self.embed_dim)

    def fit(self, inputs: FitInputs) -> PatchCoreState:
        """inputs.features [N, D, h, w] float32 -> PatchCoreState. inputs.progress(done, total) follows the coreset."""
        features, progress = inputs.features, inputs.progress
        if self.sampler == "online":  # the same sampler as the streaming build, on features already held
            step = self.online_batch_images
            return self.fit_stream((features[i:i + step] for i in range(0, len(features), step)), len(features),
                                   progress)
        # The coreset reads the maps as patch rows in (image, y, x) order without a patch-major copy of them.
        selected = self.coreset.select(features, progress=progress)
        return self.state_for_bank(patch_rows(features, selected))

    def fits_streaming(self) -> bool:
        return self.sampler == "online"

    def fit_stream(self, batches: Iterable[np.ndarray], num_images: int, progress=None) -> PatchCoreState:
        """Feature batches [b, D, h, w] of any sizes -> PatchCoreState, holding one group of
        `online_batch_images` images at a time (online_coreset.online_coreset_bank)."""
        return self.state_for_bank(online_coreset_bank(batches, self.coreset.ratio, self.seed,
                                                       self.online_batch_images, num_images, progress,
                                                       window_rows=self.online_window_rows))

    def state_for_bank(self, memory_bank: np.ndarray) -> PatchCoreState:
        # approximate (IVF) neighbours for big banks: they only re-weight the image score, and
        # bench/bank_neighbours_ivf.py found that score's AUROC unchanged (bench/results/bank_neighbours_ivf.md)
        return PatchCoreState(memory_bank=memory_bank,
                              bank_neighbours=bank_neighbours(memory_bank, self.num_neighbors, approximate=True))

    def sizing_knobs(self) -> tuple[SizingKnob, ...]:
        # The head's cost (one GEMM against the bank, then a min over its rows) is linear in the bank rows.
        return (SizingKnob("coreset_ratio", minimum=0.001, cost_exponent=1.0),)

    def head(self, state: PatchCoreState) -> PatchCoreHead:
        return PatchCoreHead(state)

    def fit_report(self, state: PatchCoreState) -> dict:
        rows, dims = state.memory_bank.shape
        return {"memory_bank_rows": int(rows), "memory_bank_dims": int(dims)}
