"""Split a bank reduction into chunks when one tensor of it would break a size limit: TensorRT's 2^31 - 1
elements per tensor (export/passes/tensorrt_check.py), or a CPU's cache (CPU_CACHE_CHUNK_ELEMENTS).

The pattern (what a nearest-neighbour head exports to; found by shape, never by method name):

    A [.., P, D] --MatMul--> [.., P, M] --elementwise ops--> [.., P, M] --ReduceMin/Max | ArgMin/Max | TopK (last axis)
                 B [D, M]  = a head matrix (or its Transpose / Cast)      others of last dim M, e.g. |m|^2 [M]

becomes, for C chunks of the M bank rows, the same chain on B[:, rows_c] (and every last-dim-M operand
sliced alike), a per-chunk reduction, and an exact merge: min of mins; for Arg*, the per-chunk winners'
values compared and their indices offset by the chunk start (ties resolve to the first index, as ONNX
ArgMin does); for TopK, the per-chunk top K merged by a second TopK. The result equals the unchunked graph
(tests compare with onnxruntime on the original and with brute-force numpy).

How the chunks are stored: a bank operand that only the search reads (an initializer, or the fp32 Cast of
an fp16 one: export/passes/fp16.py) is stored in its chunks, each chunk its own initializer in the stored dtype.
One that other nodes read whole too (e.g. a re-weighting gathering its nearest rows) stays whole and one Split cuts
it into the chunks, folded into constants when a runtime loads the model. Either way the file holds the bank once
and loading copies it at most once. (As one Slice per chunk, onnxruntime folded each chunk from its own copy of the
whole bank: for a 70k-row bank in 69 chunks, 1.5 s of every session start.)
"""

from __future__ import annotations

import math

import numpy as np

from adtk.export.passes.graph import (
    BANK_ELEMENTWISE as ELEMENTWISE,
    BANK_REDUCTIONS as REDUCTIONS,
    constant_value,
    frame_shape,
    head_matrices,
    infer_shapes,
    read_manifest,
)
from adtk.export.passes.tensorrt_check import MAX_TENSOR_ELEMENTS

# Why split on a CPU at all: onnxruntime runs the bank search as one Gemm that writes the whole [P, M] distance
# matrix (at 1,024 patches and a 70k-row bank: 287 MB) and a ReduceMin that reads it back, so the search streams
# through main memory twice. In chunks of at most 2^20 values (4 MB of fp32: each chunk's Gemm output is still in
# cache when its ReduceMin reads it) the outputs are the same bit for bit and come faster: on a 2-core x86
# machine (2 MB L2 per core, 32 MB L3 shared with other tenants) a 70k-row bank's artefact took 0.65-0.90x the
# whole search's time per frame over three runs, a 6,850-row one 0.79-0.97x; 2^21-2^22 was level or a little
# slower, 2^23 lost most of the gain (bench/bank_chunks.py, bench/results/bank_chunks.md).
CPU_CACHE_CHUNK_ELEMENTS = 2 ** 20
# Why a chunk's ArgMin/ArgMax is done in two levels: onnxruntime's ArgMin walks a row one element at a time, ~7x
# slower than its vectorised ReduceMin (1,024 x 1,088 floats: 0.41 vs 0.06 ms on 2 cores), and a head may need the
# nearest row of every patch (a local-density head does): at a 70k-row bank its chunks' ArgMins were 29% of the
# frame. Viewed as [.., P, G, g] (g consecutive rows per group), a ReduceMin over each group, an ArgMin over the
# G group minima and one over the g values of the winning group give the same index (the first group holding the
# minimum, then the first index in it: ONNX's tie rule, or the last of each with select_last_index) in 0.20 ms.
# g = 32 was the fastest of 8 / 16 / 32 / 64 there (0.35 / 0.22 / 0.20 / 0.21 ms). Chunks hold whole groups of g
# where the size limit allows (_chunk_bounds); a chunk of another size takes the largest power of two below g
# dividing it. The search's ReduceMin of the same chunk reads the group minima (_rewrite): one pass, not two.
ARG_GROUP_ROWS = 32


