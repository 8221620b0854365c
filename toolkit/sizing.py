"""`adtk build --target`: choose precision and shrink a method's declared sizing knobs until the cost
model predicts that the artefact fits the target's frame budget; refuse, saying why, when nothing can.

Before any feature is extracted, `refuse_unfit_architecture` costs the architecture with an almost empty head
(`probe_model`) and refuses when the backbone and input size alone are over the budget. Then the loop
(toolkit/build.py) fits, exports fp32, and asks `plan_for_target`, for each precision in `precision_order`
(the requested one, or with `--precision auto` the target's default and then INT8):
  1. it fits -> done;
  2. otherwise lower the first knob of `method.sizing_knobs()` (e.g. a coreset ratio) so the part of the
     predicted latency that scales with the head fits what the rest leaves of the budget (with 10 % margin),
     refit, re-export, re-check. The knob's cost exponent says how the head's cost grows with it;
  3. no knob can reach the budget -> the next precision (INT8 last: it may lose accuracy, and the
     precision gate then refuses it), else refuse.
The compiler never names a method: the knobs are data the method declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from adtk.export.cost_model import CostEstimate, estimate_cost
from adtk.export.targets import Target
from adtk.runtime.errors import TargetError

MAX_SIZING_ROUNDS = 4
SAFETY = 0.9


@dataclass(frozen=True)
class SizingPlan:
    fits: bool
    precision: str
    params: dict = field(default_factory=dict)  # knob values to refit with (empty when it fits)
    estimate: CostEstimate | None = None
    message: str = ""


def resolve_precision(requested: str, target: Target | None) -> str:
    if requested != "auto":
        if target is not None:
            target.check_precision(requested)
        return requested
    return target.default_precision if target is not None else "fp32"


def precision_order(precision: str, target: Target, precision_is_free: bool) -> list[str]:
    """Precisions to size for, in order of preference. A free choice tries the target's default (e.g. fp16) with
    a smaller head before INT8: INT8's bank search can lose far more accuracy than a smaller bank (issue 13:
    -24.5 AUROC points on a large bank), and the precision gate would then refuse the artefact after the fit."""
    order = [precision]
    if precision_is_free and "int8" in target.precisions and precision != "int8":
        order.append("int8")
    return order


def plan_for_target(fp32_model, target: Target, precision: str, method, precision_is_free: bool) -> SizingPlan:
    notes = []
    for candidate in precision_order(precision, target, precision_is_free):
        estimate = estimate_cost(_as_costed(fp32_model, candidate), target, candidate)
        if estimate.fits:
            prefix = f"{'; '.join(notes)}; " if notes else ""
            return SizingPlan(True, candidate, {}, estimate, f"{prefix}{candidate} fits: {estimate.summary()}")
        plan, why = _shrink_head(estimate, candidate, method)
        if plan is not None:
            return SizingPlan(False, candidate, plan[0], estimate,
                              f"{'; '.join([*notes, f'{candidate} does not fit: ' + '; '.join(estimate.reasons)])}; "
                              f"{plan[1]}")
        notes.append(f"{candidate} does not fit ({'; '.join(estimate.reasons)}) and {why}")
    raise TargetError(f"{target.name}: {'; '.join(notes)}; use a smaller backbone or --size, or a faster target")


def _as_costed(fp32_model, precision: str):
    """The model the compiler will cost for `precision`, where that is cheap to make: fp16 stores the head's
    matrices in fp16 and casts them back, which moves more bytes than the fp32 head on a memory-bound device,
    so costing the fp32 model would call fits what the compiler then refuses."""
    if precision != "fp16":
        return fp32_model
    from adtk.export.passes.fp16 import convert_head_matrices_to_fp16

    return convert_head_matrices_to_fp16(fp32_model)[0]


def _shrink_head(estimate: CostEstimate, precision: str, method):
    """-> ((knob params to refit with, message), None) if lowering a sizing knob can make `estimate` fit, else
    (None, why not)."""
    if estimate.memory_mb > estimate.memory_budget_mb and estimate.latency_ms <= estimate.budget_ms:
        return None, "only memory is over: lower the head's size by hand (e.g. --coreset-ratio)"
    rest_ms = estimate.latency_ms - estimate.head_latency_ms
    available_ms = estimate.budget_ms - rest_ms
    if available_ms <= 0 or estimate.head_latency_ms <= 0:
        return None, (f"everything but the head is already predicted at {rest_ms:.1f} ms of the "
                      f"{estimate.budget_ms:.1f} ms budget, so no sizing knob can fix it")
    scale = SAFETY * available_ms / estimate.head_latency_ms
    current = method.params()
    for knob in method.sizing_knobs():
        value = float(current[knob.param]) * scale ** (1.0 / knob.cost_exponent)
        if value >= knob.minimum:
            value = int(value) if knob.integer else value
            return ({knob.param: value},
                    f"refitting at {precision} with {knob.param}={value:.4g} (was {current[knob.param]:.4g})"), None
    knobs = ", ".join(f"{k.param} >= {k.minimum:g}" for k in method.sizing_knobs()) or "none declared"
    return None, f"the head would have to shrink {1 / scale:.1f}x, past its sizing knobs' limits ({knobs})"


@torch.no_grad()
def probe_graph(preprocess, backbone, embedding, method, blur_sigma: float, num_frames: int = 2, geometry=None,
                tiling=None, image_score_from: str | None = None):
    """The scoring graph of an architecture with a head fitted on `num_frames` noise frames (what probe_model
    exports). geometry/tiling: the build's input geometry (toolkit/geometry.py); default the preprocess's size,
    untiled. image_score_from: the build's (None: the method's default), so the probe costs the graph the build
    will export (the map-max score prunes the head's re-weighting)."""
    from adtk.toolkit.geometry import Geometry
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.scoring import backbone_inputs, scoring_graph

    geometry = geometry if geometry is not None else Geometry(preprocess.image_size_px)
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (num_frames, *preprocess.image_size_px, 3), dtype=np.uint8))
    features = embedding(backbone(backbone_inputs(preprocess, tiling, frames))).numpy()
    head = method.head(method.fit(FitInputs(features, tuple(backbone.channels))))
    return scoring_graph(preprocess, backbone, embedding, head, geometry, blur_sigma, tiling,
                         image_score_from or method.default_image_score_from)


