"""`adtk build --method auto` on a tiny space: candidates validated on synthetic defects, the best that fits the
budget built, its table written next to the artefact and recorded in the manifest; clear refusals otherwise."""

from __future__ import annotations

import json

import pytest

from adtk.runtime.errors import DataError, TargetError
from adtk.toolkit.build import BuildConfig
from adtk.toolkit.recipe_search import (Architecture, Recipe, SearchSpace, required_training_images,
                                        search_and_build)

TINY_SPACE = SearchSpace(architectures=(Architecture("tf_efficientnet_lite0", None, 64),),
                         recipes=(Recipe("patchcore", 4.0), Recipe("ldknn", 4.0)), fit_images=20, validation_images=8)


@pytest.fixture(scope="module")
def auto_dataset(tmp_path_factory):
    from adtk.toolkit.demo import make_example_dataset

    root = tmp_path_factory.mktemp("auto_dataset")
    return make_example_dataset(root, seed=0, num_train=36, num_test_good=2, num_test_defect=2, image_size_px=96)


def _config(index, out, **kw):
    return BuildConfig(data=index.root, out=out, method="auto", random_weights=True, calib_fraction=0.25, **kw)


@pytest.mark.slow  # probe export, 2 fits and the final build: ~1 min on 2 idle cores
def test_auto_builds_the_best_validated_candidate_and_writes_its_table(auto_dataset, tmp_path):
    out = tmp_path / "model.onnx"
    result = search_and_build(_config(auto_dataset, out), log=lambda m: None, index=auto_dataset, space=TINY_SPACE)
    record = result.manifest["training"]["recipe_search"]
    assert out.is_file() and len(record["candidates"]) == 2
    best = max(record["candidates"], key=lambda c: c["validation_auroc"])
    assert record["chosen"]["validation_auroc"] == best["validation_auroc"]
    assert result.manifest["method"]["name"] == record["chosen"]["method"]
    assert "synthetic defect" in record["validation"] and not record["budget_enforced"]
    assert json.loads((tmp_path / "model.onnx.candidates.json").read_text())["chosen"] == record["chosen"]
    assert "**chosen**" in (tmp_path / "model.onnx.candidates.md").read_text()
    from click.testing import CliRunner

    from adtk.toolkit.cli.main import cli

    shown = CliRunner().invoke(cli, ["inspect", str(out)])
    assert shown.exit_code == 0 and f"validation AUROC {record['chosen']['validation_auroc']}" in shown.output


def test_too_few_good_images_says_how_many_it_needs(auto_dataset, tmp_path):
    out = tmp_path / "model.onnx"
    needed = required_training_images(0.25, 8)
    with pytest.raises(DataError, match=f"needs at least {needed} good training images"):
        search_and_build(_config(auto_dataset, out, max_train_images=20), log=lambda m: None, index=auto_dataset,
                         space=TINY_SPACE)
    assert not out.exists()


def test_a_budget_no_candidate_fits_is_refused_before_any_feature_extraction(auto_dataset, tmp_path, monkeypatch):
    from adtk.toolkit import build as build_module
    from tests.conftest import write_tight_target

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted although no candidate fits")

    monkeypatch.setattr(build_module.FeatureExtractorPipeline, "features", no_extraction)
    out = tmp_path / "model.onnx"
    with pytest.raises(TargetError, match="no --method auto candidate fits.*nothing was extracted"):
        search_and_build(_config(auto_dataset, out, target=str(write_tight_target(tmp_path, 0.001))), log=lambda m: None,
                         index=auto_dataset, space=TINY_SPACE)
    assert not out.exists() and not list(tmp_path.glob("model.onnx*"))


def _tall_samples(folder, count: int, hw: tuple[int, int]):
    from types import SimpleNamespace

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for number in range(count):
        path = folder / f"{number}.png"
        Image.new("RGB", (hw[1], hw[0]), (number * 10, 0, 0)).save(path)
        samples.append(SimpleNamespace(path=path))
    return samples


