"""The manifest schema (runtime/manifest.py): a built manifest conforms; a missing field or a field of the wrong
type is refused with an ArtefactError that names it, never a KeyError or AttributeError."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adtk.runtime.errors import ArtefactError
from adtk.runtime.manifest import SCHEMA, build_manifest, schema_problems, validate_manifest, with_target


def example_manifest() -> dict:
    return build_manifest(
        method={"name": "example", "params": {"ratio": 0.1}, "fit": {"rows": 3}},
        backbone={"name": "net", "stages": ["a"], "channels": [8], "strides": [8], "weights_source": "random(seed=0)",
                  "weights_sha256": None},
        input_contract={"input": "frames", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                        "model_size_px": [64, 64], "resize": {"mode": "bilinear"}, "normalise": {"scale": "x / 255"}},
        calibration={"threshold": 1.5, "score_min": 0.5, "score_max": 2.5, "method": "max of held-out good",
                     "num_good": 4, "num_defective": 0, "map_threshold": 2.0, "map_min": 0.0, "map_max": 4.0},
        training={"num_fit_images": 12, "num_calibration_images": 4, "list_sha256": "ab", "calibration_list_sha256": "cd",
                  "seed": 0, "max_train_images": None},
        blur_sigma=4.0, toolchain={"torch": "x"}, timings_s={"fit": 1.23456})


def leaf_paths(schema=SCHEMA, prefix=()):
    for key, rule in schema.items():
        if isinstance(rule, dict):
            yield from leaf_paths(rule, prefix + (key,))
        else:
            yield prefix + (key,)


def test_a_built_manifest_conforms_and_survives_json():
    manifest = example_manifest()
    assert schema_problems(manifest) == []
    assert validate_manifest(json.loads(json.dumps(manifest))) == manifest
    assert manifest["build"]["timings_s"] == {"fit": 1.235}
    compiled = with_target(manifest, {"name": "x86_cpu", "precision": "int8", "cost": None})
    assert compiled["target"]["precision"] == "int8" and manifest["target"]["precision"] == "fp32"


def test_the_real_build_manifest_conforms(tiny_build):
    assert schema_problems(tiny_build.manifest) == []


@pytest.mark.parametrize("path", list(leaf_paths()), ids=".".join)
def test_each_missing_field_is_named(path):
    manifest = example_manifest()
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(ArtefactError, match=r"\b" + path[-1]):
        validate_manifest(manifest, "m.onnx")


@pytest.mark.parametrize("path,value,expected", [
    (("calibration", "threshold"), "0.5", "calibration.threshold: must be a finite number, got a string"),
    (("calibration", "threshold"), float("nan"), "calibration.threshold: must be a finite number"),
    (("calibration", "num_good"), True, "calibration.num_good: must be an integer >= 0, got a boolean"),
    (("input", "model_size_px"), [64], "input.model_size_px: must be \\[height, width\\]"),
    (("input", "model_size_px"), "64x64", "input.model_size_px: must be \\[height, width\\]"),
    (("method",), [], "method: must be an object, got a list"),
    (("outputs", "order"), ["pred_score"], "outputs.order: must be the list"),
    (("input", "name"), "images", "input.name: must be 'frames'"),
])
def test_a_wrong_type_is_named(path, value, expected):
    manifest = example_manifest()
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(ArtefactError, match=expected):
        validate_manifest(manifest, "m.onnx")


def test_extra_keys_are_allowed_and_foreign_or_newer_manifests_refused():
    manifest = example_manifest()
    manifest["note"] = "added by a later adtk"
    validate_manifest(manifest)
    with pytest.raises(ArtefactError, match="schema 2 is not supported"):
        validate_manifest({**manifest, "schema": 2})
    for foreign in (None, [], "adtk-artefact", {"format": "other"}):
        with pytest.raises(ArtefactError, match="does not describe an adtk artefact"):
            validate_manifest(foreign)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(path_index=st.integers(min_value=0), value=json_values)
def test_any_json_value_in_any_field_gives_artefact_error_or_conforms(path_index, value):
    manifest = example_manifest()
    paths = list(leaf_paths())
    path = paths[path_index % len(paths)]
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = copy.deepcopy(value)
    try:
        validate_manifest(manifest)
    except ArtefactError:
        pass


def test_a_manifest_from_before_pred_mask_still_validates_and_a_new_one_lists_it():
    manifest = example_manifest()
    assert manifest["outputs"]["order"][:4] == ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    legacy = copy.deepcopy(manifest)
    del legacy["outputs"]["pred_mask"]
    legacy["outputs"]["order"].remove("pred_mask")
    assert validate_manifest(legacy) == legacy
    shuffled = copy.deepcopy(manifest)
    shuffled["outputs"]["order"] = shuffled["outputs"]["order"][::-1]
    with pytest.raises(ArtefactError, match="outputs.order"):
        validate_manifest(shuffled)
