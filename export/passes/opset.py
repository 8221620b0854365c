"""Opset down-conversion: rewrite a model into an older ONNX opset's forms, exactly, or refuse.

    model17, report = downgrade_opset(model18, 17)   # report.rewritten == {"Pad": 2, "ReduceMax": 1, ...}

Why not onnx's own converter: `onnx.version_converter.convert_version(model, 17)` stops at our graphs
("No Adapter To Version $17 for Pad"), and asking torch's dynamo exporter for opset 17 fails as well. Both
would also change more than the ops that need it. This pass finds the nodes to change from onnx's schema
registry (an op whose `since_version` at the model's opset is newer than at the target opset), so a new op
version is never missed; it rewrites only the forms it knows to be exactly equivalent, one schema step at a
time (REWRITES below), and refuses the rest with a TargetError naming each node and why.

Known 18 -> 17 changes (onnx docs/Changelog.md, opset 18):
  Reduce{Max,Min,Mean,Prod,L1,L2,LogSum,LogSumExp,SumSquare}  `axes` moved from an attribute to an input, and
        `noop_with_empty_axes` was added (ReduceSum made that move in opset 13, so it is unchanged here)
  Pad             optional `axes` input: pads only the listed axes
  Resize          `antialias`, `axes`, `keep_aspect_ratio_policy` attributes
  Split           `num_outputs` attribute (equal chunks, the last one smaller)
  ScatterElements, ScatterND   reduction "max" / "min"
  LpPool          `ceil_mode`, `dilations` attributes
  new ops (Mish, GroupNormalization, Col2Im, CenterCropPad, Bitwise*) and the Optional* ops: refused
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adtk.export.passes.frame_branch import inline_else_branches
from adtk.export.passes.graph import constant_value, infer_shapes
from adtk.runtime.errors import TargetError

DEFAULT_DOMAINS = ("", "ai.onnx")
REDUCTIONS_WITH_AXES_INPUT_SINCE_18 = ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1",
                                       "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


@dataclass(frozen=True)
class OpsetReport:
    from_opset: int
    to_opset: int
    rewritten: dict  # {op type: number of nodes converted to the older form}

    def as_dict(self) -> dict:
        return {"from": self.from_opset, "to": self.to_opset, "rewritten": dict(sorted(self.rewritten.items()))}


class Refusal(Exception):
    """A node has no exactly equivalent form in the older opset; the message says why."""


def default_opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0)


def downgrade_opset(model, target_opset: int):
    """-> (new ModelProto at `target_opset`, OpsetReport). The input model is not changed; metadata_props
    (the manifest) are carried over untouched. Raises TargetError listing every node it cannot convert.
    The frame-size If (toolkit/preprocess.py) is first replaced by its general branch (passes/frame_branch.py,
    same values): nodes inside subgraphs are not rewritten here."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    from_opset = default_opset(model)
    if from_opset <= target_opset:
        return out, OpsetReport(from_opset, from_opset, {})
    out, _ = inline_else_branches(out)
    model = out
    rewriter = _Rewriter(out, model)
    refusals = [*_nested_refusals(out, from_opset, target_opset)]
    rewritten: dict[str, int] = {}
    for node in out.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        try:
            if _convert_node(node, from_opset, target_opset, rewriter):
                rewritten[node.op_type] = rewritten.get(node.op_type, 0) + 1
        except Refusal as refusal:
            refusals.append(f"{_where(node)}: {refusal}")
    if refusals:
        raise TargetError(f"cannot convert the model from ONNX opset {from_opset} to {target_opset} exactly "
                          f"({len(refusals)} node(s)):\n  " + "\n  ".join(refusals) + "\nTarget a device whose "
                          f"parser reads opset {from_opset}, or change the graph so it does not use these forms")
    rewriter.finish()
    for entry in out.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            entry.version = target_opset
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise TargetError(f"the opset-{target_opset} model fails onnx's checker after down-conversion ({exc}); "
                          f"{_whose_fault(model)}") from exc
    return out, OpsetReport(from_opset, target_opset, rewritten)


def _whose_fault(original) -> str:
    import onnx

    try:
        onnx.checker.check_model(original, full_check=True)
    except Exception as exc:
        return f"the opset-{default_opset(original)} model already failed it ({exc}); fix the export first"
    return "the original passes it, so this is an adtk bug: please report it with the build log"


def _where(node) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


def _since(op_type: str, opset: int) -> int | None:
    """The version of `op_type` in effect at `opset`, None when the op does not exist yet."""
    from onnx import defs

    try:
        return defs.get_schema(op_type, opset, "").since_version
    except defs.SchemaError:
        return None


def _convert_node(node, from_opset: int, target_opset: int, rewriter) -> bool:
    """Step the node down one schema version at a time; -> whether it changed version."""
    current, wanted = _since(node.op_type, from_opset), _since(node.op_type, target_opset)
    if current is None:
        raise Refusal(f"not an ONNX op at opset {from_opset}")
    if wanted is None:
        raise Refusal(f"the op does not exist before opset {current}")
    if current == wanted:
        return False
    while current > wanted:
        previous = _since(node.op_type, current - 1)
        rewrite = REWRITES.get((node.op_type, current))
        if rewrite is None:
            raise Refusal(f"no exact rewrite from {node.op_type}-{current} to {node.op_type}-{previous} is known")
        rewrite(node, rewriter)
        current = previous
    return True


