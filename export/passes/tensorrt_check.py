"""Static TensorRT-compatibility check of an artefact, run for every target whose runtime is TensorRT.

Without TensorRT installed (it is not installable on the build machines), this is what proves a Jetson
artefact will parse and build. Each rule cites where TensorRT states it:

  op              the op is in the ONNX-TensorRT parser's support matrix (onnx-tensorrt docs/operators.md)
                  and in the default ONNX domain (no onnxruntime contrib ops such as com.microsoft.*)
  opset           the model's opset <= what the target's parser reads (targets/*.yaml onnx_max_opset)
  topk_k          TopK's K is a constant (operators.md: "K input must be an initializer") and <= 3840
                  (TensorRT ITopKLayer: K must be at most 3840)
  tensor_elements no tensor has more than 2^31 - 1 elements (TensorRT tensors are indexed with int32)
  file_size       the file is under 2 GB (protobuf's limit; adtk writes no external data)
  static_shape    with frames fixed at the engine's profile shape every tensor's shape is known
                  (TensorRT resolves shapes per optimisation profile at build time), and the inputs the
                  parser needs as constants are constants (Conv weights, Clip bounds, axes of Slice /
                  Squeeze / Unsqueeze / reductions, Reshape's shape after folding)
  int8_qdq        QuantizeLinear / DequantizeLinear are INT8 with zero point 0 (operators.md: explicit
                  quantisation requires `y_zero_point == 0`)

`check_tensorrt(model, target)` returns the violations; `require_tensorrt_compatible` raises TargetError
listing them. Tests build one small graph per rule with onnx.helper and see it refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adtk.export.passes.graph import constant_value, frame_shape, infer_shapes, read_manifest
from adtk.runtime.errors import TargetError

MAX_TOPK_K = 3840
MAX_TENSOR_ELEMENTS = 2**31 - 1
MAX_FILE_BYTES = 2 * 1024**3

# ONNX-TensorRT support matrix (docs/operators.md, TensorRT 8.4+; later releases only add ops).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid HardSwish Identity If ImageScaler
InstanceNormalization IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg Not Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize RNN Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth
Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
""".split())

# input index that must be a constant, per op (operators.md restrictions; axes moved to inputs in opset 13/18)
CONSTANT_INPUTS = {"Conv": [1], "ConvTranspose": [1], "Clip": [1, 2], "Slice": [3], "Squeeze": [1],
                   "Unsqueeze": [1], "TopK": [1], "CumSum": [1], "ReduceMin": [1], "ReduceMax": [1],
                   "ReduceMean": [1], "ReduceSum": [1], "ReduceL2": [1], "ReduceProd": [1],
                   "QuantizeLinear": [1, 2], "DequantizeLinear": [1, 2]}


@dataclass(frozen=True)
class Violation:
    rule: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.detail}"


def check_tensorrt(model, target, batch: int = 1, file_bytes: int | None = None) -> list[Violation]:
    """All violations of TensorRT's parser and engine limits, for frames at the model size and `batch`."""
    from onnx import TensorProto

    found: list[Violation] = []
    size = file_bytes if file_bytes is not None else model.ByteSize()
    if size >= MAX_FILE_BYTES:
        found.append(Violation("file_size", "model", f"{size / 2**30:.2f} GiB >= 2 GiB; shrink the head (coreset)"))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > target.onnx_max_opset:
        found.append(Violation("opset", "model", f"opset {opset} > {target.onnx_max_opset}, the newest TensorRT "
                               f"{target.tensorrt_version} reads on {target.name}"))
    produced_by_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            found.append(Violation("op", where, f"{node.domain or 'ai.onnx'}::{node.op_type} is not supported by "
                                   "TensorRT's ONNX parser"))
            continue
        for index in CONSTANT_INPUTS.get(node.op_type, []):
            if index < len(node.input) and node.input[index] and constant_value(model, node.input[index]) is None:
                if node.op_type in ("Conv", "ConvTranspose") and node.input[index] in produced_by_dq:
                    continue  # QDQ weights: DequantizeLinear of an initializer is what TensorRT expects
                found.append(Violation("static_shape", where, f"input {index} ({node.input[index]!r}) must be a "
                                       "constant for TensorRT"))
        if node.op_type == "TopK":
            k = constant_value(model, node.input[1])
            if k is not None and int(np.asarray(k).ravel()[0]) > MAX_TOPK_K:
                found.append(Violation("topk_k", where, f"K = {int(np.asarray(k).ravel()[0])} > {MAX_TOPK_K}, "
                                       "TensorRT's TopK limit"))
            elif k is None:
                found[-1:] = [v for v in found[-1:] if not (v.where == where)]  # reported once, as topk_k
                found.append(Violation("topk_k", where, "K is computed at run time; TensorRT needs a constant K"))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero_point = constant_value(model, node.input[2])
            if zero_point is not None and (zero_point.dtype != np.int8 or np.any(zero_point != 0)):
                found.append(Violation("int8_qdq", where, f"zero point {zero_point.dtype} "
                                       f"{np.unique(zero_point)[:3].tolist()}; TensorRT needs int8 with zero point 0 "
                                       "(build with symmetric INT8 activations)"))
    found.extend(_shape_violations(model, batch))
    del TensorProto
    return found


def _shape_violations(model, batch: int) -> list[Violation]:
    found = []
    try:
        inferred, shapes = infer_shapes(model, frame_shape(read_manifest(model), batch))
    except Exception as exc:  # onnx raises InferenceError and friends
        return [Violation("static_shape", "model", f"shape inference failed: {exc}")]
    graph_tensors = [o for n in inferred.graph.node for o in n.output if o]
    for name in [*graph_tensors, *(i.name for i in inferred.graph.initializer)]:
        if name not in shapes:
            continue
        dims = shapes[name][1]
        if any(not isinstance(d, int) or d <= 0 for d in dims) and name in graph_tensors:
            if not any(name == o.name for o in inferred.graph.output if not o.type.tensor_type.HasField("shape")):
                found.append(Violation("static_shape", repr(name), f"shape {list(dims)} is not static at the "
                                       f"profile shape {list(frame_shape(read_manifest(model), batch))}"))
            continue
        elements = int(np.prod(dims, dtype=np.int64))
        if elements > MAX_TENSOR_ELEMENTS:
            found.append(Violation("tensor_elements", repr(name), f"{elements} elements (shape {list(dims)}) > 2^31 - 1; "
                                   "split the bank into chunks (export/passes/chunk_bank.py) or shrink it"))
    return found


def require_tensorrt_compatible(model, target, batch: int = 1, file_bytes: int | None = None) -> None:
    violations = check_tensorrt(model, target, batch, file_bytes)
    if violations:
        listed = "\n  ".join(str(v) for v in violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        raise TargetError(f"the artefact would not build with TensorRT {target.tensorrt_version} on {target.name} "
                          f"({len(violations)} problem(s)):\n  {listed}{more}")
