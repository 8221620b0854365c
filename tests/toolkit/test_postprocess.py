"""The anomaly-map smoother (upsample + Gaussian blur as two matrices) against an independent reference:
torch's bilinear resize followed by scipy's 1-D Gaussian filters (mode "mirror" = torch's reflect padding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from adtk.toolkit.postprocess import AnomalyMapSmoother


def reference_map(scores: np.ndarray, size_hw: tuple[int, int], sigma: float) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(scores)[:, None].double(), size=size_hw, mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    if sigma > 0:
        for axis in (1, 2):
            up = gaussian_filter1d(up, sigma, axis=axis, mode="mirror", truncate=4.0)
    return up


@pytest.mark.parametrize("grid_hw,size_hw,sigma", [((32, 32), (256, 256), 4.0), ((7, 11), (60, 90), 2.5),
                                                   ((16, 16), (64, 64), 0.0)])
def test_smoother_matches_resize_then_scipy_gaussian(grid_hw, size_hw, sigma):
    scores = np.random.default_rng(0).gamma(2.0, 1.0, size=(3, *grid_hw)).astype(np.float32)
    smoother = AnomalyMapSmoother(size_hw, sigma=sigma, grid_hw=grid_hw)
    got = smoother(torch.from_numpy(scores)).numpy()
    assert got.shape == (3, *size_hw)
    np.testing.assert_allclose(got, reference_map(scores, size_hw, sigma), rtol=1e-5, atol=1e-5)


def test_smoother_without_a_grid_builds_its_matrices_for_the_grid_it_sees():
    smoother = AnomalyMapSmoother((40, 40), sigma=1.5)
    for grid in ((8, 8), (5, 10)):
        scores = np.random.default_rng(1).random((1, *grid), dtype=np.float32)
        np.testing.assert_allclose(smoother(torch.from_numpy(scores)).numpy(), reference_map(scores, (40, 40), 1.5),
                                   rtol=1e-5, atol=1e-6)
        assert smoother.rows_operator.shape == (40, grid[0]) and smoother.cols_operator_t.shape == (grid[1], 40)
