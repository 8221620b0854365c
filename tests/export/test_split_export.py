"""export/split_export.py: the scoring graph exported as its preprocess + its model-size part (TorchScript tracer,
merged) computes what torch.export's whole-graph model computes, at every frame size and batch, and what the torch
reference computes; the pieces it rests on (constant padding, folded shapes, the If on the frame's rows) hold."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from adtk.export.formats import OUTPUT_NAMES, export_in_two_parts, export_onnx_bytes, torch_export_bytes
from adtk.export.split_export import fold_static_shapes, with_constant_padding
from adtk.runtime.artefact import INPUT_NAME
from adtk.toolkit.preprocess import SMALL_FRAME_ROWS


def session(model_bytes: bytes):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def frames(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


# frame sizes: below the model size, odd, at the whole-frame resize's row limit, just above it (gathered rows), tall
FRAME_SIZES = [(64, 64), (37, 90), (SMALL_FRAME_ROWS * 64, 70), (SMALL_FRAME_ROWS * 64 + 1, 70), (300, 41)]


@pytest.fixture(scope="module")
def tiny_graph(tiny_build):
    """The tiny PatchCore build's scoring graph (tf_efficientnet_lite0, random weights, 64 px: Conv2dSame layers)."""
    return tiny_build.graph.eval()


@pytest.fixture(scope="module")
def two_parts(tiny_graph):
    return export_in_two_parts(tiny_graph, (64, 64), 18, None)


@pytest.mark.parametrize("size", FRAME_SIZES)
@pytest.mark.parametrize("batch", [1, 3])
def test_the_two_part_model_computes_what_the_whole_graph_export_and_torch_compute(tiny_graph, two_parts, size,
                                                                                   batch):
    whole = session(torch_export_bytes(tiny_graph, (64, 64), 18, None, list(OUTPUT_NAMES)))
    split = session(two_parts)
    feed = frames(batch, *size, seed=size[0] + batch)
    got = dict(zip(OUTPUT_NAMES, split.run(None, {INPUT_NAME: feed})))
    expected = dict(zip(OUTPUT_NAMES, whole.run(None, {INPUT_NAME: feed})))
    with torch.no_grad():
        reference = tiny_graph(torch.from_numpy(feed))._asdict()
    for name in ("pred_score", "raw_score", "anomaly_map", "raw_anomaly_map"):
        scale = 1.0 + float(np.abs(expected[name]).max())
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5 * scale, err_msg=name)
        np.testing.assert_allclose(got[name], reference[name].numpy(), rtol=0, atol=1e-4 * scale, err_msg=name)
    for name in ("pred_label", "pred_mask"):  # a threshold can sit between two rounding-level values; nearly all agree
        assert np.mean(got[name] == expected[name]) >= 0.999, name


def test_the_frame_size_choice_is_the_one_top_level_if_and_the_rest_has_no_run_time_padding(two_parts):
    model = onnx.load_from_string(two_parts)
    ifs = [node for node in model.graph.node if node.op_type == "If"]
    assert [node.name for node in ifs] == ["front/resize"]
    constants = {init.name for init in model.graph.initializer} | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    pads = [node for node in model.graph.node if node.op_type == "Pad"]
    assert all(node.input[1] in constants for node in pads)  # folded into the convs when a runtime loads it
    assert not [node for node in model.graph.node if node.op_type in ("Ceil", "ConstantOfShape")]


def test_a_scoring_graph_is_exported_in_two_parts(tiny_graph, two_parts):
    """export_onnx_bytes takes the two-part path for a scoring graph (it falls back to torch.export only when the
    tracer fails): the same model as export_in_two_parts."""
    model = onnx.load_from_string(export_onnx_bytes(tiny_graph, (64, 64)))
    assert "front/resize" in {node.name for node in model.graph.node}
    assert [value.name for value in model.graph.input] == [INPUT_NAME]
    assert [value.name for value in model.graph.output] == list(OUTPUT_NAMES)
    assert sorted(opset.domain for opset in model.opset_import) == [""]  # once (onnxruntime's quantiser needs it)


def test_a_static_frame_export_computes_what_the_dynamic_one_does_at_that_size(tiny_graph, two_parts):
    static = session(export_in_two_parts(tiny_graph, (64, 64), 18, (90, 70)))
    feed = frames(1, 90, 70, seed=5)
    np.testing.assert_allclose(static.run(None, {INPUT_NAME: feed})[0], session(two_parts).run(None, {
        INPUT_NAME: feed})[0], rtol=0, atol=1e-6)


def test_constant_padding_keeps_the_outputs_and_leaves_the_source_backbone_alone(tiny_graph):
    from timm.layers.conv2d_same import Conv2dSame

    backbone = tiny_graph.backbone
    images = torch.randn(2, 3, 64, 64)
    frozen = with_constant_padding(backbone, images)
    assert frozen is not backbone
    assert not any(type(module) is Conv2dSame for module in frozen.modules())
    assert any(type(module) is Conv2dSame for module in backbone.modules())
    with torch.no_grad():
        for got, expected in zip(frozen(images), backbone(images)):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_layer_called_at_two_sizes_keeps_its_run_time_padding():
    from timm.layers.conv2d_same import Conv2dSame

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = Conv2dSame(3, 3, 3, stride=2)

        def forward(self, x):
            return self.conv(x), self.conv(x[..., 1:, 1:])

    module = Twice()
    frozen = with_constant_padding(module, torch.randn(1, 3, 16, 16))
    assert type(frozen.conv) is Conv2dSame


