"""fp16 heads and INT8 backbones on a real (tiny, random-weights) artefact."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402

from adtk.export.passes.fp16 import convert_head_matrices_to_fp16  # noqa: E402
from adtk.export.passes.graph import load_unsealed  # noqa: E402
from adtk.export.passes.int8 import bank_search_matmuls, backbone_region, quantize_backbone_int8  # noqa: E402
from adtk.export.passes.tensorrt_check import check_tensorrt  # noqa: E402
from adtk.export.targets import load_target  # noqa: E402


@pytest.fixture(scope="module")
def fp32(tiny_build):
    return load_unsealed(tiny_build.artefact.read_bytes())


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def scores(model, frames):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["raw_score"], {"frames": f[None]})[0] for f in frames])


def test_fp16_stores_only_the_head_matrices_in_fp16_and_scores_like_fp32(fp32, frames, tiny_build):
    half, report = convert_head_matrices_to_fp16(fp32, min_elements=1024)
    bank = tiny_build.graph.head.bank_t_neg2.numpy()  # the stored head matrix, -2 * bank^T [D, M]
    assert [shape for _, shape in report.converted] == [bank.shape]
    stored = {i.name: i for i in half.graph.initializer}
    fp16_inits = [i for i in stored.values() if i.data_type == TensorProto.FLOAT16]
    assert len(fp16_inits) == 1
    np.testing.assert_array_equal(numpy_helper.to_array(fp16_inits[0]), bank.astype(np.float16))
    assert report.bytes_saved == bank.size * 2
    assert len(half.SerializeToString()) < len(fp32.SerializeToString()) - bank.size * 2 + 1024
    # computed in fp32 from fp16-rounded rows: the score moves by at most the rounding of the bank
    diff = np.abs(scores(half, frames) - scores(fp32, frames))
    assert diff.max() <= 2 * report.max_abs_rounding_error * np.sqrt(bank.shape[0]) + 1e-4


def test_int8_quantises_the_backbone_and_for_onnxruntime_the_bank_search(fp32, frames):
    calibration = list(np.random.default_rng(1).integers(0, 256, (4, 80, 80, 3), dtype=np.uint8))
    region = set(backbone_region(fp32))
    order = [n.name for n in fp32.graph.node]
    head_at = next(i for i, n in enumerate(fp32.graph.node) if n.op_type == "MatMul")  # the bank distance GEMM
    convs = [i for i, n in enumerate(fp32.graph.node) if n.op_type == "Conv"]
    assert {order[i] for i in convs if i < head_at} <= region  # every backbone conv...
    assert not {order[i] for i in convs if i > head_at} & region  # ...but not the anomaly-map blur after the head
    assert not {order[i] for i in range(head_at, len(order))} & region
    searches = bank_search_matmuls(fp32)
    by_name = {n.name: n for n in fp32.graph.node}
    bank = {"head.bank_t_neg2"}
    assert searches and all(by_name[name].input[1] in bank for name in searches)
    smoothing = [n.name for n in fp32.graph.node if n.op_type == "MatMul" and "smoother" in "".join(n.input)]
    assert smoothing and not set(smoothing) & set(searches)  # products that are not reduced stay out
    for symmetric in (False, True):
        q = quantize_backbone_int8(fp32, calibration, symmetric=symmetric)
        dq_outputs = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
        search_inputs = {i for n in q.graph.node if n.op_type == "MatMul" and n.name in searches for i in n.input}
        # U8S8 search for onnxruntime (queries and bank through Q/DQ); TensorRT's flavour keeps it in fp32
        assert bool(search_inputs & dq_outputs) == (not symmetric), symmetric
        reduction_inputs = {i for n in q.graph.node if n.op_type in ("ReduceMin", "ArgMin") for i in n.input}
        assert not reduction_inputs & dq_outputs  # the min over the bank reads fp32 products
        assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 10
        got, ref = scores(q, frames), scores(fp32, frames)
        assert np.all(np.isfinite(got)) and np.corrcoef(got, ref)[0, 1] > 0 or len(got) < 3
        trt_rules = {v.rule for v in check_tensorrt(q, load_target("orin_nano_8gb"))}
        assert ("int8_qdq" in trt_rules) == (not symmetric)  # only the symmetric flavour suits TensorRT
