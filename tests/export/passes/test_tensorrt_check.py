"""Static TensorRT check: one small graph per rule is refused; a compliant graph and real artefacts pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from adtk.export.passes.graph import load_unsealed  # noqa: E402
from adtk.export.passes.tensorrt_check import check_tensorrt, require_tensorrt_compatible  # noqa: E402
from adtk.export.targets import load_target  # noqa: E402
from adtk.runtime.errors import TargetError  # noqa: E402

TARGET = load_target("orin_nano_8gb")


def model(nodes, inits=(), inputs=None, opset=18, domains=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)],
                              list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *(helper.make_opsetid(d, 1) for d in domains)])


def const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def rules(m, target=TARGET, **kw):
    return {v.rule for v in check_tensorrt(m, target, **kw)}


def test_a_compliant_graph_passes():
    m = model([helper.make_node("Relu", ["x"], ["r"]),
               helper.make_node("TopK", ["r", "k"], ["y", "i"], axis=-1)], [const("k", np.array([3], np.int64))])
    assert check_tensorrt(m, TARGET) == []


def test_unsupported_and_foreign_ops_are_refused():
    assert "op" in rules(model([helper.make_node("NonZero", ["x"], ["y"])]))
    foreign = model([helper.make_node("FusedGemm", ["x", "x"], ["y"], domain="com.microsoft")], domains=["com.microsoft"])
    assert "op" in rules(foreign)


def test_opset_newer_than_the_parser_is_refused():
    m = model([helper.make_node("Relu", ["x"], ["y"])], opset=18)
    assert "opset" in rules(m, dataclasses.replace(TARGET, onnx_max_opset=17))
    assert "opset" in rules(m, load_target("xavier_nx"))  # TensorRT 8.5 reads opset <= 17
    assert "opset" not in rules(m)


def test_topk_over_3840_or_with_a_computed_k_is_refused():
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5000])]
    big = model([helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=-1)], [const("k", np.array([3841], np.int64))], x)
    assert "topk_k" in rules(big)
    ok = model([helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=-1)], [const("k", np.array([3840], np.int64))], x)
    assert "topk_k" not in rules(ok)
    computed = model([helper.make_node("Shape", ["x"], ["s"]),
                      helper.make_node("Slice", ["s", "one", "two"], ["k"]),
                      helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=-1)],
                     [const("one", np.array([1], np.int64)), const("two", np.array([2], np.int64))], x)
    assert "topk_k" in rules(computed)


def test_a_tensor_over_two_to_the_31_elements_is_refused():
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1])]
    m = model([helper.make_node("Expand", ["x", "shape"], ["y"])], [const("shape", np.array([65536, 4, 8192], np.int64))], x)
    assert "tensor_elements" in rules(m)  # 65536 * 4 * 8192 = 2^31 elements
    m_ok = model([helper.make_node("Expand", ["x", "shape"], ["y"])], [const("shape", np.array([1024, 4, 8], np.int64))], x)
    assert "tensor_elements" not in rules(m_ok)


def test_file_over_2_gb_is_refused():
    m = model([helper.make_node("Relu", ["x"], ["y"])])
    assert "file_size" in rules(m, file_bytes=2 * 1024**3)
    assert "file_size" not in rules(m, file_bytes=2 * 1024**3 - 1)


def test_shapes_that_stay_dynamic_and_non_constant_operands_are_refused():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8]),
              helper.make_tensor_value_info("shape", TensorProto.INT64, [2])]
    reshape = model([helper.make_node("Reshape", ["x", "shape"], ["y"])], inputs=inputs)
    assert "static_shape" in rules(reshape)
    conv_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
                   helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 4, 1, 1])]
    runtime_weights = model([helper.make_node("Conv", ["x", "w"], ["y"])], inputs=conv_inputs)
    assert "static_shape" in rules(runtime_weights)


def test_int8_with_a_nonzero_or_uint8_zero_point_is_refused():
    def qdq(zero_point):
        return model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                      helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                     [const("s", np.float32(0.1)), const("z", zero_point)])

    assert "int8_qdq" in rules(qdq(np.uint8(128)))
    assert "int8_qdq" in rules(qdq(np.int8(3)))
    assert "int8_qdq" not in rules(qdq(np.int8(0)))


def test_real_artefact_passes_for_every_jetson_target_of_tensorrt_10(tiny_build):
    artefact = load_unsealed(tiny_build.artefact.read_bytes())
    for name in ("orin_nano_8gb", "orin_nx_16gb", "agx_orin_64gb", "x86_cuda"):
        require_tensorrt_compatible(artefact, load_target(name))
    with pytest.raises(TargetError, match=r"opset 18 > 17"):
        require_tensorrt_compatible(artefact, load_target("xavier_nx"))