def test_tiles_and_kept_aspect_are_candidates_on_tall_frames_only(tmp_path):
    from adtk.toolkit.recipe_search import resolve_architectures

    space = SearchSpace(architectures=(Architecture("tf_efficientnet_lite0", None, 256),
                                       Architecture("tf_efficientnet_lite0", None, "auto:65536"),
                                       Architecture("tf_efficientnet_lite0", None, "auto", tile="256")),
                        recipes=(Recipe("patchcore", 4.0),))
    tall = resolve_architectures(space, _tall_samples(tmp_path / "tall", 3, (1250, 500)), lambda m: None)
    square = resolve_architectures(space, _tall_samples(tmp_path / "square", 3, (300, 300)), lambda m: None)
    assert [g.model_hw if g else None for _, g, _ in tall] == [(256, 256), (400, 160), (640, 256)]
    assert tall[2][1].tiles.num_tiles >= 3  # one column of tiles down the tall frame
    # on square frames the kept aspect is the square again and a tile grid would be one tile: neither is tried
    assert square[1][1] is None and "same as" in square[1][2]
    assert square[2][1] is None and "neither elongated" in square[2][2]


def test_plain_auto_candidate_is_the_default_builds_geometry(tmp_path):
    """`--method auto` weighs the geometry the default build would use: tall frames at their own resolution
    without a target, at a 256-px short side with one (as build_geometry), the square on near-square frames."""
    from adtk.toolkit.build import build_geometry
    from adtk.toolkit.build_config import BuildConfig
    from adtk.toolkit.ensemble import geometry_stride
    from adtk.toolkit.recipe_search import resolve_architectures

    space = SearchSpace(architectures=(Architecture("tf_efficientnet_lite0", None, 256),
                                       Architecture("tf_efficientnet_lite0", None, "auto")),
                        recipes=(Recipe("patchcore", 4.0),))
    tall_samples = _tall_samples(tmp_path / "tall", 3, (1250, 500))
    for budget, expected in ((False, (1248, 496)), (True, (640, 256))):
        tall = resolve_architectures(space, tall_samples, lambda m: None, frame_budget_binds=budget)
        assert tall[1][1].model_hw == expected and tall[1][1].tiles is None
        config = BuildConfig(data=tmp_path, out=tmp_path / "x.onnx", target="x86_cpu" if budget else None)
        stride = geometry_stride(space.architectures[1].members())
        assert build_geometry(config, stride, tall_samples, lambda m: None)[0].model_hw == expected
    square = resolve_architectures(space, _tall_samples(tmp_path / "square", 3, (300, 300)), lambda m: None)
    assert square[1][1] is None and "same as" in square[1][2]


def test_ensemble_scores_are_standardised_per_member():
    import numpy as np

    from adtk.toolkit.recipe_search import standardised_mean

    labels = np.array([0, 0, 0, 1, 1, 1])
    a = np.array([1.0, 2.0, 3.0, 5.0, 6.0, 4.0])
    b = 1000.0 * np.array([2.0, 1.0, 3.0, 1.5, 9.0, 9.5])  # a member on another scale must not dominate
    combined = standardised_mean([a, b], labels == 0, [a, b])
    expected = ((a - a[:3].mean()) / a[:3].std() + (b - b[:3].mean()) / b[:3].std()) / 2
    assert np.allclose(combined, expected)


@pytest.mark.slow  # two probe exports and two backbones' features: ~1 min on 2 idle cores
def test_search_shares_features_and_scores_an_ensemble(auto_dataset):
    """Two architectures share the lite0 member's features (extracted once); the ensemble is scored from its
    members' heads."""
    from adtk.toolkit.recipe_search import search

    space = SearchSpace(architectures=(Architecture("tf_efficientnet_lite0", None, 64),
                                       Architecture("tf_efficientnet_lite0", None, 64, ensemble=("mobilenetv2_100",))),
                        recipes=(Recipe("patchcore", 4.0),), fit_images=12, validation_images=8)
    messages = []
    found = search(_config(auto_dataset, auto_dataset.root / "unused.onnx"), messages.append, auto_dataset, space,
                   time_budget_s=None)
    single, ensemble = found["rows"]
    assert single.status == ensemble.status == "validated"
    assert 0.0 <= ensemble.validation_auroc <= 1.0
    assert sum(m.startswith("auto: features of") for m in messages) == 2  # lite0 once, mobilenetv2 once


class _TimedValidator:
    """plan_and_validate's view of the validator: predicted seconds, and validate()."""

    def __init__(self, seconds: float):
        self.seconds, self.validated = seconds, []

    def predicted_s(self, keys, recipe):
        return self.seconds

    def predicted_final_build_s(self, keys, recipe, num_fit, num_calibration):
        return self.seconds

    def validate(self, row):
        row.validation_auroc, row.status = 0.5 + 0.1 * len(self.validated), "validated"
        self.validated.append(row)


