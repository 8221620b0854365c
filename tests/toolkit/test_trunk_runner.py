"""The build's feature extraction through onnxruntime (toolkit/trunk_runner.py): same features as torch eager,
a smaller last batch padded, a disagreeing export refused (torch then), small extractions left on torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.toolkit.backbones import create_backbone
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.trunk_runner import MIN_IMAGES_FOR_ONNX, TrunkRunner


@pytest.fixture(scope="module")
def trunk():
    backbone = create_backbone("tf_efficientnet_lite0", random_weights=True, seed=0)
    return backbone, PatchEmbedding(tuple(backbone.channels)).eval()


def test_onnxruntime_features_match_torch_including_a_padded_last_batch(trunk):
    backbone, embedding = trunk
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    runner = TrunkRunner(backbone, embedding, use_onnx=True)
    runner.expect(6)
    full, last = runner(images[:4]), runner(images[4:])  # exported at batch 4; the last 2 padded to 4
    assert runner.engine == "onnxruntime" and full.shape == (4, 152, 8, 8) and last.shape == (2, 152, 8, 8)
    with torch.no_grad():
        expected = embedding(backbone(images)).numpy()
    np.testing.assert_allclose(np.concatenate([full, last]), expected, rtol=1e-4, atol=1e-4)


def test_a_disagreeing_export_falls_back_to_torch_and_says_so(trunk, monkeypatch):
    import onnxruntime

    backbone, embedding = trunk
    real = onnxruntime.InferenceSession

    class Wrong(real):
        def run(self, *args, **kwargs):
            return [output + 1.0 for output in super().run(*args, **kwargs)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Wrong)
    warnings = []
    runner = TrunkRunner(backbone, embedding, use_onnx=True, warn=warnings.append)
    images = torch.randn(2, 3, 64, 64)
    got = runner(images)
    with torch.no_grad():
        np.testing.assert_array_equal(got, embedding(backbone(images)).numpy())
    assert runner.engine == "torch" and len(warnings) == 1 and "disagrees" in warnings[0]
    runner.expect(10 * MIN_IMAGES_FOR_ONNX)
    runner(images)
    assert runner.engine == "torch"  # never onnxruntime again in this build


def test_small_extractions_stay_on_torch(trunk):
    backbone, embedding = trunk
    runner = TrunkRunner(backbone, embedding)
    runner.expect(MIN_IMAGES_FOR_ONNX - 1)
    runner(torch.randn(2, 3, 64, 64))
    assert runner.engine == "torch" and runner.session is None


def test_calibration_scores_through_the_trunk_runner_equal_the_torch_graphs(tiny_dataset, tmp_path, monkeypatch):
    from adtk.toolkit import trunk_runner
    from adtk.toolkit.build import BuildConfig, FeatureExtractorPipeline, build, raw_image_scores

    # the build's own extraction takes onnxruntime by default once an extraction is big enough (here: any)
    monkeypatch.setattr(trunk_runner, "MIN_IMAGES_FOR_ONNX", 2)
    engines, run = [], TrunkRunner.__call__

    def recording(self, images):
        features = run(self, images)
        engines.append(self.engine)
        return features

    monkeypatch.setattr(TrunkRunner, "__call__", recording)
    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "model.onnx", random_weights=True, image_size_px=64,
                         calib_fraction=0.25, method_params={"coreset_ratio": 0.25})
    graph = build(config, log=lambda message: None, index=tiny_dataset).graph
    assert engines and set(engines) == {"onnxruntime"}
    samples = list(tiny_dataset.test)  # 12 images: 3 batches of 4 through onnxruntime
    pipeline = FeatureExtractorPipeline(graph.preprocess, graph.backbone, graph.embedding, 4, use_onnx=True)
    through_runner = raw_image_scores(graph, samples, False, pipeline=pipeline)
    assert pipeline.trunk.engine == "onnxruntime"
    for got, expected in zip(through_runner, raw_image_scores(graph, samples, False)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_trunk_that_does_not_export_is_run_by_torch_and_says_so(trunk, monkeypatch):
    backbone, embedding = trunk

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    warnings = []
    runner = TrunkRunner(backbone, embedding, use_onnx=True, warn=warnings.append)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_array_equal(runner(images), embedding(backbone(images)).numpy())
    assert runner.engine == "torch" and "could not be exported (RuntimeError: unsupported operator)" in warnings[0]
