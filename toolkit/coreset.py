"""Approximate greedy k-center coreset (PatchCore's ApproximateGreedyCoresetSampler; spec 004 §6).

1. Project every row to `projection_dim` dimensions with a random bias-free linear map (seeded).
2. Pick `num_starts` random start rows; each row's distance to the coreset starts as its mean distance
   to those rows (the start rows themselves are not added).
3. Repeat int(N * ratio) times: add the row farthest from the coreset, then lower every row's distance
   with its distance to the new row.

Written here because neither faiss nor scikit-learn has a k-center sampler. The textbook loop (and the
official code, and anomalib's) updates all N distances after every pick: one matrix-vector product per
pick, bound by memory bandwidth (anomalib: ~81 ms per pick here). This implementation selects exactly
the same rows, but applies the picks to the full set in blocks, as matrix-matrix products:

* keep a candidate list: the `num_candidates` rows with the largest distance when the block started,
  and `threshold`, the largest distance of any row outside the list;
* each pick is the candidate farthest from the coreset, with the candidates' distances kept exact
  (they are updated after every pick, a cheap [C, d] product);
* that pick is the global arg-max as long as its distance is >= threshold, because a row outside the
  list can only have lost distance since the block started. When that proof fails, or after
  `block_size` picks, the pending picks are applied to all rows in one GEMM and the list is rebuilt.

Distances are kept squared (same arg-max and minimum as plain distances), as |x|^2 - 2 x.c + |c|^2.

Grouped selection (`group_rows`): the exact greedy costs N x M x d multiply-adds however it is blocked (a 10%
coreset of 700k rows: ~6 T, ~150 s on 2 cores), because every row's distance must follow every pick. With
`group_rows` set, the rows are cut into consecutive groups of about that many rows (whole images, since rows
are in (image, y, x) order) and the same greedy runs inside each group, picking the group's share of the
coreset (largest-remainder rounding, so the total is still max(1, int(N * ratio))). That costs N x M x d /
num_groups. What it gives up: a row is only kept away from rows of its own group, so near-duplicates in two
groups can both be kept. The accuracy cost is measured in bench/coreset_speed.py; `group_rows=None` is the
paper's global greedy. The cost grows as each group's share shrinks: at a 1% coreset of 200 magnetic-tile images
(1,843 picks in 6 groups) grouping lost 1.7 image AUROC points against the global greedy, which there costs about a
second. So grouping only applies when the global greedy would cost more than `exact_max_macs` multiply-adds
(N x M x projection_dim; DEFAULT_EXACT_MAX_MACS ~ 5 s on a 2-core x86 machine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from adtk.runtime.errors import ConfigError

# Patches per coreset group for the grouped samplers (PatchCore's and LDKNN's default; 32 images of a 32 x 32 grid):
# see bench/coreset_speed.py for the choice.
DEFAULT_GROUP_ROWS = 32768
# The ratio at which a DEFAULT_GROUP_ROWS group makes enough picks. At the default 10% ratio a 32,768-row group picks
# 3,277 rows (its share of the coreset) and the grouped coreset is 0.30 image AUROC points below the global greedy on
# all magnetic-tile images (bench/results/build_speed.md); at 1% the same groups pick ~330 rows, and that lost 1.7
# points at 200 images (bench/results/quality_table.md) and ~2 on a 4x training set
# (bench/results/online_coreset_memory.md). So below 10% the default groups grow to keep the picks a group makes at
# 10%; the grouped work per training row (rows x picks per group x dims) then stays that of the 10% default.
GROUP_PICKS_RATIO = 0.1


def default_group_rows(ratio: float) -> int:
    """The grouped samplers' default group size at a coreset ratio: DEFAULT_GROUP_ROWS, or as many more rows as keep
    a group's picks at DEFAULT_GROUP_ROWS x GROUP_PICKS_RATIO (3,277) below that ratio."""
    if not float(ratio) > 0.0:  # the coreset itself refuses such a ratio, with its own message
        return DEFAULT_GROUP_ROWS
    return max(DEFAULT_GROUP_ROWS, int(round(DEFAULT_GROUP_ROWS * GROUP_PICKS_RATIO / float(ratio))))