def chunk_bank_reductions(model, max_elements: int = MAX_TENSOR_ELEMENTS, batch: int = 1):
    """-> (new ModelProto, [{"matmul": name, "rows": M, "chunks": C}]); unchanged when nothing breaks the limit."""
    import onnx

    _, shapes = infer_shapes(model, frame_shape(read_manifest(model), batch))
    bank_side = {m.name for m in head_matrices(model)}
    for node in model.graph.node:
        if node.op_type in ("Transpose", "Cast", "Identity") and node.input[0] in bank_side:
            bank_side.add(node.output[0])
    done = []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in list(out.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in bank_side:
            continue
        dims = shapes.get(node.output[0], (0, ("?",)))[1]
        if any(not isinstance(d, int) for d in dims) or int(np.prod(dims)) <= max_elements:
            continue
        chunks = _rewrite(out, node, shapes, dims[-1], math.ceil(int(np.prod(dims)) / max_elements),
                          max_rows=max_elements // (int(np.prod(dims)) // dims[-1]))
        if chunks:
            done.append({"matmul": node.name or node.output[0], "rows": int(dims[-1]), "chunks": chunks})
    if done:
        _topological_sort(out.graph)
    return out, done


def _chunk_bounds(rows: int, chunks: int, max_rows: int, least_rows: int) -> np.ndarray:
    """Chunk bounds over `rows`: whole ARG_GROUP_ROWS groups per chunk (the last takes the rest) where that fits
    max_rows and leaves every chunk least_rows, else `chunks` near-equal chunks."""
    per = math.ceil(rows / chunks / ARG_GROUP_ROWS) * ARG_GROUP_ROWS
    count = math.ceil(rows / per)
    if per <= max_rows and count >= 2 and rows - (count - 1) * per >= least_rows:
        return np.minimum(np.arange(count + 1) * per, rows).astype(np.int64)
    return np.linspace(0, rows, chunks + 1).astype(np.int64)


def _axis_is_last(model, node, rank: int) -> bool:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("ReduceMin", "ReduceMax"):
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = constant_value(model, node.input[1])
        axes = [] if axes is None else [int(a) for a in np.asarray(axes).ravel()]
        return axes in ([-1], [rank - 1])
    return int(attrs.get("axis", 0 if node.op_type != "TopK" else -1)) in (-1, rank - 1)


def _rewrite(model, matmul, shapes, rows: int, chunks: int, max_rows: int) -> int:
    """-> the number of chunks the search was split into (0: left as it was). max_rows: most rows a chunk may hold."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    rank = len(shapes[matmul.output[0]][1])
    region, reductions, tensors = [], [], {matmul.output[0]}
    for node in graph.node:
        if not any(i in tensors for i in node.input) or node is matmul:
            continue
        out_dims = shapes.get(node.output[0], (0, ()))[1]
        if node.op_type in ELEMENTWISE and len(out_dims) == rank and out_dims[-1] == rows:
            region.append(node)
            tensors.add(node.output[0])
        elif node.op_type in REDUCTIONS and _axis_is_last(model, node, rank):
            reductions.append(node)
        else:
            return 0  # a consumer this pass cannot split: leave the graph as it is (the check reports it)
    if not reductions or tensors & {o.name for o in graph.output}:
        return 0
    least_rows = 1
    for red in reductions:  # every chunk must hold at least a TopK's K rows
        if red.op_type == "TopK":
            k = constant_value(model, red.input[1])
            if k is None:
                return 0
            least_rows = max(least_rows, int(np.asarray(k).ravel()[0]))
            chunks = min(chunks, rows // max(1, least_rows))
    if chunks < 2:
        return 0
    bounds = _chunk_bounds(rows, chunks, max_rows, least_rows)
    chunks = len(bounds) - 1
    new_nodes, new_inits = [], []
    stored = _stored_in_chunks(model, {id(n) for n in (matmul, *region)})
    chunked = {}  # the operands stored in chunks: their wholes go
    arrays = {}  # their values, by initializer name
    split = set()  # the operands cut by one Split node

    def const(name, value):
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def shared_const(suffix, value):  # a constant of this search that several chunks read alike: made once
        name = f"{matmul.output[0]}__{suffix}"
        return name if any(init.name == name for init in new_inits) else const(name, value)

    axis_last = const(f"{matmul.output[0]}__axis_last", np.array([-1], dtype=np.int64))
    for c in range(chunks):
        start, end = int(bounds[c]), int(bounds[c + 1])
        renamed = {}

        def starts():  # the chunk's first bank row, for an index offset (made on first use)
            name = f"{matmul.output[0]}__start{c}"
            return name if name in renamed else renamed.setdefault(name, const(name, np.array([start], np.int64)))

        def chunk_of(name):
            if name in tensors:
                return renamed[name]
            dims = shapes.get(name, (0, ()))[1]
            if not dims or dims[-1] != rows:
                return name
            chunk = f"{name}__rows{c}"  # a per-bank-row operand: its rows [start, end) alike
            if chunk in renamed:
                return chunk
            renamed[chunk] = chunk
            if name in stored:  # stored in chunks: this chunk's initializer (+ the Cast back to fp32)
                source, cast = stored[name]
                chunked[name] = stored[name]
                if source.name not in arrays:  # read once, not once per chunk
                    arrays[source.name] = numpy_helper.to_array(source)
                values = arrays[source.name][..., start:end]
                if cast is None:
                    const(chunk, np.ascontiguousarray(values))
                else:
                    const(f"{source.name}__rows{c}", np.ascontiguousarray(values))
                    new_nodes.append(helper.make_node("Cast", [f"{source.name}__rows{c}"], [chunk],
                                                      **{a.name: helper.get_attribute_value(a)
                                                         for a in cast.attribute}))
            elif name not in split:  # read whole elsewhere too: one Split makes every chunk
                split.add(name)
                sizes = const(f"{name}__chunk_rows", np.diff(bounds).astype(np.int64))
                new_nodes.append(helper.make_node("Split", [name, sizes], [f"{name}__rows{i}" for i in range(chunks)],
                                                  axis=-1))
            return chunk

        b_chunk = chunk_of(matmul.input[1])
        renamed[matmul.output[0]] = f"{matmul.output[0]}__chunk{c}"
        new_nodes.append(helper.make_node("MatMul", [matmul.input[0], b_chunk], [renamed[matmul.output[0]]]))
        for node in region:
            inputs = [chunk_of(i) if i else i for i in node.input]
            renamed[node.output[0]] = f"{node.output[0]}__chunk{c}"
            new_nodes.append(helper.make_node(node.op_type, inputs, [renamed[node.output[0]]],
                                              **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        extrema = {}  # (chunk tensor, ReduceMin|ReduceMax) -> a partial already holding that value
        for red in sorted(reductions, key=lambda r: r.op_type not in ("ArgMin", "ArgMax")):  # Arg* first
            chunk_input = renamed[red.input[0]]
            value_op = {"ArgMin": "ReduceMin", "ArgMax": "ReduceMax"}.get(red.op_type, red.op_type)
            shared = extrema.get((chunk_input, value_op))
            if red.op_type in ("ReduceMin", "ReduceMax") and shared:  # the same minimum: read it, not the chunk
                new_nodes.append(helper.make_node("Identity", [shared], [f"{red.output[0]}__part{c}_v"]))
                continue
            new_nodes.extend(_partial(red, chunk_input, c, starts, shared_const, axis_last, rank, end - start))
            if red.op_type in ("ArgMin", "ArgMax"):
                extrema.setdefault((chunk_input, value_op), f"{red.output[0]}__part{c}_v")
    for red in reductions:
        new_nodes.extend(_merge(red, chunks, axis_last))
    removed = {id(n) for n in (matmul, *region, *reductions)}
    removed |= {id(cast) for _, cast in chunked.values() if cast is not None}
    for node in new_nodes:  # named, as the exporter's nodes are (the cost model and passes report by name)
        node.name = node.name or f"chunk_bank/{node.output[0]}"
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend([*kept, *new_nodes])
    whole = {source.name for source, _ in chunked.values()}  # now held in chunks only
    kept_inits = [init for init in graph.initializer if init.name not in whole]
    del graph.initializer[:]
    graph.initializer.extend([*kept_inits, *new_inits])
    stale = [v for v in graph.value_info if v.name in tensors]
    for v in stale:
        graph.value_info.remove(v)
    del TensorProto
    return chunks


def _stored_in_chunks(model, search: set[int]) -> dict:
    """The operands that can be stored in chunks: only the `search` nodes (by id) read them, they are not graph
    outputs -> {name: (its initializer, None)} for an initializer, {name: (the fp16 initializer, the Cast node)}
    for the fp32 Cast of an initializer that nothing else reads."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    initializers = {init.name: init for init in model.graph.initializer}

    def only_the_search_reads(name):
        return name not in outputs and bool(consumers.get(name)) and all(id(n) in search for n in consumers[name])

    stored = {name: (init, None) for name, init in initializers.items() if only_the_search_reads(name)}
    for node in model.graph.node:
        source = node.input[0] if node.op_type == "Cast" else None
        if (source in initializers and len(consumers[source]) == 1 and source not in outputs
                and only_the_search_reads(node.output[0])):
            stored[node.output[0]] = (initializers[source], node)
    return stored


def _partial(red, chunk_input: str, c: int, start, shared_const, axis_last: str, rank: int,
             chunk_rows: int) -> list:
    """start(): the name of the chunk's first-row constant (made on first use); shared_const(suffix, value): the name of
    a constant the chunks share (made once)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in red.attribute}
    base = f"{red.output[0]}__part{c}"
    if red.op_type in ("ReduceMin", "ReduceMax"):
        return [helper.make_node(red.op_type, [chunk_input, axis_last], [f"{base}_v"], keepdims=1)]
    if red.op_type in ("ArgMin", "ArgMax"):
        group = _arg_group_rows(chunk_rows)
        if group > 1:
            return _two_level_arg(red.op_type, chunk_input, base, rank, chunk_rows, group,
                                  attrs.get("select_last_index", 0), start, shared_const, axis_last)
        value_op = "ReduceMin" if red.op_type == "ArgMin" else "ReduceMax"
        return [helper.make_node(value_op, [chunk_input, axis_last], [f"{base}_v"], keepdims=1),
                helper.make_node(red.op_type, [chunk_input], [f"{base}_local"], axis=-1, keepdims=1,
                                 select_last_index=attrs.get("select_last_index", 0)),
                helper.make_node("Add", [f"{base}_local", start()], [f"{base}_i"])]
    # TopK: every chunk holds at least K rows (_rewrite caps the number of chunks so)
    return [helper.make_node("TopK", [chunk_input, red.input[1]], [f"{base}_v", f"{base}_local"], axis=-1,
                             largest=attrs.get("largest", 1), sorted=1),
            helper.make_node("Add", [f"{base}_local", start()], [f"{base}_i"])]


def _arg_group_rows(chunk_rows: int) -> int:
    """The rows per group of a two-level Arg* (ARG_GROUP_ROWS, or the largest power of two below it that divides
    chunk_rows); 1 = none (an odd chunk, or one with fewer than two groups: a plain Arg*)."""
    group = ARG_GROUP_ROWS
    while group > 1 and (chunk_rows % group or chunk_rows < 2 * group):
        group //= 2
    return group


def _two_level_arg(op: str, chunk_input: str, base: str, rank: int, rows: int, group: int, select_last: int,
                   start, shared_const, axis_last: str) -> list:
    """The chunk's value (_v) and global index (_i) of its ArgMin/ArgMax, through groups of `group` rows (why:
    ARG_GROUP_ROWS). [.., P, rows] -> [.., P, G, group] -> group extrema [.., P, G] -> winning group [.., P, 1] ->
    its `group` values [.., P, 1, group] -> index in the group; index = group x winner + index in the group."""
    from onnx import helper

    reduce_op = "ReduceMin" if op == "ArgMin" else "ReduceMax"
    shape = shared_const(f"arg_grouped_{rows // group}x{group}",  # 0: keep that dim (batch, P)
                         np.array([0] * (rank - 1) + [rows // group, group], np.int64))
    expand = shared_const(f"arg_group_shape{group}", np.array([1] * rank + [group], np.int64))
    width = shared_const(f"arg_group_rows{group}", np.array([group], np.int64))
    return [
        helper.make_node("Reshape", [chunk_input, shape], [f"{base}_groups"]),
        helper.make_node(reduce_op, [f"{base}_groups", axis_last], [f"{base}_group_v"], keepdims=0),
        helper.make_node(reduce_op, [f"{base}_group_v", axis_last], [f"{base}_v"], keepdims=1),
        helper.make_node(op, [f"{base}_group_v"], [f"{base}_group"], axis=-1, keepdims=1,
                         select_last_index=select_last),
        helper.make_node("Unsqueeze", [f"{base}_group", axis_last], [f"{base}_group_1"]),
        helper.make_node("Expand", [f"{base}_group_1", expand], [f"{base}_group_g"]),
        helper.make_node("GatherElements", [f"{base}_groups", f"{base}_group_g"], [f"{base}_winning"], axis=-2),
        helper.make_node(op, [f"{base}_winning"], [f"{base}_in_group"], axis=-1, keepdims=0,
                         select_last_index=select_last),
        helper.make_node("Mul", [f"{base}_group", width], [f"{base}_group_start"]),
        helper.make_node("Add", [f"{base}_group_start", f"{base}_in_group"], [f"{base}_local"]),
        helper.make_node("Add", [f"{base}_local", start()], [f"{base}_i"]),
    ]


def _merge(red, chunks: int, axis_last: str) -> list:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in red.attribute}
    values = [f"{red.output[0]}__part{c}_v" for c in range(chunks)]
    indices = [f"{red.output[0]}__part{c}_i" for c in range(chunks)]
    all_v, all_i = f"{red.output[0]}__all_v", f"{red.output[0]}__all_i"
    nodes = [helper.make_node("Concat", values, [all_v], axis=-1)]
    if red.op_type in ("ReduceMin", "ReduceMax"):
        return nodes + [helper.make_node(red.op_type, [all_v, axis_last], [red.output[0]],
                                         keepdims=attrs.get("keepdims", 1))]
    nodes.append(helper.make_node("Concat", indices, [all_i], axis=-1))
    if red.op_type in ("ArgMin", "ArgMax"):
        winner, picked = f"{red.output[0]}__winner", f"{red.output[0]}__picked"
        nodes += [helper.make_node(red.op_type, [all_v], [winner], axis=-1, keepdims=1,  # a tie across chunks too
                                   select_last_index=attrs.get("select_last_index", 0)),
                  helper.make_node("GatherElements", [all_i, winner], [picked], axis=-1)]
        if attrs.get("keepdims", 1):
            return nodes + [helper.make_node("Identity", [picked], [red.output[0]])]
        return nodes + [helper.make_node("Squeeze", [picked, axis_last], [red.output[0]])]
    order = f"{red.output[0]}__order"
    return nodes + [
        helper.make_node("TopK", [all_v, red.input[1]], [red.output[0], order], axis=-1,
                         largest=attrs.get("largest", 1), sorted=1),
        helper.make_node("GatherElements", [all_i, order], [red.output[1]], axis=-1)]


def _topological_sort(graph) -> None:
    """Kahn's algorithm over the node list (the rewrite appends nodes; ONNX needs producers first)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("chunk_bank: the rewritten graph has a cycle or a missing input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
