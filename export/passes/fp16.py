"""fp16 memory banks and heads: store the head's matrices in fp16, compute distances in fp32.

What is converted: float32 initializers of rank >= 2 with at least `min_elements` values that no
convolution consumes, i.e. the head's matrices (memory banks, projections), not the backbone's conv
weights (INT8 is the backbone's precision step, see int8.py). Each becomes an fp16 initializer followed by
one Cast back to float32, so every MatMul, distance, reduction and TopK still runs and accumulates in
fp32: a nearest-neighbour distance is a small difference of large terms (|q|^2 - 2 q.m + |m|^2), which
fp16 accumulation would swamp (nearest-neighbour scores are such distances). Vectors (rank 1: norms, biases) stay
fp32 for the same reason; they are a negligible share of the bytes.

On onnxruntime CPU the Cast of a constant is folded when the session starts, so the fp16 artefact is about
half the size on disk and scores as fast as fp32; TensorRT builds fp16 kernels for it (export/tensorrt.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP16_SUFFIX = "__fp16"
CONV_OPS = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"}


@dataclass(frozen=True)
class Fp16Report:
    converted: tuple[tuple[str, tuple[int, ...]], ...]  # (initializer name, shape)
    bytes_saved: int
    max_abs_rounding_error: float  # largest |fp16(x) - x| over the converted values


def convert_head_matrices_to_fp16(model, min_elements: int = 1024):
    """-> (new ModelProto, Fp16Report). The input model is not changed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    graph_outputs = {o.name for o in graph.output}

    converted, saved, worst = [], 0, 0.0
    new_nodes = []
    for init in graph.initializer:
        if (init.data_type != TensorProto.FLOAT or len(init.dims) < 2 or int(np.prod(init.dims)) < min_elements
                or consumers.get(init.name, set()) & CONV_OPS or init.name in graph_outputs
                or init.name not in consumers):
            continue
        values = numpy_helper.to_array(init)
        if np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
            continue  # would overflow to inf: keep it fp32 rather than change the scores
        half = values.astype(np.float16)
        worst = max(worst, float(np.abs(half.astype(np.float32) - values).max(initial=0.0)))
        values_name, stored_name = init.name, f"{init.name}{FP16_SUFFIX}"
        init.CopyFrom(numpy_helper.from_array(half, stored_name))
        new_nodes.append(helper.make_node("Cast", [stored_name], [values_name], to=TensorProto.FLOAT,
                                          name=f"{values_name}__cast_fp32"))
        converted.append((values_name, tuple(values.shape)))
        saved += values.nbytes - half.nbytes
    # The Casts produce the original names, so the consumers are untouched; they go first (topological order).
    nodes = [*new_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return out, Fp16Report(tuple(converted), int(saved), worst)
