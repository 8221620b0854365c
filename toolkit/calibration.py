"""Threshold and normalisation calibration on held-out images (never on the images the method fitted).

Good images only: threshold = the `good_quantile` quantile of the held-out good scores (default 1.0, the
highest: no held-out good image is flagged); score_min = their minimum; score_max mirrors the threshold
(threshold + (threshold - min)), so good scores map to [0, 0.5].
Anomaly maps are normalised apart, from the held-out good images' raw maps (map_statistics).
With labelled defects as well: threshold = the F1-optimal cut between good and defective scores
(midway between the two neighbouring scores), score_max = the highest defective score.

A refined build (--refine) draws its held-out images from the same polluted pool as its fit images, so they hold
about the share of defects the refiner dropped from the fit split; the highest-scoring such share of them
(`set_aside_fraction`) is set aside before the quantile, or a single defective "good" image would set the
threshold (and the map threshold) at a defect's score: at 10% pollution of magnetic-tile the default threshold
then flagged 5-13% of the defects instead of about a quarter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from adtk.runtime.errors import DataError


@dataclass(frozen=True)
class Calibration:
    threshold: float
    score_min: float
    score_max: float
    method: str  # how the threshold was chosen, recorded in the manifest
    num_good: int
    num_defective: int
    map_threshold: float = 0.0  # the highest raw map value of any held-out good image
    map_min: float = 0.0
    map_max: float = 1.0  # mirrors map_threshold, so held-out good maps normalise into [0, 0.5]

    def as_dict(self) -> dict:
        return asdict(self)


def f1_optimal_threshold(good: np.ndarray, defective: np.ndarray) -> float:
    scores = np.concatenate([good, defective]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(good)), np.ones(len(defective))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    true_pos = np.cumsum(labels)
    predicted_pos = np.arange(1, len(scores) + 1)
    f1 = 2 * true_pos / (predicted_pos + len(defective))
    # Only cut between distinct scores; the cut after position i flags scores[: i + 1].
    distinct = np.append(scores[1:] < scores[:-1], True)
    best = int(np.argmax(np.where(distinct, f1, -1.0)))
    below = scores[best + 1] if best + 1 < len(scores) else scores[best] - 1.0
    return float((scores[best] + below) / 2.0)


def map_statistics(good_map_max, good_map_min) -> dict:
    """Anomaly-map normalisation from the held-out good images' per-image raw map maxima and minima:
    0.5 in a normalised map = the highest value any held-out good image reached anywhere."""
    threshold = float(np.max(good_map_max))
    low = float(np.min(good_map_min))
    high = threshold + (threshold - low)
    if high <= low:
        high = low + max(abs(low), 1.0)
    return {"map_threshold": threshold, "map_min": low, "map_max": high}


def calibrate(good_scores, defective_scores=None, good_quantile: float = 1.0, good_map_max=None,
              good_map_min=None, set_aside_fraction: float = 0.0) -> Calibration:
    good = np.asarray(good_scores, dtype=np.float64).ravel()
    if good.size == 0:
        raise DataError("calibration needs at least one held-out good image; lower --calib-fraction's "
                        "minimum or add training images")
    if not np.all(np.isfinite(good)):
        raise DataError("calibration scores contain NaN or inf: the model produced invalid scores")
    set_aside = min(int(round(max(0.0, set_aside_fraction) * good.size)), good.size - 1)
    note = ""
    if set_aside:
        keep = np.sort(np.argsort(-good, kind="stable")[set_aside:])
        note = (f"; {set_aside} of {good.size} with the highest scores set aside as presumed defective: the "
                f"refiner dropped {set_aside_fraction:.1%} of the fit split")
        good = good[keep]
        if good_map_max is not None:
            good_map_max, good_map_min = np.asarray(good_map_max)[keep], np.asarray(good_map_min)[keep]
    defective = np.asarray(defective_scores if defective_scores is not None else [], dtype=np.float64).ravel()
    score_min = float(good.min())
    if defective.size:
        threshold = f1_optimal_threshold(good, defective)
        score_max = float(max(defective.max(), threshold))
        method = (f"F1-optimal between {good.size} held-out good and {defective.size} labelled defective "
                  f"images{note}")
    else:
        threshold = float(np.quantile(good, good_quantile))
        score_max = threshold + (threshold - score_min)
        method = f"quantile {good_quantile:g} of {good.size} held-out good images{note}"
    if score_max <= score_min:  # all calibration scores equal: keep a usable, non-zero span
        score_max = score_min + max(abs(score_min), 1.0)
    maps = map_statistics(good_map_max, good_map_min) if good_map_max is not None else {}
    return Calibration(threshold, score_min, score_max, method, int(good.size), int(defective.size), **maps)