def _nested_refusals(model, from_opset: int, target_opset: int) -> list[str]:
    """Ops needing a rewrite inside If/Loop/Scan bodies or model-local functions: not rewritten, refused."""
    from onnx import AttributeProto

    def changed(nodes):
        return [n for n in nodes if n.domain in DEFAULT_DOMAINS
                and _since(n.op_type, from_opset) != _since(n.op_type, target_opset)]

    def bodies(nodes):
        for node in nodes:
            for attr in node.attribute:
                graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
                for graph in graphs:
                    yield node, graph
                    yield from ((node, inner) for _, inner in bodies(graph.node))

    found = [f"{_where(inner)} inside {_where(outer)}: nodes in subgraphs are not rewritten"
             for outer, graph in bodies(model.graph.node) for inner in changed(graph.node)]
    for function in model.functions:
        found += [f"{_where(n)} inside function {function.name!r}: functions are not rewritten"
                  for n in changed(function.node)]
    return found


class _Rewriter:
    """What the rewrites share: constant lookup, lazily inferred shapes, new initializers, and cleanup of the
    constants a rewrite no longer reads."""

    def __init__(self, model, original):
        self.model, self.original, self._shapes, self._dropped = model, original, None, set()
        self._names = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
        self._names |= {o for n in model.graph.node for o in n.output}

    def constant(self, name: str) -> np.ndarray | None:
        return constant_value(self.model, name)

    def shape(self, name: str) -> tuple | None:
        """Dims of a tensor for every input size: onnx shape inference on the original model (a half-rewritten
        one mixes opsets), inputs left symbolic (a fixed frame size would make size-dependent dims look static)."""
        if self._shapes is None:
            try:
                self._shapes = infer_shapes(self.original)[1]
            except Exception:  # onnx's InferenceError and friends: no shapes, the rewrite refuses
                self._shapes = {}
        found = self._shapes.get(name)
        return None if found is None else found[1]

    def add_int64(self, values, base: str) -> str:
        from onnx import numpy_helper

        name, index = base, 0
        while name in self._names:
            index += 1
            name = f"{base}_{index}"
        self._names.add(name)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def release(self, name: str) -> None:
        """A rewritten node no longer reads `name`: remove it at the end if nothing else does."""
        self._dropped.add(name)

    def drop_inputs(self, node, index: int) -> None:
        """Remove inputs from `index` on, and the empty optional inputs then left at the end."""
        for name in node.input[index:]:
            self.release(name)
        del node.input[index:]
        while node.input and not node.input[-1]:
            del node.input[-1]

    def finish(self) -> None:
        """Remove initializers and Constant nodes that only the rewritten inputs read."""
        graph = self.model.graph
        used = {o.name for o in graph.output} | {i.name for i in graph.input}
        used |= {name for n in _all_nodes(graph) for name in n.input}
        unused = self._dropped - used - {""}
        kept = [i for i in graph.initializer if i.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in unused)]
        del graph.node[:]
        graph.node.extend(kept_nodes)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def _attr(node, name: str, default=None):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _remove_attrs(node, *names: str) -> None:
    kept = [a for a in node.attribute if a.name not in names]
    del node.attribute[:]
    node.attribute.extend(kept)


def _normalised_axes(axes, rank: int) -> list[int]:
    axes = [int(a) for a in np.asarray(axes).ravel()]
    if any(not -rank <= a < rank for a in axes):
        raise Refusal(f"axes {axes} out of range for a rank-{rank} input")
    normal = [a % rank for a in axes]
    if len(set(normal)) != len(normal):
        raise Refusal(f"axes {axes} repeat an axis")
    return normal


def _reduce_axes_input_to_attribute(node, rewriter) -> None:
    """Reduce*-18 -> Reduce*-13: a constant `axes` input becomes the `axes` attribute (onnx Changelog,
    opset 18). No axes: both versions reduce over every axis, unless noop_with_empty_axes=1, which 13 lacks."""
    axes_name = node.input[1] if len(node.input) > 1 else ""
    axes = rewriter.constant(axes_name) if axes_name else np.zeros(0, np.int64)
    if axes is None:
        raise Refusal(f"axes come from the computed tensor {axes_name!r}; opset 17 takes them only as a constant "
                      "attribute")
    axes = [int(a) for a in np.asarray(axes).ravel()]
    if not axes and _attr(node, "noop_with_empty_axes", 0):
        raise Refusal("noop_with_empty_axes=1 with no axes (reduce nothing) has no opset-17 form")
    rewriter.drop_inputs(node, 1)
    _remove_attrs(node, "noop_with_empty_axes", "axes")
    if axes:
        from onnx import helper

        node.attribute.append(helper.make_attribute("axes", axes))


