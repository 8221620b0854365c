"""The artefact manifest: its schema and its one builder, in one place, with the standard library only.

The build assembles a manifest with `build_manifest` (toolkit/build.py), the compiler records the target and
precision with `with_target` (export/compiler.py), and the runtime checks every manifest it reads with
`validate_manifest` (runtime/artefact.py) before anything uses it. All three read the shape from SCHEMA below,
so a field added here is added for all of them. The runtime must validate without torch or onnx, hence no
import outside the standard library (a JSON-schema library would do the job but is not a runtime dependency).

    manifest = build_manifest(method=..., backbone=..., input_contract=..., calibration=..., training=...,
                              blur_sigma=4.0, toolchain={"torch": "2.14.1"}, timings_s={...})
    validate_manifest(manifest)      # ArtefactError naming the field, what it is, and what was expected

A manifest may carry more keys than the schema names (older readers ignore them); it may not lack one, nor
hold one of the wrong type. The optional sections some builds add (input.tiling, ensemble, training.recipe_search)
may be absent (a build that makes none, or one from before them); when present they are checked field by field
like the rest, so a re-sealed manifest with a malformed one is refused on load, not met by a reader later.
"""

from __future__ import annotations

import copy
import math
import platform
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any

from adtk.runtime.errors import ArtefactError

FORMAT_NAME = "adtk-artefact"
SCHEMA_VERSION = 1
INPUT_NAME = "frames"
# anomalib's four names first (InferenceBatch: pred_score, pred_label, anomaly_map, pred_mask), then adtk's raw ones
OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask", "raw_score", "raw_anomaly_map")
# Artefacts built before pred_mask existed carry the same schema version and stay loadable (the Detector derives
# their mask from anomaly_map > 0.5, the same rule): the schema accepts either output list.
LEGACY_OUTPUT_NAMES = tuple(name for name in OUTPUT_NAMES if name != "pred_mask")

# What each output means, as every artefact states it (the contract in README's "artefact contract").
OUTPUTS_DESCRIPTION = {
    "pred_score": "[B] float32 in [0, 1]; 0.5 is the calibrated threshold",
    "pred_label": "[B] bool; True = anomalous (raw_score > threshold)",
    "anomaly_map": "[B, H, W] float32 in [0, 1] at the model size (input.model_size_px); 0.5 = the highest value of any "
                   "held-out good image's map (calibration.map_threshold)",
    "pred_mask": "[B, H, W] bool; True where the raw map is above calibration.map_threshold (anomaly_map > 0.5)",
    "raw_score": "[B] float32, the image score before normalisation (postprocess.image_score_from: the method "
                 "head's own, or map_max = the raw anomaly map's maximum)",
    "raw_anomaly_map": "[B, H, W] float32, before normalisation",
    "order": list(OUTPUT_NAMES),
}
# postprocess.image_score_from: where raw_score (and so pred_score, pred_label and the calibration) comes from;
# the build option of the same name (export/compose.py applies it). Artefacts without the field took "head".
IMAGE_SCORE_SOURCES = {
    "head": "the method head's own image score (e.g. a memory bank's re-weighted largest patch distance; the "
            "largest tile score when tiled)",
    "map_max": "the largest value of the smoothed raw anomaly map (raw_anomaly_map: stitched when tiled, the "
               "members' mean in an ensemble)",
}
NORMALISATION_DESCRIPTION = ("clip((raw - threshold) / (score_max - score_min) + 0.5, 0, 1); maps likewise "
                             "with map_threshold, map_min, map_max")


class Field:
    """A required leaf: a value of one of `types` (None allowed when nullable), optionally checked further."""

    def __init__(self, *types: type, nullable: bool = False, check=None, expected: str | None = None):
        self.types, self.nullable, self.check = types, nullable, check
        self.expected = expected or " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types) + \
            (" or null" if nullable else "")

    def problem(self, value) -> str | None:
        if value is None:
            return None if self.nullable else f"must be {self.expected}, got null"
        # JSON has no bool/int distinction problem, Python has: True is an int, never a count or a size
        if isinstance(value, bool) and bool not in self.types:
            return f"must be {self.expected}, got a boolean"
        if not isinstance(value, self.types):
            return f"must be {self.expected}, got {_json_type(value)}"
        if self.check is not None and not self.check(value):
            return f"must be {self.expected}, got {value!r:.80}"
        return None


class OptionalKey:
    """A key a manifest may lack (a section only some builds write, or one older artefacts predate); when it is
    there, its value must conform to `rule` (a nested dict, a Field or a ListOf), or be null when nullable."""

    def __init__(self, rule, nullable: bool = False):
        self.rule, self.nullable = rule, nullable


class ListOf:
    """A list whose every entry conforms to `item` (a nested dict or a Field), with at least `min_length`."""

    def __init__(self, item, min_length: int = 0, expected: str | None = None):
        self.item, self.min_length = item, min_length
        self.expected = expected or "a list"


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits (JSON has no limit): no float holds it
        return False


