"""INT8 must score like fp32 on every x86 CPU: no int16 saturation in onnxruntime's U8S8 kernels.

A hand-made graph where saturation is certain if it can happen: bright frames drive a ReLU6 to its calibrated
maximum (every activation quantises to u8 255), and a 1x1 convolution with equal positive weights (every
weight quantises to the per-channel maximum). With 8-bit weights, each pair of products is 2 x 255 x 127 =
64,770, which AVX2 / AVX-512 non-VNNI kernels clip to 32,767 (the conv's output halves: the 2026-12 regression,
bench/results/int8_regression.md). With the pass's 7-bit weights, 2 x 255 x 64 = 32,640 cannot saturate.
The weight-range assertion holds on any CPU; the score comparison fails on the affected CPUs only.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from adtk.export.passes.int8 import quantize_backbone_int8  # noqa: E402

CHANNELS, DIMS, ROWS, SIZE = 64, 16, 128, 16


def saturating_model():
    """frames uint8 [1, S, S, 3] -> stem conv -> ReLU6 -> 1x1 conv (equal positive weights) -> 1x1 conv
    -> patches [P, DIMS] -> distance to the nearest row of a bank [ROWS, DIMS] (|m|^2 - 2 q.m, ReduceMin) ->
    image score = max over patches, plus the stage output as `features`."""
    rng = np.random.default_rng(0)
    bank = rng.normal(0.0, 4.0, (ROWS, DIMS)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.full((CHANNELS, 3, 1, 1), 4.0, np.float32), "stem_w"),
        numpy_helper.from_array(np.full((CHANNELS, CHANNELS, 1, 1), 0.05, np.float32), "mix_w"),
        numpy_helper.from_array(rng.normal(0.0, 0.2, (DIMS, CHANNELS, 1, 1)).astype(np.float32), "proj_w"),
        numpy_helper.from_array(np.float32(0.0), "zero"),
        numpy_helper.from_array(np.float32(6.0), "six"),
        numpy_helper.from_array(np.float32(1.0 / 255.0), "inv255"),
        numpy_helper.from_array(np.array([DIMS, -1], np.int64), "to_dp"),
        numpy_helper.from_array((-2.0 * bank).T.copy(), "bank_t_neg2"),  # [DIMS, ROWS]: a head matrix
        numpy_helper.from_array((bank * bank).sum(1), "bank_sq_norms"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    nodes = [
        helper.make_node("Cast", ["frames"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["x_nchw", "inv255"], ["x"]),
        helper.make_node("Conv", ["x", "stem_w"], ["stem"]),
        helper.make_node("Clip", ["stem", "zero", "six"], ["stem_act"]),
        helper.make_node("Conv", ["stem_act", "mix_w"], ["mix"]),
        helper.make_node("Conv", ["mix", "proj_w"], ["features"]),
        helper.make_node("Reshape", ["features", "to_dp"], ["q_dp"]),
        helper.make_node("Transpose", ["q_dp"], ["queries"], perm=[1, 0]),  # [P, DIMS]
        helper.make_node("MatMul", ["queries", "bank_t_neg2"], ["cross"]),
        helper.make_node("Add", ["cross", "bank_sq_norms"], ["partial"]),
        helper.make_node("ReduceMin", ["partial", "last"], ["nearest"], keepdims=0),
        helper.make_node("ReduceMax", ["nearest"], ["pred_score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "saturating", [helper.make_tensor_value_info("frames", TensorProto.UINT8, [1, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, DIMS, SIZE, SIZE])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model, frame):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["pred_score", "features"], {"frames": frame[None]})


@pytest.mark.parametrize("symmetric", [False, True], ids=["onnxruntime", "tensorrt"])
def test_int8_weights_leave_no_room_for_u8s8_saturation(symmetric):
    model = saturating_model()
    rng = np.random.default_rng(1)
    calibration = [rng.integers(200, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)]
    quantised = quantize_backbone_int8(model, calibration, symmetric=symmetric)

    weights = {i.name: numpy_helper.to_array(i) for i in quantised.graph.initializer
               if i.data_type == TensorProto.INT8 and len(i.dims) >= 2}
    assert weights, "no quantised weight found"
    for name, values in weights.items():  # any CPU: no pair of u8 x s8 products can exceed int16
        assert 2 * 255 * int(np.abs(values.astype(np.int32)).max()) <= 32767, name

    frame = np.full((SIZE, SIZE, 3), 250, np.uint8)
    (score_fp32, features_fp32), (score_int8, features_int8) = run(model, frame), run(quantised, frame)
    # the mixing conv reads every activation at its calibrated maximum: saturation would halve its output
    rel = np.linalg.norm(features_int8 - features_fp32) / np.linalg.norm(features_fp32)
    assert rel < 0.05, f"INT8 stage output off by {rel:.1%} of fp32 (saturating integer kernels?)"
    assert abs(float(score_int8) - float(score_fp32)) <= 0.05 * abs(float(score_fp32)) + 1e-3
