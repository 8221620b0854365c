"""Backbone choices and ensembles: several (backbone, stages) members scored by the same method in one artefact.

    --backbone tf_efficientnet_lite0:blocks.1,blocks.2,blocks.4 --backbone mobilenetv2_100

Each member is fitted on the same images at the same input geometry; on the held-out good images each member's
raw image scores and raw maps give a mean and a standard deviation, and the artefact averages the standardised
members (export/compose.py: EnsembleGraph). The ensemble is then calibrated on the same held-out images as a
single graph: the standardisation is a monotone affine map per member, so reusing the images for the threshold
does not fit anything to them that a single graph's calibration would not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adtk.runtime.errors import ConfigError
from adtk.toolkit.backbones import stage_strides
from adtk.toolkit.data import iter_images

MAX_MEMBERS = 4


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    stages: tuple[str, ...] | None = None  # None: the backbone's default stages

    def __str__(self) -> str:
        return self.name + (":" + ",".join(self.stages) if self.stages else "")


def parse_backbone_choice(text: str) -> BackboneChoice:
    """"NAME" or "NAME:STAGE,STAGE,..." (e.g. tf_efficientnet_lite0:blocks.1,blocks.2,blocks.4)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"--backbone: expected NAME or NAME:STAGES, got {text!r}")
    name, _, stages = text.strip().partition(":")
    parts = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else None
    if stages and not parts:
        raise ConfigError(f"--backbone {text!r}: no stages after ':'; e.g. {name}:blocks.2,blocks.4")
    return BackboneChoice(name.strip(), parts)


def backbone_choices(backbone: str, stages: Sequence[str] | None, ensemble: Sequence[str]) -> list[BackboneChoice]:
    """The build's members: the main backbone (with --stages) and then each extra "NAME[:STAGES]", checked
    (names, stages: ConfigError) without loading any weights."""
    choices = [BackboneChoice(backbone, tuple(stages) if stages else None)]
    choices += [parse_backbone_choice(text) for text in ensemble]
    if len(choices) > MAX_MEMBERS:
        raise ConfigError(f"--backbone: an ensemble of {len(choices)} members; at most {MAX_MEMBERS} are supported "
                          "(each one adds a backbone pass to every frame)")
    if len(set(choices)) < len(choices):
        raise ConfigError(f"--backbone: the same backbone and stages are given twice ({', '.join(map(str, choices))})"
                          "; an ensemble of identical members only costs time")
    for choice in choices:
        stage_strides(choice.name, choice.stages)
    return choices


def geometry_stride(choices: Sequence[BackboneChoice]) -> int:
    """The stride every model side must be a multiple of: the LCM of the members' deepest tapped strides."""
    return math.lcm(*(max(stage_strides(c.name, c.stages)) for c in choices))


@torch.no_grad()
def member_statistics(graph, samples, skip_bad: bool, on_warning=None) -> dict[str, float]:
    """Mean and standard deviation of a member's raw image scores and raw map values on held-out good images
    (the map's over all pixels of all images; std floored so a constant member cannot divide by zero)."""
    scores, map_sum, map_sq_sum, count = [], 0.0, 0.0, 0
    for _, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
        raw_score, raw_map = graph.raw_scores(torch.from_numpy(image)[None])
        scores.append(float(raw_score[0]))
        values = raw_map.double()
        map_sum += float(values.sum())
        map_sq_sum += float((values * values).sum())
        count += values.numel()
    scores = np.asarray(scores, dtype=np.float64)
    map_mean = map_sum / count
    map_std = math.sqrt(max(map_sq_sum / count - map_mean ** 2, 0.0))
    return {"score_mean": float(scores.mean()), "score_std": _floored(float(scores.std()), float(scores.mean())),
            "map_mean": map_mean, "map_std": _floored(map_std, map_mean)}


def _floored(std: float, mean: float) -> float:
    return std if std > 1e-6 * max(1.0, abs(mean)) else max(1.0, abs(mean))
