"""Export a scoring graph with the TorchScript tracer in two parts, and merge them into one ONNX model.

    frames uint8 [B, H, W, 3]  --(front: the preprocess)-->  images [B, 3, h, w] at the model size
    images                     --(model-size part: the rest, batch dynamic)-->  the artefact's outputs

Why: torch.export reasons symbolically about every dynamic dim through the whole graph and traces it twice (capture,
then decompositions): ~5.7 s of a ~30 s default build on 2 cores, and ~1 s even for a tiny module. The tracer
records a graph in tenths of a second, but only one path through it and every shape it reads as arithmetic. So:
- the front's per-frame choice between two resizes (FramePreprocess.branches) is traced path by path and joined by
  an ONNX If on the frame's rows (the If torch.export made of its torch.cond);
- from the front's output on, every shape but the batch is fixed by the model size: the part's shape arithmetic is
  folded into constants (fold_static_shapes), and timm's TF-"same" convolutions, which compute their padding from
  the input's shape at run time, are traced from a copy that pads by constants (with_constant_padding), which
  onnxruntime folds into the Conv. Left as traced, both made frames ~1.1x slower and hid the bank search's shape
  from the compiler's passes.
The merged model computes what the whole-graph torch.export model computes (tests/export/test_split_export.py);
the runtime, passes and parity tests see one model as before. export.formats.export_onnx_bytes falls back to
torch.export for a graph that cannot be cut (an ensemble) or that the tracer fails on (torch deprecates the tracer:
if a release drops it, builds export as before, only slower).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import torch
import torch.nn.functional as F
from torch import nn

FRONT_OUTPUT = "images"  # the front's output, the model-size part's input


class ConstantPadConv2d(nn.Conv2d):
    """A convolution with TF-"same" padding for one input size: the pads are constants (F.pad, then no padding),
    computed as timm's pad_same does for that size. Shares the source layer's weight and bias."""

    def __init__(self, conv: nn.Conv2d, input_hw: tuple[int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None)
        self.weight, self.bias = conv.weight, conv.bias
        pads = [same_padding(size, kernel, stride, dilation)
                for size, kernel, stride, dilation in zip(input_hw, conv.kernel_size, conv.stride, conv.dilation)]
        (pad_h, pad_w) = pads
        self.pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # F.pad's order: W, then H

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total TF-"same" padding along one axis (timm.layers.padding.get_same_padding, for plain ints)."""
    return max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def dynamic_same_padding_layers() -> tuple[type, ...]:
    """timm's convolution classes that pad from the input's shape at run time (none without timm)."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:
        return ()
    return (Conv2dSame,)


@torch.no_grad()
def with_constant_padding(backbone: nn.Module, images: torch.Tensor) -> nn.Module:
    """backbone, or a copy of it in which every dynamically "same"-padded convolution pads by constants for the
    input sizes it sees when the backbone runs on `images` (the model size): the same outputs at that size."""
    layers = dynamic_same_padding_layers()
    input_hw: dict[str, set[tuple[int, int]]] = {}

    def record(name):
        def hook(module, args):  # returns None: the layer's input is not changed
            input_hw.setdefault(name, set()).add(tuple(int(v) for v in args[0].shape[-2:]))
        return hook

    hooks = [module.register_forward_pre_hook(record(name))
             for name, module in backbone.named_modules() if layers and isinstance(module, layers)]
    if not hooks:
        return backbone
    try:
        backbone(images)
    finally:
        for hook in hooks:
            hook.remove()
    frozen = copy.deepcopy(backbone)
    for name, sizes in input_hw.items():
        if len(sizes) != 1:  # a layer called at several sizes keeps its run-time padding
            continue
        size = next(iter(sizes))
        parent_name, _, child = name.rpartition(".")
        parent = frozen.get_submodule(parent_name) if parent_name else frozen
        setattr(parent, child, ConstantPadConv2d(getattr(parent, child), size))
    return frozen


def trace_front(preprocess: nn.Module, frames: torch.Tensor, opset: int, dynamic: bool):
    """The preprocess as an ONNX model (frames -> FRONT_OUTPUT) by the TorchScript tracer. Dynamic batch, height
    and width: each of its two resizes (FramePreprocess.branches) is traced alone and an If on the frame's rows
    picks one, as the module does; static: the path this frame size takes, as torch.export records it."""
    from onnx import TensorProto, helper, numpy_helper

    from adtk.runtime.artefact import INPUT_NAME

    if not dynamic:
        return _trace(preprocess, frames, INPUT_NAME, [FRONT_OUTPUT], opset, None)
    rows, small, large = preprocess.branches()  # a preprocess without them is exported whole (formats.py)
    axes = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}, FRONT_OUTPUT: {0: "batch"}}
    small_model = _trace(small, frames, INPUT_NAME, [FRONT_OUTPUT], opset, axes)
    large_model = _trace(large, frames, INPUT_NAME, [FRONT_OUTPUT], opset, axes)
    # the module's own buffers (preprocess.scale, .offset: names the runtime checks against the manifest,
    # runtime/graph_values.py) are held once, in the enclosing graph, under their names; both bodies read them
    large_values = {init.name: init for init in large_model.graph.initializer}
    shared = [init for init in small_model.graph.initializer if init.name in large_values
              and numpy_helper.to_array(init).tobytes() == numpy_helper.to_array(large_values[init.name]).tobytes()]
    shared_names = {init.name for init in shared}
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], ["front/frame_shape"], start=1, end=2, name="front/frame_rows"),
        helper.make_node("Constant", [], ["front/max_small_rows"], name="front/max_small_rows",
                         value=helper.make_tensor("max_small_rows", TensorProto.INT64, [1], [int(rows)])),
        helper.make_node("LessOrEqual", ["front/frame_shape", "front/max_small_rows"], ["front/is_small_1"],
                         name="front/is_small_1"),
        helper.make_node("Squeeze", ["front/is_small_1"], ["front/is_small"], name="front/is_small"),
        helper.make_node("If", ["front/is_small"], [FRONT_OUTPUT], name="front/resize",
                         then_branch=_as_branch(small_model.graph, "front/small/", shared_names),
                         else_branch=_as_branch(large_model.graph, "front/large/", shared_names)),
    ]
    graph = helper.make_graph(nodes, "front", [small_model.graph.input[0]], [small_model.graph.output[0]],
                              initializer=shared)
    return helper.make_model(graph, opset_imports=small_model.opset_import, ir_version=small_model.ir_version)


def _trace(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str], opset: int,
           dynamic_axes):
    """The TorchScript tracer's ONNX model of module(example)."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's deprecation notice and its notes on traced Python values
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, input_names=[input_name], output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _as_branch(graph, prefix: str, outer_initializers: set[str]):
    """A traced graph as an If body: no inputs (it reads the frames, and outer_initializers, from the enclosing
    graph), every other name it defines prefixed, so that the two bodies and the enclosing graph share none."""
    import onnx

    body = onnx.GraphProto()
    body.CopyFrom(graph)
    kept = [init for init in body.initializer if init.name not in outer_initializers]
    del body.initializer[:]
    body.initializer.extend(kept)
    outer = {value.name for value in graph.input} | set(outer_initializers)
    local = {init.name for init in body.initializer} | {out for node in body.node for out in node.output if out}

    def renamed(name: str) -> str:
        return prefix + name if name in local else name

    for init in body.initializer:
        init.name = renamed(init.name)
    for node in body.node:
        node.name = prefix + node.name
        node.input[:] = [renamed(name) if name and name not in outer else name for name in node.input]
        node.output[:] = [renamed(name) for name in node.output]
    for value in body.output:
        value.name = renamed(value.name)
    del body.input[:]
    del body.value_info[:]
    body.name = prefix.strip("/").replace("/", "_")
    return body