def probe_model(preprocess, backbone, embedding, method, blur_sigma: float, num_frames: int = 2, geometry=None,
                tiling=None, image_score_from: str | None = None):
    """An fp32 export of probe_graph: its cost estimate costs everything but the head (within ~2% of the same
    graph exported for frames of any size: bench/results/probe_export.md), before any training image is read
    (refuse-before-the-fit). Exported with static shapes, ~2-3x faster: the probe is only costed, never run.
    Its one frame has probe_frame_hw's size."""
    from adtk.export.formats import export_model

    graph = probe_graph(preprocess, backbone, embedding, method, blur_sigma, num_frames, geometry, tiling,
                        image_score_from)
    return export_model(graph, {"input": preprocess.contract()}, preprocess.image_size_px,
                        static_frame_hw=probe_frame_hw(preprocess))


def probe_frame_hw(preprocess) -> tuple[int, int]:
    """The probe's static frame: one row taller than SMALL_FRAME_ROWS x the model's, so the frame-size choice,
    fixed at trace time, takes the general branch: the one the cost model reads in an artefact
    (export/cost_model.py)."""
    from adtk.toolkit.preprocess import SMALL_FRAME_ROWS

    height, width = preprocess.image_size_px
    return SMALL_FRAME_ROWS * height + 1, width


def refuse_unfit_architecture(probe, target: Target, precision: str, precision_is_free: bool) -> None:
    """Raise TargetError, before any feature extraction, when even an almost empty head does not fit `target` at
    any precision the build may use: the backbone and input size alone are over the budget."""
    notes = []
    for candidate in precision_order(precision, target, precision_is_free):
        estimate = estimate_cost(probe, target, candidate)
        rest_ms = estimate.latency_ms - estimate.head_latency_ms
        if rest_ms < estimate.budget_ms and estimate.memory_mb <= estimate.memory_budget_mb:
            return
        notes.append(f"{candidate}: everything but the head is predicted at {rest_ms:.1f} ms "
                     f"(budget {estimate.budget_ms:.1f} ms), {estimate.memory_mb:.0f} MB (budget "
                     f"{estimate.memory_budget_mb:.0f} MB)")
    raise TargetError(f"{target.name}: the backbone and input size do not fit whatever the head's size "
                      f"({'; '.join(notes)}); nothing was fitted. Use a smaller backbone or --size, or a faster target")


def compile_check_data(index, fit_samples, calib_samples, max_check_images: int, seed: int, skip_bad: bool,
                       warn=None, num_calibration_images: int = 64):
    """Images for the compiler: good fit images to calibrate INT8; held-out labelled images to compare each
    precision with fp32. Held out = the calibration goods plus labelled defects/ when the data set has them,
    else the calibration goods each shown also with a synthetic defect (toolkit/validation.py). Never the test
    split: a precision chosen on it would be chosen on the images its AUROC is later reported on."""
    import numpy as np

    from adtk.export.compiler import CheckData
    from adtk.toolkit.data import iter_images
    from adtk.toolkit.validation import synthetic_validation

    rng = np.random.default_rng(seed)

    def subset(samples, limit):
        samples = list(samples)
        if len(samples) <= limit:
            return samples
        return [samples[i] for i in np.sort(rng.choice(len(samples), limit, replace=False))]

    def load(samples):
        frames, labels = [], []
        for sample, image in iter_images(samples, skip_bad=skip_bad, on_warning=warn):
            frames.append(image)
            labels.append(int(sample.label))
        return frames, labels

    calibration, _ = load(subset(fit_samples, num_calibration_images))
    if index.defects:
        frames, labels = load(subset([*calib_samples, *index.defects], max_check_images))
        return CheckData(calibration, frames, np.asarray(labels, dtype=np.int64),
                         f"{len(frames)} images of held-out good + labelled defects/ images")
    goods, _ = load(subset(calib_samples, max(1, max_check_images // 2)))  # each gives 2 check images
    validation = synthetic_validation(goods, seed=seed, min_images=1)
    return CheckData(calibration, validation.frames, validation.labels,
                     f"{len(validation)} images: {validation.description}")
