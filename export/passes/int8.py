"""INT8 backbone (and bank search): onnxruntime's static quantisation in QDQ form, calibrated on good images.

    fp32 artefact model -> quantize_static(QDQ, per-channel weights, nodes = the backbone region
                                           [+ the bank-search MatMuls, onnxruntime flavour])
                        -> QuantizeLinear/DequantizeLinear pairs around the backbone's convolutions

Only the backbone region is quantised: the nodes between the first convolution and the last one that comes
before the head (the backbone's conv / clip / add chain; an embedding's 1x1 projection conv extends it).
Convolutions computed from the head's matrices (graph.head_matrices: the memory bank and the like), such as
the anomaly-map blur, are not part of it. The backbone's stage outputs are therefore INT8-rounded; the head
reads them dequantised, in fp32. The preprocessing before the region and
everything after it (distances, reductions, TopK, the anomaly-map post-processing) stay fp32, with one
exception in the onnxruntime flavour: the bank search's MatMul (queries x a head matrix, reduced over the
bank by ReduceMin/ArgMin/TopK, found by that shape: bank_search_matmuls) runs as a U8S8 integer GEMM with
per-channel weight scales, and its bias (|m|^2) and the reduction stay fp32. On magnetic-tile, with a 1,843 x 152
bank, that GEMM is ~35% of an fp32 frame's node time (onnxruntime profiler): in one interleaved run of
three variants of the same fit, fp32 9.54 ms, backbone-only INT8 8.32 ms, backbone + bank search 7.19 ms,
image AUROC 0.902 / 0.900 / 0.896 (bench/vs_anomalib.py then measured the compiled INT8 artefact at 6.80 ms
against 8.89 fp32). The build's AUROC gate still decides whether a given fit may ship it. TensorRT's flavour
keeps the search in fp32 (its QDQ MatMul path is not checked here).

U8S8 saturation (why the weights are 7-bit in both flavours): on x86 CPUs without VNNI (AVX2, AVX-512 without
VNNI), onnxruntime's integer kernels multiply-add pairs of u8 x s8 products into int16 (vpmaddubsw), which
saturates once two products exceed 32,767: 2 x 255 x 127 = 64,770 can. How much an 8-bit-weight artefact loses
then depends on the CPU that runs it: the 2026-11-26 bench (0.902 -> 0.900 image AUROC) ran where it did not
saturate; on an AVX2-only EPYC the same pass and fit lost 15 points (TensorRT's flavour scored in onnxruntime:
every pred_score at 1.0), while the same Q/DQ graph evaluated literally in fp32 lost none
(bench/results/int8_regression.md). onnxruntime's documented remedy is reduce_range ("Quantize ONNX models": 7-bit
weights, for U8S8 on AVX2 and AVX-512 non-VNNI machines): 2 x 255 x 64 = 32,640 never saturates, so an artefact
scores alike on every x86 CPU (and the precision gate, run on the build machine, measures what the device
computes), at the cost of one bit of weight resolution. TensorRT reads the same symmetric 7-bit values as ordinary
INT8 weights (zero point 0).

Two flavours, because the two consumers want different things (onnxruntime quantization docs, "Quantize
ONNX models": U8S8 is the fast path for x86 CPUs; TensorRT's explicit quantisation reads QDQ and requires
`y_zero_point == 0`, i.e. symmetric INT8 activations, onnx-tensorrt operators.md, QuantizeLinear):
    symmetric=False  uint8 activations with zero points, int8 weights  (onnxruntime CPU)
    symmetric=True   int8 activations, zero point 0, int8 weights      (TensorRT / Jetson targets)
(weights: per channel, symmetric, in [-64, 64] for the reason above)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from adtk.export.passes.graph import BANK_ELEMENTWISE, BANK_REDUCTIONS, downstream_nodes, head_matrices
from adtk.runtime.errors import ConfigError

CONV_OPS = {"Conv", "ConvTranspose"}
# Op types worth quantising inside the backbone region (onnxruntime's QDQ registry has them all).
QUANTISED_OPS = ["Conv", "Clip", "Relu", "Add", "Mul", "AveragePool", "GlobalAveragePool", "Concat", "Pad",
                 "MaxPool", "Resize", "Sigmoid"]


def backbone_region(model) -> list[str]:
    """Names of the backbone's nodes: downstream of the first conv and upstream of a conv that comes before
    the head (a conv not computed from the head's matrices), both included."""
    nodes = list(model.graph.node)
    for i, node in enumerate(nodes):  # passes need names to address nodes; give unnamed ones one
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    after_head = downstream_nodes(model, [m.name for m in head_matrices(model)])
    producer = {out: node for node in nodes for out in node.output}
    by_name = {node.name: node for node in nodes}
    convs = [node for node in nodes if node.op_type in CONV_OPS and node.name not in after_head]
    if not convs:
        return []
    ancestors, stack = set(), [c.name for c in convs]
    while stack:  # every node a backbone conv depends on
        name = stack.pop()
        if name in ancestors:
            continue
        ancestors.add(name)
        stack.extend(producer[i].name for i in by_name[name].input if i in producer)
    descendants = downstream_nodes(model, convs[0].output) | {convs[0].name}
    return [node.name for node in nodes if node.name in ancestors and node.name in descendants]


def bank_search_matmuls(model) -> list[str]:
    """Names of the MatMuls that multiply by a head matrix (graph.head_matrices) and whose product reaches a
    reduction over the bank through elementwise ops only: the nearest-row searches. A MatMul whose product
    is not reduced (the anomaly-map smoothing, a projection) is not one."""
    banks = {m.name for m in head_matrices(model)}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in banks or node.input[0] in banks:
            continue
        frontier, seen = [node.output[0]], set()
        while frontier:
            tensor = frontier.pop()
            for consumer in consumers.get(tensor, []):
                if consumer.op_type in BANK_REDUCTIONS and consumer.input[0] == tensor:
                    found.append(node.name)
                    frontier = []
                    break
                if consumer.op_type in BANK_ELEMENTWISE and consumer.name not in seen:
                    seen.add(consumer.name)
                    frontier.extend(consumer.output)
    return found


class FrameReader:
    """onnxruntime CalibrationDataReader over uint8 frames [H, W, 3], one frame per batch."""

    def __init__(self, input_name: str, frames: Iterable[np.ndarray]):
        self.input_name = input_name
        self.frames = iter(frames)

    def get_next(self):
        frame = next(self.frames, None)
        return None if frame is None else {self.input_name: np.ascontiguousarray(frame[None])}

    def rewind(self):  # onnxruntime calls it for some calibration methods; one pass is all we need
        pass


def quantize_backbone_int8(model, calibration_frames: list[np.ndarray], symmetric: bool,
                           calibrate_method: str = "minmax", reduce_range: bool = True):
    """fp32 ModelProto -> INT8-backbone ModelProto (QDQ; with symmetric=False also the bank searches).
    `calibration_frames`: good images, uint8 [H, W, 3]. `reduce_range=False` (8-bit weights, which saturate on
    CPUs without VNNI) only to measure that (bench/int8_regression.py)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrate_method not in methods:
        raise ConfigError(f"int8 calibration method {calibrate_method!r} is not known (known: {', '.join(methods)})")
    if len(calibration_frames) == 0:
        raise ConfigError("int8 needs good images to calibrate the activation ranges; none were given")
    working = onnx.ModelProto()
    working.CopyFrom(model)
    region = backbone_region(working)
    if not region:
        raise ConfigError("int8: the graph has no convolution, so there is no backbone to quantise; use fp16")
    searches = [] if symmetric else bank_search_matmuls(working)
    metadata = [(p.key, p.value) for p in working.metadata_props]
    del working.metadata_props[:]
    with tempfile.TemporaryDirectory(prefix="adtk-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            working, out, FrameReader(working.graph.input[0].name, calibration_frames),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTISED_OPS + (["MatMul"] if searches else []),
            nodes_to_quantize=region + searches,
            per_channel=True, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[calibrate_method],
            reduce_range=reduce_range,  # 7-bit weights: see "U8S8 saturation" above
            # TensorRT reads only INT8 Q/DQ: conv biases stay float for it (onnxruntime would make them int32)
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
        )
        quantised = onnx.load(out)
    del quantised.metadata_props[:]  # onnxruntime adds its own entries; the artefact carries only adtk's
    for key, value in metadata:
        entry = quantised.metadata_props.add()
        entry.key, entry.value = key, value
    return quantised
