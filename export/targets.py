"""Device targets: one YAML file per device in targets/, loaded into a frozen `Target`.

Every figure is written as `{value: ..., source: "..."}` so the file says where it came from; a figure
without a source, an unknown key or a missing key is an error naming the file and the key (with close
matches). The files ship inside the package (`adtk.targets`, package data), so an installed adtk finds
them without the repository.

    target = load_target("orin_nano_8gb")
    target.frame_budget_ms, target.peak_ops_per_s("int8"), target.precisions
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from adtk.runtime.errors import TargetError

PRECISIONS = ("fp32", "fp16", "int8")
RUNTIMES = ("tensorrt", "onnxruntime")

# key -> (python type, is a figure that needs a source)
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, False),
    "description": (str, False),
    "runtime": (str, False),  # what runs the artefact on the device: tensorrt | onnxruntime
    "jetpack": ((str, type(None)), True),
    "tensorrt_version": ((str, type(None)), True),
    "onnx_max_opset": (int, True),  # newest ONNX opset the device's parser reads
    "precisions": (list, True),
    "default_precision": (str, False),
    "fp32_tflops": ((int, float), True),  # peak of the processor that runs the model
    "fp16_tflops": ((int, float), True),
    "int8_tops": ((int, float), True),
    "cpu_cores": (int, True),
    "memory_gb": ((int, float), True),
    "memory_bandwidth_gbs": ((int, float), True),
    "memory_budget_mb": ((int, float), True),  # what one detector may use (the device runs more than it)
    "runtime_overhead_mb": ((int, float), True),  # CUDA context / runtime libraries, not the model
    "frame_budget_ms": ((int, float), True),
    "compute_efficiency": ((int, float), True),  # achieved / peak, for the cost model
    "memory_efficiency": ((int, float), True),
    "layer_overhead_ms": ((int, float), True),  # per heavy layer (launch, sync)
}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    jetpack: str | None
    tensorrt_version: str | None
    onnx_max_opset: int
    precisions: tuple[str, ...]
    default_precision: str
    fp32_tflops: float
    fp16_tflops: float
    int8_tops: float
    cpu_cores: int
    memory_gb: float
    memory_bandwidth_gbs: float
    memory_budget_mb: float
    runtime_overhead_mb: float
    frame_budget_ms: float
    compute_efficiency: float
    memory_efficiency: float
    layer_overhead_ms: float
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    path: str = ""

    @property
    def uses_tensorrt(self) -> bool:
        return self.runtime == "tensorrt"

    def peak_ops_per_s(self, precision: str) -> float:
        """Peak arithmetic rate for a precision, in operations per second."""
        tera = {"fp32": self.fp32_tflops, "fp16": self.fp16_tflops, "int8": self.int8_tops}[precision]
        return float(tera) * 1e12

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise TargetError(f"target {self.name!r} does not support precision {precision!r} "
                              f"(supports: {', '.join(self.precisions)}; see {self.path})")


def targets_dir() -> Path:
    """The packaged targets/ folder (adtk.targets)."""
    if not hasattr(resources, "files"):  # Python 3.8 (JetPack 5): adtk is never zip-imported, so __file__ is real
        import adtk.targets

        return Path(adtk.targets.__file__).parent
    return Path(str(resources.files("adtk.targets")))


def list_targets() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.yaml"))


def load_target(name_or_path: str | Path) -> Target:
    """A target by name (`orin_nano_8gb`, hyphens allowed) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        key = str(name_or_path).strip().lower().replace("-", "_")
        path = targets_dir() / f"{key}.yaml"
        if not path.is_file():
            known = list_targets()
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise TargetError(f"no target {str(name_or_path)!r}{hint} (known: {', '.join(known)}; "
                              "or pass the path of a target YAML file)")
    return parse_target(path.read_text(), str(path))


def parse_target(text: str, source: str) -> Target:
    import yaml  # PyYAML; safe_load builds only plain data, never objects

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TargetError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise TargetError(f"{source}: expected a mapping of keys to values at the top level")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        key = unknown[0]
        # compare with the words sorted too, so a swapped order ('tflops_fp16') still finds 'fp16_tflops'
        by_words = {"_".join(sorted(k.split("_"))): k for k in _FIELDS}
        close = (difflib.get_close_matches(key, list(_FIELDS), n=1)
                 or [by_words[m] for m in difflib.get_close_matches("_".join(sorted(key.split("_"))), by_words, n=1)])
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TargetError(f"{source}: unknown key {key!r}{hint}; known keys: {', '.join(_FIELDS)}")
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise TargetError(f"{source}: missing key(s) {', '.join(missing)}")
    values, sources = {}, {}
    for key, (kind, needs_source) in _FIELDS.items():
        raw = data[key]
        if needs_source:
            if not isinstance(raw, dict) or set(raw) != {"value", "source"} or not str(raw["source"]).strip():
                raise TargetError(f"{source}: {key} must be written as {{value: ..., source: \"where the figure "
                                  f"comes from\"}}, got {raw!r}")
            sources[key] = str(raw["source"])
            raw = raw["value"]
        if not isinstance(raw, kind) or isinstance(raw, bool):
            raise TargetError(f"{source}: {key} must be {_type_name(kind)}, got {raw!r}")
        values[key] = raw
    values["precisions"] = tuple(values["precisions"])
    _check_values(values, source)
    return Target(**values, sources=sources, path=source)


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_values(values: dict, source: str) -> None:
    if values["runtime"] not in RUNTIMES:
        raise TargetError(f"{source}: runtime must be one of {', '.join(RUNTIMES)}, got {values['runtime']!r}")
    bad = [p for p in values["precisions"] if p not in PRECISIONS]
    if bad or not values["precisions"]:
        raise TargetError(f"{source}: precisions must be a non-empty list of {', '.join(PRECISIONS)}, got "
                          f"{list(values['precisions'])}")
    if values["default_precision"] not in values["precisions"]:
        raise TargetError(f"{source}: default_precision {values['default_precision']!r} is not in precisions")
    if values["runtime"] == "tensorrt" and not values["tensorrt_version"]:
        raise TargetError(f"{source}: a tensorrt target must state tensorrt_version")
    for key in ("fp32_tflops", "fp16_tflops", "int8_tops", "memory_bandwidth_gbs", "memory_budget_mb",
                "frame_budget_ms"):
        if values[key] <= 0:
            raise TargetError(f"{source}: {key} must be > 0, got {values[key]}")
    for key in ("compute_efficiency", "memory_efficiency"):
        if not 0 < values[key] <= 1:
            raise TargetError(f"{source}: {key} must be in (0, 1], got {values[key]}")
