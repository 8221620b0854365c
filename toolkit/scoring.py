"""The scoring graph around a fitted head: the torch reference of the artefact (export/compose.py's ScoringGraph)
with the map smoother sized for the head's patch grid and the build's input geometry (toolkit/geometry.py). The
build composes it for every fit, and the sizing probe (toolkit/sizing.py) for its noise-fitted head."""

from __future__ import annotations

import torch
from torch import nn

from adtk.export.compose import ScoringGraph
from adtk.toolkit.geometry import Geometry, make_smoother
from adtk.toolkit.postprocess import ScoreNormaliser


def backbone_inputs(preprocess, tiling, frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> what the backbone sees: the resized, normalised frames, or their tiles (one batch)."""
    images = preprocess(frames)
    return tiling(images) if tiling is not None else images


@torch.no_grad()
def head_grid_hw(preprocess, backbone, embedding, head, tiling=None) -> tuple[int, int]:
    """The head's patch-score grid (h, w) of one backbone input (frame or tile), from one blank frame at the model
    size: the smoother's matrices are sized by it before export (toolkit/postprocess.py)."""
    frame = torch.zeros((1, *preprocess.image_size_px, 3), dtype=torch.uint8)
    patch_scores = head(embedding(backbone(backbone_inputs(preprocess, tiling, frame)))).patch_scores
    return int(patch_scores.shape[-2]), int(patch_scores.shape[-1])


def scoring_graph(preprocess, backbone: nn.Module, embedding: nn.Module, head: nn.Module, geometry: Geometry,
                  blur_sigma: float, tiling=None, image_score_from: str = "head") -> ScoringGraph:
    """preprocess (-> tiles) -> backbone -> embedding -> head -> smoother -> image score (the head's, or the map's
    maximum: export/compose.py IMAGE_SCORE_SOURCES) -> normalisers (still at identity: the build's calibration sets
    them), in eval mode."""
    smoother = make_smoother(geometry, blur_sigma, head_grid_hw(preprocess, backbone, embedding, head, tiling))
    return ScoringGraph(preprocess, backbone, embedding, head, smoother, ScoreNormaliser(), tiling=tiling,
                        image_score_from=image_score_from).eval()
