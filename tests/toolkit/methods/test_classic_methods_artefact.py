"""KNN, Mahalanobis, PaDiM and PaIRE through the real build: one artefact each, onnxruntime against the
torch reference graph (pred_score within 1e-4, fp32), and refined builds writing their image lists. Mahalanobis
(an image-level head, whose own score is far from its map's) takes its image score from the map's maximum
(--image-score-from map_max), so that path is parity-tested without another build."""

from __future__ import annotations

import json

import pytest

from adtk.runtime.detector import Detector
from adtk.runtime.images import read_image
from tests.conftest import assert_parity

TINY_PARAMS = {"knn": {}, "mahalanobis": {}, "padim": {"num_channels": 16}, "paire": {"pool_kernel": 2, "pool_stride": 1}}


def tiny(tiny_dataset, out, method, refine=None, image_score_from="head"):
    from adtk.toolkit.build import BuildConfig, build

    config = BuildConfig(data=tiny_dataset.root, out=out, method=method, method_params=TINY_PARAMS[method],
                         backbone="tf_efficientnet_lite0", random_weights=True, image_size_px=64,
                         calib_fraction=0.25, refine=refine, image_score_from=image_score_from)
    return build(config, log=lambda message: None, index=tiny_dataset)


@pytest.mark.parametrize("method, image_score_from", [("knn", "head"), ("mahalanobis", "map_max"),
                                                      ("paire", "head")])  # padim: the refined build below
def test_builds_exports_and_matches_the_torch_reference(tiny_dataset, tmp_path, method, image_score_from):
    result = tiny(tiny_dataset, tmp_path / f"{method}.onnx", method, image_score_from=image_score_from)
    assert result.manifest["method"]["name"] == method
    assert result.manifest["postprocess"]["image_score_from"] == image_score_from
    assert "refinement" not in result.manifest["training"]
    assert_parity(result, tiny_dataset.test[::3])
    if image_score_from == "map_max":
        # the artefact's raw score is its own raw map's maximum, and the threshold was calibrated on that score:
        # with good images only it is the highest held-out map maximum, i.e. the map's threshold
        detector = Detector.load(result.artefact, backend="cpu")
        for sample in tiny_dataset.test[::3]:
            outputs = detector.backend.run({"frames": read_image(sample.path)[None]})
            assert float(outputs["raw_score"][0]) == float(outputs["raw_anomaly_map"][0].max())
        calibration = result.manifest["calibration"]
        assert calibration["threshold"] == pytest.approx(calibration["map_threshold"], rel=1e-6)


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
