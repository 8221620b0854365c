"""Build configuration as a file: `adtk build --config build.yaml`, `--print-config`, and the copy every artefact
carries (`adtk inspect --config`), so that a build can be re-run from an artefact.

Generic over BuildConfig's fields: a file's keys are the field names (`method`, `image_size_px`,
`method_params`, ...), and a field added to BuildConfig is accepted, type-checked, printed and recorded with no
change here. Values are checked against the field's type hint; an unknown key is refused with the closest
names. Every option is validated by `validate_build_config` before any image is read.

    values = read_config_file("build.yaml")                       # {field: value}, checked
    config = config_from_dict({**values, **explicit_cli_values})  # CLI flags override the file
    config_to_dict(config)                                        # JSON-able, the manifest's `build_config`
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

from adtk.runtime.errors import ConfigError, TargetError
from adtk.runtime.manifest import IMAGE_SCORE_SOURCES

PRECISIONS = ("auto", "fp32", "fp16", "int8")


@dataclasses.dataclass
class BuildConfig:
    """Every option of a build (`adtk build`'s flags, a --config file's keys, the manifest's build_config)."""

    data: Path
    out: Path
    method: str = "patchcore"
    method_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    backbone: str = "tf_efficientnet_lite0"
    stages: tuple[str, ...] | None = None
    weights: Path | None = None
    random_weights: bool = False
    # --size: N, (H, W), "HxW", "auto" or "auto:PIXELS" (toolkit/geometry.py: parse_size, resolve_geometry)
    image_size_px: int | tuple[int, int] | str = "auto"
    tile: str | None = None  # --tile "SIZE[:OVERLAP]": score overlapping tiles inside the graph (geometry.py)
    calib_fraction: float = 0.1
    max_train_images: int | None = None
    seed: int = 0
    skip_bad: bool = False
    # Backbone batch while extracting features. 4, not more: the early MBConv expansions at 128 x 128 are
    # ~25 MB per image, so 16 images at once lifted the build's peak RSS by ~200 MB for no speed gain on CPU.
    batch_size: int = 4
    blur_sigma: float = 4.0
    # where the artefact's image score comes from: "head" (the method's own) or "map_max" (the smoothed anomaly
    # map's maximum); calibration, pred_score and pred_label all use it (runtime/manifest.py IMAGE_SCORE_SOURCES).
    # None: the method's default (AnomalyMethod.default_image_score_from); the manifest's postprocess records which.
    image_score_from: str | None = None
    target: str | None = None  # a targets/*.yaml name or path: size, check and record for that device
    precision: str = "auto"  # fp32 | fp16 | int8 | auto (the target's default; fp32 without a target)
    max_auroc_drop: float = 0.01  # refuse a precision that loses more image AUROC than this against fp32
    check_images: int = 200  # held-out images the precision check scores (seeded subset)
    refine: str | None = None  # "sroc:R", "sroc:R:DETECTOR" or "paire": drop suspected defects before the fit
    # Further backbones, each "NAME" or "NAME:STAGE,STAGE": an ensemble of (backbone, stages) members scored by the
    # same method, standardised on held-out good images and averaged in one artefact (toolkit/ensemble.py).
    ensemble: tuple[str, ...] = ()
    records: dict[str, Any] = dataclasses.field(default_factory=dict)  # facts recorded under the manifest's "training" (e.g. how
    # --method auto chose this recipe: toolkit/recipe_search.py)
    defects_from_test: tuple[str, ...] = ()  # test/<type> folders whose images (and masks) methods may learn from
    # index_dataset's layout options: anomalib Folder (normal_dir, abnormal_dir, mask_dir, normal_test_dir) or
    # VisA's category (toolkit/data_layouts.py); empty for MVTec, MVTec LOCO and plain folders (found by content)
    data_layout: dict[str, str] = dataclasses.field(default_factory=dict)


def config_fields() -> dict[str, Any]:
    """BuildConfig's field names -> their (evaluated) type hints, in declaration order."""
    hints = typing.get_type_hints(BuildConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(BuildConfig)}


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(key: str, value, hint):
    """`value` read from a file or the CLI, as field `key` of type `hint`; ConfigError when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, option)
            except ConfigError as error:
                problems.append(str(error))
        raise ConfigError(problems[0] if len(problems) == 1 else
                          f"{key}: {value!r} is none of {', '.join(_type_name(a) for a in args)}")
    if hint is Any:
        return value
    if origin is tuple:
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(key, item, args[0]) for item in items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (key: value), got {value!r}")
        return dict(value)
    if hint is Path:
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")


def check_config_values(values: dict, source: str) -> dict:
    """{field: value} with every key a BuildConfig field and every value of its type (ConfigError otherwise)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of build options (e.g. `method: patchcore`), "
                          f"got {type(values).__name__}")
    fields = config_fields()
    checked = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=2)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(f"{source}: unknown build option {key!r}; {hint}(known: {', '.join(fields)})")
        checked[key] = _coerce(f"{source}: {key}", value, fields[key])
    return checked