def _pad_without_axes_input(node, rewriter) -> None:
    """Pad-18 -> Pad-13: with an `axes` input, pads [2 * len(axes)] name only those axes (begins, then ends);
    13 wants pads for every axis, so the constant pads are expanded with zeros (onnx Pad-18 spec)."""
    axes_name = node.input[3] if len(node.input) > 3 else ""
    if axes_name:
        axes, pads = rewriter.constant(axes_name), rewriter.constant(node.input[1])
        if axes is None or pads is None:
            raise Refusal("the axes or pads input is computed; only constant ones can be expanded to every axis")
        dims = rewriter.shape(node.input[0])
        if dims is None:
            raise Refusal(f"the rank of {node.input[0]!r} is unknown to shape inference")
        axes, pads = _normalised_axes(axes, len(dims)), np.asarray(pads, dtype=np.int64).ravel()
        if len(pads) != 2 * len(axes):
            raise Refusal(f"{len(pads)} pads for {len(axes)} axes (expected {2 * len(axes)})")
        full = np.zeros(2 * len(dims), dtype=np.int64)
        full[axes], full[[a + len(dims) for a in axes]] = pads[:len(axes)], pads[len(axes):]
        rewriter.release(node.input[1])
        node.input[1] = rewriter.add_int64(full, f"{node.name or node.output[0]}_pads_all_axes")
    rewriter.drop_inputs(node, 3)


def _resize_without_new_attributes(node, rewriter) -> None:
    """Resize-18 -> Resize-13: the three attributes 18 added are dropped when they change nothing."""
    if _attr(node, "antialias", 0) != 0:
        raise Refusal("antialias=1 (a wider filter when downscaling) has no opset-17 form; export with "
                      "antialias=False")
    axes = _attr(node, "axes")
    if axes is not None:
        dims = rewriter.shape(node.input[0])
        if dims is None or _normalised_axes(axes, len(dims)) != list(range(len(dims))):
            raise Refusal(f"axes={list(axes)} resizes only some axes; opset 17 needs scales or sizes for all")
    sizes_given = len(node.input) > 3 and bool(node.input[3])
    if sizes_given and _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Refusal(f"keep_aspect_ratio_policy={_attr(node, 'keep_aspect_ratio_policy')!r} changes the output "
                      "size; opset 17 always stretches")
    _remove_attrs(node, "antialias", "axes", "keep_aspect_ratio_policy")


def _split_num_outputs_to_sizes(node, rewriter) -> None:
    """Split-18 -> Split-13: `num_outputs` (chunks of ceil(d / n), the last smaller) becomes a constant `split`
    input, which needs the split dimension d to be static."""
    num_outputs = _attr(node, "num_outputs")
    if num_outputs is None:
        return  # a `split` input: the same in both versions
    axis, dims = _attr(node, "axis", 0), rewriter.shape(node.input[0])
    if dims is None or not -len(dims) <= axis < len(dims) or not isinstance(dims[axis], int) or dims[axis] <= 0:
        raise Refusal(f"the size of axis {axis} of {node.input[0]!r} is not static "
                      f"({'unknown' if dims is None else list(dims)}); opset 17 needs the chunk sizes")
    length = dims[axis]
    chunk = -(-length // num_outputs)
    sizes = [chunk] * (num_outputs - 1) + [length - chunk * (num_outputs - 1)]
    if sizes[-1] <= 0 or len(node.output) != num_outputs:
        raise Refusal(f"num_outputs={num_outputs} does not split {length} into {len(node.output)} chunks")
    _remove_attrs(node, "num_outputs")
    rewriter.drop_inputs(node, 1)
    node.input.append(rewriter.add_int64(sizes, f"{node.name or node.output[0]}_split_sizes"))


def _scatter_without_max_min(node, rewriter) -> None:
    """Scatter{Elements,ND}-18 -> -16: 18 added reduction "max" and "min"; the other reductions are 16's."""
    reduction = _attr(node, "reduction", "none")
    if reduction in ("max", "min"):
        raise Refusal(f"reduction={reduction!r} exists only since opset 18")


def _lppool_without_new_attributes(node, rewriter) -> None:
    """LpPool-18 -> LpPool-11: 18 added ceil_mode and dilations; their defaults change nothing."""
    if _attr(node, "ceil_mode", 0) != 0:
        raise Refusal("ceil_mode=1 exists only since opset 18")
    dilations = _attr(node, "dilations")
    if dilations is not None and any(d != 1 for d in dilations):
        raise Refusal(f"dilations={list(dilations)} exist only since opset 18")
    _remove_attrs(node, "ceil_mode", "dilations")


# (op type, the newer version) -> rewrite into the version before it. Only exact rewrites live here.
REWRITES = {
    **{(op, 18): _reduce_axes_input_to_attribute for op in REDUCTIONS_WITH_AXES_INPUT_SINCE_18},
    ("Pad", 18): _pad_without_axes_input,
    ("Resize", 18): _resize_without_new_attributes,
    ("Split", 18): _split_num_outputs_to_sizes,
    ("ScatterElements", 18): _scatter_without_max_min,
    ("ScatterND", 18): _scatter_without_max_min,
    ("LpPool", 18): _lppool_without_new_attributes,
}
