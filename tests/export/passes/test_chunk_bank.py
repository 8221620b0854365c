"""Bank chunking: the split graph gives exactly the unsplit graph's results (onnxruntime and numpy)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from adtk.export.passes.chunk_bank import chunk_bank_reductions  # noqa: E402
from adtk.export.passes.graph import load_unsealed  # noqa: E402
from adtk.export.passes.tensorrt_check import check_tensorrt  # noqa: E402
from adtk.export.targets import load_target  # noqa: E402


def bank_graph(bank: np.ndarray, patches: int, k: int):
    """q [1, P, D]: d = |q|^2 - 2 q.m + |m|^2 -> ReduceMin, ArgMin, TopK(k, smallest) over the bank rows."""
    rows, dims = bank.shape
    inits = [numpy_helper.from_array(bank, "bank"), numpy_helper.from_array((bank ** 2).sum(1), "bank_sq"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array([k], np.int64), "k"), numpy_helper.from_array(np.float32(-2), "minus2")]
    nodes = [helper.make_node("Transpose", ["bank"], ["bank_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["q", "bank_t"], ["dot"]),
             helper.make_node("Mul", ["dot", "minus2"], ["m2"]),
             helper.make_node("Mul", ["q", "q"], ["qq"]),
             helper.make_node("ReduceSum", ["qq", "axes"], ["q_sq"], keepdims=1),
             helper.make_node("Add", ["m2", "q_sq"], ["s1"]),
             helper.make_node("Add", ["s1", "bank_sq"], ["d"]),
             helper.make_node("ReduceMin", ["d", "axes"], ["nearest"], keepdims=0),
             helper.make_node("ArgMin", ["d"], ["nearest_row"], axis=-1, keepdims=0),
             helper.make_node("TopK", ["d", "k"], ["topk_v", "topk_i"], axis=-1, largest=0)]
    outputs = [helper.make_tensor_value_info(n, t, shape) for n, t, shape in
               (("nearest", TensorProto.FLOAT, [1, patches]), ("nearest_row", TensorProto.INT64, [1, patches]),
                ("topk_v", TensorProto.FLOAT, [1, patches, k]), ("topk_i", TensorProto.INT64, [1, patches, k]))]
    graph = helper.make_graph(nodes, "bank", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, patches, dims])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model, q):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"q": q})


def test_chunked_bank_equals_unchunked_and_brute_force():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(1000, 16)).astype(np.float32)
    bank[700] = bank[10]  # a duplicate row: ArgMin must still return the first index, as unchunked
    q = rng.normal(size=(1, 50, 16)).astype(np.float32)
    q[0, 3] = bank[10]
    original = bank_graph(bank, 50, k=5)
    chunked, report = chunk_bank_reductions(original, max_elements=50 * 300)
    assert [(r["rows"], r["chunks"]) for r in report] == [(1000, 4)]
    onnx.checker.check_model(chunked)
    assert sum(n.op_type == "MatMul" for n in chunked.graph.node) == 4
    expected, got = run(original, q), run(chunked, q)
    np.testing.assert_array_equal(expected[1], got[1])  # nearest rows, ties included
    np.testing.assert_allclose(expected[0], got[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(expected[2], got[2], rtol=1e-5, atol=1e-4)
    brute = ((q[0, :, None, :] - bank[None]) ** 2).sum(-1)  # numpy reference [P, M]
    assert (got[1][0] == brute.argmin(1)).mean() == 1.0
    np.testing.assert_array_equal(np.sort(got[3][0], 1), np.sort(np.argsort(brute, 1, kind="stable")[:, :5], 1))


def test_nothing_changes_under_the_limit_and_chunking_clears_the_element_rule():
    bank = np.random.default_rng(1).normal(size=(600, 8)).astype(np.float32)
    original = bank_graph(bank, 20, k=3)
    same, report = chunk_bank_reductions(original)
    assert report == [] and same.SerializeToString() == original.SerializeToString()
    limit = 20 * 200
    chunked, _ = chunk_bank_reductions(original, max_elements=limit)
    per_patch = [np.prod([d.dim_value for d in v.type.tensor_type.shape.dim])
                 for v in onnx.shape_inference.infer_shapes(chunked).graph.value_info
                 if len(v.type.tensor_type.shape.dim) == 3]  # the [1, P, rows] distance tensors
    assert max(per_patch) <= limit < 20 * 600


def stored_bank_graph(bank_t: np.ndarray, patches: int, read_whole: bool):
    """q [1, P, D]: d = q.B + |m|^2 with B [D, M] stored as it is searched -> ReduceMin and ArgMin over the bank;
    read_whole: another node reads B whole (the bank row nearest to each patch, gathered, as a re-weighting does)."""
    dims, rows = bank_t.shape
    inits = [numpy_helper.from_array(bank_t, "bank_t"), numpy_helper.from_array((bank_t ** 2).sum(0), "bank_sq"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["q", "bank_t"], ["dot"]),
             helper.make_node("Add", ["dot", "bank_sq"], ["d"]),
             helper.make_node("ReduceMin", ["d", "axes"], ["nearest"], keepdims=0),
             helper.make_node("ArgMin", ["d"], ["nearest_row"], axis=-1, keepdims=0)]
    outputs = [helper.make_tensor_value_info("nearest", TensorProto.FLOAT, [1, patches]),
               helper.make_tensor_value_info("nearest_row", TensorProto.INT64, [1, patches])]
    if read_whole:
        nodes += [helper.make_node("Transpose", ["bank_t"], ["bank"], perm=[1, 0]),
                  helper.make_node("Gather", ["bank", "nearest_row"], ["nearest_rows"], axis=0)]
        outputs.append(helper.make_tensor_value_info("nearest_rows", TensorProto.FLOAT, [1, patches, dims]))
    graph = helper.make_graph(nodes, "bank", [helper.make_tensor_value_info("q", TensorProto.FLOAT,
                                                                             [1, patches, dims])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("read_whole", [False, True])
@pytest.mark.parametrize("fp16", [False, True])
def test_the_bank_is_stored_in_its_chunks_once(read_whole, fp16):
    """A bank only the search reads (an initializer, or the fp32 Cast of an fp16 one) goes into the file as its
    chunks, in the stored dtype; one that another node reads whole stays whole and one Split cuts it (a runtime
    folds it once at load). No Slice, no value stored twice, the outputs of the unsplit graph."""
    from adtk.export.passes.fp16 import convert_head_matrices_to_fp16

    rng = np.random.default_rng(4)
    bank_t = rng.normal(size=(16, 1000)).astype(np.float32)
    q = rng.normal(size=(1, 50, 16)).astype(np.float32)
    original = stored_bank_graph(bank_t, 50, read_whole)
    if fp16:
        original = convert_head_matrices_to_fp16(original)[0]
    chunked, report = chunk_bank_reductions(original, max_elements=50 * 300)
    assert [(r["rows"], r["chunks"]) for r in report] == [(1000, 4)]
    onnx.checker.check_model(chunked)
    assert not [n for n in chunked.graph.node if n.op_type == "Slice"]

    def stored(model):  # {float dtype: values stored}
        counts = {}
        for init in model.graph.initializer:
            if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
                counts[init.data_type] = counts.get(init.data_type, 0) + int(np.prod(init.dims))
        return counts

    assert stored(chunked) == stored(original)  # the bank (and its norms) once, fp16 kept fp16
    assert len([i for i in chunked.graph.initializer if len(i.dims) == 2]) == (1 if read_whole else 4)
    assert sum(n.op_type == "Split" and n.input[0] == "bank_t" for n in chunked.graph.node) == int(read_whole)
    expected, got = run(original, q), run(chunked, q)
    np.testing.assert_array_equal(expected[1], got[1])
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_real_artefact_chunks_exactly(tiny_build):
    artefact = load_unsealed(tiny_build.artefact.read_bytes())
    rows = tiny_build.manifest["method"]["fit"]["memory_bank_rows"]
    chunked, report = chunk_bank_reductions(artefact, max_elements=64 * (rows // 3 + 1))
    assert report and report[0]["chunks"] >= 3
    assert check_tensorrt(chunked, load_target("orin_nano_8gb")) == []
    frames = np.random.default_rng(2).integers(0, 256, (1, 70, 90, 3), dtype=np.uint8)
    before = ort.InferenceSession(artefact.SerializeToString()).run(None, {"frames": frames})
    after = ort.InferenceSession(chunked.SerializeToString()).run(None, {"frames": frames})
    for a, b in zip(before, after):
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-5, atol=1e-5)


def test_the_compiler_splits_a_cpu_artefacts_bank_search_to_the_cache_budget(tiny_build, monkeypatch):
    """onnxruntime (a CPU target, or no target): the bank search in chunks of at most CPU_CACHE_CHUNK_ELEMENTS
    values, the same outputs; a TensorRT target keeps one search (it splits only past TensorRT's limit)."""
    import adtk.export.compiler as compiler
    from adtk.export.cost_model import HEAVY_OPS, estimate_cost, folded_tensors

    fp32 = load_unsealed(tiny_build.artefact.read_bytes())
    rows = tiny_build.manifest["method"]["fit"]["memory_bank_rows"]
    # the tiny bank split in several chunks (64 patches a frame), each still a head matrix (>= 1024 values)
    monkeypatch.setattr(compiler, "CPU_CACHE_CHUNK_ELEMENTS", 64 * (rows // 3 + 1))
    frames = np.random.default_rng(3).integers(0, 256, (1, 70, 90, 3), dtype=np.uint8)
    expected = ort.InferenceSession(fp32.SerializeToString()).run(None, {"frames": frames})
    for target in (None, load_target("x86_cpu")):
        model, manifest, _ = compiler.compile_model(fp32, tiny_build.manifest,
                                                    compiler.CompileOptions(target=target), None, log=lambda m: None)
        (split,) = manifest["target"]["precision_details"]["bank_chunks"]
        assert split["rows"] == rows and split["chunks"] >= 3
        assert sum(n.op_type == "MatMul" for n in model.graph.node) >= 3
        got = ort.InferenceSession(model.SerializeToString()).run(None, {"frames": frames})
        for a, b in zip(expected, got):
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-6, atol=1e-6)
    # the file holds the bank once (in chunks, or whole and cut by one Split where the re-weighting reads it
    # whole), no Slice is left to fold per chunk at load, and what a runtime folds at load (the Split) is charged
    # nothing by the cost model; so the split adds the per-layer overhead of its extra Gemms and reductions and
    # each chunk's re-read of the queries, no more
    def stored_floats(m):
        return sum(int(np.prod(i.dims)) for i in m.graph.initializer if i.data_type == TensorProto.FLOAT)

    stored = {i.name for i in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "Slice" and n.input[0] in stored]
    assert stored_floats(model) == stored_floats(fp32) + 0  # the same floats, in chunks
    assembled = {n.name for n in model.graph.node if n.op_type == "Split" and n.input[0] in stored}
    assert {o for n in model.graph.node if n.name in assembled for o in n.output} <= folded_tensors(model)
    cpu = load_target("x86_cpu")
    whole, split_up = estimate_cost(fp32, cpu, "fp32"), estimate_cost(model, cpu, "fp32")
    assert all(c.bytes == 0 and c.flops == 0 for c in split_up.nodes if c.name in assembled)

    def layers(estimate):
        return sum(c.op_type in HEAVY_OPS for c in estimate.nodes)

    extra_bytes = split_up.bytes_moved - whole.bytes_moved  # the queries, read once per chunk
    chunk_matmul_bytes = sum(c.bytes for c in split_up.nodes if c.op_type == "MatMul" and c.scales_with_head)
    assert split_up.flops == pytest.approx(whole.flops, rel=1e-3) and 0 <= extra_bytes <= chunk_matmul_bytes
    bandwidth_ms = extra_bytes / (cpu.memory_bandwidth_gbs * 1e9 * cpu.memory_efficiency) * 1e3
    extra_layers = layers(split_up) - layers(whole)
    assert split_up.latency_ms - whole.latency_ms <= extra_layers * cpu.layer_overhead_ms + bandwidth_ms + 1e-6
    trt_model, trt_manifest, _ = compiler.compile_model(fp32, tiny_build.manifest,
                                                        compiler.CompileOptions(target=load_target("orin_nano_8gb")),
                                                        None, log=lambda m: None)
    assert "bank_chunks" not in trt_manifest["target"]["precision_details"]
    assert sum(n.op_type == "MatMul" for n in trt_model.graph.node) == sum(
        n.op_type == "MatMul" for n in fp32.graph.node)


@pytest.mark.parametrize("select_last_index", [0, 1])
def test_two_level_arg_reductions_keep_onnx_tie_rule(select_last_index):
    """A chunk's ArgMin/ArgMax run in groups of rows (chunk_bank.ARG_GROUP_ROWS): ties inside one group, across
    groups of one chunk and across chunks resolve as the unchunked ArgMin/ArgMax (first index, or last)."""
    from adtk.export.passes.chunk_bank import ARG_GROUP_ROWS

    rng = np.random.default_rng(3)
    rows, patches, dims = 8 * ARG_GROUP_ROWS + 24, 12, 6  # the last chunk is not whole groups
    # small integers: every distance is exact in float32, so duplicated rows tie exactly wherever the GEMM
    # computes them (with real-valued rows a column's position can move the last bit)
    bank = rng.integers(-4, 5, size=(rows, dims)).astype(np.float32)
    duplicates = {0: (ARG_GROUP_ROWS + 3, ARG_GROUP_ROWS + 4),  # one group
                  1: (2, 2 * ARG_GROUP_ROWS + 5),  # two groups of the first chunk
                  2: (7, rows - 3)}  # the first chunk and the last
    q = rng.integers(-4, 5, size=(1, patches, dims)).astype(np.float32)
    bank[[b for _, b in duplicates.values()]] += 9  # nothing else as near as the duplicated pairs
    for patch, (a, b) in duplicates.items():
        bank[b] = bank[a]
        q[0, patch] = bank[a]
    inits = [numpy_helper.from_array(np.ascontiguousarray(bank.T), "bank_t"),
             numpy_helper.from_array((bank ** 2).sum(1), "bank_sq"), numpy_helper.from_array(np.float32(-2), "m2"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["q", "bank_t"], ["dot"]), helper.make_node("Mul", ["dot", "m2"], ["dm"]),
             helper.make_node("Add", ["dm", "bank_sq"], ["d"]),  # |m|^2 - 2 q.m: argmin = the nearest row
             helper.make_node("Neg", ["d"], ["neg_d"]),
             helper.make_node("ArgMin", ["d"], ["nearest_row"], axis=-1, keepdims=0, select_last_index=select_last_index),
             helper.make_node("ArgMax", ["neg_d"], ["farthest_neg"], axis=-1, keepdims=1,
                              select_last_index=select_last_index)]
    outputs = [helper.make_tensor_value_info("nearest_row", TensorProto.INT64, [1, patches]),
               helper.make_tensor_value_info("farthest_neg", TensorProto.INT64, [1, patches, 1])]
    graph = helper.make_graph(nodes, "bank", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, patches, dims])],
                              outputs, inits)
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    chunked, report = chunk_bank_reductions(original, max_elements=patches * 4 * ARG_GROUP_ROWS)
    assert report and report[0]["chunks"] == 3
    onnx.checker.check_model(chunked)
    assert sum(n.op_type == "GatherElements" for n in chunked.graph.node) >= 2 * 3  # two-level in each chunk
    expected, got = run(original, q), run(chunked, q)
    np.testing.assert_array_equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    for patch, (a, b) in duplicates.items():
        assert got[0][0, patch] == (b if select_last_index else a)
