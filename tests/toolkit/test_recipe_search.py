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
