"""`adtk build --target`: choose precision and shrink a method's declared sizing knobs until the cost
model predicts that the artefact fits the target's frame budget; refuse, saying why, when nothing can.

The loop (toolkit/build.py) fits, exports fp32, and asks `plan_for_target`:
  1. the requested precision (or the target's default) fits -> done;
  2. `--precision auto` and the target supports INT8 -> INT8 fits -> done;
  3. otherwise lower the first knob of `method.sizing_knobs()` (e.g. a coreset ratio) so the part of the
     predicted latency that scales with the head fits what the rest leaves of the budget (with 10 % margin),
     refit, re-export, re-check. The knob's cost exponent says how the head's cost grows with it.
The compiler never names a method: the knobs are data the method declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def plan_for_target(fp32_model, target: Target, precision: str, method, precision_is_free: bool) -> SizingPlan:
    estimate = estimate_cost(fp32_model, target, precision)
    if estimate.fits:
        return SizingPlan(True, precision, {}, estimate, f"fits: {estimate.summary()}")
    notes = [f"{precision} does not fit: {'; '.join(estimate.reasons)}"]
    if precision_is_free and "int8" in target.precisions and precision != "int8":
        estimate, precision = estimate_cost(fp32_model, target, "int8"), "int8"
        if estimate.fits:
            return SizingPlan(True, precision, {}, estimate, f"{notes[0]}; int8 fits: {estimate.summary()}")
        notes.append(f"int8 does not fit either: {'; '.join(estimate.reasons)}")
    if estimate.memory_mb > estimate.memory_budget_mb and estimate.latency_ms <= estimate.budget_ms:
        raise TargetError(f"{target.name}: {'; '.join(notes)}. Lower the head's size by hand (e.g. "
                          "--coreset-ratio) or use a target with more memory")
    rest_ms = estimate.latency_ms - estimate.head_latency_ms
    available_ms = estimate.budget_ms - rest_ms
    if available_ms <= 0 or estimate.head_latency_ms <= 0:
        raise TargetError(f"{target.name}: {'; '.join(notes)}. Everything but the head is already predicted at "
                          f"{rest_ms:.1f} ms of the {estimate.budget_ms:.1f} ms budget, so no sizing knob can fix "
                          "it: use a smaller backbone or --size, or a faster target")
    scale = SAFETY * available_ms / estimate.head_latency_ms
    current = method.params()
    for knob in method.sizing_knobs():
        value = float(current[knob.param]) * scale ** (1.0 / knob.cost_exponent)
        if value >= knob.minimum:
            value = int(value) if knob.integer else value
            return SizingPlan(False, precision, {knob.param: value}, estimate,
                              f"{'; '.join(notes)}; refitting with {knob.param}={value:.4g} (was {current[knob.param]:.4g})")
    knobs = ", ".join(f"{k.param} >= {k.minimum:g}" for k in method.sizing_knobs()) or "none declared"
    raise TargetError(f"{target.name}: {'; '.join(notes)}. The head would have to shrink {1 / scale:.1f}x, past "
                      f"its sizing knobs' limits ({knobs}); use a smaller backbone or --size, or a faster target")


def compile_check_data(index, fit_samples, calib_samples, max_check_images: int, seed: int, skip_bad: bool,
                       warn=None, num_calibration_images: int = 64):
    """Images for the compiler: good fit images to calibrate INT8; held-out labelled images to compare each
    precision with fp32. Held out = the calibration goods plus labelled defects/ when the data set has them,
    else the test split (a seeded subset of at most `max_check_images`; used to report and gate, never to fit)."""
    import numpy as np

    from adtk.export.compiler import CheckData
    from adtk.toolkit.data import iter_images

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
        held_out, description = [*calib_samples, *index.defects], "held-out good + labelled defects/ images"
    else:
        held_out, description = list(index.test), "the test split (held out; reported, not fitted on)"
    frames, labels = load(subset(held_out, max_check_images))
    return CheckData(calibration, frames, np.asarray(labels, dtype=np.int64), f"{len(frames)} images of {description}")