def trace_model_size_part(part: nn.Module, images: torch.Tensor, output_names: list[str], opset: int,
                          dynamic_batch: bool):
    """The TorchScript tracer's ONNX model of `part` (images [B, 3, h, w] -> outputs), batch dynamic or not, its
    shape arithmetic folded (fold_static_shapes)."""
    dynamic_axes = {name: {0: "batch"} for name in [FRONT_OUTPUT, *output_names]} if dynamic_batch else None
    model = fold_static_shapes(_trace(part, images, FRONT_OUTPUT, output_names, opset, dynamic_axes))
    if any(node.op_type in ("If", "Loop", "Scan") for node in model.graph.node):
        # the compiler's passes take every top-level If for the front's resize choice (passes/frame_branch.py)
        raise ValueError("the traced model-size part holds control flow")
    return model


# Constants folded by fold_static_shapes are small shape vectors and pads; larger values are never evaluated here.
MAX_FOLDED_ELEMENTS = 4096
MAX_FOLD_ROUNDS = 8


def fold_static_shapes(model):
    """Fold the traced shape arithmetic of the model-size part into constants, in place -> the model.

    The tracer records every shape its modules read (a reshape's sizes, an upsample's target size, F.pad's pads)
    as Shape -> Gather -> ... nodes, and onnx's shape inference cannot see through them: an output's size stays
    unknown, and with it the bank search's shape that the compiler's passes read (export/passes/chunk_bank.py).
    Only the batch is dynamic here, so each round replaces what is now known by constants: a Shape whose dims
    are all static, a Gather or Slice of a Shape that picks only static dims, and any node whose inputs are all
    small constants (evaluated by onnx's reference evaluator); shape inference then sees further, until nothing
    changes. onnxscript's optimiser then removes what became dead. Written here because onnxscript's constant
    folder does not fold ConstantOfShape (F.pad's pads) nor a Shape with a dynamic batch; 0.6-0.9 s at a 70k-row
    bank, most of it onnxscript's optimiser on the whole model."""
    import onnxscript.optimizer

    for _ in range(MAX_FOLD_ROUNDS):
        if not _fold_round(model):
            break
    folded = onnxscript.optimizer.optimize(model)
    model.CopyFrom(folded)
    return model


