"""Fit-time Gaussian building blocks shared by Mahalanobis, PaDiM and PaIRE (float64 throughout).

* ``ledoit_wolf(X)``: Ledoit-Wolf shrunk covariances of many Gaussians at once. scikit-learn's
  ``LedoitWolf`` fits one matrix per call; PaDiM fits one per grid position (1024 at 256 px), so the
  same estimator is written here batched over positions, and the tests check it against sklearn
  position by position (spec P-A2: MLE 1/n scatter, shrinkage toward trace/d * I).
* ``whitening_factor(cov)``: W = C^-1 with cov = C C^T (Cholesky). Then the precision is
  P = W^T W = L L^T with L = W^T, and the squared Mahalanobis distance is ||W (x - mu)||^2 -- one
  batched matrix product in the exported head (issue 3: "store the precision as a Cholesky-type
  factor"). It is computed by triangular solves, never by an explicit inverse of cov (spec P-B2).
"""

from __future__ import annotations

import numpy as np
import torch

from adtk.runtime.errors import DataError


def ledoit_wolf(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """samples [G, n, d] (G independent Gaussians, n samples each) -> (mean [G, d], cov [G, d, d],
    shrinkage [G]), all float64; identical to sklearn.covariance.LedoitWolf().fit(samples[g]).

    sklearn's shrinkage (ledoit_wolf_shrinkage, centred X, mu = trace(S)/d):
      beta  = (sum_n ||x_n||^4 / n - ||X^T X||_F^2 / n^2) / (d n)
      delta = (||X^T X||_F^2 / n^2 - 2 mu trace(S) + d mu^2) / d
      shrinkage = min(beta, delta) / delta
    """
    x = np.asarray(samples, dtype=np.float64)
    groups, n, d = x.shape
    if n < 2:
        raise DataError(f"a Gaussian needs at least 2 training images, got {n}")
    mean = x.mean(axis=1)
    centred = x - mean[:, None, :]
    scatter = np.einsum("gni,gnj->gij", centred, centred, optimize=True)  # X^T X
    emp_cov = scatter / n
    trace = np.einsum("gii->g", emp_cov)
    mu = trace / d
    delta_ = (scatter ** 2).sum(axis=(1, 2)) / n ** 2
    beta_ = ((centred ** 2).sum(axis=2) ** 2).sum(axis=1)  # sum_n ||x_n||^4 = sum(X2^T X2)
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu ** 2) / d
    beta = np.minimum(beta, delta)
    shrinkage = np.divide(beta, delta, out=np.zeros_like(beta), where=beta != 0)
    cov = (1.0 - shrinkage)[:, None, None] * emp_cov
    cov[:, np.arange(d), np.arange(d)] += (shrinkage * mu)[:, None]
    return mean, cov, shrinkage


def whitening_factor(cov: np.ndarray) -> np.ndarray:
    """cov [G, d, d] (symmetric positive definite) -> W [G, d, d] lower triangular, float64, with
    (x - mu)^T cov^-1 (x - mu) = ||W (x - mu)||^2."""
    cov_t = torch.from_numpy(np.ascontiguousarray(cov, dtype=np.float64))
    chol, info = torch.linalg.cholesky_ex(cov_t)
    if bool((info != 0).any()):
        bad = int(torch.nonzero(info)[0, 0])
        raise DataError(f"covariance {bad} is not positive definite (constant features?); "
                        "use more training images or fewer channels")
    eye = torch.eye(cov_t.shape[-1], dtype=torch.float64).expand_as(cov_t)
    return torch.linalg.solve_triangular(chol, eye, upper=False).numpy()


def squared_mahalanobis(x: np.ndarray, mean: np.ndarray, factor: np.ndarray, chunk: int = 64) -> np.ndarray:
    """x [n, G, d], mean [G, d], factor W [G, d, d] -> squared distances [n, G] in float64."""
    out = np.empty(x.shape[:2], dtype=np.float64)
    for start in range(0, x.shape[1], chunk):
        part = slice(start, start + chunk)
        centred = np.asarray(x[:, part], dtype=np.float64) - mean[None, part]
        out[:, part] = (np.einsum("gij,ngj->ngi", factor[part], centred, optimize=True) ** 2).sum(-1)
    return out
