"""Helpers shared by the graph passes: unsealing an artefact's model, shapes at a fixed input size."""

from __future__ import annotations

import json

import numpy as np

from adtk.export.passes.frame_branch import inline_else_branches
from adtk.runtime.artefact import INPUT_NAME, INTEGRITY_KEY, MANIFEST_KEY


def load_unsealed(model_bytes: bytes):
    """Artefact (or plain ONNX) bytes -> ModelProto without the integrity record (a pass changes the bytes)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != INTEGRITY_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def read_manifest(model) -> dict | None:
    for prop in model.metadata_props:
        if prop.key == MANIFEST_KEY:
            return json.loads(prop.value)
    return None


def set_manifest(model, manifest: dict) -> None:
    """Replace (or add) the manifest entry; the integrity record is added later by `seal`."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in (MANIFEST_KEY, INTEGRITY_KEY)]
    del model.metadata_props[:]
    for key, value in [*kept, (MANIFEST_KEY, json.dumps(manifest, sort_keys=True))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def with_fixed_input(model, input_shape: tuple[int, ...]):
    """A copy whose first graph input has the given shape (e.g. [1, H, W, 3] frames) where its dims are
    symbolic; dims the graph already fixes are kept."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, input_shape):
        if not dim.HasField("dim_value"):
            dim.Clear()
            dim.dim_value = int(value)
    return fixed


def infer_shapes(model, input_shape: tuple[int, ...] | None = None) -> tuple[object, dict[str, tuple]]:
    """-> (shape-inferred model, {tensor name: (elem_type, dims)}); a dim is an int, or a str when unknown.

    onnx's own shape inference with data propagation: the artefact resizes every frame to the model size
    inside the graph, so once the frame size is fixed every tensor after the resize has a static shape.
    With a frame size, the frame-size If (toolkit/preprocess.py) is read as its general branch
    (passes/frame_branch.py): onnx infers an If's output from its branches' declared shapes, which keep the
    batch symbolic, while the inlined branch gives every tensor its static shape (the values are the same).
    The returned model is then that inlined one.
    """
    from onnx import shape_inference

    if input_shape is not None:
        model = with_fixed_input(inline_else_branches(model)[0], input_shape)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim)
        shapes[value.name] = (tensor_type.elem_type, dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = (init.data_type, tuple(int(d) for d in init.dims))
    return inferred, shapes


def initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def constant_value(model, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant-node output, else None (the tensor is computed)."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def frame_shape(manifest: dict | None, batch: int = 1) -> tuple[int, int, int, int]:
    """The input shape the cost model and checks use: frames already at the model size (no resize cost)."""
    height, width = (manifest or {}).get("input", {}).get("model_size_px", (256, 256))
    return (batch, int(height), int(width), 3)


__all__ = ["INPUT_NAME", "load_unsealed", "read_manifest", "set_manifest", "with_fixed_input", "infer_shapes",
           "initializers", "constant_value", "frame_shape"]


# A bank search as a head exports it: MatMul by a head matrix -> elementwise ops -> a reduction over the bank
# (export/passes/chunk_bank.py rewrites it in chunks; export/passes/int8.py quantises its MatMul).
BANK_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Clip", "Max", "Min", "Sqrt", "Neg", "Relu", "Abs", "Pow"}
BANK_REDUCTIONS = {"ReduceMin", "ReduceMax", "ArgMin", "ArgMax", "TopK"}


def head_matrices(model, min_elements: int = 1024) -> list:
    """The head's matrices: float initializers of rank >= 2 and >= min_elements values that no convolution
    consumes (memory banks, projections). The backbone's weights all feed convolutions."""
    from onnx import TensorProto

    conv_inputs = {i for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") for i in n.input}
    used = {i for n in model.graph.node for i in n.input}
    return [init for init in model.graph.initializer
            if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(init.dims) >= 2
            and int(np.prod(init.dims)) >= min_elements and init.name not in conv_inputs and init.name in used]


def downstream_nodes(model, tensor_names) -> set[str]:
    """Names of the nodes that (transitively) consume any of the given tensors."""
    reached, found = set(tensor_names), set()
    for node in model.graph.node:  # graph order is topological
        if any(i in reached for i in node.input):
            found.add(node.name)
            reached.update(node.output)
    return found
