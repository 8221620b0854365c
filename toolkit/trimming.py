"""PaIRE's iterative trimming (spec B3-B4, seed 001): find the clean subset of a dirty training set.

Per grid position, a Gaussian (unbiased covariance + lambda I, lambda = 1e-6) is fitted on the current
fit set and ALL N images are scored (Mahalanobis distance, float64, Cholesky solves: spec P-B2). The
distances are min-max normalised per position (Eq. 7); a per-position threshold is found with the
sliding-window knee on the sorted curve (Eqs. 8-15); an image is clean iff every one of its patches is
below its position's threshold (Eq. 12). Repeat on the clean set until it stops changing or holds more
than N/2 images (spec P-B4, literal rule, 20 rounds at most). Gap-fills follow the spec's B4.1
reference code (marked #ours there): rounding of L/S/U, offset S after the jump, history excluding the
current window, "endpoint" = no trimming at that position, fallback = the ceil(N/3) images with the
smallest max-over-positions distance when fewer than 10 survive.

Training-time only: nothing here is exported (spec B9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adtk.toolkit.gaussian import squared_mahalanobis, whitening_factor

MIN_CLEAN = 10
MAX_ROUNDS = 20


def window_threshold(m_sorted: np.ndarray, first_round: bool, jump_idx: int | None = None, alpha: float = 0.05,
                     beta: float = 3.0, tau: float = 1.15, eta: float = 2.3) -> float:
    """The threshold of one position from its ascending normalised distances (spec B4.1 `threshold`);
    +inf means nothing is trimmed at this position."""
    n = len(m_sorted)
    window = max(2, round(alpha * n))
    step = max(1, round(window / beta))
    run_needed = window // step + 1
    start = n // 3 if first_round else min(int(jump_idx) + step, n - 1)
    if n - start < max(3, window + (run_needed - 1) * step):
        return math.inf
    ends = np.linspace(start, n - 1, 4).round().astype(int)
    slopes = [(m_sorted[ends[k + 1]] - m_sorted[ends[k]]) / max(1, ends[k + 1] - ends[k]) for k in range(3)]
    base = (slopes[0] + slopes[1]) / 2
    ratio = slopes[2] / base if base > 0 else (math.inf if slopes[2] > 0 else 1.0)
    if ratio < tau:
        return math.inf  # close to straight: the "endpoint", nothing trimmed here
    multiplier = (ratio - tau) / eta + tau
    history: list[float] = []
    run, first_start = 0, None
    for a0 in range(start, n - window + 1, step):
        slope = (m_sorted[a0 + window - 1] - m_sorted[a0]) / (window - 1)
        if history and slope > multiplier * np.mean(history):
            run += 1
            first_start = a0 if run == 1 else first_start
        else:
            run = 0
        history.append(slope)
        if run == run_needed:
            return float(m_sorted[first_start:first_start + window].mean())
    return math.inf


def position_distances(features: np.ndarray, fit_set: np.ndarray, ridge: float, chunk: int = 16) -> np.ndarray:
    """features [N, P, d] -> Mahalanobis distances [N, P] of all N images under Gaussians fitted on
    features[fit_set] (unbiased covariance + ridge * I, float64)."""
    num_images, positions, dims = features.shape
    out = np.empty((num_images, positions))
    for start in range(0, positions, chunk):
        part = slice(start, min(start + chunk, positions))
        fit = np.asarray(features[fit_set, part], dtype=np.float64).transpose(1, 0, 2)  # [G, K, d]
        mean = fit.mean(axis=1)
        centred = fit - mean[:, None]
        cov = np.einsum("gki,gkj->gij", centred, centred, optimize=True) / max(1, fit.shape[1] - 1)
        cov[:, np.arange(dims), np.arange(dims)] += ridge
        out[:, part] = np.sqrt(squared_mahalanobis(features[:, part], mean, whitening_factor(cov)))
    return out


@dataclass
class TrimmingResult:
    clean: np.ndarray  # int64 indices into the N images, sorted
    rounds: list[dict] = field(default_factory=list)  # per round: |D_clean|, thresholds set, spread, fallback


@dataclass(frozen=True)
class PaireTrimming:
    """select(features [N, P, d]) -> TrimmingResult. Hyperparameters as the paper (spec B5.1)."""

    alpha: float = 0.05
    beta: float = 3.0
    tau: float = 1.15
    eta: float = 2.3
    ridge: float = 1e-6

    def select(self, features: np.ndarray, log=None) -> TrimmingResult:
        num_images = features.shape[0]
        fit_set, clean, first = np.arange(num_images), None, True
        result = TrimmingResult(clean=fit_set)
        for round_index in range(MAX_ROUNDS):
            distances = position_distances(features, fit_set, self.ridge)
            low, high = distances.min(0), distances.max(0)
            normalised = (distances - low) / (high - low + 1e-12)
            # P-B2: in-sample distances collapse when K < d; record how far the spread is above round-off.
            spread = (high - low) / np.maximum(distances.mean(0), 1e-300)
            thresholds = np.array([
                window_threshold(np.sort(normalised[:, p]), first, jump_idx=len(fit_set), alpha=self.alpha,
                                 beta=self.beta, tau=self.tau, eta=self.eta)
                for p in range(normalised.shape[1])])
            new = np.flatnonzero((normalised < thresholds[None]).all(axis=1))
            fallback = len(new) < MIN_CLEAN
            if fallback:
                new = np.sort(np.argsort(normalised.max(axis=1), kind="stable")[: math.ceil(num_images / 3)])
            result.rounds.append({"round": round_index + 1, "clean": int(len(new)),
                                  "positions_trimming": int(np.isfinite(thresholds).sum()),
                                  "min_relative_spread": float(spread.min()), "fallback": bool(fallback)})
            if log is not None:
                log(f"paire round {round_index + 1}: {len(new)}/{num_images} clean; "
                    f"{int(np.isfinite(thresholds).sum())} positions trim; fallback {fallback}")
            if clean is not None and np.array_equal(new, clean):
                break
            clean, fit_set, first = new, new, False
            if len(clean) > num_images / 2:
                break
        result.clean = clean.astype(np.int64)
        return result
