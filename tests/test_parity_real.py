"""Parity on real images: the artefact in onnxruntime against the torch reference pipeline.

The torch reference is the ScoringGraph the build composed (preprocess, backbone with the real
tf_efficientnet_lite0 weights, patch embedding, PatchCore head, map smoothing, normalisation). Each of
20 real magnetic-tile test images is scored by both, at its own size (the resize is inside the graph).
Tolerances (issue 2): pred_score within 1e-4 absolute, anomaly map within 1e-3, fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.runtime.detector import Detector
from adtk.toolkit.data import index_dataset, read_image
from tests.conftest import require_magnetic_tile, require_offline_lite0_weights

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    root = require_magnetic_tile()
    require_offline_lite0_weights()
    from adtk.toolkit.build import BuildConfig, build

    config = BuildConfig(data=root, out=tmp_path_factory.mktemp("real") / "patchcore.onnx", method="patchcore",
                         method_params={"coreset_ratio": 0.1}, backbone="tf_efficientnet_lite0",
                         image_size_px=256, max_train_images=40, calib_fraction=0.2, seed=0)
    return build(config, log=lambda message: None)


def test_artefact_matches_torch_reference_on_20_real_images(real_build):
    index = index_dataset(require_magnetic_tile())
    rng = np.random.default_rng(0)
    picks = rng.choice(len(index.test), 20, replace=False)
    samples = [index.test[i] for i in picks]
    assert len({read_image(s.path).shape for s in samples}) > 1  # really different sizes
    detector = Detector.load(real_build.artefact, backend="cpu")
    worst_score, worst_map = 0.0, 0.0
    for sample in samples:
        image = read_image(sample.path)
        with torch.no_grad():
            reference = real_build.graph(torch.from_numpy(image)[None])
        prediction = detector.predict(image[None])
        worst_score = max(worst_score, abs(float(reference.pred_score[0]) - float(prediction.pred_score[0])))
        worst_map = max(worst_map, float(np.abs(reference.anomaly_map[0].numpy() - prediction.anomaly_map[0]).max()))
        assert bool(reference.pred_label[0]) == bool(prediction.pred_label[0]) or \
            abs(float(reference.raw_score[0]) - detector.threshold) < 1e-4
    print(f"parity on 20 real images: max |pred_score diff| {worst_score:.2e}, max |map diff| {worst_map:.2e}")
    assert worst_score <= 1e-4
    assert worst_map <= 1e-3


def test_real_weights_separate_defects_better_than_chance(real_build):
    """A sanity floor on a small real build (40 images): the detector is not scoring noise."""
    from adtk.toolkit.evaluate import evaluate_artefact

    index = index_dataset(require_magnetic_tile())
    rng = np.random.default_rng(1)
    good = [s for s in index.test if s.label == 0]
    bad = [s for s in index.test if s.label == 1]
    samples = [good[i] for i in rng.choice(len(good), 30, replace=False)] + \
              [bad[i] for i in rng.choice(len(bad), 30, replace=False)]
    metrics = evaluate_artefact(real_build.artefact, index.root, samples=samples)
    assert metrics["image_auroc"] > 0.7
    assert metrics["pixel_auroc"] > 0.7
