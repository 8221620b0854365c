"""The scoring graph: every part needed at inference, composed into one torch module.

    frames uint8 [B, H, W, 3]
      -> preprocess (resize to the model size, normalise)      same module as the fit used
      -> backbone (tapped stages)                               truncated timm features_only model
      -> embedding (the method's feature aggregation)           same module as the fit used
      -> head (the method's scoring, its state as buffers)      -> patch scores [B,h,w], image score [B]
      -> smoother (upsample + Gaussian blur)                    -> raw anomaly map [B, S, S]
      -> normalisers (0.5 = threshold; maps calibrated apart)   -> pred_score, pred_label, anomaly_map, pred_mask

This module is the torch reference pipeline *and* what the compiler exports, so the artefact and the
reference agree by construction; the parity tests measure how closely onnxruntime reproduces it.
It knows no method by name.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ScoringOutputs(NamedTuple):
    pred_score: torch.Tensor  # [B] float32 in [0, 1]; 0.5 is the calibrated threshold
    pred_label: torch.Tensor  # [B] bool; raw_score > threshold
    anomaly_map: torch.Tensor  # [B, S, S] float32 in [0, 1]; 0.5 = the highest held-out good map value
    pred_mask: torch.Tensor  # [B, S, S] bool; raw map > map threshold (anomaly_map > 0.5), anomalib's 4th output
    raw_score: torch.Tensor  # [B] float32, the method's unnormalised image score
    raw_anomaly_map: torch.Tensor  # [B, S, S] float32, unnormalised


class ScoringGraph(nn.Module):
    def __init__(self, preprocess: nn.Module, backbone: nn.Module, embedding: nn.Module, head: nn.Module,
                 smoother: nn.Module, normaliser: nn.Module, map_normaliser: nn.Module | None = None):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.embedding = embedding
        self.head = head
        self.smoother = smoother
        self.normaliser = normaliser
        # Maps get their own calibration: for some methods (the image-level ones) the map is not on
        # the image score's scale, and normalising it with the image constants would saturate it.
        self.map_normaliser = map_normaliser if map_normaliser is not None else normaliser

    def raw_scores(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 [B, H, W, 3] -> (raw image score [B], raw anomaly map [B, S, S])."""
        features = self.embedding(self.backbone(self.preprocess(frames)))
        patch_scores, image_score = self.head(features)
        return image_score, self.smoother(patch_scores)

    def forward(self, frames: torch.Tensor) -> ScoringOutputs:
        raw_score, raw_map = self.raw_scores(frames)
        return ScoringOutputs(
            pred_score=self.normaliser(raw_score),
            pred_label=self.normaliser.label(raw_score),
            anomaly_map=self.map_normaliser(raw_map),
            # from the raw map, as pred_label from the raw score: clipping and rounding in the normalised map
            # cannot make the mask disagree with the threshold
            pred_mask=self.map_normaliser.label(raw_map),
            raw_score=raw_score,
            raw_anomaly_map=raw_map,
        )