def _fold_round(model) -> int:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from adtk.export.passes.graph import infer_shapes

    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer
                 if int(np.prod(init.dims)) <= MAX_FOLDED_ELEMENTS}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    with large_data_set_aside(model):
        _, shapes = infer_shapes(model)  # the compiler's own (passes/graph.py): unknown dims come back as str
    dims = {name: [d if isinstance(d, int) else None for d in tensor_dims] for name, (_, tensor_dims) in shapes.items()}
    unknown = -(2 ** 62)  # a dynamic dim's stand-in: a result that holds it is not folded

    def known_shape(shape_node) -> np.ndarray:
        """A Shape node's output with `unknown` for each dynamic dim (its start / end attributes applied)."""
        full = np.array([unknown if d is None else d for d in dims[shape_node.input[0]]], dtype=np.int64)
        return _shape_slice(shape_node, full)

    shape_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Shape" and n.input[0] in dims}

    def evaluate(node, inputs: dict):
        inits = [numpy_helper.from_array(np.asarray(value), name) for name, value in inputs.items()]
        outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output]
        single = helper.make_model(helper.make_graph([node], "fold", [], outputs, initializer=inits),
                                   opset_imports=model.opset_import, ir_version=model.ir_version)
        return [np.asarray(value) for value in ReferenceEvaluator(single).run(None, {})]

    folded, nodes = 0, []
    for node in graph.node:
        value = None
        if node.op_type == "Shape" and node.output[0] in shape_nodes:
            value = known_shape(node)
        elif node.op_type in ("Gather", "Slice") and node.input[0] in shape_nodes and \
                all(name in constants for name in node.input[1:] if name):
            shape = known_shape(shape_nodes[node.input[0]])
            value = evaluate(node, {node.input[0]: shape, **{n: constants[n] for n in node.input[1:] if n}})[0]
        elif node.op_type != "Constant" and node.input and len(node.output) == 1 and \
                all(name in constants for name in node.input if name) and \
                not any(attr.type == onnx.AttributeProto.GRAPH for attr in node.attribute):
            try:
                value = evaluate(node, {name: constants[name] for name in node.input if name})[0]
            except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: left for the runtime to fold
                value = None
        if value is not None and (value.size > MAX_FOLDED_ELEMENTS or (value.dtype == np.int64 and
                                                                        (value <= unknown // 2).any())):
            value = None
        if value is None:
            nodes.append(node)
            continue
        constants[node.output[0]] = value
        nodes.append(helper.make_node("Constant", [], [node.output[0]], value=numpy_helper.from_array(value)))
        folded += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return folded


@contextlib.contextmanager
def large_data_set_aside(model):
    """The model's large initializers' bytes set aside for the block (shape inference reads only their dims, and
    serialising a bank for it took most of a fold round), put back after."""
    set_aside = [(init, init.raw_data) for init in model.graph.initializer
                 if init.HasField("raw_data") and len(init.raw_data) > 4 * MAX_FOLDED_ELEMENTS]
    try:
        for init, _ in set_aside:
            init.raw_data = b""
        yield model
    finally:
        for init, data in set_aside:
            init.raw_data = data


def _shape_slice(node, shape):
    """A Shape node's output (its start / end attributes applied) for a known input shape."""
    attrs = {attr.name: attr.i for attr in node.attribute}
    return shape[attrs.get("start", 0):attrs.get("end", len(shape))]


def rename_clashing_names(part, front) -> None:
    """Rename, in `part`, the values whose names `front` uses too: each part is traced on its own and the tracer
    names values by position (both can hold a "/Constant_output_0"), which merge_models refuses. The part's graph
    inputs and outputs keep their names (the joint and the artefact's contract)."""
    graph = part.graph
    taken = ({name for node in front.graph.node for name in node.output} | {i.name for i in front.graph.initializer}
             | {v.name for v in front.graph.value_info} | {i.name for i in front.graph.input})
    fixed = {i.name for i in graph.input} | {o.name for o in graph.output}
    mine = ({name for node in graph.node for name in node.output} | {i.name for i in graph.initializer}
            | {v.name for v in graph.value_info})
    renamed = {name: f"part{name}" if name.startswith("/") else f"part/{name}" for name in mine & taken - fixed}
    if not renamed:
        return
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for entry in (*graph.initializer, *graph.value_info):
        entry.name = renamed.get(entry.name, entry.name)


def merge_front_and_part(front, part):
    """One ModelProto: the front's output feeds the part's input (onnx.compose), the front's graph input kept."""
    from onnx import compose

    part.ir_version = front.ir_version  # the tracer writes an older IR version; merge_models wants one
    rename_clashing_names(part, front)
    merged = compose.merge_models(front, part, io_map=[(FRONT_OUTPUT, FRONT_OUTPUT)])
    merged.graph.name = front.graph.name
    # merge_models lists a domain once per part; tools that look the opset up (onnxruntime's quantiser) want one
    versions = {}
    for opset in merged.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    del merged.opset_import[:]
    for domain, version in versions.items():
        merged.opset_import.add(domain=domain, version=version)
    return merged