def _positive_size(value) -> bool:
    return (len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _is(constant):
    return lambda value: value == constant


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "a list",
               bool: "a boolean"}
NUMBER = Field(int, float, check=_finite, expected="a finite number")
COUNT = Field(int, check=lambda v: v >= 0, expected="an integer >= 0")
TEXT = Field(str)
POSITIVE = Field(int, check=lambda v: v > 0, expected="an integer > 0")
ANY_NUMBER = Field(int, float, expected="a number")  # NaN allowed: the search writes it for an uncosted candidate


def _starts(value) -> bool:
    return len(value) > 0 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


# input.tiling: toolkit/geometry.py TileLayout.as_dict (null when the build is not tiled)
TILING = {"working_size_px": Field(list, check=_positive_size, expected="[height, width], two integers > 0"),
          "tile_px": POSITIVE,
          "grid": Field(list, check=_positive_size, expected="[rows, columns], two integers > 0"),
          "row_starts": Field(list, check=_starts, expected="a non-empty list of integers >= 0"),
          "col_starts": Field(list, check=_starts, expected="a non-empty list of integers >= 0")}
# ensemble: toolkit/build.py build_ensemble's record, one entry per (backbone, stages) member
ENSEMBLE = {
    "combine": TEXT,
    "members": ListOf({"backbone": {"name": TEXT, "stages": ListOf(TEXT, expected="a list of stage names"),
                                    "strides": ListOf(POSITIVE, expected="a list of integers > 0"),
                                    "weights_source": TEXT, "weights_sha256": Field(str, nullable=True)},
                       "fit": Field(dict),
                       "standardisation": {"score_mean": NUMBER, "score_std": NUMBER, "map_mean": NUMBER,
                                           "map_std": NUMBER}},
                      min_length=2, expected="a list of 2 or more members"),
}
# training.recipe_search: toolkit/recipe_search.py search_and_build's record; a candidate is CandidateRow.as_dict.
# The optional keys came with the geometry/ensemble candidates (artefacts of the first --method auto lack them).
CANDIDATE = {
    "backbone": TEXT, "stages": Field(list, str, expected="a list of stage names or 'default'"),
    "image_size_px": Field(int, str, expected="an integer or a string"), "method": TEXT, "params": Field(dict),
    "coreset_ratio": NUMBER, "bank_rows": COUNT, "predicted_ms": ANY_NUMBER, "predicted_mb": ANY_NUMBER,
    "fits_budget": Field(bool), "validation_auroc": Field(int, float, nullable=True),
    "fit_s": Field(int, float, nullable=True),
    "ensemble": OptionalKey(ListOf(TEXT, expected="a list of backbone names")),
    "tile": OptionalKey(Field(str, nullable=True)),
    "model_size_px": OptionalKey(Field(list, nullable=True)), "tiles": OptionalKey(Field(list, nullable=True)),
    "bank_rows_per_image": OptionalKey(ANY_NUMBER), "status": OptionalKey(TEXT),
}
RECIPE_SEARCH = {
    "chosen": CANDIDATE, "validation": TEXT,
    "candidates": ListOf(CANDIDATE, min_length=1, expected="a non-empty list of candidates"),
    "costed_on": TEXT, "budget_enforced": Field(bool), "search_s": NUMBER, "fit_images_per_candidate": COUNT,
    "time_budget_s": OptionalKey(Field(int, float, nullable=True)),
    "skipped_for_time": OptionalKey(ListOf(TEXT, expected="a list of strings")), "target_note": OptionalKey(TEXT),
}

# Required fields and their types. Nested dicts are objects whose listed keys are required, but for OptionalKey ones.
SCHEMA: dict[str, Any] = {
    "format": Field(str, check=_is(FORMAT_NAME), expected=repr(FORMAT_NAME)),
    "schema": Field(int, check=_is(SCHEMA_VERSION), expected=f"{SCHEMA_VERSION} (this runtime's schema version)"),
    "adtk_version": TEXT,
    "method": {"name": TEXT, "params": Field(dict), "fit": Field(dict)},
    "backbone": {"name": TEXT, "stages": Field(list), "channels": Field(list), "strides": Field(list),
                 "weights_source": TEXT, "weights_sha256": Field(str, nullable=True)},
    "input": {"name": Field(str, check=_is(INPUT_NAME), expected=repr(INPUT_NAME)),
              "dtype": TEXT, "layout": TEXT, "channels": TEXT,
              "model_size_px": Field(list, check=_positive_size, expected="[height, width], two integers > 0"),
              "resize": Field(dict), "normalise": Field(dict), "tiling": OptionalKey(TILING, nullable=True)},
    "outputs": {**{name: TEXT for name in LEGACY_OUTPUT_NAMES},
                "order": Field(list, check=lambda v: list(v) in (list(OUTPUT_NAMES), list(LEGACY_OUTPUT_NAMES)),
                               expected=f"the list {list(OUTPUT_NAMES)}")},
    "postprocess": {"map_upsample": TEXT, "blur_sigma": NUMBER, "normalisation": TEXT},
    "calibration": {"threshold": NUMBER, "score_min": NUMBER, "score_max": NUMBER, "method": TEXT,
                    "num_good": COUNT, "num_defective": COUNT,
                    "map_threshold": NUMBER, "map_min": NUMBER, "map_max": NUMBER},
    "training": {"num_fit_images": COUNT, "num_calibration_images": COUNT, "list_sha256": TEXT,
                 "calibration_list_sha256": TEXT, "seed": Field(int),
                 "max_train_images": Field(int, nullable=True),
                 "recipe_search": OptionalKey(RECIPE_SEARCH)},
    "target": {"name": TEXT, "precision": TEXT},
    "build": {"timings_s": Field(dict)},
    "ensemble": OptionalKey(ENSEMBLE),
}


