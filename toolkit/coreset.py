"""Approximate greedy k-center coreset (PatchCore's ApproximateGreedyCoresetSampler; spec 004 §6).

1. Project every row to `projection_dim` dimensions with a random bias-free linear map (seeded).
2. Pick `num_starts` random start rows; each row's distance to the coreset starts as its mean distance
   to those rows (the start rows themselves are not added).
3. Repeat int(N * ratio) times: add the row farthest from the coreset, then lower every row's distance
   with its distance to the new row.

Written here rather than taken from a library because neither faiss nor scikit-learn has a k-center
sampler. Distances are kept squared (the arg-max and the minimum are the same as for plain distances)
and computed as |x|^2 - 2 x.c + |c|^2, one matrix-vector product per step, in torch for its threads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from adtk.runtime.errors import ConfigError


class ApproximateGreedyCoreset:
    def __init__(self, ratio: float, projection_dim: int = 128, num_starts: int = 10, seed: int = 0):
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"coreset ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)
        self.projection_dim = int(projection_dim)
        self.num_starts = int(num_starts)
        self.seed = int(seed)

    def target_size(self, num_rows: int) -> int:
        return max(1, int(num_rows * self.ratio))

    def select(self, features: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """features [N, D] -> sorted indices [M] of the selected rows (M = max(1, int(N * ratio))).

        progress(done, total) is called every 256 selections.
        """
        num_rows = features.shape[0]
        target = self.target_size(num_rows)
        if target >= num_rows:
            return np.arange(num_rows)
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if rows.shape[1] > self.projection_dim:
            # torch.nn.Linear's default init (Kaiming-uniform, bound 1/sqrt(D)), seeded, as the official code.
            bound = 1.0 / np.sqrt(rows.shape[1])
            weight = (torch.rand(rows.shape[1], self.projection_dim, generator=generator) * 2 - 1) * bound
            rows = rows @ weight
        sq_norms = (rows * rows).sum(1)

        def sq_dist_to(index: int) -> torch.Tensor:
            return (sq_norms - 2.0 * (rows @ rows[index]) + sq_norms[index]).clamp_(min=0.0)

        starts = torch.randperm(num_rows, generator=generator)[: min(self.num_starts, num_rows)]
        mean_dist = torch.stack([sq_dist_to(int(s)).sqrt_() for s in starts]).mean(0)
        min_sq_dist = mean_dist * mean_dist
        selected = np.empty(target, dtype=np.int64)
        for step in range(target):
            index = int(torch.argmax(min_sq_dist))
            selected[step] = index
            torch.minimum(min_sq_dist, sq_dist_to(index), out=min_sq_dist)
            if progress is not None and (step % 256 == 0 or step == target - 1):
                progress(step + 1, target)
        return np.sort(selected)
