"""Post-processing shared by the torch reference and the artefact: anomaly-map smoothing and
score normalisation (0.5 = the calibrated threshold, as anomalib's outputs)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius round(4 sigma) (33 taps at sigma 4, as anomalib and scipy)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(torch.float32)


class AnomalyMapSmoother(nn.Module):
    """patch scores [B, h, w] -> anomaly map [B, S_h, S_w]: bilinear upsample, then Gaussian blur.

    The blur is separable (two 1-D convolutions, 2 x 33 taps instead of 33 x 33) with reflect padding.
    """

    def __init__(self, output_size_px: Sequence[int], sigma: float = 4.0):
        super().__init__()
        self.output_size_px = (int(output_size_px[0]), int(output_size_px[1]))
        self.sigma = float(sigma)
        kernel = gaussian_kernel_1d(self.sigma) if self.sigma > 0 else torch.ones(1)
        self.radius = (kernel.numel() - 1) // 2
        self.register_buffer("kernel_rows", kernel.view(1, 1, -1, 1))
        self.register_buffer("kernel_cols", kernel.view(1, 1, 1, -1))

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:
        x = patch_scores.unsqueeze(1)
        x = F.interpolate(x, size=self.output_size_px, mode="bilinear", align_corners=False)
        if self.radius > 0:
            r = self.radius
            x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), self.kernel_rows)
            x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), self.kernel_cols)
        return x.squeeze(1)


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
