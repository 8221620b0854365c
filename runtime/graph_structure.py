"""What an artefact's graph may not contain, checked on its verified bytes before onnxruntime (or TensorRT) sees it.

* **External data.** A TensorProto may say that its values live in another file (`data_location = EXTERNAL`,
  `external_data = {location: ...}`). An artefact is one file (README, "the artefact contract"), and
  onnxruntime resolves such a location against the working directory when a model is loaded from bytes: a
  re-sealed artefact naming `hostname_copy` or `../secrets` would make the daemon read a file of the device
  into its weights (older onnxruntime releases, such as the ones JetPack ships, do not refuse absolute or `..`
  locations either). Every tensor anywhere in the model is looked at: initializers, sparse initializers,
  Constant-like node attributes, the bodies of If/Loop/Scan, model-local functions and training graphs.
* **Deep nesting.** Subgraphs (If/Loop/Scan bodies) nested more than MAX_SUBGRAPH_DEPTH levels: protobuf
  parsers stop at 100 message levels (onnxruntime refuses the model, the `onnx` package raises DecodeError),
  and no adtk build nests more than one level. The walk here is iterative (a bomb cannot exhaust the stack).

The same hand-written protobuf walk as the integrity check (runtime/protobuf_wire.py): no `onnx` package.
"""

from __future__ import annotations

from adtk.runtime.errors import ArtefactError
from adtk.runtime.protobuf_wire import WIRE_LEN, WIRE_VARINT, top_level_fields

MAX_SUBGRAPH_DEPTH = 16  # a graph inside a graph inside ...: adtk builds use 1 (the frame-size If)
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto

# message kind -> {field number: (kind of the embedded message, whether it is one subgraph level deeper)}
_CHILDREN = {
    "model": {7: ("graph", True), 20: ("training", False), 25: ("function", True)},
    "training": {1: ("graph", True), 2: ("graph", True)},
    "function": {7: ("node", False), 11: ("attribute", False)},
    "graph": {1: ("node", False), 5: ("tensor", False), 15: ("sparse", False)},
    "node": {5: ("attribute", False)},
    "attribute": {5: ("tensor", False), 6: ("graph", True), 10: ("tensor", False), 11: ("graph", True),
                  22: ("sparse", False), 23: ("sparse", False)},
    "sparse": {1: ("tensor", False), 2: ("tensor", False)},
}


def _external_location(tensor) -> str | None:
    """The file a TensorProto's values are said to live in, '' when external without a location, None when
    its values are in the artefact."""
    external, location, name = False, "", ""
    for field, wire, _, _, value in top_level_fields(tensor):
        if field == _TENSOR_DATA_LOCATION and wire == WIRE_VARINT and value == _EXTERNAL:
            external = True
        elif field == _TENSOR_EXTERNAL_DATA and wire == WIRE_LEN:
            external = True
            entry = {entry_field: bytes(raw).decode("utf-8", errors="replace")
                     for entry_field, entry_wire, _, _, raw in top_level_fields(value) if entry_wire == WIRE_LEN}
            if entry.get(_ENTRY_KEY) == "location":
                location = entry.get(_ENTRY_VALUE, "")
        elif field == _TENSOR_NAME and wire == WIRE_LEN:
            name = bytes(value).decode("utf-8", errors="replace")
    return f"{name or '(unnamed)'} -> {location or '(no location)'}" if external else None


def check_graph_structure(model_bytes, source: str = "artefact") -> None:
    """Raise ArtefactError when any tensor of the model refers to external data, or when subgraphs nest deeper
    than MAX_SUBGRAPH_DEPTH. model_bytes: the verified bytes (or a read-only map of them)."""
    problem = _first_problem(model_bytes)  # returns before raising: no view of model_bytes outlives the walk
    if problem is not None:
        raise ArtefactError(f"{source}: {problem}. It was edited after the build: copy the artefact again from the "
                            "build machine")


def _first_problem(model_bytes) -> str | None:
    """Depth first, one field iterator per open message: memory follows the nesting depth (bounded), never the
    number of nodes or tensors (a graph of a hundred million empty nodes is one iterator, not a list of them)."""
    stack = [("model", 0, top_level_fields(memoryview(model_bytes)))]
    while stack:
        kind, depth, fields = stack[-1]
        for field, wire, _, _, value in fields:
            child = _CHILDREN[kind].get(field)
            if child is None or wire != WIRE_LEN:
                continue
            child_kind, deeper = child
            if child_kind == "tensor":
                where = _external_location(value)
                if where is not None:
                    return (f"a tensor refers to data outside the artefact ({where!r:.200}); an adtk artefact is "
                            "one file and never reads another, so it is refused before onnxruntime sees it")
                continue
            child_depth = depth + 1 if deeper else depth
            if child_depth > MAX_SUBGRAPH_DEPTH + 1:  # the main graph is level 1
                return (f"subgraphs (If/Loop/Scan bodies) nested more than {MAX_SUBGRAPH_DEPTH} levels deep; no "
                        "adtk build nests them like that")
            stack.append((child_kind, child_depth, top_level_fields(value)))
            break
        else:
            stack.pop()
    return None
