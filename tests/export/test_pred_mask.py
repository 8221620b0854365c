"""pred_mask (anomalib's fourth output): inside the scoring graph, so every method's artefact has it."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import assert_mask_parity


def test_pred_mask_is_an_artefact_output_matching_the_torch_reference(tiny_build, tiny_dataset):
    from adtk.runtime.detector import Detector
    from adtk.runtime.images import read_image

    detector = Detector.load(tiny_build.artefact, backend="cpu")
    assert "pred_mask" in detector.manifest["outputs"]
    assert detector.manifest["outputs"]["order"][:4] == ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    masked_pixels = 0
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)  # unlike any training image
    for image in [read_image(sample.path) for sample in tiny_dataset.test] + [noise]:
        prediction = detector.predict(image[None])
        with torch.no_grad():
            reference = tiny_build.graph(torch.from_numpy(image)[None])
        assert prediction.pred_mask.shape == prediction.anomaly_map.shape
        assert_mask_parity(prediction.pred_mask[0], reference.pred_mask[0].numpy(), reference.anomaly_map[0].numpy())
        # the mask is the map threshold: anomaly_map > 0.5 (up to the map's rounding at the boundary)
        boundary = np.abs(prediction.anomaly_map[0] - 0.5) <= 1e-6
        assert np.array_equal(prediction.pred_mask[0][~boundary], (prediction.anomaly_map[0] > 0.5)[~boundary])
        masked_pixels += int(prediction.pred_mask.sum())
    assert masked_pixels > 0  # a frame of noise lights pixels up: the test can fail


def test_onnx_graph_declares_pred_mask_bool_with_the_map_shape(tiny_build):
    import onnx

    model = onnx.load(str(tiny_build.artefact))
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert outputs["pred_mask"].elem_type == onnx.TensorProto.BOOL
    assert len(outputs["pred_mask"].shape.dim) == len(outputs["anomaly_map"].shape.dim) == 3
