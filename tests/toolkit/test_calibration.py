"""Threshold and normalisation calibration, and what it means for a built artefact."""

from __future__ import annotations

import numpy as np
import torch

from adtk.runtime.detector import Detector
from adtk.toolkit.calibration import calibrate, f1_optimal_threshold
from adtk.toolkit.data import read_image


def test_good_only_threshold_is_the_highest_held_out_score_and_maps_good_into_lower_half():
    calibration = calibrate([1.0, 2.0, 4.0], good_map_max=[3.0, 5.0], good_map_min=[0.5, 1.0])
    assert calibration.threshold == 4.0
    assert (calibration.score_min, calibration.score_max) == (1.0, 7.0)
    assert (calibration.map_threshold, calibration.map_min, calibration.map_max) == (5.0, 0.5, 9.5)
    assert "3 held-out good" in calibration.method


def test_a_refined_build_sets_aside_the_refiners_share_of_its_highest_held_out_scores():
    """Held-out images from a polluted pool: 2 of 20 are defects (scores 50, 60); the refiner dropped 10% of the fit
    split, so the 2 highest are set aside and the threshold is the highest of the other 18, maps alike."""
    rng = np.random.default_rng(0)
    good = np.r_[rng.uniform(1.0, 2.0, 18), 50.0, 60.0][rng.permutation(20)]
    map_max, map_min = good * 3.0, good * 0.1
    plain = calibrate(good, good_map_max=map_max, good_map_min=map_min)
    refined = calibrate(good, good_map_max=map_max, good_map_min=map_min, set_aside_fraction=0.1)
    assert plain.threshold == 60.0 and plain.num_good == 20
    assert refined.threshold == np.sort(good)[-3] < 2.0 and refined.num_good == 18
    assert refined.map_threshold == 3.0 * refined.threshold
    assert "2 of 20 with the highest scores set aside" in refined.method and "10.0%" in refined.method
    # never every image, and nothing set aside at a share that rounds to none
    assert calibrate(good, set_aside_fraction=1.0).num_good == 1
    assert calibrate(good, set_aside_fraction=0.02).num_good == 20


def test_f1_optimal_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    good, bad = rng.normal(0, 1, 40), rng.normal(1.5, 1, 25)
    threshold = f1_optimal_threshold(good, bad)
    scores = np.concatenate([good, bad])
    labels = np.concatenate([np.zeros(40), np.ones(25)])

    def f1(t):
        predicted = scores >= t
        tp = (predicted & (labels == 1)).sum()
        return 2 * tp / (predicted.sum() + 25)

    best = max(f1(t) for t in np.unique(scores))
    assert np.isclose(f1(threshold), best)
    assert calibrate(good, bad).threshold == threshold


def test_held_out_good_images_score_below_threshold_and_their_maps_below_half(tiny_build):
    detector = Detector.load(tiny_build.artefact)
    images = [read_image(s.path) for s in tiny_build.calibration_samples]
    raw_scores = []
    for image in images:
        prediction = detector.predict(image[None])  # the artefact: exactly the scores the calibration saw
        assert prediction.pred_score[0] <= 0.5 and not prediction.pred_label[0]
        assert prediction.anomaly_map.max() <= 0.5 and not prediction.pred_mask.any()
        raw_scores.append(float(prediction.raw_score[0]))
        with torch.no_grad():  # the torch reference: within parity tolerance of it
            reference = tiny_build.graph(torch.from_numpy(image)[None])
        assert float(reference.pred_score[0]) <= 0.5 + 1e-4
        assert float(reference.anomaly_map.max()) <= 0.5 + 1e-4
    cal = tiny_build.manifest["calibration"]
    # good-only calibration: the threshold is the highest held-out score the artefact itself outputs
    assert max(raw_scores) == cal["threshold"] and min(raw_scores) == cal["score_min"]


def test_a_build_whose_exporter_folded_the_normalisers_exports_again_with_the_calibrated_ones(
        tiny_dataset, tiny_build, tmp_path, monkeypatch):
    """export_and_calibrate's fallback: when the calibrated constants cannot be written into the exported model
    (replace_initializers refuses: an exporter folded them), the graph is exported again with them. The artefact
    must then be the one the normal path writes: same calibration, same scores and maps."""
    import adtk.toolkit.build as build_module
    from adtk.toolkit.build import BuildConfig, build

    monkeypatch.setattr(build_module, "replace_initializers", lambda model, exported, new: False)
    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "model.onnx", method="patchcore",
                         method_params={"coreset_ratio": 0.25}, backbone="tf_efficientnet_lite0",
                         random_weights=True, image_size_px=64, calib_fraction=0.25)
    messages = []
    result = build(config, log=messages.append, index=tiny_dataset)
    assert any("exporting again" in message for message in messages)
    assert result.manifest["calibration"] == tiny_build.manifest["calibration"]
    again, normal = Detector.load(result.artefact), Detector.load(tiny_build.artefact)
    for sample in list(tiny_build.calibration_samples) + list(tiny_dataset.test)[:4]:
        image = read_image(sample.path)[None]
        got, expected = again.predict(image), normal.predict(image)
        np.testing.assert_allclose(got.pred_score, expected.pred_score, atol=1e-5)
        np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map, atol=1e-5)
