"""Values the scoring graph holds, read from the artefact's bytes, and checked against its manifest on load.

The manifest repeats a few values that the graph itself computes with: the calibration (threshold and
span of the score and of the map normaliser), the input normalisation (mean/std) and the model size (the
anomaly-map upsampling matrices). Someone with write access to the model folder can edit the manifest
and re-seal the file (the integrity record is a checksum, not a signature); then `Detector.threshold`
would report a value the graph does not use. So on load the runtime reads those initializers straight
from the ONNX bytes (by the names the scoring graph gives them, see export/compose.py and
toolkit/postprocess.py) and refuses an artefact whose manifest disagrees with its own graph.

Read with the same hand-written protobuf walk as the integrity check (adtk.runtime.artefact): the runtime
has neither the `onnx` package nor any other way to see initializer values (onnxruntime hides them).
A graph that does not name one of these values (a future pass renamed it) is not checked for that value;
`warm_up` (daemon/hot_swap.py) still checks the outputs' shapes and labels against the manifest by scoring.
A graph that names one twice (an initializer and a Constant node...) or stores it in a form not decoded here is
refused: the value checked must be the value onnxruntime uses. This keeps a manifest honest about its graph; it
cannot stop someone who rewrites the graph itself (new nodes compute anything): that needs signatures.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from adtk.runtime.protobuf_wire import WIRE_32BIT, WIRE_LEN, WIRE_VARINT, read_varint, top_level_fields
from adtk.runtime.errors import ArtefactError

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer
_GRAPH_NODE, _NODE_OUTPUT = 1, 2  # GraphProto.node, NodeProto.output
_GRAPH_SPARSE_INITIALIZER, _SPARSE_VALUES = 15, 1  # GraphProto.sparse_initializer, SparseTensorProto.values
_GRAPH_INPUT, _GRAPH_OUTPUT, _VALUE_INFO_NAME = 11, 12, 1  # GraphProto.input, .output, ValueInfoProto.name
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_FLOATS, _TENSOR_NAME, _TENSOR_RAW = 1, 2, 4, 8, 9
_NUMPY_TYPES = {1: np.float32, 10: np.float16}  # TensorProto.DataType FLOAT, FLOAT16
RELATIVE_TOLERANCE = 2e-3  # fp16 storage of a value rounds it by up to 5e-4 relative


def _inverse_span(high: float, low: float) -> float:
    span = high - low
    return 1.0 / (span if math.isfinite(span) and span > 0 else 1.0)  # as ScoreNormaliser does


# initializer name in the scoring graph -> the value the manifest implies for it
EXPECTED_FROM_MANIFEST = {
    "normaliser.threshold": lambda m: m["calibration"]["threshold"],
    "normaliser.inv_span": lambda m: _inverse_span(m["calibration"]["score_max"], m["calibration"]["score_min"]),
    "map_normaliser.threshold": lambda m: m["calibration"]["map_threshold"],
    "map_normaliser.inv_span": lambda m: _inverse_span(m["calibration"]["map_max"], m["calibration"]["map_min"]),
    "preprocess.scale": lambda m: [1.0 / (255.0 * s) for s in m["input"]["normalise"]["std"]],
    "preprocess.offset": lambda m: [-a / s for a, s in zip(m["input"]["normalise"]["mean"],
                                                          m["input"]["normalise"]["std"])],
}
# the map upsampling matrices: rows_operator [S_h, h] and cols_operator_t [w, S_w] give the model size
SIZE_OPERATORS = ("smoother.rows_operator", "smoother.cols_operator_t")
MAX_VALUES = 64  # only small tensors are decoded; big ones (weights) are just skipped


def _tensor(payload) -> tuple[str, list[int], np.ndarray | None]:
    """A TensorProto -> (name, dims, values or None when large or of another type)."""
    name, dims, data_type, raw, floats = "", [], 0, None, []
    for field, wire, _, end, value in top_level_fields(payload):
        if field == _TENSOR_NAME and wire == WIRE_LEN:
            name = bytes(value).decode("utf-8", errors="replace")
        elif field == _TENSOR_DIMS and wire == WIRE_VARINT:
            dims.append(value)
        elif field == _TENSOR_DIMS and wire == WIRE_LEN:  # packed
            pos = 0
            while pos < len(value):
                dim, pos = read_varint(value, pos)
                dims.append(dim)
        elif field == _TENSOR_TYPE and wire == WIRE_VARINT:
            data_type = value
        elif field == _TENSOR_RAW and wire == WIRE_LEN:
            raw = value
        elif field == _TENSOR_FLOATS and wire == WIRE_LEN:
            floats.append(bytes(value))
        elif field == _TENSOR_FLOATS and wire == WIRE_32BIT:  # unpacked: one float per field, as protobuf may write
            floats.append(bytes(payload[end - 4:end]))  # (and onnxruntime reads it: skipping it let a re-sealed
            # threshold of another value pass unchecked)
    dtype = _NUMPY_TYPES.get(data_type)
    count = math.prod(dims) if dims else 1
    if dtype is None or count > MAX_VALUES:
        return name, dims, None
    data = bytes(raw) if raw is not None else b"".join(floats)
    if data_type == 10 and raw is None:
        return name, dims, None  # fp16 in int32_data: not written by the exporter; not checked
    values = np.frombuffer(data, dtype=np.float32 if raw is None else dtype)
    return name, dims, (values.astype(np.float64) if values.size == count else None)


def _defined_names(graph_field: int, payload) -> list[str]:
    """The names a graph node (its outputs) or a sparse initializer (its values tensor's name) defines."""
    names = []
    for field, wire, _, _, value in top_level_fields(payload):
        if graph_field == _GRAPH_NODE and field == _NODE_OUTPUT and wire == WIRE_LEN:
            names.append(bytes(value).decode("utf-8", errors="replace"))
        elif graph_field == _GRAPH_SPARSE_INITIALIZER and field == _SPARSE_VALUES and wire == WIRE_LEN:
            names.append(_tensor(value)[0])
    return names


def _read_graph(model_bytes) -> tuple[dict, list[str], list[str], set[str], Counter]:
    """One walk over the graph's top-level fields -> (the initializers that matter to the manifest: name -> (dims,
    values or None), input names, output names, every initializer's name, how many times each of the names that
    matter is defined: dense and sparse initializers, node outputs)."""
    wanted = set(EXPECTED_FROM_MANIFEST) | set(SIZE_OPERATORS)
    found, inputs, outputs, initializers, definitions = {}, [], [], set(), Counter()
    for field, wire, _, _, graph in top_level_fields(memoryview(model_bytes)):
        if field != _MODEL_GRAPH or wire != WIRE_LEN:
            continue
        for graph_field, graph_wire, _, _, payload in top_level_fields(graph):
            if graph_wire != WIRE_LEN:
                continue
            if graph_field == _GRAPH_INITIALIZER:
                name, dims, values = _tensor(payload)
                initializers.add(name)
                if name in wanted:
                    found[name] = (dims, values)
                    definitions[name] += 1
            elif graph_field in (_GRAPH_NODE, _GRAPH_SPARSE_INITIALIZER):
                definitions.update(name for name in _defined_names(graph_field, payload) if name in wanted)
            elif graph_field in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                name = next((bytes(value).decode("utf-8", errors="replace")
                             for value_field, value_wire, _, _, value in top_level_fields(payload)
                             if value_field == _VALUE_INFO_NAME and value_wire == WIRE_LEN), "")
                (inputs if graph_field == _GRAPH_INPUT else outputs).append(name)
    return found, inputs, outputs, initializers, definitions


def check_manifest_against_graph(model_bytes, manifest: dict, source: str = "artefact") -> None:
    """Raise ArtefactError when a value the manifest states differs from the one its graph computes with, or
    when the graph lacks the artefact contract's input or outputs (a re-sealed graph with an output dropped
    would otherwise load and fail on the first frame)."""
    from adtk.runtime.manifest import INPUT_NAME, OUTPUT_NAMES

    found, inputs, outputs, initializers, definitions = _read_graph(model_bytes)
    missing = [name for name in OUTPUT_NAMES if name not in outputs] + ([] if INPUT_NAME in inputs else [INPUT_NAME])
    if missing:
        raise ArtefactError(f"{source}: the graph lacks the artefact contract's {', '.join(missing)} (it has inputs "
                            f"{inputs[:4]}, outputs {outputs[:8]}): it is not an adtk artefact or it was edited "
                            "after the build. Do not use it; copy the artefact again from the build machine")
    # an input an initializer backs has a value without being fed (onnxruntime lets a caller override it; adtk feeds
    # only frames); any other input would be missing from every run, so the first frame would fail, not the load
    extra = [name for name in inputs if name != INPUT_NAME and name not in initializers]
    if extra:
        raise ArtefactError(f"{source}: the graph has inputs besides the contract's {INPUT_NAME} "
                            f"({', '.join(repr(name[:40]) for name in extra[:4])}"
                            f"{f' and {len(extra) - 4} more' if len(extra) > 4 else ''}): it was edited after the "
                            "build. Do not use it; copy the artefact again from the build machine")
    # A value the check reads must be the one onnxruntime computes with: a name defined twice (a Constant node or a
    # sparse initializer beside the initializer: onnxruntime takes one of them) or stored in a form not decoded here
    # (too many values, another type, a size that does not fit) would otherwise be checked on a copy, or not at all.
    disagreements = [f"{name} is defined {count} times (initializers, node outputs)"
                     for name, count in definitions.items() if count > 1]
    disagreements += [f"{name}: stored in a form this runtime does not read (not a few float32 values)"
                      for name in EXPECTED_FROM_MANIFEST if name in found and found[name][1] is None]
    for name, expected_of in EXPECTED_FROM_MANIFEST.items():
        if name not in found or found[name][1] is None:
            continue
        try:
            expected = np.asarray(expected_of(manifest), dtype=np.float64).ravel()
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):  # Overflow: an int of 400 digits
            disagreements.append(f"{name}: the manifest does not state it in a usable form")
            continue
        actual = found[name][1].ravel()
        if expected.shape != actual.shape or not np.allclose(actual, expected, rtol=RELATIVE_TOLERANCE, atol=1e-12):
            disagreements.append(f"{name}: graph {np.round(actual, 6).tolist()}, manifest implies "
                                 f"{np.round(expected, 6).tolist()}")
    if all(name in found for name in SIZE_OPERATORS):
        (rows_dims, _), (cols_dims, _) = found[SIZE_OPERATORS[0]], found[SIZE_OPERATORS[1]]
        graph_size = [rows_dims[0] if rows_dims else None, cols_dims[-1] if cols_dims else None]
        stated = manifest.get("input", {}).get("model_size_px")
        if list(stated or []) != graph_size:
            disagreements.append(f"model size: graph {graph_size}, manifest {stated}")
    if disagreements:
        raise ArtefactError(f"{source}: the manifest disagrees with the graph it describes ("
                            + "; ".join(disagreements[:4]) + "): it was edited after the build. Do not use it; "
                            "copy the artefact again from the build machine (and sign artefacts: adtk sign)")
