"""The scoring graph: every part needed at inference, composed into one torch module.

    frames uint8 [B, H, W, 3]
      -> preprocess (resize to the model size, normalise)      same module as the fit used
      -> tiling (optional: overlapping tiles, one batch)        fixed crops of the resized frame
      -> backbone (tapped stages)                               truncated timm features_only model
      -> embedding (the method's feature aggregation)           same module as the fit used
      -> head (the method's scoring, its state as buffers)      -> patch scores [B,h,w], image score [B]
      -> smoother (upsample + Gaussian blur; stitches tiles)    -> raw anomaly map [B, H, W] at the model size
      -> image score: the head's, or the raw map's maximum     (image_score_from: IMAGE_SCORE_SOURCES)
      -> normalisers (0.5 = threshold; maps calibrated apart)   -> pred_score, pred_label, anomaly_map, pred_mask

EnsembleGraph averages several such graphs (standardised on held-out good images) into one artefact.
This module is the torch reference pipeline *and* what the compiler exports, so the artefact and the
reference agree by construction; the parity tests measure how closely onnxruntime reproduces it.
It knows no method by name.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from adtk.runtime.manifest import IMAGE_SCORE_SOURCES  # where raw_score comes from (the manifest records which)


def check_image_score_source(source: str) -> str:
    if source not in IMAGE_SCORE_SOURCES:
        raise ValueError(f"image_score_from {source!r}: expected one of {', '.join(IMAGE_SCORE_SOURCES)}")
    return source


def map_max_score(raw_map: torch.Tensor) -> torch.Tensor:
    """raw anomaly maps [B, H, W] -> their maxima [B]: the image score image_score_from="map_max" takes."""
    return raw_map.flatten(1).max(dim=1).values


class ScoringOutputs(NamedTuple):
    pred_score: torch.Tensor  # [B] float32 in [0, 1]; 0.5 is the calibrated threshold
    pred_label: torch.Tensor  # [B] bool; raw_score > threshold
    anomaly_map: torch.Tensor  # [B, H, W] float32 in [0, 1]; 0.5 = the highest held-out good map value
    pred_mask: torch.Tensor  # [B, H, W] bool; raw map > map threshold (anomaly_map > 0.5), anomalib's 4th output
    raw_score: torch.Tensor  # [B] float32, the unnormalised image score (the head's, or the raw map's max)
    raw_anomaly_map: torch.Tensor  # [B, H, W] float32, unnormalised


class CalibratedOutputs(nn.Module):
    """forward = raw_scores (the subclass's) followed by the two normalisers: the artefact's named outputs."""

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


class ScoringGraph(CalibratedOutputs):
    def __init__(self, preprocess: nn.Module, backbone: nn.Module, embedding: nn.Module, head: nn.Module,
                 smoother: nn.Module, normaliser: nn.Module, map_normaliser: nn.Module | None = None,
                 tiling: nn.Module | None = None, image_score_from: str = "head"):
        super().__init__()
        # "map_max": the image score is the smoothed map's maximum, so calibration, pred_score and pred_label see
        # the same number the map shows (IMAGE_SCORE_SOURCES); the head's own image score is then unused.
        self.image_score_from = check_image_score_source(image_score_from)
        self.preprocess = preprocess
        # tiling: the resized frames -> the backbone's inputs (tiles, all in one batch), and the inputs' image
        # scores -> the frames'; None = the whole frame is the one input (toolkit/geometry.py).
        self.tiling = tiling
        self.backbone = backbone
        self.embedding = embedding
        self.head = head
        self.smoother = smoother  # with tiling it also stitches the tiles' maps into the frame's
        self.normaliser = normaliser
        # Maps get their own calibration: for some methods (the image-level ones) the map is not on
        # the image score's scale, and normalising it with the image constants would saturate it.
        self.map_normaliser = map_normaliser if map_normaliser is not None else normaliser

    def backbone_inputs(self, frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 [B, H, W, 3] -> what the backbone sees: [B, 3, h, w], or [B * T, 3, t, t] tiles."""
        return self.backbone_inputs_from_images(self.preprocess(frames))

    def backbone_inputs_from_images(self, images: torch.Tensor) -> torch.Tensor:
        """The preprocess's images [B, 3, h, w] -> what the backbone sees (the tiles, with tiling)."""
        return self.tiling(images) if self.tiling is not None else images

    def model_size_part(self, backbone: nn.Module | None = None) -> "ScoringGraph":
        """This graph after its preprocess: images [B, 3, h, w] at the model size -> the same outputs, with the
        same modules (shared, not copied) under the same names; backbone: a module to put in the backbone's place
        (the export's copy with constant padding, export/split_export.py)."""
        return ScoringGraph(nn.Identity(), self.backbone if backbone is None else backbone, self.embedding,
                            self.head, self.smoother, self.normaliser, self.map_normaliser, self.tiling,
                            self.image_score_from)

    def raw_scores(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 [B, H, W, 3] -> (raw image score [B], raw anomaly map [B, H_model, W_model])."""
        return self.raw_scores_from_features(self.embedding(self.backbone(self.backbone_inputs(frames))))

    def raw_scores_from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding's features [B (* T tiles), ...] -> raw_scores' outputs: the head and smoother alone, for
        callers whose features came from elsewhere (the build's onnxruntime trunk, toolkit/build.py)."""
        patch_scores, image_score = self.head(features)
        raw_map = self.smoother(patch_scores)  # with tiling: already stitched into the frame's map
        if self.image_score_from == "map_max":
            return map_max_score(raw_map), raw_map
        if self.tiling is not None:
            image_score = self.tiling.frame_scores(image_score)
        return image_score, raw_map


class EnsembleGraph(CalibratedOutputs):
    """Several scoring graphs (e.g. one per backbone) as one: each member's raw score and raw map are
    standardised with constants measured on held-out good images, (raw - mean) / std, and averaged.

    Standardising first puts the members on one scale (distances in two feature spaces can differ by
    orders of magnitude), so the mean is not just the member with the largest numbers. The members' maps must
    have one size (the build gives every member the same geometry). The ensemble is calibrated like one graph.
    image_score_from="map_max": the image score is the maximum of the averaged map (the artefact's map), not a
    mean of the members' maxima.
    """

    def __init__(self, members, score_mean, score_std, map_mean, map_std, normaliser: nn.Module,
                 map_normaliser: nn.Module | None = None, image_score_from: str = "head"):
        super().__init__()
        self.image_score_from = check_image_score_source(image_score_from)
        self.members = nn.ModuleList(members)
        self.register_buffer("score_mean", torch.as_tensor(score_mean, dtype=torch.float32).reshape(-1, 1))
        self.register_buffer("score_inv_std", 1.0 / torch.as_tensor(score_std, dtype=torch.float32).reshape(-1, 1))
        self.register_buffer("map_mean", torch.as_tensor(map_mean, dtype=torch.float32).reshape(-1, 1, 1, 1))
        self.register_buffer("map_inv_std", 1.0 / torch.as_tensor(map_std, dtype=torch.float32).reshape(-1, 1, 1, 1))
        self.normaliser = normaliser
        self.map_normaliser = map_normaliser if map_normaliser is not None else normaliser

    def raw_scores(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = zip(*(member.raw_scores(frames) for member in self.members))
        scores = (torch.stack(scores) - self.score_mean) * self.score_inv_std  # [K, B]
        raw_map = ((torch.stack(maps) - self.map_mean) * self.map_inv_std).mean(dim=0)  # [B, H, W]
        if self.image_score_from == "map_max":
            return map_max_score(raw_map), raw_map
        return scores.mean(dim=0), raw_map
