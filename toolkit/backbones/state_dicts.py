"""Reading, remapping and hashing backbone state dicts: a weights file (safetensors, or a .pth read with
torch.load(weights_only=True), never unpickled), a foreign layout remapped onto timm's keys in order with shape
checks, a strict load into the truncated extractor, and the sha256 the manifest records."""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import torch
from torch import nn

from adtk.runtime.errors import WeightsError
from adtk.toolkit.backbones.specs import import_timm


@cache
def full_model_shapes(timm_name: str) -> OrderedDict[str, tuple[int, ...]]:
    """Keys and shapes of the full classifier model, in registration order (built on the meta device)."""
    with torch.device("meta"):
        model = import_timm().create_model(timm_name, pretrained=False)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _few(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(repr(i) for i in items[:n]) + more


def is_batchnorm_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj, origin: str) -> dict[str, torch.Tensor]:
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


def remap_in_order(
    src: Mapping[str, torch.Tensor], full: Mapping[str, tuple[int, ...]], timm_name: str, origin: str
) -> dict[str, torch.Tensor]:
    """Map a foreign-layout state dict onto the timm keys by position (BatchNorm counters ignored)."""
    # BatchNorm counters: by name, or (renamed in a foreign layout) as 0-dim integer tensors
    s_items = [(k, v) for k, v in src.items()
               if not (is_batchnorm_counter(k) or (v.ndim == 0 and not v.is_floating_point()))]
    d_items = [(k, s) for k, s in full.items() if not is_batchnorm_counter(k)]
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


def load_into(model: nn.Module, src: Mapping[str, torch.Tensor], timm_name: str, origin: str) -> None:
    """Load ``src`` (full-model or features-only timm layout, or a foreign layout) into ``model`` strictly.

    Keys of the full model that the truncated extractor does not have (head, later blocks) are ignored;
    anything else that does not fit raises WeightsError.
    """
    full = full_model_shapes(timm_name)
    target = model.state_dict()
    # features-only wrappers may flatten module names ("stages.0" -> "stages_0"): match modulo '.'/'_'
    norm_full = {}
    for k in full:
        norm_full.setdefault(k.replace("_", "."), k)
    to_full = {k: (k if k in full else norm_full.get(k.replace("_", "."), k)) for k in target}
    known = set(full) | set(target)
    if not any(k in known for k in src):
        src = remap_in_order(src, full, timm_name, origin)
    unexpected = [k for k in src if k not in known]
    missing, mismatched, new = [], [], {}
    for k, t in target.items():
        v = src.get(k, src.get(to_full[k]))
        if v is None:
            if is_batchnorm_counter(k):  # BatchNorm counter: unused in eval, absent from some checkpoints
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


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over (key, dtype, shape, bytes) of the state dict, sorted by key.

    BatchNorm ``num_batches_tracked`` counters are left out: they do not affect inference and differ
    between otherwise identical checkpoints.
    """
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        if is_batchnorm_counter(k):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