def read_config_file(path: str | Path) -> dict:
    """The checked {field: value} of a YAML (or JSON) build config file."""
    import yaml  # PyYAML, in the [build] extra; safe_load builds only plain data

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({error})".replace("\n", " ")) from None
    return check_config_values(values, str(path))


def config_from_dict(values: dict, source: str = "build config"):
    """A BuildConfig from {field: value} (checked; the fields without a default must be there)."""
    checked = check_config_values(values, source)
    missing = [f.name for f in dataclasses.fields(BuildConfig) if f.name not in checked
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing {', '.join(missing)} (give --{missing[0]} or `{missing[0]}:` in "
                          "the --config file)")
    return BuildConfig(**checked)


def config_to_dict(config) -> dict:
    """Every field, JSON- and YAML-able (paths as strings, tuples as lists): what --print-config writes and the
    manifest records; config_from_dict(config_to_dict(c)) == c."""
    def plain(value):
        if isinstance(value, os.PathLike):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_to_yaml(config_values: dict) -> str:
    import yaml

    return yaml.safe_dump(config_values, sort_keys=False, default_flow_style=None)


def validate_build_config(config) -> None:
    """Refuse a bad option before any image is read: method, target, precision, sizes and fractions, the
    output path (a file in a writable folder), the data folder and the weights file. ConfigError each."""
    from adtk.export.targets import load_target
    from adtk.toolkit.methods.registry import method_class

    if config.method != "auto":  # auto: toolkit/recipe_search.py picks a registered method
        method_class(config.method)  # UnknownMethodError (a ConfigError) with suggestions
    if config.target is not None:
        try:
            load_target(config.target)
        except TargetError as error:
            raise ConfigError(f"--target: {error}") from None
    if config.image_score_from is not None and config.image_score_from not in IMAGE_SCORE_SOURCES:
        raise ConfigError(f"--image-score-from {config.image_score_from!r}: expected one of "
                          f"{', '.join(IMAGE_SCORE_SOURCES)} (head = the method's own image score, map_max = the "
                          "smoothed anomaly map's maximum)")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"--precision {config.precision!r}: expected one of {', '.join(PRECISIONS)}")
    # N, (H, W), "N", "HxW" or "auto[:PIXELS]": parsed by the build's own parser (one set of messages), then
    # fixed sides are held to a backbone's smallest useful input.
    from adtk.toolkit.geometry import parse_size  # torch-importing; only a build validates its config

    size = parse_size(config.image_size_px)
    # named as on the command line and in a --config file (the same setting reaches a build either way)
    checks = [("--size (image_size_px)", side, 32) for side in (size.fixed_hw or ())]
    for name, value, minimum in (*checks, ("batch_size", config.batch_size, 1),
                                 ("--check-images (check_images)", config.check_images, 1)):
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if config.max_train_images is not None and config.max_train_images < 2:
        raise ConfigError(f"--max-train-images must be at least 2 (1 to fit, 1 to calibrate), got "
                          f"{config.max_train_images}")
    if not 0.0 <= config.calib_fraction < 1.0:
        raise ConfigError(f"--calib-fraction must be in [0, 1), got {config.calib_fraction}")
    if config.max_auroc_drop < 0 or config.blur_sigma <= 0:
        raise ConfigError(f"max_auroc_drop must be >= 0 and blur_sigma > 0 (got {config.max_auroc_drop}, "
                          f"{config.blur_sigma})")
    from adtk.export.formats import check_output_path  # the one set of output-path refusals (torch-importing)

    check_output_path(config.out, "-o", create_folder=False)
    if not Path(config.data).exists():
        raise ConfigError(f"--data {config.data}: no such folder")
    if config.weights is not None and not Path(config.weights).is_file():
        raise ConfigError(f"--weights {config.weights}: no such file")