def test_the_plan_skips_what_the_time_budget_cannot_hold_and_says_so():
    import time

    from adtk.toolkit.geometry import Geometry
    from adtk.toolkit.recipe_search import CandidateRow, plan_and_validate

    space = SearchSpace(architectures=(Architecture("tf_efficientnet_lite0", None, 64),
                                       Architecture("tf_efficientnet_lite0", None, 96)),
                        recipes=(Recipe("patchcore", 4.0), Recipe("patchcore", 8.0)), refine_top=1)
    rows = [CandidateRow(a, r, 0.1, 1.0, 1.0, 10, True, Geometry((a.image_size_px,) * 2))
            for a in space.architectures for r in space.recipes]
    slow = _TimedValidator(seconds=100.0)
    notes = plan_and_validate(None, rows, slow, space, 100, 10, time.perf_counter(), True, lambda m: None, 150.0)
    assert [r.status for r in rows][0] == "validated"  # the first candidate is always tried
    assert all(r.status.startswith("skipped: time budget") for r in rows[1:] if r.recipe == space.recipes[0])
    assert len(notes) == 2 and slow.validated == [rows[0]]
    fast = _TimedValidator(seconds=1.0)
    for row in rows:
        row.status, row.validation_auroc = "not tried", None
    plan_and_validate(None, rows, fast, space, 100, 10, time.perf_counter(), True, lambda m: None, 150.0)
    # stage A: both architectures with the first recipe; stage B: the second recipe for the best one only
    assert [r.status for r in rows] == ["validated", "not tried: stage B is for the best architectures of stage A",
                                        "validated", "validated"]


def test_an_architecture_over_budget_at_the_first_bank_is_validated_at_the_largest_smaller_bank_that_fits():
    import time

    from adtk.toolkit.geometry import Geometry
    from adtk.toolkit.recipe_search import CandidateRow, plan_and_validate

    cheap, dear = Architecture("tf_efficientnet_lite0", None, 64), Architecture("tf_efficientnet_lite0", None, 96)
    space = SearchSpace(architectures=(cheap, dear), recipes=(Recipe("patchcore", 10.0), Recipe("patchcore", 40.0)),
                        smaller_banks=(Recipe("patchcore", 5.0), Recipe("patchcore", 2.0)), refine_top=2)
    assert space.all_recipes == (Recipe("patchcore", 10.0), Recipe("patchcore", 40.0), Recipe("patchcore", 5.0),
                                 Recipe("patchcore", 2.0))
    fits = {(cheap, 10.0): True, (cheap, 40.0): True, (cheap, 5.0): True, (cheap, 2.0): True,
            (dear, 10.0): False, (dear, 40.0): False, (dear, 5.0): False, (dear, 2.0): True}
    rows = [CandidateRow(a, r, 0.1, 1.0, 1.0, 10, fits[(a, r.bank_rows_per_image)],
                         Geometry((a.image_size_px,) * 2), status="not tried" if fits[(a, r.bank_rows_per_image)]
                         else "over the frame budget")
            for a in space.architectures for r in space.all_recipes]
    validator = _TimedValidator(seconds=1.0)
    plan_and_validate(None, rows, validator, space, 100, 10, time.perf_counter(), True, lambda m: None, None)
    status = {(r.architecture, r.recipe.bank_rows_per_image): r.status for r in rows}
    # stage A: the cheap architecture at its first recipe, the dear one at the only bank its budget holds
    assert [(r.architecture, r.recipe.bank_rows_per_image) for r in validator.validated[:2]] == [(cheap, 10.0),
                                                                                                  (dear, 2.0)]
    assert status[(cheap, 5.0)] == status[(cheap, 2.0)] == "not tried: a larger bank of this architecture fits the frame budget"
    assert status[(dear, 10.0)] == status[(dear, 5.0)] == "over the frame budget"
    assert status[(cheap, 40.0)] == "validated"  # stage B, as before
    # without a target nothing is over budget: every architecture gets the first recipe, no smaller bank is fitted
    for row in rows:
        row.status, row.validation_auroc = "not tried", None
    validator = _TimedValidator(seconds=1.0)
    plan_and_validate(None, rows, validator, space, 100, 10, time.perf_counter(), False, lambda m: None, None)
    assert {r.recipe.bank_rows_per_image for r in validator.validated} == {10.0, 40.0}


