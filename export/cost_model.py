"""Cost model of an artefact's ONNX graph on a target: FLOPs and bytes per node -> latency and memory.

    estimate = estimate_cost(model, target, precision)     # model: onnx ModelProto of the artefact
    estimate.latency_ms, estimate.memory_mb, estimate.fits, estimate.reasons

Shapes come from onnx shape inference with one frame already at the model size (batch 1), so the
in-graph resize of a camera frame is costed at its cheapest. Per node (a roofline, Williams et al. 2009):

    time = max(flops / (peak(precision) * compute_efficiency), bytes / (bandwidth * memory_efficiency))
           + layer_overhead   for the heavy ops (conv, matmul, reductions, TopK) that stay separate
                              layers after TensorRT's / onnxruntime's fusion

bytes = the node's inputs + outputs (weights included), i.e. no fusion: an upper bound for the memory
term. Backbone-region nodes (between the first and last conv, export/passes/int8.py) run at the artefact's
precision; everything after them (distances, reductions, TopK) runs in fp32, as the graph passes keep it.
This is a sizing estimate from published peaks and assumed efficiencies (targets/*.yaml says which figure
is which); it is not a measurement, and bench/ compares it with measured latency where a device exists.

memory = weights (as stored: fp16 / int8 initializers count their own size) + peak live activations
(tensors freed after their last consumer, in graph order) + the target's runtime overhead.

Nodes computed from constants alone (the Transpose of a stored bank, the Slices of a bank cut into chunks by
export/passes/chunk_bank.py) cost nothing per frame: onnxruntime and TensorRT fold them when they load the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adtk.export.passes.graph import frame_shape, head_matrices, infer_shapes, read_manifest
from adtk.export.passes.int8 import backbone_region

HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "ReduceMin", "ReduceMax", "ArgMin", "ArgMax", "TopK",
             "ReduceSum", "ReduceMean", "ReduceL2", "Softmax", "AveragePool", "MaxPool", "Resize"}
# Ops that only move or reinterpret data: no arithmetic (their bytes still count).
DATA_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice", "Split", "Gather",
            "GatherElements", "GatherND", "Expand", "Pad", "Shape", "Identity", "Constant", "Cast", "Tile"}


# TensorRT fuses Q/DQ pairs into the INT8 kernels around them (explicit quantisation), and onnxruntime folds
# them into QLinear* kernels: they cost neither time nor a separate memory pass.
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    flops: float
    bytes: float
    precision: str
    scales_with_head: bool  # touches a tensor sized by the head's matrices (e.g. memory bank rows)


@dataclass(frozen=True)
class CostEstimate:
    target: str
    precision: str
    flops: float
    bytes_moved: float
    latency_ms: float
    head_latency_ms: float  # the part that scales with the head's matrices (what a sizing knob shrinks)
    weights_mb: float
    activations_mb: float
    memory_mb: float  # weights + peak activations + runtime overhead
    budget_ms: float
    memory_budget_mb: float
    nodes: tuple[NodeCost, ...] = field(repr=False, default=())

    @property
    def fits(self) -> bool:
        return self.latency_ms <= self.budget_ms and self.memory_mb <= self.memory_budget_mb

    @property
    def reasons(self) -> list[str]:
        out = []
        if self.latency_ms > self.budget_ms:
            out.append(f"predicted latency {self.latency_ms:.3g} ms > frame budget {self.budget_ms:.3g} ms "
                       f"(head {self.head_latency_ms:.3g} ms, rest {self.latency_ms - self.head_latency_ms:.3g} ms)")
        if self.memory_mb > self.memory_budget_mb:
            out.append(f"predicted memory {self.memory_mb:.0f} MB > budget {self.memory_budget_mb:.0f} MB")
        return out

    def summary(self) -> str:
        return (f"{self.target} {self.precision}: predicted {self.latency_ms:.2f} ms / frame (budget "
                f"{self.budget_ms:.1f} ms), {self.memory_mb:.0f} MB (weights {self.weights_mb:.1f}, activations "
                f"{self.activations_mb:.1f}; budget {self.memory_budget_mb:.0f}), {self.flops / 1e9:.2f} GFLOP")

    def as_dict(self) -> dict:
        return {"target": self.target, "precision": self.precision, "gflops": round(self.flops / 1e9, 4),
                "predicted_latency_ms": round(self.latency_ms, 3), "head_latency_ms": round(self.head_latency_ms, 3),
                "predicted_memory_mb": round(self.memory_mb, 1), "weights_mb": round(self.weights_mb, 3),
                "activations_mb": round(self.activations_mb, 3), "budget_ms": self.budget_ms,
                "memory_budget_mb": self.memory_budget_mb, "fits": self.fits}


def _numel(shape) -> int | None:
    if shape is None or any(not isinstance(d, int) for d in shape[1]):
        return None
    return int(np.prod(shape[1], dtype=np.int64))


def _itemsize(elem_type: int) -> int:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def node_flops(node, shapes: dict) -> float:
    """Arithmetic operations of one node (a multiply-add counts 2), from the inferred shapes."""
    out = _numel(shapes.get(node.output[0])) if node.output else 0
    first = _numel(shapes.get(node.input[0])) if node.input and node.input[0] else 0
    if out is None:
        return 0.0
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        weight = shapes[node.input[1]][1]  # [C_out, C_in / group, kh, kw]
        return 2.0 * out * int(np.prod(weight[1:]))
    if op in ("MatMul", "Gemm"):
        a = shapes[node.input[0]][1]
        reduced = a[-1] if not (op == "Gemm" and _attr(node, "transA", 0)) else a[-2]
        return 2.0 * out * reduced
    if op in ("ReduceMin", "ReduceMax", "ArgMin", "ArgMax", "ReduceSum", "ReduceMean", "ReduceL2"):
        return float(first or 0)
    if op == "TopK":
        k = shapes[node.output[0]][1][-1] if isinstance(shapes[node.output[0]][1][-1], int) else 1
        return float(first or 0) * math.log2(k + 1)
    if op == "AveragePool" or op == "MaxPool":
        return float(out) * int(np.prod(_attr(node, "kernel_shape", [1])))
    if op == "Resize":
        return 4.0 * out  # bilinear: 4 taps per output value
    if op == "Softmax":
        return 5.0 * out
    if op in DATA_OPS or op in QDQ_OPS:
        return 0.0
    return float(out)  # elementwise: one operation per output value


def _attr(node, name, default):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def head_tensors(model, shapes: dict) -> set[str]:
    """Tensors sized by the head's matrices: the float matrices no conv consumes (memory banks, ...)
    and every tensor computed from them that still carries one of their row counts."""
    sources = {init.name: {int(d) for d in init.dims} for init in head_matrices(model)}
    rows = set().union(*sources.values()) if sources else set()  # a bank may be stored [M, D] or [D, M]
    tainted = set(sources)
    for node in model.graph.node:  # graph order is topological
        if any(i in tainted for i in node.input):
            for out in node.output:
                dims = shapes.get(out, (0, ()))[1]
                if any(d in rows for d in dims if isinstance(d, int)):
                    tainted.add(out)
    return tainted


def estimate_cost(model, target, precision: str, batch: int = 1) -> CostEstimate:
    """Predicted latency and memory of one batch of frames at the model size on `target`."""
    manifest = read_manifest(model)
    inferred, shapes = infer_shapes(model, frame_shape(manifest, batch))
    region = set(backbone_region(inferred))
    tainted = head_tensors(inferred, shapes)
    compute = target.compute_efficiency
    bandwidth = target.memory_bandwidth_gbs * 1e9 * target.memory_efficiency
    nodes, total_ms, head_ms = [], 0.0, 0.0
    folded = folded_tensors(inferred)
    for node in inferred.graph.node:
        node_precision = precision if node.name in region else "fp32"
        flops = node_flops(node, shapes)
        if node.op_type in QDQ_OPS or (node.output and all(o in folded for o in node.output if o)):
            nodes.append(NodeCost(node.name, node.op_type, 0.0, 0.0, node_precision, False))
            continue
        moved = 0.0
        for name in [*node.input, *node.output]:
            if name and name in shapes and _numel(shapes[name]) is not None:
                moved += _numel(shapes[name]) * _itemsize(shapes[name][0])
        seconds = max(flops / (target.peak_ops_per_s(node_precision) * compute), moved / bandwidth)
        overhead_ms = target.layer_overhead_ms if node.op_type in HEAVY_OPS else 0.0
        scales = any(i in tainted for i in node.input)
        total_ms += seconds * 1e3 + overhead_ms
        head_ms += seconds * 1e3 if scales else 0.0  # per-layer overhead does not shrink with the head
        nodes.append(NodeCost(node.name, node.op_type, flops, moved, node_precision, scales))
    weights = sum(_numel((i.data_type, tuple(i.dims))) * _itemsize(i.data_type) for i in inferred.graph.initializer)
    activations = peak_activation_bytes(inferred, shapes)
    memory_mb = (weights + activations) / 2**20 + target.runtime_overhead_mb
    return CostEstimate(target.name, precision, sum(n.flops for n in nodes), sum(n.bytes for n in nodes),
                        total_ms, head_ms, weights / 2**20, activations / 2**20, memory_mb,
                        float(target.frame_budget_ms), float(target.memory_budget_mb), tuple(nodes))


def folded_tensors(model) -> set[str]:
    """Initializers, Constant outputs and every tensor computed from those alone (graph order is topological):
    what a runtime folds into constants when it loads the model."""
    constants = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constants for i in inputs)
                                          and not any(a.g.node or a.graphs for a in node.attribute)):
            constants.update(o for o in node.output if o)
    return constants


def peak_activation_bytes(model, shapes: dict) -> float:
    """Peak of the live intermediate tensors when nodes run in graph order and free inputs after last use."""
    constants = folded_tensors(model)
    last_use: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            last_use[name] = index
    outputs = {o.name for o in model.graph.output}
    live, peak = {}, 0.0
    for index, node in enumerate(model.graph.node):
        for name in node.output:
            if name and name in shapes and name not in constants and _numel(shapes[name]) is not None:
                live[name] = _numel(shapes[name]) * _itemsize(shapes[name][0])
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if last_use.get(name, -1) <= index and name not in outputs:
                del live[name]
    return peak
