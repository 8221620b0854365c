"""Opset 18 -> 17 down-conversion: each rewrite on a hand-made graph scores the same in onnxruntime (and as a
numpy reference), the refusals name their node, and a real artefact converts exactly and builds for Xavier NX."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from adtk.export.passes.frame_branch import inline_else_branches  # noqa: E402
from adtk.export.passes.graph import load_unsealed  # noqa: E402
from adtk.export.passes.opset import default_opset, downgrade_opset  # noqa: E402
from adtk.runtime.errors import TargetError  # noqa: E402

# onnx docs/Changelog.md, opset 18: the ops of the default domain whose form changed (written out by hand, so
# the test does not reuse the pass's own schema lookup)
CHANGED_IN_18 = {"ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                 "ReduceLogSumExp", "ReduceSumSquare", "Pad", "Resize", "Split", "ScatterElements", "ScatterND",
                 "LpPool"}


def model(nodes, inits=(), inputs=None, outputs=("y",)):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    # outputs declared without a shape fail onnx's checker: let shape inference fill them in
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                                                ir_version=8))


def run(m, feeds):
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def converted_runs_the_same(m, feeds):
    """Down-convert, check the result is an opset-17 model onnx accepts, and compare the two in onnxruntime."""
    old, (new, report) = m.SerializeToString(), downgrade_opset(m, 17)
    assert m.SerializeToString() == old  # the input model is left alone
    assert default_opset(new) == 17 and report.to_opset == 17
    onnx.checker.check_model(new, full_check=True)
    before, after = run(m, feeds), run(new, feeds)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    return new, report, after


X = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)}


@pytest.mark.parametrize("op, reference", [("ReduceMax", np.max), ("ReduceMean", np.mean), ("ReduceL2", None)])
@pytest.mark.parametrize("axes, keepdims", [([1, -1], 0), ([2], 1), ([], 0)])
def test_reduction_axes_input_becomes_the_attribute(op, reference, axes, keepdims):
    # the axes as a Constant node, as torch's exporter writes them, and as an initializer
    for as_node in (True, False):
        nodes = [helper.make_node(op, ["x", "axes"] if axes else ["x"], ["y"], keepdims=keepdims, name="reduce")]
        inits = {}
        if axes and as_node:
            nodes.insert(0, helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(
                np.array(axes, np.int64))))
        elif axes:
            inits["axes"] = np.array(axes, np.int64)
        new, report, (y,) = converted_runs_the_same(model(nodes, inits), X)
        node = new.graph.node[-1]
        assert list(node.input) == ["x"] and report.rewritten == {op: 1}
        assert {a.name: list(a.ints) for a in node.attribute if a.name == "axes"} == ({"axes": axes} if axes else {})
        assert not any(n.op_type == "Constant" for n in new.graph.node) and not new.graph.initializer  # dropped
        if reference is not None:
            expected = reference(X["x"], axis=tuple(axes) if axes else None, keepdims=bool(keepdims))
            np.testing.assert_allclose(y, expected, rtol=1e-6)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_pad_axes_input_is_expanded_to_every_axis(mode):
    axes, pads = [1, -1], [1, 2, 0, 3]  # axis 1: 1 before, 0 after; axis 3: 2 before, 3 after
    inputs = ["x", "pads", "value", "axes"] if mode == "constant" else ["x", "pads", "", "axes"]
    m = model([helper.make_node("Pad", inputs, ["y"], mode=mode, name="pad")],
              {"pads": np.array(pads, np.int64), "axes": np.array(axes, np.int64), "value": np.float32(1.5)})
    new, report, (y,) = converted_runs_the_same(m, X)
    assert len(new.graph.node[0].input) == (3 if mode == "constant" else 2) and report.rewritten == {"Pad": 1}
    assert numpy_helper.to_array(next(i for i in new.graph.initializer if i.name == new.graph.node[0].input[1])
                                 ).tolist() == [0, 1, 0, 2, 0, 0, 0, 3]
    width = [(0, 0), (1, 0), (0, 0), (2, 3)]
    expected = np.pad(X["x"], width, mode="constant", constant_values=1.5) if mode == "constant" else \
        np.pad(X["x"], width, mode="reflect")
    np.testing.assert_array_equal(y, expected)


def test_pad_without_axes_is_unchanged_apart_from_the_opset():
    m = model([helper.make_node("Pad", ["x", "pads"], ["y"], mode="edge")], {"pads": np.arange(8, dtype=np.int64) % 3})
    new, report, _ = converted_runs_the_same(m, X)
    assert new.graph.node[0] == m.graph.node[0] and report.rewritten == {"Pad": 1}


@pytest.mark.parametrize("with_sizes", [False, True])
def test_resize_default_new_attributes_are_dropped(with_sizes):
    attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel", "antialias": 0,
             "keep_aspect_ratio_policy": "stretch"}
    if with_sizes:
        m = model([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], axes=[0, 1, 2, 3], name="resize",
                                    **attrs)], {"sizes": np.array([2, 3, 7, 3], np.int64)})
    else:
        m = model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", **attrs)],
                  {"scales": np.array([1, 1, 2.5, 0.6], np.float32)})
    new, report, (y,) = converted_runs_the_same(m, X)
    assert {a.name for a in new.graph.node[0].attribute} == {"mode", "coordinate_transformation_mode"}
    assert report.rewritten == {"Resize": 1}
    assert y.shape == (2, 3, 10, 3) if not with_sizes else y.shape == (2, 3, 7, 3)


def test_split_num_outputs_becomes_constant_sizes():
    x = np.arange(2 * 7 * 3, dtype=np.float32).reshape(2, 7, 3)
    m = model([helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3, name="split")],
              inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 7, 3])], outputs=("a", "b", "c"))
    new, report, outs = converted_runs_the_same(m, {"x": x})
    assert not any(a.name == "num_outputs" for a in new.graph.node[0].attribute) and report.rewritten == {"Split": 1}
    for got, expected in zip(outs, np.split(x, [3, 6], axis=1), strict=True):  # ceil(7 / 3) = 3: 3, 3, 1
        np.testing.assert_array_equal(got, expected)


def test_lppool_and_scatter_default_forms_convert():
    m = model([helper.make_node("LpPool", ["x"], ["p"], kernel_shape=[2, 2], p=2, ceil_mode=0, dilations=[1, 1]),
               helper.make_node("ScatterElements", ["p", "i", "u"], ["y"], axis=1, reduction="add")],
              {"i": np.zeros((1, 1, 1, 1), np.int64), "u": np.ones((1, 1, 1, 1), np.float32)})
    _, report, _ = converted_runs_the_same(m, X)
    assert report.rewritten == {"LpPool": 1, "ScatterElements": 1}


def refusal(m) -> str:
    with pytest.raises(TargetError) as caught:
        downgrade_opset(m, 17)
    return str(caught.value)


def test_forms_without_an_exact_older_equivalent_are_refused_by_name():
    antialias = model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1,
                                        name="blurry_resize")], {"scales": np.array([1, 1, .5, .5], np.float32)})
    message = refusal(antialias)
    assert "Resize 'blurry_resize'" in message and "antialias" in message
    computed_axes = model([helper.make_node("ReduceMax", ["x", "axes"], ["y"], name="max_over_runtime_axes")],
                          inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                                  helper.make_tensor_value_info("axes", TensorProto.INT64, [1])])
    message = refusal(computed_axes)
    assert "ReduceMax 'max_over_runtime_axes'" in message and "computed" in message
    dynamic_split = model([helper.make_node("Split", ["x"], ["a", "b"], axis=0, num_outputs=2, name="halves")],
                          inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])], outputs=("a", "b"))
    assert "Split 'halves'" in refusal(dynamic_split)
    new_op = model([helper.make_node("Mish", ["x"], ["m"], name="mish"),
                    helper.make_node("ScatterND", ["m", "i", "u"], ["y"], reduction="max", name="scatter_max")],
                   {"i": np.zeros((1, 4), np.int64), "u": np.ones(1, np.float32)})
    message = refusal(new_op)  # every refused node is listed, not just the first
    assert "Mish 'mish'" in message and "ScatterND 'scatter_max'" in message and "max" in message


def test_a_model_already_at_the_target_opset_is_returned_as_is():
    m = model([helper.make_node("Relu", ["x"], ["y"])])
    same, report = downgrade_opset(m, 18)
    assert same == m and report.rewritten == {} and report.from_opset == report.to_opset == 18


def test_the_tiny_artefact_converts_exactly(tiny_build):
    original = load_unsealed(tiny_build.artefact.read_bytes())
    converted, report = downgrade_opset(original, 17)
    onnx.checker.check_model(converted, full_check=True)
    assert default_opset(original) == 18 and default_opset(converted) == 17
    # the frame-size If is converted as its general branch (passes/frame_branch.py): count that branch's nodes
    expected = Counter(n.op_type for n in inline_else_branches(original)[0].graph.node if n.op_type in CHANGED_IN_18)
    assert expected and report.rewritten == dict(expected)  # every opset-18 form was converted
    for node in converted.graph.node:  # and none is left
        attrs = {a.name for a in node.attribute}
        assert not (node.op_type.startswith("Reduce") and node.op_type != "ReduceSum" and len(node.input) > 1)
        assert not (node.op_type == "Pad" and len(node.input) > 3)
        assert not (node.op_type == "Resize" and attrs & {"antialias", "axes", "keep_aspect_ratio_policy"})
        assert not (node.op_type == "Split" and "num_outputs" in attrs)
    assert list(converted.metadata_props) == list(original.metadata_props)
    rng = np.random.default_rng(0)
    for height, width in [(64, 64), (80, 96), (50, 70)]:  # frames are resized inside the graph
        frames = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        for before, after in zip(run(original, {"frames": frames}), run(converted, {"frames": frames}), strict=True):
            np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_a_build_for_xavier_nx_is_down_converted_and_scores_like_the_generic_build(tiny_build, tiny_dataset,
                                                                                    tmp_path):
    from adtk.runtime.detector import Detector
    from adtk.toolkit.build import BuildConfig, build

    # the tiny_build fixture's configuration, plus the target (fp32, to compare with the generic fp32 build)
    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "xavier.onnx", method="patchcore",
                         method_params={"coreset_ratio": 0.25}, backbone="tf_efficientnet_lite0",
                         random_weights=True, image_size_px=64, calib_fraction=0.25, target="xavier_nx",
                         precision="fp32")
    result = build(config, log=lambda message: None, index=tiny_dataset)
    assert default_opset(onnx.load(str(result.artefact))) == 17
    assert result.manifest["target"]["name"] == "xavier_nx"
    assert result.manifest["target"]["precision_details"]["opset"]["from"] == 18
    assert result.manifest["target"]["precision_details"]["opset"]["to"] == 17
    frames = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    device, generic = Detector.load(result.artefact, backend="cpu"), Detector.load(tiny_build.artefact, backend="cpu")
    got, expected = device.predict(frames), generic.predict(frames)
    np.testing.assert_allclose(got.pred_score, expected.pred_score, atol=1e-4)
    np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map, atol=1e-4)
