"""The default `--refine auto` refiner: a Gaussian's in-sample image scores and a per-position LOF discriminator's,
combined by rank sum; the count dropped is the Gaussian's contamination estimate (contamination.py).

Why two scorers: on magnetic-tile (10% sroc pollution, 3 seeds) each finds defects the other misses. PaDiM's
in-sample Mahalanobis distance judges a patch against its position's Gaussian (one mean and covariance: a rare
but clean texture is far from it too); SoftCore's discriminator (spec A.3(c)) judges a patch by its local outlier
factor among the other images' patches at the same position (a patch in a sparse but populated region is not an
outlier there). Summing the two rankings puts first the images both find unusual (bench/results/refine_auto.md).

Why ranks: the two scores live on unrelated scales (a distance, a density ratio); ranks need no calibration.
Why the Gaussian's count, not one from the LOF scores: the LOF scores' tail estimate runs high (0.11-0.14 for a
true 0.10) and dropping that many good images cost more AUROC than the defects found (refine_auto.md); the
rank sum's own distribution is uniform by construction, so has no tail to estimate from.

LOF image score: the mean of an image's top TOP_PATCH_FRACTION patch LOFs (small defects cover a few patches,
so the mean of many dilutes them; the single max follows noise: top-50 of 1024 ranked the injected defects
highest of max / top-10 / top-50, refine_auto.md). Memory: positions are fitted POSITION_CHUNK at a time, so
the only copy beyond `features` is one chunk's rows (64 x N x d floats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adtk.toolkit.methods.softcore import lof_scores

POSITION_CHUNK = 64  # grid positions whose rows are gathered at once (bounded memory, see the docstring)


def rank_sum(*scores: np.ndarray) -> np.ndarray:
    """Mean rank of each image across the score arrays, scaled to (0, 1] (ties averaged; higher = more
    anomalous in all of them)."""
    from scipy.stats import rankdata

    ranks = np.stack([rankdata(np.asarray(s, dtype=np.float64)) for s in scores])
    return ranks.mean(axis=0) / ranks.shape[1]


@dataclass(frozen=True)
class RankSumRefiner:
    """Combines a Gaussian refiner's in-sample image scores with per-position LOF image scores of the same
    features; names itself in the manifest's training.refinement record."""

    lof_neighbours: int = 6  # SoftCore's LOF k (spec A.3(c))
    top_patch_fraction: float = 0.05  # ~50 of a 32 x 32 grid

    name = "rank-sum"

    def lof_image_scores(self, features: np.ndarray) -> np.ndarray:
        """features [N, d, h, w] -> float64 [N]: each patch's LOF among the N images' patches at its position
        (never against itself), reduced per image to the mean of its top patches."""
        num_images, dims, height, width = features.shape
        positions = features.reshape(num_images, dims, height * width)
        patch_lof = np.empty((num_images, height * width), dtype=np.float64)
        for start in range(0, height * width, POSITION_CHUNK):
            rows = np.ascontiguousarray(positions[:, :, start:start + POSITION_CHUNK].transpose(2, 0, 1),
                                        dtype=np.float64)  # [p, N, d]
            patch_lof[:, start:start + rows.shape[0]] = lof_scores(rows, self.lof_neighbours).T
        top = max(1, int(round(self.top_patch_fraction * height * width)))
        return np.sort(patch_lof, axis=1)[:, -top:].mean(axis=1)

    def combine(self, gaussian_scores: np.ndarray, features: np.ndarray) -> np.ndarray:
        """-> float64 [N] rank-sum scores in (0, 1]."""
        if len(features) < 3:  # LOF needs neighbours other than the image itself
            return rank_sum(gaussian_scores)
        return rank_sum(gaussian_scores, self.lof_image_scores(features))

    def record(self, gaussian: str) -> dict:
        return {"combination": self.name, "scorers": [f"{gaussian} in-sample", "per-position LOF"],
                "lof_neighbours": self.lof_neighbours, "lof_top_patch_fraction": self.top_patch_fraction,
                "count_from": gaussian}
