"""Cost model: FLOPs, bytes and memory of small graphs against hand-computed references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from adtk.export.cost_model import estimate_cost  # noqa: E402
from adtk.export.targets import load_target  # noqa: E402


def conv_bank_graph(channels=8, size=16, rows=300, dims=8):
    """x [1, 3, S, S] -> Conv 3x3 (C) -> Reshape [1, S*S, C] -> MatMul bank^T [C, rows] -> ReduceMin."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(channels, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(dims, rows)).astype(np.float32), "bank_t"),
             numpy_helper.from_array(np.array([1, size * size, channels], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1], name="tr"),
             helper.make_node("Reshape", ["ct", "shape"], ["q"], name="rs"),
             helper.make_node("MatMul", ["q", "bank_t"], ["d"], name="mm"),
             helper.make_node("ReduceMin", ["d", "axes"], ["y"], keepdims=0, name="min")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_flops_match_hand_counts_and_the_bank_part_is_found():
    channels, size, rows = 8, 16, 300
    target = load_target("orin_nano_8gb")
    estimate = estimate_cost(conv_bank_graph(channels, size, rows), target, "fp32")
    by_name = {n.name: n for n in estimate.nodes}
    assert by_name["conv"].flops == 2 * (size * size * channels) * (3 * 3 * 3)
    assert by_name["mm"].flops == 2 * (size * size) * rows * channels
    assert by_name["min"].flops == size * size * rows
    assert by_name["mm"].scales_with_head and by_name["min"].scales_with_head
    assert not by_name["conv"].scales_with_head
    # bytes of the MatMul = its inputs + output, float32
    assert by_name["mm"].bytes == 4 * (size * size * channels + channels * rows + size * size * rows)
    weights = 4 * (channels * 27 + channels * rows) + 8 * 3 + 8
    assert estimate.weights_mb * 2**20 == pytest.approx(weights)


def test_latency_follows_the_roofline_and_grows_with_the_bank():
    target = dataclasses.replace(load_target("orin_nano_8gb"), layer_overhead_ms=0.0)
    small = estimate_cost(conv_bank_graph(rows=300), target, "fp32")
    large = estimate_cost(conv_bank_graph(rows=3000), target, "fp32")
    assert large.head_latency_ms > 5 * small.head_latency_ms
    expected_ms = sum(max(n.flops / (target.peak_ops_per_s("fp32") * target.compute_efficiency),
                          n.bytes / (target.memory_bandwidth_gbs * 1e9 * target.memory_efficiency)) * 1e3
                      for n in small.nodes)
    assert small.latency_ms == pytest.approx(expected_ms)
    tight = dataclasses.replace(target, frame_budget_ms=small.latency_ms / 2)
    refused = estimate_cost(conv_bank_graph(rows=300), tight, "fp32")
    assert not refused.fits and "frame budget" in refused.reasons[0]