def test_stage_b_goes_to_the_best_architectures_that_have_a_stage_b_recipe_within_budget():
    """An architecture validated at a smaller bank whose other recipes are all over the frame budget must not take
    a stage-B slot in which nothing can be tried (magnetic-tile, session 9: the two best of stage A were larger
    inputs at 2-5 rows/img, and stage B tried nothing)."""
    import time

    from adtk.toolkit.geometry import Geometry
    from adtk.toolkit.recipe_search import CandidateRow, plan_and_validate

    big, small = Architecture("tf_efficientnet_lite0", None, 96), Architecture("tf_efficientnet_lite0", None, 64)
    space = SearchSpace(architectures=(big, small), recipes=(Recipe("patchcore", 10.0), Recipe("ldknn", 10.0)),
                        smaller_banks=(Recipe("patchcore", 2.0),), refine_top=1)
    fits = {(big, "patchcore", 10.0): False, (big, "ldknn", 10.0): False, (big, "patchcore", 2.0): True,
            (small, "patchcore", 10.0): True, (small, "ldknn", 10.0): True, (small, "patchcore", 2.0): True}
    rows = []
    for a in space.architectures:
        for r in space.all_recipes:
            ok = fits[(a, r.method, r.bank_rows_per_image)]
            rows.append(CandidateRow(a, r, 0.1, 1.0, 1.0, 10, ok, Geometry((a.image_size_px,) * 2),
                                     status="not tried" if ok else "over the frame budget"))
    class BigScoresHigher(_TimedValidator):
        def validate(self, row):
            row.validation_auroc, row.status = (0.9 if row.architecture is big else 0.8), "validated"

    validator = BigScoresHigher(seconds=1.0)
    plan_and_validate(None, rows, validator, space, 100, 10, time.perf_counter(), True, lambda m: None, None)
    status = {(r.architecture, r.recipe.method, r.recipe.bank_rows_per_image): r.status for r in rows}
    assert status[(big, "patchcore", 2.0)] == "validated"  # stage A, the best of it
    assert status[(small, "patchcore", 10.0)] == "validated"  # stage A
    assert status[(small, "ldknn", 10.0)] == "validated"  # stage B: the best architecture with a recipe to try


def test_validation_goods_are_the_held_out_ones_then_fit_images_no_candidate_is_fitted_on():
    from pathlib import Path

    from adtk.toolkit.recipe_search import _subset, validation_goods
    from adtk.toolkit.samples import Sample

    def goods(prefix, count):
        return [Sample(Path(f"{prefix}{i}.png"), 0, "good", None) for i in range(count)]

    calib, fit = goods("calib", 20), goods("fit", 180)
    subsample = _subset(fit, 120, seed=0)
    chosen = validation_goods(calib, fit, subsample, limit=96, seed=0)
    assert len(chosen) == 80 and chosen[:20] == calib  # all 20 held out, then the 60 fit images outside the subsample
    assert not {s.path for s in chosen} & {s.path for s in subsample}
    assert len({s.path for s in chosen}) == 80
    assert validation_goods(calib, fit, subsample, limit=12, seed=0) == _subset(calib, 12, seed=0)


def test_validation_scores_a_map_max_candidate_as_its_artefact_does(tiny_build, tiny_dataset):
    """PatchCore's artefacts score images by the smoothed map's maximum: the search's validation scores them the
    same way from the frames' features (not by the head's own score)."""
    import numpy as np
    import torch
    from PIL import Image

    from adtk.toolkit.recipe_search import _image_scores, _map_max_scores

    graph = tiny_build.graph.eval()
    assert graph.image_score_from == "map_max"
    frames = torch.from_numpy(np.stack([np.array(Image.open(s.path).convert("RGB").resize((96, 96)))
                                        for s in tiny_dataset.test[:5]]))
    with torch.no_grad():
        features = graph.embedding(graph.backbone(graph.backbone_inputs(frames))).numpy()
        expected = graph.raw_scores(frames)[0].numpy()
    np.testing.assert_allclose(_map_max_scores(graph, features, batch=2), expected, rtol=1e-5)
    assert not np.allclose(_image_scores(graph.head, features), expected, rtol=1e-3)  # the head's own differs
