"""Model creation: a timm features_only model with the tapped stages, truncated, its weights resolved (see
the package docstring for the order), wrapped as a frozen FeatureExtractor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from adtk.runtime.errors import ConfigError, WeightsError
from adtk.toolkit.backbones.specs import feature_info, import_timm, resolve_spec, resolve_stages, truncate_after
from adtk.toolkit.backbones.state_dicts import load_into, read_state_dict, state_dict_sha256, unwrap_state_dict
from adtk.toolkit.backbones.weight_sources import (HOW_TO_SUPPLY, OFFLINE_PACKAGES, offline_package_file,
                                                   timm_pretrained_state_dict)


class FeatureExtractor(nn.Module):
    """timm ``features_only`` model, truncated after the deepest tapped stage, eval mode, frozen.

    ``forward(x)``: ``x`` float ``[B,3,H,W]``, already normalised with ``mean``/``std``; returns a list of
    ``[B, C_i, H/s_i, W/s_i]`` tensors in stage order (``channels[i]``, ``strides[i]``).

    When frozen (the default) ``train()`` keeps the module in eval mode, so a parent module switching to
    training cannot update the BatchNorm running statistics. ``trainable=True`` in ``create_backbone``
    gives a normal trainable module (for fine-tuning).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        stages: tuple[str, ...],
        channels: tuple[int, ...],
        strides: tuple[int, ...],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        weights_source: str,
        weights_sha256: str,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.stages = stages
        self.channels = channels
        self.strides = strides
        self.mean = mean
        self.std = std
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256
        self.trainable = trainable
        for p in self.parameters():
            p.requires_grad_(trainable)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(mode and self.trainable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, stages={self.stages}, channels={self.channels}, strides={self.strides}, "
            f"weights_source={self.weights_source!r}"
        )


def create_backbone(
    name: str,
    stages: Sequence[str | int] | None = None,
    weights: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    trainable: bool = False,
) -> FeatureExtractor:
    """Build a frozen feature extractor (see the module docstring for the weight resolution order).

    ``stages``: module names or feature indices (a comma-separated string is accepted too); default the
    spec's ``default_stages``. ``random_weights=True`` (testing only) uses timm's init seeded with
    ``seed``. ``trainable=True`` leaves parameters trainable and allows train mode (fine-tuning).
    """
    spec = resolve_spec(name)
    timm_name = spec.timm_name
    if weights is not None and random_weights:
        raise ConfigError("both a weights file and random weights were asked for; pass only one of them")
    info = feature_info(timm_name)
    indices = resolve_stages(name, spec.default_stages if stages is None else stages, info)
    timm = import_timm()
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = timm.create_model(timm_name, pretrained=False, features_only=True, out_indices=tuple(indices))
    truncate_after(model, info[indices[-1]]["module"])

    mean, std = spec.mean, spec.std
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        load_into(model, read_state_dict(path), timm_name, f"weights file {str(path)!r}")
        source = f"file:{path}"
    elif random_weights:
        source = f"random(seed={seed})"
    else:
        sd, why = timm_pretrained_state_dict(timm_name)
        if sd is not None:
            load_into(model, sd, timm_name, f"timm pretrained weights ({why})")
            source = "timm-pretrained"
        else:
            found = offline_package_file(timm_name)
            if found is None:
                pkg = OFFLINE_PACKAGES.get(timm_name)
                pkg_note = (
                    f" the offline package {pkg.pip_name} is not installed;" if pkg
                    else " there is no offline weight package for it;"
                )
                raise WeightsError(
                    f"no pretrained weights for backbone {name!r}: {why};{pkg_note} and random weights were "
                    f"not asked for. {HOW_TO_SUPPLY}"
                )
            pkg, path = found
            src = torch.load(str(path), map_location="cpu", weights_only=True)
            load_into(
                model, unwrap_state_dict(src, str(path)), timm_name,
                f"offline package {pkg.pip_name} ({pkg.layout} layout, {path})",
            )
            source = f"package:{pkg.pip_name}"

    return FeatureExtractor(
        model,
        name=name,
        stages=tuple(info[i]["module"] for i in indices),
        channels=tuple(info[i]["num_chs"] for i in indices),
        strides=tuple(info[i]["reduction"] for i in indices),
        mean=mean,
        std=std,
        weights_source=source,
        weights_sha256=state_dict_sha256(model),
        trainable=trainable,
    )
