"""KNN, Mahalanobis, PaDiM and PaIRE through the real build: one artefact each, onnxruntime against the
torch reference graph (pred_score within 1e-4, fp32), and refined builds writing their image lists."""

from __future__ import annotations

import json

import pytest

from adtk.runtime.detector import Detector
from tests.conftest import assert_parity

TINY_PARAMS = {"knn": {}, "mahalanobis": {}, "padim": {"num_channels": 16}, "paire": {"pool_kernel": 2, "pool_stride": 1}}


def tiny(tiny_dataset, out, method, refine=None):
    from adtk.toolkit.build import BuildConfig, build

    config = BuildConfig(data=tiny_dataset.root, out=out, method=method, method_params=TINY_PARAMS[method],
                         backbone="tf_efficientnet_lite0", random_weights=True, image_size_px=64,
                         calib_fraction=0.25, refine=refine)
    return build(config, log=lambda message: None, index=tiny_dataset)


@pytest.mark.parametrize("method", ["knn", "mahalanobis", "paire"])  # padim: the refined build below
def test_builds_exports_and_matches_the_torch_reference(tiny_dataset, tmp_path, method):
    result = tiny(tiny_dataset, tmp_path / f"{method}.onnx", method)
    assert result.manifest["method"]["name"] == method
    assert "refinement" not in result.manifest["training"]
    assert_parity(result, tiny_dataset.test[::3])


def test_sroc_refined_padim_build_with_another_detector_writes_its_list(tiny_dataset, tmp_path):
    result = tiny(tiny_dataset, tmp_path / "padim.onnx", "padim", refine="sroc:0.25:mahalanobis")
    assert_parity(result, tiny_dataset.test[::3])
    record = result.manifest["training"]["refinement"]
    assert record["detector"] == "mahalanobis" and record["num_candidates"] == 12
    assert record["num_dropped"] == 3 and record["num_kept"] == 9 == result.manifest["training"]["num_fit_images"]
    listing = json.loads((tmp_path / "padim.onnx.training.json").read_text())
    assert record["list_file"] == "padim.onnx.training.json"
    assert len(listing["kept"]) == 9 and len(listing["dropped"]) == 3
    assert {str(s.path) for s in result.fit_samples} == set(listing["kept"])
    # the dropped images are the refiner's three highest in-sample scores
    scores = {row["path"]: row["score"] for row in listing["images"]}
    assert min(scores[p] for p in listing["dropped"]) >= max(scores[p] for p in listing["kept"])
    assert Detector.load(result.artefact).manifest["training"]["refinement"] == record
