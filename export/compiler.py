"""The compiler's back half: fp32 model -> precision variant -> target checks -> final manifest.

    model, manifest = compile_model(fp32_model, manifest, CompileOptions(precision="int8", target=t), data)

Precision (export/passes): fp16 = the head's matrices stored in fp16, distances computed in fp32;
int8 = onnxruntime static QDQ quantisation of the backbone, calibrated on good training images (symmetric
for TensorRT targets, U8S8 for onnxruntime ones). Every variant is scored against fp32 on held-out images
with onnxruntime, and the build is refused if its image AUROC drops by more than `max_auroc_drop`.
For a TensorRT target (or one needing an older opset) the frame-size If first becomes its general branch
(passes/frame_branch.py). Then the bank-chunking pass: for onnxruntime (a CPU target, or no target) into
cache-sized chunks, for a TensorRT target only where a tensor breaks TensorRT's size limit; then, for any
target whose parser reads an older ONNX opset than the export's, the exact opset down-conversion
(passes/opset.py); then, for TensorRT, the static check. A violation, or an op with no exact older form,
refuses the build. The cost model's prediction for the target is recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from adtk.export.cost_model import CostEstimate, estimate_cost
from adtk.export.passes.chunk_bank import CPU_CACHE_CHUNK_ELEMENTS, chunk_bank_reductions
from adtk.export.passes.fp16 import convert_head_matrices_to_fp16
from adtk.export.passes.frame_branch import inline_else_branches
from adtk.export.passes.int8 import quantize_backbone_int8
from adtk.export.passes.opset import default_opset, downgrade_opset
from adtk.export.passes.tensorrt_check import require_tensorrt_compatible
from adtk.export.targets import PRECISIONS, Target
from adtk.runtime.artefact import INPUT_NAME
from adtk.runtime.errors import ConfigError, TargetError
from adtk.runtime.manifest import with_target


@dataclass(frozen=True)
class CheckData:
    """Images the compiler may use: good training images to calibrate INT8, labelled held-out images to
    compare each precision with fp32 (never the images the method was fitted on)."""

    calibration_frames: list  # uint8 [H, W, 3] good images
    check_frames: list  # uint8 [H, W, 3]
    check_labels: np.ndarray  # 0 = good, 1 = defective
    check_description: str  # what the check images are, for the log and the manifest


@dataclass(frozen=True)
class CompileOptions:
    precision: str = "fp32"
    target: Target | None = None
    max_auroc_drop: float = 0.01  # 1 AUROC point
    int8_calibration: str = "minmax"


@dataclass(frozen=True)
class PrecisionCheck:
    precision: str
    images: str
    num_images: int
    num_defective: int
    image_auroc_fp32: float | None  # None when the check images hold one class only
    image_auroc: float | None
    max_abs_pred_score_diff: float  # largest |pred_score(variant) - pred_score(fp32)| over the images

    @property
    def auroc_drop(self) -> float | None:
        if self.image_auroc is None or self.image_auroc_fp32 is None:
            return None
        return self.image_auroc_fp32 - self.image_auroc

    def summary(self) -> str:
        if self.auroc_drop is None:
            return (f"{self.precision}: image AUROC not measurable ({self.images}: one class only); "
                    f"max |pred_score - fp32| = {self.max_abs_pred_score_diff:.4f}")
        return (f"{self.precision}: image AUROC {self.image_auroc:.4f} vs fp32 {self.image_auroc_fp32:.4f} "
                f"({-self.auroc_drop * 100:+.2f} points) on {self.images}; max |pred_score - fp32| = "
                f"{self.max_abs_pred_score_diff:.4f}")


def run_scores(model_bytes: bytes, frames: list) -> np.ndarray:
    """pred_score of each frame (batch 1, onnxruntime CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return np.array([session.run(["pred_score"], {INPUT_NAME: np.ascontiguousarray(f[None])})[0][0] for f in frames],
                    dtype=np.float64)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def apply_precision(model, precision: str, data: CheckData | None, symmetric_int8: bool,
                    int8_calibration: str = "minmax"):
    """-> (variant ModelProto, facts for the manifest)."""
    if precision == "fp32":
        return model, {}
    if precision == "fp16":
        variant, report = convert_head_matrices_to_fp16(model)
        return variant, {"fp16_matrices": [list(map(str, c)) for c in report.converted],
                         "bytes_saved": report.bytes_saved, "accumulation": "fp32"}
    if precision == "int8":
        if data is None or not data.calibration_frames:
            raise ConfigError("int8 needs good training images to calibrate; none were given")
        variant = quantize_backbone_int8(model, data.calibration_frames, symmetric=symmetric_int8,
                                         calibrate_method=int8_calibration)
        scope = "backbone" if symmetric_int8 else "backbone and bank-search MatMuls"
        return variant, {"int8": f"{scope}, QDQ, per-channel weights", "calibration_images": len(data.calibration_frames),
                         "activations": "int8 symmetric (TensorRT)" if symmetric_int8 else "uint8 asymmetric (U8S8)",
                         "calibration_method": int8_calibration}
    raise ConfigError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")


def check_precision(fp32_scores: np.ndarray, variant, data: CheckData, precision: str) -> PrecisionCheck:
    scores = run_scores(variant.SerializeToString(), data.check_frames)
    labels = np.asarray(data.check_labels)
    return PrecisionCheck(precision, data.check_description, len(labels), int(labels.sum()),
                          auroc(fp32_scores, labels), auroc(scores, labels),
                          float(np.abs(scores - fp32_scores).max(initial=0.0)))


def compile_model(fp32_model, manifest: dict, options: CompileOptions, data: CheckData | None,
                  log=print, fp32_scores: np.ndarray | None = None):
    """-> (final ModelProto, final manifest, CostEstimate or None). Raises TargetError / ConfigError."""
    target, precision = options.target, options.precision
    if target is not None:
        target.check_precision(precision)
        if target.uses_tensorrt or default_opset(fp32_model) > target.onnx_max_opset:
            # the frame-size If (toolkit/preprocess.py) -> its general branch, before any other pass: same results,
            # no subgraph left for TensorRT's parser or for the opset rewrites (which do not reach into subgraphs)
            fp32_model, inlined = inline_else_branches(fp32_model)
            if inlined:
                log(f"frame-size branch: kept the gathered-row resize only ({inlined} If node(s) inlined)")
    model, facts = apply_precision(fp32_model, precision, data,
                                   symmetric_int8=bool(target and target.uses_tensorrt),
                                   int8_calibration=options.int8_calibration)
    check = None
    if precision != "fp32" and data is not None and data.check_frames:
        if fp32_scores is None:
            fp32_scores = run_scores(fp32_model.SerializeToString(), data.check_frames)
        check = check_precision(fp32_scores, model, data, precision)
        log(f"precision check: {check.summary()}")
        if check.auroc_drop is not None and check.auroc_drop > options.max_auroc_drop:
            raise TargetError(f"{precision} loses {check.auroc_drop * 100:.2f} AUROC points against fp32 on "
                              f"{check.images} (allowed: {options.max_auroc_drop * 100:.2f}); keep fp32/fp16, "
                              "calibrate INT8 on more good images, or raise --max-auroc-drop")
    if target is None or not target.uses_tensorrt:  # onnxruntime on a CPU: the bank search in cache-sized chunks
        model, chunks = chunk_bank_reductions(model, CPU_CACHE_CHUNK_ELEMENTS)
        if chunks:
            split = ", ".join(f"{c['rows']} rows in {c['chunks']}" for c in chunks)
            log(f"bank search split into cache-sized chunks for onnxruntime's CPU kernels (same outputs): {split}")
            facts["bank_chunks"] = chunks
    estimate: CostEstimate | None = None
    if target is not None:
        if target.uses_tensorrt:
            model, chunks = chunk_bank_reductions(model)
            if chunks:
                log(f"split {len(chunks)} bank reduction(s) into chunks for TensorRT's limits: {chunks}")
                facts["bank_chunks"] = chunks
        if default_opset(model) > target.onnx_max_opset:  # after every pass that adds nodes
            model, converted = downgrade_opset(model, target.onnx_max_opset)
            log(f"opset: {converted.from_opset} -> {converted.to_opset} for {target.name}'s parser, exact rewrites "
                f"of {sum(converted.rewritten.values())} node(s): {converted.as_dict()['rewritten']}")
            facts["opset"] = converted.as_dict()
        if target.uses_tensorrt:
            require_tensorrt_compatible(model, target)
            log(f"TensorRT check: passed for {target.name} (TensorRT {target.tensorrt_version}, "
                f"opset <= {target.onnx_max_opset})")
        estimate = estimate_cost(model, target, precision)
        log(f"cost model: {estimate.summary()}")
        if not estimate.fits:
            raise TargetError(f"the {precision} artefact does not fit {target.name}: {'; '.join(estimate.reasons)}")
    manifest = with_target(manifest, {
        "name": target.name if target else "generic",
        "precision": precision,
        "runtime": target.runtime if target else "onnxruntime",
        "tensorrt_version": target.tensorrt_version if target else None,
        "precision_details": facts,
        "precision_check": asdict(check) if check else None,
        "cost": estimate.as_dict() if estimate else None,
    })
    return model, manifest, estimate