def _json_type(value) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def schema_problems(manifest, schema: dict = SCHEMA, prefix: str = "") -> list[str]:
    """Every way `manifest` breaks `schema`, as 'field: problem' lines (empty when it conforms)."""
    if not isinstance(manifest, dict):
        return [f"{prefix or 'manifest'}: must be an object, got {_json_type(manifest)}"]
    problems = []
    for key, rule in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in manifest:
            if not isinstance(rule, OptionalKey):
                problems.append(f"{where}: missing")
        else:
            problems.extend(_value_problems(manifest[key], rule, where))
    return problems


def _value_problems(value, rule, where: str) -> list[str]:
    if isinstance(rule, OptionalKey):
        return [] if value is None and rule.nullable else _value_problems(value, rule.rule, where)
    if isinstance(rule, dict):
        return schema_problems(value, rule, where)
    if isinstance(rule, ListOf):
        if not isinstance(value, list):
            return [f"{where}: must be {rule.expected}, got {_json_type(value)}"]
        if len(value) < rule.min_length:
            return [f"{where}: must be {rule.expected}, got {len(value)}"]
        problems = []
        for number, item in enumerate(value):
            problems.extend(_value_problems(item, rule.item, f"{where}[{number}]"))
        return problems
    problem = rule.problem(value)
    return [f"{where}: {problem}"] if problem else []


def validate_manifest(manifest, source: str = "artefact") -> dict:
    """Return `manifest` if it conforms to SCHEMA; else raise ArtefactError naming each field and problem."""
    if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME and "schema" in manifest \
            and manifest["schema"] != SCHEMA_VERSION:
        raise ArtefactError(
            f"{source}: manifest schema {manifest['schema']!r:.40} is not supported by this runtime (supports "
            f"{SCHEMA_VERSION}); upgrade adtk on the device or rebuild the artefact")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtefactError(f"{source}: manifest does not describe an adtk artefact (format must be {FORMAT_NAME!r})")
    problems = schema_problems(manifest)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ArtefactError(f"{source}: the manifest breaks the artefact contract ({shown}); rebuild the "
                            "artefact with `adtk build`")
    return manifest


def adtk_version() -> str:
    try:
        return package_version("adtk")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_manifest(*, method: dict, backbone: dict, input_contract: dict, calibration: dict, training: dict,
                   blur_sigma: float, toolchain: dict, timings_s: dict, target: dict | None = None,
                   image_score_from: str = "head") -> dict:
    """The manifest of a freshly built artefact, validated against SCHEMA.

    method: {"name", "params", "fit"}; backbone: name, stages, channels, strides, weights_source, weights_sha256;
    input_contract: the preprocessing's contract (toolkit/preprocess.py FramePreprocess.contract());
    calibration: toolkit/calibration.py Calibration.as_dict(); training: counts, list hashes, seed and any
    records of how the list was chosen (refinement, labelled defects); toolchain: e.g. {"torch": version};
    target: the compiler fills it (with_target); before that, the generic fp32 target.
    """
    manifest = {
        "format": FORMAT_NAME,
        "schema": SCHEMA_VERSION,
        "adtk_version": adtk_version(),
        "method": dict(method),
        "backbone": dict(backbone),
        "input": {"name": INPUT_NAME, **input_contract},
        "outputs": copy.deepcopy(OUTPUTS_DESCRIPTION),
        "postprocess": {"map_upsample": "bilinear", "blur_sigma": blur_sigma,
                        "normalisation": NORMALISATION_DESCRIPTION,
                        # not in SCHEMA: artefacts built before it have none, and took the head's ("head")
                        "image_score_from": image_score_from},
        "calibration": dict(calibration),
        "training": dict(training),
        "target": dict(target) if target is not None else {"name": "generic", "precision": "fp32"},
        "build": {**toolchain, "python": platform.python_version(),
                  "timings_s": {k: round(v, 3) for k, v in timings_s.items()}},
    }
    return validate_manifest(manifest, "built manifest")


def with_target(manifest: dict, target: dict) -> dict:
    """A copy of `manifest` recording the target and precision the compiler produced it for (validated)."""
    updated = copy.deepcopy(manifest)
    updated["target"] = dict(target)
    return validate_manifest(updated, "compiled manifest")
