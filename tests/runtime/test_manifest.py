"""The manifest schema (runtime/manifest.py): a built manifest conforms; a missing field or a field of the wrong
type is refused with an ArtefactError that names it, never a KeyError or AttributeError."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adtk.runtime.errors import ArtefactError
from adtk.runtime.manifest import (SCHEMA, OptionalKey, build_manifest, schema_problems, validate_manifest,
                                   with_target)


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
    """The required fields (an OptionalKey section may be absent: see the optional-section tests below)."""
    for key, rule in schema.items():
        if isinstance(rule, OptionalKey):
            continue
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


# ---- the optional sections (input.tiling, ensemble, training.recipe_search): checked field by field when present

TILING = {"working_size_px": [64, 128], "tile_px": 64, "grid": [1, 3], "row_starts": [0], "col_starts": [0, 32, 64]}
MEMBER = {"backbone": {"name": "net", "stages": ["a"], "strides": [8], "weights_source": "random(seed=0)",
                       "weights_sha256": None},
          "fit": {"rows": 3}, "standardisation": {"score_mean": 1.0, "score_std": 0.5, "map_mean": 0.5, "map_std": 0.1}}
CANDIDATE = {"backbone": "net", "stages": "default", "ensemble": [], "image_size_px": 256, "tile": None,
             "model_size_px": [256, 256], "tiles": None, "method": "patchcore", "bank_rows_per_image": 10.0,
             "params": {}, "coreset_ratio": 0.01, "bank_rows": 100, "predicted_ms": 5.0, "predicted_mb": 10.0,
             "fits_budget": True, "status": "validated", "validation_auroc": 0.9, "fit_s": 1.0}
SEARCH = {"chosen": CANDIDATE, "validation": "synthetic defects", "candidates": [CANDIDATE], "costed_on": "x86_cpu",
          "budget_enforced": False, "search_s": 12.5, "time_budget_s": 600.0, "skipped_for_time": [],
          "fit_images_per_candidate": 20}


def manifest_with_sections() -> dict:
    manifest = example_manifest()
    manifest["input"]["tiling"] = copy.deepcopy(TILING)
    manifest["ensemble"] = {"combine": "mean", "members": [copy.deepcopy(MEMBER), copy.deepcopy(MEMBER)]}
    manifest["training"]["recipe_search"] = copy.deepcopy(SEARCH)
    return manifest


OPTIONAL_PATHS = [("input", "tiling"), ("ensemble",), ("training", "recipe_search")]


def test_optional_sections_conform_when_well_formed_and_may_be_absent_or_tiling_null():
    manifest = manifest_with_sections()
    assert validate_manifest(json.loads(json.dumps(manifest))) == manifest
    older = example_manifest()  # a build without them, or from before them
    assert "ensemble" not in older and "recipe_search" not in older["training"]
    older["input"].pop("tiling", None)
    validate_manifest(older)
    untiled = example_manifest()
    untiled["input"]["tiling"] = None  # what an untiled build writes
    validate_manifest(untiled)
    first_auto = manifest_with_sections()  # the first --method auto's record: no geometry keys, no time budget
    record = first_auto["training"]["recipe_search"]
    for candidate in [record["chosen"], *record["candidates"]]:
        for key in ("ensemble", "tile", "model_size_px", "tiles", "bank_rows_per_image", "status"):
            candidate.pop(key, None)
    for key in ("time_budget_s", "skipped_for_time"):
        del record[key]
    validate_manifest(first_auto)


def _set(manifest, path, value):
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value


@pytest.mark.parametrize("path,value,expected", [
    (("input", "tiling"), "garbage", r"input\.tiling: must be an object, got a string"),
    (("input", "tiling"), {"size": 0}, r"input\.tiling\.working_size_px: missing"),
    (("input", "tiling", "grid"), [3], r"input\.tiling\.grid: must be \[rows, columns\]"),
    (("input", "tiling", "tile_px"), 0, r"input\.tiling\.tile_px: must be an integer > 0"),
    (("input", "tiling", "row_starts"), ["0"], r"input\.tiling\.row_starts: must be a non-empty list"),
    (("ensemble",), "garbage", r"ensemble: must be an object"),
    (("ensemble",), None, r"ensemble: must be an object, got null"),
    (("ensemble", "members"), [1, 2], r"ensemble\.members\[0\]: must be an object, got an integer"),
    (("ensemble", "members"), {"a": 1}, r"ensemble\.members: must be a list of 2 or more members, got an object"),
    (("ensemble", "members"), [MEMBER], r"ensemble\.members: must be a list of 2 or more members, got 1"),
    (("ensemble", "members", 1, "backbone", "name"), 5, r"ensemble\.members\[1\]\.backbone\.name: must be a string"),
    (("ensemble", "members", 0, "backbone", "stages"), [1], r"ensemble\.members\[0\]\.backbone\.stages\[0\]"),
    (("ensemble", "members", 0, "standardisation", "score_std"), "x",
     r"ensemble\.members\[0\]\.standardisation\.score_std: must be a finite number"),
    (("ensemble", "combine"), ["mean"], r"ensemble\.combine: must be a string"),
    (("training", "recipe_search"), [], r"training\.recipe_search: must be an object, got a list"),
    (("training", "recipe_search", "chosen"), "patchcore", r"training\.recipe_search\.chosen: must be an object"),
    (("training", "recipe_search", "chosen", "coreset_ratio"), None,
     r"training\.recipe_search\.chosen\.coreset_ratio: must be a finite number, got null"),
    (("training", "recipe_search", "chosen", "ensemble"), "mobilenetv2_100",
     r"training\.recipe_search\.chosen\.ensemble: must be a list of backbone names"),
    (("training", "recipe_search", "candidates"), [], r"training\.recipe_search\.candidates: must be a non-empty"),
    (("training", "recipe_search", "candidates"), ["x"],
     r"training\.recipe_search\.candidates\[0\]: must be an object"),
    (("training", "recipe_search", "skipped_for_time"), 3,
     r"training\.recipe_search\.skipped_for_time: must be a list"),
])
def test_a_malformed_optional_section_is_refused_naming_the_field(path, value, expected):
    manifest = manifest_with_sections()
    _set(manifest, path, copy.deepcopy(value))
    with pytest.raises(ArtefactError, match=expected):
        validate_manifest(manifest, "m.onnx")


@settings(max_examples=200, deadline=None)
@given(path_index=st.integers(min_value=0), value=json_values)
def test_any_json_value_in_an_optional_section_gives_artefact_error_or_conforms(path_index, value):
    manifest = manifest_with_sections()
    _set(manifest, OPTIONAL_PATHS[path_index % len(OPTIONAL_PATHS)], copy.deepcopy(value))
    try:
        validate_manifest(manifest)
    except ArtefactError:
        pass


def test_a_resealed_artefact_with_a_malformed_section_is_refused_on_load(tiny_build, tmp_path):
    from adtk.runtime.artefact import read_artefact
    from adtk.runtime.detector import Detector
    from tests.conftest import reseal_with_manifest_edit

    for edit, field in ((lambda m: m["input"].update(tiling="garbage"), r"input\.tiling"),
                        (lambda m: m.update(ensemble={"combine": "mean", "members": [1, "x"]}), r"ensemble\.members"),
                        (lambda m: m["training"].update(recipe_search={"chosen": 1}), r"training\.recipe_search")):
        edited = tmp_path / "edited.onnx"
        edited.write_bytes(reseal_with_manifest_edit(tiny_build.artefact.read_bytes(), edit))
        with pytest.raises(ArtefactError, match=field + ".*rebuild the artefact"):
            read_artefact(edited)
        with pytest.raises(ArtefactError, match=field):
            Detector.load(edited, backend="cpu")


@pytest.mark.slow  # one tiled build at 64x128 px on random weights: ~10 s
def test_a_tiled_build_chosen_by_the_recipe_search_records_both_and_loads(tiny_dataset, tmp_path, monkeypatch):
    """input.tiling and training.recipe_search as the build writes them today: the search's record
    (CandidateRow.as_dict of the chosen tiled candidate, an uncosted one, an ensemble one), then the ordinary build
    of the chosen candidate, loaded back."""
    from types import SimpleNamespace

    from adtk.runtime.artefact import read_artefact
    from adtk.toolkit import recipe_search
    from adtk.toolkit.build import BuildConfig
    from adtk.toolkit.geometry import resolve_geometry
    from adtk.toolkit.recipe_search import Architecture, CandidateRow, Recipe, SearchSpace

    tiled = Architecture("tf_efficientnet_lite0", None, "64x128", tile="64:16")
    plain = Architecture("tf_efficientnet_lite0", None, 64)
    ensemble = Architecture("tf_efficientnet_lite0", ("blocks.2",), 64, ensemble=("mobilenetv2_100",))
    chosen = CandidateRow(tiled, Recipe("patchcore", 4.0), 0.25, 7.5, 40.0, 300, True,
                          resolve_geometry("64x128", "64:16", 16, None), status="validated", validation_auroc=0.91,
                          fit_s=2.0)
    rows = [chosen,
            CandidateRow(plain, Recipe("ldknn", 4.0), 0.0, float("nan"), float("nan"), 0, False,
                         status="not costed: smaller than the tile"),
            CandidateRow(ensemble, Recipe("patchcore", 10.0), 0.5, 90.0, 80.0, 900, False,
                         resolve_geometry(64, None, 16, None), status="over the frame budget")]

    def found(config, log, index=None, space=None, time_budget_s=None, started=None):
        return {"rows": rows, "chosen": chosen, "validation": SimpleNamespace(description="synthetic defects"),
                "target": SimpleNamespace(name="x86_cpu", frame_budget_ms=33.0), "enforce_budget": False,
                "skipped": ["an architecture skipped for time"], "index": tiny_dataset, "subsample": 12}

    monkeypatch.setattr(recipe_search, "search", found)
    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "model.onnx", method="auto", random_weights=True,
                         calib_fraction=0.25)
    space = SearchSpace(architectures=(plain,), recipes=(Recipe("patchcore", 4.0),))
    result = recipe_search.search_and_build(config, log=lambda m: None, index=tiny_dataset, space=space)
    manifest = read_artefact(result.artefact).manifest
    assert manifest["input"]["tiling"]["grid"] == [1, 3]
    candidates = manifest["training"]["recipe_search"]["candidates"]
    assert candidates[1]["status"].startswith("not costed") and candidates[2]["ensemble"] == ["mobilenetv2_100"]
    assert schema_problems(manifest) == [] and schema_problems(result.manifest) == []


@pytest.mark.slow  # one two-member build at 64 px on random weights: ~10 s
def test_an_ensemble_build_records_its_members_and_loads(tiny_dataset, tmp_path):
    from adtk.runtime.artefact import read_artefact
    from adtk.toolkit.build import BuildConfig, build

    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "model.onnx", method="patchcore",
                         method_params={"coreset_ratio": 0.25}, backbone="tf_efficientnet_lite0",
                         ensemble=("mobilenetv2_100",), random_weights=True, image_size_px=64, calib_fraction=0.25)
    result = build(config, log=lambda m: None, index=tiny_dataset)
    manifest = read_artefact(result.artefact).manifest
    assert [m["backbone"]["name"] for m in manifest["ensemble"]["members"]] == ["tf_efficientnet_lite0",
                                                                                "mobilenetv2_100"]
    assert manifest["input"]["tiling"] is None
    assert schema_problems(manifest) == []
