"""Online greedy coreset subsampling (seed 003, Algorithm 2; spec softcore_semlp_labeled_patchcore.md B.5).

Patches arrive in batches (the released code: 8 images). From each batch, max(1, floor(|batch| * ratio))
patches are added one at a time, each the batch patch farthest (in a projected space) from everything
stored so far, earlier batches included. Only the stored rows and one batch are ever held, so memory is
bounded by the bank, not by the training set. Distances are taken in psi-space, a sparse random
projection (Johnson-Lindenstrauss, eps = 0.9, about 215 dims for 8 x 784 patches) fitted once on the
first batch (scikit-learn's SparseRandomProjection, seeded; skipped when the features already have fewer
dims than it would produce); the stored entries are the full feature vectors (B.5 last bullet).
When nothing is stored yet, the batch's distances start from one random row of the batch that is not
itself stored (the code's "virtual" centre, B.9.10).

Windows (`window_rows`, not in the paper): the paper compares every batch with every stored row, so the whole
stream costs about N x M x d / 2 multiply-adds, as much as the offline exact greedy (at a 10% bank of 700k
magnetic-tile rows the online build was 1.9x slower than the grouped offline default, bench/results/build_speed.md).
With `window_rows` set, the stream is cut into consecutive windows of at least that many input rows (whole
batches) and the paper's sampler runs inside each window: a batch is compared only with the rows stored in its own
window, and each window starts from a virtual centre again. That bounds a batch's distance work by
window_rows x ratio stored rows, as toolkit/coreset.py's grouped selection bounds its greedy, and gives up the same
thing: rows of two windows are not kept away from each other. `window_rows=None` is the paper's sampler.

Hand-written (like toolkit/coreset.py): neither faiss nor scikit-learn has a streaming k-center sampler.
The picks within a batch are toolkit/coreset.py's farthest_first (the same picks as the textbook loop, made
with blocked matrix products instead of one [n, d] difference per pick), on squared distances (same arg-max);
the distances to the stored rows are one GEMM per block of stored rows (|x|^2 - 2 x.s + |s|^2, minimum over
the block), not cdist, which also takes square roots over the whole [n, M] matrix.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.coreset import ApproximateGreedyCoreset

JL_EPS = 0.9
DISTANCE_BLOCK_ELEMENTS = 1 << 24  # float32 batch x stored distances held at once (64 MB)


def jl_min_dim(num_rows: int, eps: float) -> int:
    """scikit-learn's johnson_lindenstrauss_min_dim, 4 ln(n) / (eps^2/2 - eps^3/3), written out so that the
    common case (features with fewer dims than that, no projection) does not import scikit-learn: the import
    alone added ~45 MB to a streaming build's peak RSS (bench/online_coreset_memory.py)."""
    return int(4 * np.log(num_rows) / (eps ** 2 / 2 - eps ** 3 / 3))


