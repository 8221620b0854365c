"""`adtk compile model.onnx --target NAME` / `adtk build --engine`: a TensorRT engine from a verified artefact.

NOT EXECUTED here (no TensorRT, no GPU on the build machines): the engine build itself is
adtk.runtime.backends.tensorrt.build_serialized_engine, written against the tensorrt 10 Python API and
imported lazily. What runs everywhere before it: the artefact's integrity check, the target's precision
check and the static TensorRT check (export/passes/tensorrt_check.py).

Writes `<artefact stem>.<target>.engine` and beside it `<engine>.json`: the artefact's manifest plus the
engine's sha256, the artefact's sha256, the TensorRT version that built it and the target. The runtime
refuses an engine whose metadata does not match (runtime/backends/tensorrt.py: read_engine).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from adtk.export.passes.graph import load_unsealed
from adtk.export.passes.tensorrt_check import require_tensorrt_compatible
from adtk.export.targets import load_target
from adtk.runtime.artefact import read_artefact
from adtk.runtime.backends.tensorrt import build_serialized_engine, engine_metadata_path, import_tensorrt
from adtk.runtime.errors import TargetError


def engine_path_for(artefact: Path, target_name: str) -> Path:
    return artefact.with_name(f"{artefact.stem}.{target_name}.engine")


def build_engine(artefact_path: str | Path, target_name: str, out: str | Path | None = None,
                 workspace_gb: float = 1.0, log=print) -> Path:
    artefact_path = Path(artefact_path)
    artefact = read_artefact(artefact_path)
    target = load_target(target_name)
    if not target.uses_tensorrt:
        raise TargetError(f"target {target.name!r} runs {target.runtime}, not TensorRT: no engine to build")
    precision = artefact.manifest.get("target", {}).get("precision", "fp32")
    target.check_precision(precision)
    require_tensorrt_compatible(load_unsealed(artefact.model_bytes), target, file_bytes=len(artefact.model_bytes))
    trt = import_tensorrt()  # after the checks, so a build machine without TensorRT still learns what is wrong
    log(f"building a {precision} TensorRT {trt.__version__} engine for {target.name}")
    engine = build_serialized_engine(artefact.model_bytes, precision, tuple(artefact.manifest["input"]["model_size_px"]),
                                     workspace_gb=workspace_gb)
    out = Path(out) if out else engine_path_for(artefact_path, target.name)
    out.write_bytes(engine)
    metadata = {"engine_sha256": hashlib.sha256(engine).hexdigest(), "artefact_sha256": artefact.file_sha256,
                "artefact": artefact_path.name, "tensorrt_version": trt.__version__, "target": target.name,
                "precision": precision, "manifest": artefact.manifest}
    engine_metadata_path(out).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return out
