"""`--refine auto`: find the defective training images without being told how many there are.

SROC scores the training images in-sample and drops a user-given fraction R. Two things go wrong on real
data (bench/results/pollution_table.md): in-sample, a defective image is scored against a model that was fitted
on it (a memory bank holds its own patches, so its nearest neighbour is itself), which hides it; and the user
rarely knows R. Here instead:

    honest scores:       no image is scored by a model that hides it. A Gaussian refiner (PaDiM, Mahalanobis:
                         methods' refines_in_sample) scores in-sample, as SROC: its in-sample distance is a
                         monotone function of the leave-one-out one, so cross-fitting would only halve its
                         data (magnetic-tile, 10%: recall at R 0.71 in-sample vs 0.62 2-fold). Other refiners
                         (memory banks, whose nearest neighbour of an image's patch is the patch itself) are
                         cross-fitted: the images are split into `folds` seeded folds; each fold is scored by the
                         detector fitted on the other folds.
    contamination:       estimated from the score distribution: in log space the good images' scores form a
                         bulk that is roughly symmetric about its median, defects add mass to the upper tail
                         only. The estimate is the largest excess of the upper tail over the mirrored lower
                         tail, over thresholds of 1..3 robust standard deviations (1.4826 x MAD), where that
                         excess is significant, or the excess beyond 4 robust standard deviations.
    drop:                the highest-scoring SAFETY_FACTOR x estimate x N images, at most MAX_FRACTION of them.
                         Why more than the estimate: the estimate runs low (0.088 for a true 0.10) and small
                         defects score inside the good bulk, so the top estimate x N hold only ~2/3 of them.
                         Why not much more: a dropped good image is not free. The good images a refiner ranks
                         high are the unusual ones, and without them the final model flags unusual good test
                         images (magnetic-tile, 10%, PaDiM refining and final, seed 0: dropping 0.75 / 1 / 1.25 /
                         1.5 / 2 x the true count gives image AUROC 0.921 / 0.925 / 0.929 / 0.927 / 0.920,
                         bench/results/refine_auto.md). 1.5 x the estimate lands in that plateau. An estimate of
                         zero drops nothing.

With clean data the estimate stays near zero and (nearly) nothing is dropped; with a polluted set the count
follows the data, not a guess of the user's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_FOLDS = 2
SAFETY_FACTOR = 1.5  # see the module docstring: between too few defects found and too many good images lost
TAIL_THRESHOLDS = (1.0, 1.5, 2.0, 2.5, 3.0)  # robust standard deviations from the median
FAR_OUTLIER = 4.0  # beyond this many robust standard deviations an image counts as contamination outright
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
    fraction: float  # the estimated contamination rate (tail excess / N)
    threshold: float  # the lowest dropped score (inf when nothing is dropped)
    capped: bool  # True when MAX_FRACTION limited the count

    def as_dict(self) -> dict:
        return {"estimated_contamination": round(self.fraction, 4), "safety_factor": SAFETY_FACTOR,
                "dropped_fraction_cap": MAX_FRACTION, "capped": self.capped,
                "score_threshold": None if not np.isfinite(self.threshold) else self.threshold}


def tail_excess(scores: np.ndarray) -> float:
    """Estimated contamination: the largest significant (upper-tail count - mirrored lower-tail count) / N of the
    log scores (0 when no threshold shows a significant excess)."""
    scores = np.asarray(scores, dtype=np.float64)
    # log: anomaly scores are distances (positive, right-skewed); shifted when some are <= 0 (LDKNN's can be)
    shift = 0.0 if scores.min() > 0 else 1e-3 * (float(np.ptp(scores)) or 1.0) - float(scores.min())
    values = np.log(scores + shift)
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median))
    if spread <= 0 or len(values) == 0:
        return 0.0
    significant = [0]
    for t in TAIL_THRESHOLDS:
        upper, lower = int((values > median + t * spread).sum()), int((values < median - t * spread).sum())
        # counted only where the tails differ by more than three standard deviations of their (Poisson) noise
        # (three, as five thresholds are tried), so a clean bulk gives no estimate from sampling noise alone
        if upper - lower > 3.0 * np.sqrt(upper + lower):
            significant.append(upper - lower)
    # far outliers count without the noise test: a handful of them in a small set is evidence, not noise
    significant.append(int((values > median + FAR_OUTLIER * spread).sum() - (values < median - FAR_OUTLIER * spread).sum()))
    return float(max(significant)) / len(values)


def estimate_contamination(scores: np.ndarray, safety_factor: float = SAFETY_FACTOR,
                           max_fraction: float = MAX_FRACTION) -> ContaminationEstimate:
    """The tail-excess estimate, and the highest-scoring round(safety_factor x estimate x N) images to drop."""
    scores = np.asarray(scores, dtype=np.float64)
    fraction = tail_excess(scores)
    count = int(round(safety_factor * fraction * len(scores)))
    cap = int(np.floor(max_fraction * len(scores)))
    capped = count > cap
    count = min(count, cap)
    dropped = np.sort(np.argsort(-scores, kind="stable")[:count]).astype(np.int64)
    threshold = float(scores[dropped].min()) if count else float("inf")
    return ContaminationEstimate(dropped, fraction, threshold, capped)
