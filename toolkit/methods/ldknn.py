"""LDKNN (REB, seed 004 §7-8): nearest-neighbour distance to a memory bank, minus alpha x the local
density of the retrieved bank item, so that distance in sparse regions of normal data is forgiven.

fit:   all training patches [N*h*w, D] -> approximate greedy coreset (ratio, seeded) -> memory bank M.
       density d_i = mean distance of bank item i to its K nearest neighbours, searched (faiss) in the
       FULL pre-coreset bank (spec P3), the item itself excluded by index, not by distance 0 (spec P4).
       density_search="approximate" (default, issue 17): faiss IVF-Flat over the full bank (toolkit/search.py) once
       it has >= 16,384 rows; "exact" is the spec's flat search. On all magnetic-tile fit images 97% of the densities
       are exact, the rest 0.17% high on average, and test image / pixel AUROC and AU-PRO are unchanged
       (bench/results/ldknn_fit_speed.md). sampler="grouped" (default) is PatchCore's greedy within groups of images
       (toolkit/coreset.py), ~22x less coreset work there; with the IVF densities it scored -0.12 / -0.23 / +0.28
       points (image / pixel AUROC / AU-PRO) against the exact pair (one seed). "exact" is the spec's one greedy.
score: i* = argmin_i dist(f, m_i) on the raw distance, THEN s = dist(f, m_i*) - alpha * d_i* (spec §8, §14.3;
       not min_i(dist - alpha d_i)). Scores can be negative.
       distance="squared" (the official code, both terms squared; spec P1) or "euclidean" (the paper's Eq. 2-3).
image: image_score="pooled" (the code: 3x3 stride-3 average pool, then max; spec P2), "max" (the paper,
       Eq. 5) or "pooled_overlapping" (3x3 stride 1, zero-padded: no edge patch dropped; spec P2's
       deployment suggestion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adtk.runtime.errors import ConfigError
from adtk.toolkit.coreset import ApproximateGreedyCoreset, sampler_group_rows
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, SizingKnob, register_method
from adtk.toolkit.search import (APPROXIMATE_MIN_ROWS, approximate_nearest_neighbours, nearest_bank_rows,
                                 nearest_neighbours, register_search_bank)

DISTANCES = ("squared", "euclidean")
# IVF lists of the approximate density search: one per DENSITY_IVF_LIST_ROWS full-bank rows, at most
# DENSITY_IVF_LISTS. For N rows, Q = N / 10 coreset queries and L lists it compares ~(10 x min(128 L, N) (k-means)
# + N (adding) + Q (coarse search)) x L + Q x nprobe x N / L pairs of rows, against Q x N for the exact search:
# N = 700k (all magnetic-tile fit images), L = 1024, nprobe 16: ~2.9e9 pairs vs 4.9e10 (17x fewer); N = 98k (the
# REB check's 96-image bank), L = 191: ~1.5e8 vs 9.6e8. Lists as short as those of PatchCore's bank neighbours
# (search.IVF_LIST_ROWS) would make k-means the cost.
DENSITY_IVF_LIST_ROWS = 512
DENSITY_IVF_LISTS = 1024
DENSITY_IVF_NPROBE = 16
IMAGE_SCORES = ("pooled", "max", "pooled_overlapping")
SAMPLERS = ("grouped", "exact")
DENSITY_SEARCHES = ("approximate", "exact")


@dataclass(frozen=True)
class LDKNNState:
    memory_bank: np.ndarray  # float32 [M, D] (the coreset rows)
    densities: np.ndarray  # float32 [M]: mean distance to K nearest full-bank rows (the score's convention)
    alpha: float
    distance: str  # "squared" | "euclidean"
    image_score: str  # one of IMAGE_SCORES


def local_densities(full_bank: np.ndarray, bank_rows: np.ndarray, num_neighbors: int, distance: str,
                    chunk_rows: int = 16384, progress=None, approximate: bool = False,
                    nprobe: int = DENSITY_IVF_NPROBE) -> np.ndarray:
    """[M] mean distance of full_bank[bank_rows] to their K nearest rows of full_bank, excluding themselves.

    full_bank [N, D]; bank_rows [M] indices into it. approximate=False: exact faiss flat search, queries in chunks
    so progress can be reported. approximate=True: one faiss IVF-Flat index over full_bank (search.py's
    approximate_nearest_neighbours, PatchCore's big-bank neighbour search; nprobe lists probed), for banks of
    >= APPROXIMATE_MIN_ROWS rows: the exact search is N x M x D multiply-adds (7.5 T on all magnetic-tile
    images, most of the fit after the coreset); a missed neighbour can only make a density larger.
    """
    num_rows = full_bank.shape[0]
    k = min(num_neighbors, num_rows - 1)
    if k < 1:
        return np.zeros(len(bank_rows), dtype=np.float32)
    if approximate and num_rows >= APPROXIMATE_MIN_ROWS:
        lists = min(DENSITY_IVF_LISTS, max(1, num_rows // DENSITY_IVF_LIST_ROWS))
        searches = [(bank_rows, approximate_nearest_neighbours(full_bank, full_bank[bank_rows], k + 1, nlist=lists,
                                                               nprobe=nprobe))]
    else:  # exact faiss flat L2 (squared), chunk by chunk
        searches = ((bank_rows[start: start + chunk_rows],
                     nearest_neighbours(full_bank, full_bank[bank_rows[start: start + chunk_rows]], k + 1))
                    for start in range(0, len(bank_rows), chunk_rows))
    densities, done = np.empty(len(bank_rows), dtype=np.float32), 0
    for rows, (sq_dists, found) in searches:
        # spec P4: drop the query's own row by index wherever faiss put it; when it was not returned
        # (ties with duplicates), drop the farthest instead so K neighbours remain.
        is_self = found == rows[:, None]
        is_self[~is_self.any(1), -1] = True
        is_self[np.cumsum(is_self, axis=1) > 1] = False  # at most one dropped per row
        kept = sq_dists[~is_self].reshape(len(rows), k).astype(np.float64).clip(min=0.0)
        densities[done: done + len(rows)] = (kept if distance == "squared" else np.sqrt(kept)).mean(1)
        done += len(rows)
        if progress is not None:
            progress(done, len(bank_rows))
    return densities


def pool_image_score(patch_scores: torch.Tensor, mode: str) -> torch.Tensor:
    """patch scores [B, h, w] -> image score [B]."""
    if mode == "max":
        return patch_scores.amax(dim=(1, 2))
    maps = patch_scores.unsqueeze(1)
    if mode == "pooled":  # the official code: no padding, trailing rows/columns dropped (32 -> 10)
        pooled = F.avg_pool2d(maps, kernel_size=3, stride=3) if min(maps.shape[-2:]) >= 3 else maps
    else:
        pooled = F.avg_pool2d(maps, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    return pooled.amax(dim=(1, 2, 3))


class LDKNNHead(nn.Module):
    """patch features [B, D, h, w] -> HeadOutput(patch_scores [B, h, w], image_score [B])."""

    def __init__(self, state: LDKNNState):
        super().__init__()
        register_search_bank(self, state.memory_bank)  # for search.nearest_bank_rows
        self.register_buffer("densities", torch.from_numpy(np.asarray(state.densities, dtype=np.float32)))
        self.register_buffer("alpha", torch.tensor(float(state.alpha)))
        self.euclidean = state.distance == "euclidean"
        self.image_score = state.image_score

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, _, height, width = features.shape
        queries = features.flatten(2).transpose(1, 2)  # [B, P, D]
        # spec §8: the nearest row by raw distance first
        nearest_sq, nearest_index = nearest_bank_rows(queries, self.bank_t_neg2, self.bank_sq_norms)
        distance = nearest_sq.sqrt() if self.euclidean else nearest_sq
        # then gather the density; index_select exports as a plain ONNX Gather (x[idx] would be GatherND)
        density = torch.index_select(self.densities, 0, nearest_index.flatten()).view_as(nearest_index)
        patch_scores = distance - self.alpha * density
        patch_scores = patch_scores.view(batch, height, width)
        return HeadOutput(patch_scores, pool_image_score(patch_scores, self.image_score))


@register_method("ldknn")
class LDKNN(AnomalyMethod):
    """Nearest-neighbour distance minus alpha x local density of the neighbour (spec: REB, seed 004)."""

    # The smoothed map's maximum ranks images better than the head's pooled score in full builds on 5 data sets
    # (+0.83 image AUROC points on the mean, 4 of 5 higher, the fifth -0.24; bench/results/image_score.md). REB
    # (an LDKNN) inherits it.
    default_image_score_from = "map_max"

    def __init__(self, coreset_ratio: float = 0.1, num_neighbors: int = 5, alpha: float = 1.0,
                 distance: str = "squared", image_score: str = "pooled", embed_dim: int | None = None,
                 projection_dim: int = 128, seed: int = 0, sampler: str = "grouped",
                 group_rows: int | None = None, density_search: str = "approximate"):
        if num_neighbors < 1:
            raise ConfigError(f"{self.name}: num_neighbors (K of the density) must be >= 1, got {num_neighbors}")
        if distance not in DISTANCES:
            raise ConfigError(f"{self.name}: distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if image_score not in IMAGE_SCORES:
            raise ConfigError(f"{self.name}: image_score must be one of {', '.join(IMAGE_SCORES)}, "
                              f"got {image_score!r}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"{self.name}: sampler must be 'grouped' (greedy within groups of images, default) or "
                              f"'exact' (one greedy over all patches), got {sampler!r}")
        if density_search not in DENSITY_SEARCHES:
            raise ConfigError(f"{self.name}: density_search must be 'approximate' (faiss IVF-Flat for big banks, "
                              f"default) or 'exact', got {density_search!r}")
        self.sampler, self.density_search = sampler, density_search
        self.coreset = ApproximateGreedyCoreset(coreset_ratio, projection_dim=projection_dim, seed=seed,
                                                group_rows=sampler_group_rows(sampler, group_rows, coreset_ratio))
        self.num_neighbors, self.alpha, self.seed = int(num_neighbors), float(alpha), int(seed)
        self.distance, self.image_score, self.embed_dim = distance, image_score, embed_dim

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return PatchEmbedding(channels, embed_dim=self.embed_dim)

    def sizing_knobs(self) -> tuple[SizingKnob, ...]:
        # As PatchCore's: the head's cost (the GEMM against the bank, the nearest row's ArgMin and its density) is
        # linear in the bank rows. Without it a --target build could not shrink the bank, and plain auto at a tall
        # frame's own resolution kept 10% of 3.8x the patches (174k rows, 4.7 GB to score one 1250 x 500 frame).
        return (SizingKnob("coreset_ratio", minimum=0.001, cost_exponent=1.0),)

    def fit(self, inputs: FitInputs) -> LDKNNState:
        """inputs.features [N, D, h, w] float32 -> LDKNNState. inputs.progress(done, total) follows the coreset,
        then the densities."""
        features, progress = inputs.features, inputs.progress
        patches = np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1]))
        selected = self.coreset.select(patches, progress=_scaled(progress, 0))
        densities = local_densities(patches, selected, self.num_neighbors, self.distance,
                                    progress=_scaled(progress, 1), approximate=self.density_search == "approximate")
        return LDKNNState(memory_bank=np.ascontiguousarray(patches[selected]), densities=densities,
                          alpha=self.alpha, distance=self.distance, image_score=self.image_score)

    def head(self, state: LDKNNState) -> LDKNNHead:
        return LDKNNHead(state)

    def fit_report(self, state: LDKNNState) -> dict:
        rows, dims = state.memory_bank.shape
        return {"memory_bank_rows": int(rows), "memory_bank_dims": int(dims),
                "density_mean": round(float(state.densities.mean()), 6),
                "density_neighbors": self.num_neighbors, "density_searched_in": "full pre-coreset bank"}


def _scaled(progress, phase: int):
    """Report two fit phases (coreset, densities) on one 0..2000 progress scale."""
    if progress is None:
        return None
    return lambda done, total: progress(phase * 1000 + int(1000 * done / max(total, 1)), 2000)