def sampler_group_rows(sampler: str, group_rows: int | None, ratio: float) -> int | None:
    """ApproximateGreedyCoreset's group_rows for a method's `sampler` and `group_rows` params: None (the global
    greedy) unless sampler is "grouped"; then group_rows, or default_group_rows(ratio) where it is None."""
    if sampler != "grouped":
        return None
    return default_group_rows(ratio) if group_rows is None else int(group_rows)


# Below this many multiply-adds (rows x picks x projected dims) the global greedy runs even when group_rows is set:
# it is cheap there (~4e10 multiply-adds a second on 2 cores: the 6e12 of a 10% coreset of 700k rows took ~150 s)
# and grouping costs the most accuracy at small coresets (module docstring).
DEFAULT_EXACT_MAX_MACS = 2e11


# Rows per GEMM when a block of picks is applied: the [rows, block_size] product (2 MB at 256 picks) then stays in
# cache for the minimum that reads it back. Applying 256 picks to 32,768 rows of 128 dims took 10.9 ms in chunks
# of 2,048 rows against 12.6 ms in chunks of 16,384 (2 x86 cores; 1,024 and 512 were slower again).
APPLY_CHUNK_ROWS = 2048


class ApproximateGreedyCoreset:
    def __init__(self, ratio: float, projection_dim: int = 128, num_starts: int = 10, seed: int = 0,
                 block_size: int = 256, num_candidates: int | None = None, chunk_rows: int = 16384,
                 group_rows: int | None = None, exact_max_macs: float | None = None):
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"coreset ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)
        self.projection_dim = int(projection_dim)
        self.num_starts = int(num_starts)
        self.seed = int(seed)
        self.block_size = int(block_size)
        self.num_candidates = None if num_candidates is None else int(num_candidates)
        self.chunk_rows = int(chunk_rows)
        if group_rows is not None and int(group_rows) < 1:
            raise ConfigError(f"coreset group_rows must be >= 1 (or None for one global greedy), got {group_rows}")
        self.group_rows = int(group_rows) if group_rows is not None else None
        self.exact_max_macs = float(DEFAULT_EXACT_MAX_MACS if exact_max_macs is None else exact_max_macs)

    def target_size(self, num_rows: int) -> int:
        return max(1, int(num_rows * self.ratio))

    def project(self, features: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """[N, D] rows, or [B, D, h, w] feature maps (rows = every position of every image, in (b, y, x)
        order) -> projected rows [N, projection_dim] (or the rows themselves when D <= projection_dim).

        Feature maps are projected a few images at a time, so the [N, D] patch-major copy of the maps is
        never made whole (for PatchCore at 200 images that copy alone was ~110 MB of the build's peak)."""
        dims = features.shape[1]
        if features.ndim == 4:
            maps = torch.from_numpy(np.asarray(features, dtype=np.float32))
            if dims <= self.projection_dim:
                return maps.permute(0, 2, 3, 1).reshape(-1, dims)
            weight = self._projection(dims, generator)
            out = torch.empty(maps.shape[0] * maps.shape[2] * maps.shape[3], self.projection_dim)
            per_image = maps.shape[2] * maps.shape[3]
            step = max(1, 16384 // per_image)
            for start in range(0, maps.shape[0], step):
                chunk = maps[start:start + step].permute(0, 2, 3, 1).reshape(-1, dims)
                torch.matmul(chunk, weight, out=out[start * per_image:start * per_image + len(chunk)])
            return out
        rows = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if dims <= self.projection_dim:
            return rows
        return rows @ self._projection(dims, generator)

    def _projection(self, dims: int, generator: torch.Generator) -> torch.Tensor:
        # torch.nn.Linear's default init (Kaiming-uniform, bound 1/sqrt(D)), seeded, as the official code.
        bound = 1.0 / np.sqrt(dims)
        return (torch.rand(dims, self.projection_dim, generator=generator) * 2 - 1) * bound

    def select(self, features: np.ndarray, progress: Callable[[int, int], None] | None = None,
               num_selected: int | None = None) -> np.ndarray:
        """features [N, D] (or feature maps [B, D, h, w], see project) -> sorted indices [M] of the selected
        rows (M = max(1, int(N * ratio))).

        num_selected overrides M (e.g. SoftCore sizes its coreset on all patches but samples only the
        kept ones). progress(done, total) is called after every block of picks.
        """
        num_rows = int(np.prod(features.shape)) // features.shape[1]
        target = self.target_size(num_rows) if num_selected is None else max(1, int(num_selected))
        if target >= num_rows:
            return np.arange(num_rows)
        generator = torch.Generator().manual_seed(self.seed)
        rows = self.project(features, generator)
        # groups of whole images when the features are maps: rows are in (image, y, x) order
        unit = features.shape[2] * features.shape[3] if features.ndim == 4 else 1
        num_groups = 1 if self.group_rows is None else max(1, round(num_rows / max(self.group_rows, unit)))
        if num_groups == 1 or self.global_greedy_is_cheap(num_rows, target, rows.shape[1]):
            return np.sort(self._greedy(rows, target, generator, progress))
        bounds = np.linspace(0, num_rows // unit, num_groups + 1).round().astype(np.int64) * unit
        sizes = np.diff(bounds)
        share = target * sizes / num_rows  # each group's part of the coreset, largest remainder rounding
        quotas = np.floor(share).astype(np.int64)
        quotas[np.argsort(quotas - share, kind="stable")[: target - int(quotas.sum())]] += 1
        selected, done = [], 0
        for start, stop, quota in zip(bounds[:-1], bounds[1:], quotas):
            if quota == 0:
                continue
            group_progress = None if progress is None else (lambda d, t, base=done: progress(base + d, target))
            selected.append(start + self._greedy(rows[start:stop], int(quota), generator, group_progress))
            done += int(quota)
        return np.sort(np.concatenate(selected))

    def global_greedy_is_cheap(self, num_rows: int, target: int, dims: int) -> bool:
        """True when the global greedy's N x M x d multiply-adds are within exact_max_macs (then no grouping)."""
        return float(num_rows) * float(target) * float(dims) <= self.exact_max_macs

    def _greedy(self, rows: torch.Tensor, target: int, generator: torch.Generator, progress=None) -> np.ndarray:
        """The greedy k-center over all of `rows` (projected [n, d]) -> indices [target] in pick order; each row's
        distance starts as its mean distance to `num_starts` random rows (the official code's start)."""
        num_rows = rows.shape[0]
        if target >= num_rows:
            return np.arange(num_rows)
        # in row chunks: rows * rows whole would be a second [N, d] array at the build's memory peak
        sq_norms = torch.cat([(chunk * chunk).sum(1) for chunk in rows.split(self.chunk_rows)])
        starts = torch.randperm(num_rows, generator=generator)[: min(self.num_starts, num_rows)]
        mean_dist = self._sq_dists(rows, sq_norms, starts).sqrt_().mean(1)
        return self.farthest_first(rows, mean_dist * mean_dist, target, sq_norms, progress)

    def farthest_first(self, rows: torch.Tensor, min_sq_dist: torch.Tensor, target: int,
                       sq_norms: torch.Tensor | None = None, progress=None) -> np.ndarray:
        """rows [n, d], each row's squared distance to what is already chosen [n] (updated in place) -> the
        `target` rows picked one at a time, each the farthest from everything chosen before it, in pick order
        (the textbook loop's picks, made with the blocked candidate list described above)."""
        if sq_norms is None:
            sq_norms = torch.cat([(chunk * chunk).sum(1) for chunk in rows.split(self.chunk_rows)])
        target = min(int(target), rows.shape[0])
        selected = np.empty(target, dtype=np.int64)
        pending: list[int] = []
        candidates = self._candidates(rows, sq_norms, min_sq_dist)
        all_sq_norms = sq_norms.numpy()
        step = 0
        while step < target:
            # The per-pick work is on the small candidate list, in numpy: a torch op costs ~10 us of dispatch
            # before any arithmetic, and a pick is ~8 of them (70k picks: several seconds of overhead alone).
            best = int(np.argmax(candidates.sq_dist))
            if candidates.sq_dist[best] < candidates.threshold:  # no proof of a global arg-max: apply the block
                self._apply(rows, sq_norms, min_sq_dist, pending)
                candidates = self._candidates(rows, sq_norms, min_sq_dist)
                continue
            index = int(candidates.indices[best])
            selected[step] = index
            pending.append(index)
            step += 1
            new_dist = candidates.sq_norms - 2.0 * (candidates.rows @ candidates.rows[best]) + all_sq_norms[index]
            np.minimum(candidates.sq_dist, np.maximum(new_dist, 0.0, out=new_dist), out=candidates.sq_dist)
            if len(pending) == self.block_size:
                self._apply(rows, sq_norms, min_sq_dist, pending)
                candidates = self._candidates(rows, sq_norms, min_sq_dist)
                if progress is not None:
                    progress(step, target)
        if progress is not None:
            progress(target, target)
        return selected

    def _sq_dists(self, rows, sq_norms, centres) -> torch.Tensor:
        """[N, K] squared distances of all rows to rows[centres] (small K only)."""
        return (sq_norms[:, None] - 2.0 * (rows @ rows[centres].t()) + sq_norms[centres][None]).clamp_(min=0.0)

    def _apply(self, rows, sq_norms, min_sq_dist, pending: list[int]) -> None:
        """Lower every row's distance with the pending picks, in row chunks (bounded memory), then clear."""
        if not pending:
            return
        centres = torch.tensor(pending)
        centre_rows_t = rows[centres].t().contiguous()
        centre_sq = sq_norms[centres][None]
        step = min(self.chunk_rows, APPLY_CHUNK_ROWS)
        for start in range(0, rows.shape[0], step):
            chunk = slice(start, start + step)
            # |x|^2 is the same for every centre, so it is added after the minimum over centres;
            # -2 x.c + |c|^2 is one fused addmm.
            nearest = torch.addmm(centre_sq, rows[chunk], centre_rows_t, alpha=-2.0).amin(1)
            torch.minimum(min_sq_dist[chunk], (nearest + sq_norms[chunk]).clamp_(min=0.0), out=min_sq_dist[chunk])
        pending.clear()

    def candidate_count(self, num_rows: int) -> int:
        """The candidate list's length: num_candidates, or by default 1/16 of the rows within [1024, 8192]. Every
        pick reads the whole list, so a list much longer than needed costs memory traffic on every pick (a group of
        32,768 rows: 8,192 candidates took 1.75 s of one core, 2,048 took 1.05 s, the same picks); a list too short
        for the rows fails the arg-max proof often and applies blocks early (global greedy: 8,192)."""
        if self.num_candidates is not None:
            return self.num_candidates
        return int(min(8192, max(1024, num_rows // 16)))

    def _candidates(self, rows, sq_norms, min_sq_dist) -> "_Candidates":
        """The rows with the largest distances (their rows and norms gathered once, as numpy arrays), and the
        largest distance of any row outside them."""
        count = min(self.candidate_count(min_sq_dist.shape[0]), min_sq_dist.shape[0])
        if count == min_sq_dist.shape[0]:
            indices, sq_dist, threshold = torch.arange(count), min_sq_dist.clone(), float("-inf")
        else:
            values, top = torch.topk(min_sq_dist, count + 1)
            indices, sq_dist, threshold = top[:count], values[:count].clone(), float(values[count])
        return _Candidates(indices.numpy(), rows[indices].contiguous().numpy(), sq_norms[indices].numpy(),
                           sq_dist.numpy(), threshold)


@dataclass
class _Candidates:
    indices: np.ndarray  # [C] row indices
    rows: np.ndarray  # [C, d] their projected rows
    sq_norms: np.ndarray  # [C]
    sq_dist: np.ndarray  # [C] exact squared distance to the coreset, pending picks included
    threshold: float  # upper bound on the distance of every row outside the list
