"""`--refine auto`: find the defective training images without being told how many there are.

SROC scores the training images in-sample and drops a user-given fraction R. Two things go wrong on real
data (bench/results/pollution_table.md): in-sample, a defective image is scored against a model that was fitted
on it (a memory bank holds its own patches, so its nearest neighbour is itself), which hides it; and the user
rarely knows R. Here instead:

    cross-fitted scores: the images are split into `folds` seeded folds; each fold is scored by the detector
                         fitted on the other folds, so no image is scored by a model that saw it
    contamination:       the images whose score is an outlier of the score distribution are dropped. The bulk
                         (good images) sets the scale: robust z = (s - median) / (1.4826 x MAD) of log scores,
                         dropped when z > `z_threshold`. Capped at `max_fraction` so a wide good distribution
                         cannot empty the training set.

With clean data few or no images are dropped; with a polluted set the count follows the data, not a guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_FOLDS = 2
DEFAULT_Z = 3.0
MAX_FRACTION = 0.3  # never drop more than this share of the training images
MIN_FOLD_IMAGES = 4  # a fold's complement must be able to fit a detector


def crossfit_scores(features: np.ndarray, fit_and_score: Callable[[np.ndarray, np.ndarray], np.ndarray],
                    folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Each image's score from a detector fitted without it -> float64 [N].

    fit_and_score(fit_features, score_features) -> image scores of score_features (higher = more anomalous).
    """
    num_images = len(features)
    folds = max(2, min(int(folds), num_images // MIN_FOLD_IMAGES))
    assignment = np.random.default_rng(seed).permutation(num_images) % folds
    scores = np.empty(num_images, dtype=np.float64)
    for fold in range(folds):
        held = np.flatnonzero(assignment == fold)
        fit_rows = np.flatnonzero(assignment != fold)
        scores[held] = fit_and_score(np.ascontiguousarray(features[fit_rows]),
                                     np.ascontiguousarray(features[held]))
    return scores


@dataclass(frozen=True)
class ContaminationEstimate:
    dropped: np.ndarray  # int64, indices of the images judged defective, ascending
    threshold: float  # the score above which an image is dropped
    fraction: float  # dropped / N: the estimated contamination rate
    capped: bool  # True when MAX_FRACTION limited the count

    def as_dict(self) -> dict:
        return {"estimated_contamination": round(self.fraction, 4), "score_threshold": self.threshold,
                "capped_at_max_fraction": self.capped}


def estimate_contamination(scores: np.ndarray, z_threshold: float = DEFAULT_Z,
                           max_fraction: float = MAX_FRACTION) -> ContaminationEstimate:
    """Outliers of the score distribution (robust z of the log scores above `z_threshold`), at most
    max_fraction of the images (the highest-scoring ones when capped)."""
    scores = np.asarray(scores, dtype=np.float64)
    # log: anomaly scores are distances (positive, right-skewed); shifted so that negative scores (LDKNN) work
    shift = 0.0 if scores.min() > 0 else 1e-3 * (float(np.ptp(scores)) or 1.0) - float(scores.min())
    values = np.log(scores + shift)
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median))
    if spread <= 0:
        return ContaminationEstimate(np.array([], dtype=np.int64), float(scores.max()), 0.0, False)
    outliers = np.flatnonzero((values - median) / spread > z_threshold)
    cap = int(np.floor(max_fraction * len(scores)))
    capped = len(outliers) > cap
    if capped:
        outliers = np.argsort(-scores, kind="stable")[:cap]
    dropped = np.sort(outliers).astype(np.int64)
    threshold = float(scores[dropped].min()) if len(dropped) else float("inf")
    return ContaminationEstimate(dropped, threshold, len(dropped) / max(len(scores), 1), capped)