class OnlineGreedyCoreset:
    def __init__(self, ratio: float, seed: int = 0, eps: float = JL_EPS, window_rows: int | None = None):
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"online coreset ratio must be in (0, 1], got {ratio}")
        if window_rows is not None and int(window_rows) < 1:
            raise ConfigError(f"online coreset window_rows must be >= 1 (or None: one window), got {window_rows}")
        self.window_rows = None if window_rows is None else int(window_rows)
        self.window_input_rows = 0  # input rows the current window has seen
        self.ratio, self.seed, self.eps = float(ratio), int(seed), float(eps)
        self.projection = None  # fitted on the first batch
        self.rows: list[np.ndarray] = []  # stored full rows, one array per batch
        self.projected: torch.Tensor | None = None  # [m, d] the current window's stored rows in psi-space
        self.projected_sq_norms: torch.Tensor | None = None  # [m]
        self.picker = ApproximateGreedyCoreset(1.0)  # its farthest-first loop
        self.generator = np.random.default_rng(seed)
        self.projection_dims: int | None = None

    def _project(self, patches: np.ndarray) -> torch.Tensor:
        if self.projection is None:
            dims = jl_min_dim(len(patches), self.eps)
            if dims < patches.shape[1]:
                from sklearn.random_projection import SparseRandomProjection

                self.projection = SparseRandomProjection(dims, random_state=self.seed).fit(patches)
            else:
                self.projection = False
            self.projection_dims = dims if self.projection is not False else patches.shape[1]
        rows = self.projection.transform(patches) if self.projection is not False else patches
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    def add(self, patches: np.ndarray) -> np.ndarray:
        """patches [n, D] (one batch) -> indices of the rows of this batch that were stored, in pick order."""
        if self.window_rows is not None and self.window_input_rows >= self.window_rows:
            # a new window: its batches are compared with its own stored rows only (module docstring)
            self.projected = self.projected_sq_norms = None
            self.window_input_rows = 0
        self.window_input_rows += len(patches)
        batch = self._project(patches)
        count = min(max(1, int(len(patches) * self.ratio)), len(patches))
        batch_sq_norms = (batch * batch).sum(1)
        if self.projected is None:
            virtual = int(self.generator.integers(len(patches)))
            min_sq_dist = ((batch - batch[virtual]) ** 2).sum(1)
        else:
            min_sq_dist = self._sq_distance_to_stored(batch, batch_sq_norms)
        picks_arr = self.picker.farthest_first(batch, min_sq_dist, count, batch_sq_norms)
        self.rows.append(np.ascontiguousarray(patches[picks_arr], dtype=np.float32))
        new, new_sq = batch[picks_arr], batch_sq_norms[picks_arr]
        self.projected = new if self.projected is None else torch.cat([self.projected, new])
        self.projected_sq_norms = new_sq if self.projected_sq_norms is None else torch.cat([self.projected_sq_norms, new_sq])
        return picks_arr

    def _sq_distance_to_stored(self, batch: torch.Tensor, batch_sq_norms: torch.Tensor) -> torch.Tensor:
        """[n] squared distance of each batch row to its nearest stored row, over blocks of stored rows: the whole
        [n, M] matrix grows with the bank (8 images x 1,024 patches against a 28k-row bank is ~0.9 GB)."""
        step = max(1, DISTANCE_BLOCK_ELEMENTS // len(batch))
        nearest = None
        for start in range(0, len(self.projected), step):
            block = self.projected[start:start + step]
            # |s|^2 - 2 x.s as one addmm; |x|^2 is the same along the block, so it is added after the minimum
            partial = torch.addmm(self.projected_sq_norms[start:start + step][None], batch, block.t(), alpha=-2.0).amin(1)
            nearest = partial if nearest is None else torch.minimum(nearest, partial)
        return (nearest + batch_sq_norms).clamp_(min=0.0)

    def bank(self) -> np.ndarray:
        """[M, D] the stored rows, in the order they were added."""
        return np.concatenate(self.rows) if self.rows else np.zeros((0, 0), np.float32)


def online_coreset_bank(batches: Iterable[np.ndarray], ratio: float, seed: int, images_per_step: int,
                        num_images: int, progress=None, window_rows: int | None = None) -> np.ndarray:
    """Feature batches [b, D, h, w] of any sizes -> the online coreset's bank [M, D], holding one group of
    `images_per_step` images at a time (the released code's 8, spec B.5).

    The batches are regrouped into `images_per_step` images per sampler step whatever batch size the backbone
    ran at, so the bank does not depend on it. Patch rows go in (image, y, x) order, as the offline coreset
    reads them. progress(done_images, num_images) after each step; an empty stream is a DataError.
    window_rows: OnlineGreedyCoreset's windows (None: the paper's one window)."""
    sampler = OnlineGreedyCoreset(ratio, seed=seed, window_rows=window_rows)
    pending: list[np.ndarray] = []
    held = done = 0

    def add_group(group: np.ndarray) -> None:
        nonlocal done
        sampler.add(np.ascontiguousarray(group.transpose(0, 2, 3, 1).reshape(-1, group.shape[1])))
        done += len(group)
        if progress is not None:
            progress(done, max(num_images, done))

    for batch in batches:
        pending.append(batch)
        held += len(batch)
        while held >= images_per_step:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            add_group(joined[:images_per_step])
            rest = joined[images_per_step:]
            pending, held = ([rest] if len(rest) else []), len(rest)
    if held:
        add_group(np.concatenate(pending))
    if done == 0:
        raise DataError("no training features to fit (the image stream was empty)")
    return sampler.bank()
