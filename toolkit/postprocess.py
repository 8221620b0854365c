"""Post-processing shared by the torch reference and the artefact: anomaly-map smoothing and
score normalisation (0.5 = the calibrated threshold, as anomalib's outputs)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel_1d(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius round(4 sigma) (33 taps at sigma 4, as anomalib and scipy)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def resize_and_blur_matrix(in_size: int, out_size: int, sigma: float) -> torch.Tensor:
    """[out_size, in_size] float32 matrix A with A @ v == blur(upsample(v)) along one axis.

    upsample: bilinear, align_corners=False (F.interpolate's rule, applied to the identity so the matrix is
    exactly torch's); blur: the 1-D Gaussian of gaussian_kernel_1d with reflect padding. Both are linear and
    act on each axis apart, so the 2-D map is A_rows @ scores @ A_cols^T. Built in float64, stored in float32.
    """
    identity = torch.eye(in_size, dtype=torch.float64)[:, None, None, :]  # in_size maps of [1, in_size]
    columns = F.interpolate(identity, size=(1, out_size), mode="bilinear", align_corners=False)[:, 0]  # [in, 1, out]
    if sigma > 0:
        kernel = gaussian_kernel_1d(sigma, torch.float64)
        radius = (kernel.numel() - 1) // 2
        columns = F.conv1d(F.pad(columns, (radius, radius), mode="reflect"), kernel.view(1, 1, -1))
    return columns[:, 0].T.contiguous().to(torch.float32)


class AnomalyMapSmoother(nn.Module):
    """patch scores [B, h, w] -> anomaly map [B, H, W]: bilinear upsample, then Gaussian blur.

    Upsample and blur are both linear and separable, so the pair is two precomputed matrices applied as two
    MatMuls (rows [S_h, h] @ scores @ cols [w, S_w]): 2.4 M multiply-adds for a 32 x 32 grid at 256 px,
    against a 256 x 256 resize plus two 33-tap convolutions over it, and no Pad or layout changes in the
    graph. grid_hw (the head's patch grid) lets the build register the matrices before export; without it
    they are made, eagerly, for the first grid seen (the benches' use), and remade if the grid changes.
    """

    def __init__(self, output_size_px: Sequence[int], sigma: float = 4.0, grid_hw: Sequence[int] | None = None):
        super().__init__()
        self.output_size_px = (int(output_size_px[0]), int(output_size_px[1]))
        self.sigma = float(sigma)
        self.grid_hw: tuple[int, int] | None = None
        self.register_buffer("rows_operator", None)  # [S_h, h]
        self.register_buffer("cols_operator_t", None)  # [w, S_w]
        if grid_hw is not None:
            self.set_grid(int(grid_hw[0]), int(grid_hw[1]))

    def set_grid(self, grid_h: int, grid_w: int) -> None:
        self.grid_hw = (grid_h, grid_w)
        self.rows_operator = resize_and_blur_matrix(grid_h, self.output_size_px[0], self.sigma)
        self.cols_operator_t = resize_and_blur_matrix(grid_w, self.output_size_px[1], self.sigma).T.contiguous()

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:
        grid_hw = (int(patch_scores.shape[-2]), int(patch_scores.shape[-1]))
        if grid_hw != self.grid_hw:
            self.set_grid(*grid_hw)
        return torch.matmul(torch.matmul(self.rows_operator, patch_scores), self.cols_operator_t)


def placed_resize_and_blur_matrix(in_size: int, tile_px: int, starts: Sequence[int], out_size: int,
                                  sigma: float) -> torch.Tensor:
    """[out_size, len(starts) * in_size]: block k is resize_and_blur_matrix(in_size, tile_px) placed at rows
    starts[k]..starts[k] + tile_px, and each row divided by how many tiles cover it (the overlap average)."""
    tile_operator = resize_and_blur_matrix(in_size, tile_px, sigma).to(torch.float64)
    placed = torch.zeros(out_size, len(starts) * in_size, dtype=torch.float64)
    coverage = torch.zeros(out_size, dtype=torch.float64)
    for k, start in enumerate(starts):
        placed[start:start + tile_px, k * in_size:(k + 1) * in_size] = tile_operator
        coverage[start:start + tile_px] += 1
    if bool((coverage == 0).any()):
        raise ValueError(f"tiles at {list(starts)} of {tile_px} px leave part of {out_size} px uncovered")
    return (placed / coverage[:, None]).to(torch.float32)


class TiledMapSmoother(AnomalyMapSmoother):
    """Tile patch scores [B * T, h, w] (T = ny * nx tiles, frame-major, row-major) -> one anomaly map
    [B, H, W] at the working size: each tile's scores upsampled and blurred to the tile's pixels, placed where
    the tile was cut, and averaged where tiles overlap.

    All three steps are linear and act on rows and columns apart, and a regular tile grid covers pixel (y, x)
    row_count(y) * col_count(x) times, so the whole stitch is still two MatMuls: the tiles' scores laid out as
    one [ny * h, nx * w] block matrix (a reshape), between a block-stacked row operator [H, ny * h] and column
    operator [nx * w, W], each with the overlap count divided out.
    """

    def __init__(self, layout, sigma: float = 4.0, grid_hw: Sequence[int] | None = None):
        self.layout = layout  # geometry.TileLayout
        super().__init__(layout.working_hw, sigma=sigma, grid_hw=grid_hw)

    def set_grid(self, grid_h: int, grid_w: int) -> None:
        layout = self.layout
        self.grid_hw = (grid_h, grid_w)
        self.rows_operator = placed_resize_and_blur_matrix(grid_h, layout.tile_px, layout.row_starts,
                                                           layout.working_hw[0], self.sigma)
        self.cols_operator_t = placed_resize_and_blur_matrix(grid_w, layout.tile_px, layout.col_starts,
                                                             layout.working_hw[1], self.sigma).T.contiguous()

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:
        grid_h, grid_w = int(patch_scores.shape[-2]), int(patch_scores.shape[-1])
        if (grid_h, grid_w) != self.grid_hw:
            self.set_grid(grid_h, grid_w)
        rows, cols = len(self.layout.row_starts), len(self.layout.col_starts)
        blocks = patch_scores.reshape(-1, rows, cols, grid_h, grid_w).transpose(2, 3)
        blocks = blocks.reshape(-1, rows * grid_h, cols * grid_w)
        return torch.matmul(torch.matmul(self.rows_operator, blocks), self.cols_operator_t)


class ScoreNormaliser(nn.Module):
    """raw score -> clip((raw - threshold) / (score_max - score_min) + 0.5, 0, 1).

    0.5 is the calibrated threshold; pred_label is raw > threshold, strictly: the good-only calibration
    puts the threshold at the highest held-out good score, which must not count as anomalous (taken from
    the raw score so that it
    cannot disagree with the threshold through rounding). Anomaly maps use a second instance with their
    own constants (calibration.map_statistics): above 0.5 = beyond any held-out good image's map.
    """

    def __init__(self, threshold: float = 0.0, score_min: float = 0.0, score_max: float = 1.0):
        super().__init__()
        span = score_max - score_min
        if not math.isfinite(span) or span <= 0:
            span = 1.0
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("inv_span", torch.tensor(1.0 / span))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.clamp((raw - self.threshold) * self.inv_span + 0.5, 0.0, 1.0)

    def label(self, raw_score: torch.Tensor) -> torch.Tensor:
        return raw_score > self.threshold