def test_folding_leaves_only_the_batch_dynamic():
    """A traced reshape by the input's own sizes: every Shape that reads a static dim becomes a constant."""
    import io

    class Flatten(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3]).sum(-1)

    buffer = io.BytesIO()
    torch.onnx.export(Flatten(), (torch.randn(2, 3, 4, 5),), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=18, dynamo=False)
    traced = onnx.load_from_string(buffer.getvalue())
    assert [node.op_type for node in traced.graph.node].count("Shape") == 4  # as traced: one per size read
    model = fold_static_shapes(traced)
    assert [node.op_type for node in model.graph.node].count("Shape") == 1  # only the batch is read at run time
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    reshaped = next(node.output[0] for node in model.graph.node if node.op_type == "Reshape")
    info = next(value for value in inferred.graph.value_info if value.name == reshaped)
    assert [d.dim_value for d in info.type.tensor_type.shape.dim][1:] == [12, 5]  # known once folded
    x = np.random.default_rng(0).standard_normal((4, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(session(model.SerializeToString()).run(None, {"x": x})[0],
                               x.reshape(4, 12, 5).sum(-1), rtol=1e-6)


@pytest.mark.parametrize("with_index", [False, True])
def test_the_tracer_records_the_whole_bank_search_without_computing_the_whole_matrix(monkeypatch, with_index):
    """While the TorchScript tracer runs a head on real frames, the bank search runs block by block (a 70k-row bank's
    whole [N, M] matrix was 574 MB at trace time); the recorded graph is still one MatMul + Add + ReduceMin (and
    ArgMin), the form the compiler's passes find, and computes the same minima."""
    import io

    from adtk.toolkit import search

    rng = np.random.default_rng(0)
    bank = rng.standard_normal((700, 8)).astype(np.float32)

    class Search(nn.Module):
        def __init__(self):
            super().__init__()
            search.register_search_bank(self, bank)

        def forward(self, queries):
            if with_index:
                return search.nearest_partial_sq_distances(queries, self.bank_t_neg2, self.bank_sq_norms)
            return search.min_partial_sq_distances(queries, self.bank_t_neg2, self.bank_sq_norms)

    def whole_matrix(*args):
        raise AssertionError("the whole distance matrix was computed while tracing")

    monkeypatch.setattr(search, "partial_sq_distances", whole_matrix)
    queries = torch.from_numpy(rng.standard_normal((300, 8)).astype(np.float32))
    buffer = io.BytesIO()
    torch.onnx.export(Search(), (queries,), buffer, input_names=["q"], dynamic_axes={"q": {0: "n"}},
                      opset_version=18, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    ops = [node.op_type for node in model.graph.node if node.op_type != "Constant"]
    assert ops == (["MatMul", "Add", "ReduceMin", "ArgMin"] if with_index else ["MatMul", "Add", "ReduceMin"])
    more = rng.standard_normal((50, 8)).astype(np.float32)
    partial = (bank ** 2).sum(1) - 2.0 * more @ bank.T
    got = session(model.SerializeToString()).run(None, {"q": more})
    np.testing.assert_allclose(got[0], partial.min(1), rtol=1e-5, atol=1e-4)
    if with_index:
        np.testing.assert_array_equal(got[1], partial.argmin(1))


def test_folding_reads_a_shape_nodes_start_attribute():
    """Shape(x, start=2) -> Gather(1) is x's dim 3 (5 here), not dim 1: the fold applies Shape's own slice."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["hw"], start=2),
         helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [], [1])),
         helper.make_node("Gather", ["hw", "one"], ["w"]),
         helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = fold_static_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert "Shape" not in [node.op_type for node in model.graph.node]
    x = np.zeros((2, 3, 4, 5), np.float32)
    assert session(model.SerializeToString()).run(None, {"x": x})[0] == 5.0


def test_parts_that_name_a_value_alike_merge_with_the_parts_copy_renamed():
    """Each part is traced alone and the tracer names values by position: both may hold "/Constant_output_0"."""
    from onnx import TensorProto, helper, numpy_helper

    from adtk.export.split_export import FRONT_OUTPUT, merge_front_and_part

    def one_add(name_in, name_out, value):
        constant = helper.make_node("Constant", [], ["/Constant_output_0"],
                                    value=numpy_helper.from_array(np.float32(value)))
        graph = helper.make_graph([constant, helper.make_node("Add", [name_in, "/Constant_output_0"], [name_out])],
                                  name_out, [helper.make_tensor_value_info(name_in, TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info(name_out, TensorProto.FLOAT, [2])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    front, part = one_add(INPUT_NAME, FRONT_OUTPUT, 1.0), one_add(FRONT_OUTPUT, "raw_score", 10.0)
    merged = merge_front_and_part(front, part)
    onnx.checker.check_model(merged)
    assert [i.name for i in merged.graph.input] == [INPUT_NAME] and [o.name for o in merged.graph.output] == ["raw_score"]
    got = session(merged.SerializeToString()).run(None, {INPUT_NAME: np.array([0.0, 2.0], np.float32)})[0]
    np.testing.assert_array_equal(got, [11.0, 13.0])
