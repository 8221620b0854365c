"""`adtk build --target` sizing: knobs are lowered in proportion to the head's predicted share, or the
build is refused with the reason."""

from __future__ import annotations

import dataclasses

import pytest

from adtk.export.cost_model import estimate_cost
from adtk.export.passes.graph import load_unsealed
from adtk.export.targets import load_target
from adtk.runtime.errors import TargetError
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.sizing import plan_for_target, resolve_precision


@pytest.fixture(scope="module")
def fp32(tiny_build):
    return load_unsealed(tiny_build.artefact.read_bytes())


def test_precision_defaults_follow_the_target():
    assert resolve_precision("auto", None) == "fp32"
    assert resolve_precision("auto", load_target("orin_nano_8gb")) == "fp16"
    assert resolve_precision("int8", load_target("x86_cpu")) == "int8"


def test_a_fitting_build_is_left_alone(fp32, tiny_build):
    method = create_method("patchcore", **tiny_build.manifest["method"]["params"])
    plan = plan_for_target(fp32, load_target("orin_nano_8gb"), "fp16", method, precision_is_free=False)
    assert plan.fits and plan.params == {}


def test_the_knob_shrinks_by_the_heads_share_of_the_overrun(fp32, tiny_build):
    base = load_target("orin_nano_8gb")
    estimate = estimate_cost(fp32, base, "fp32")
    rest = estimate.latency_ms - estimate.head_latency_ms
    assert estimate.head_latency_ms > 0
    tight = dataclasses.replace(base, frame_budget_ms=rest + estimate.head_latency_ms / 2)
    method = create_method("patchcore", **tiny_build.manifest["method"]["params"])
    plan = plan_for_target(fp32, tight, "fp32", method, precision_is_free=False)
    assert not plan.fits
    ratio = tiny_build.manifest["method"]["params"]["coreset_ratio"]
    assert plan.params["coreset_ratio"] == pytest.approx(ratio * 0.9 * 0.5, rel=1e-6)


def test_no_knob_can_fix_a_backbone_over_budget(fp32, tiny_build):
    base = load_target("orin_nano_8gb")
    estimate = estimate_cost(fp32, base, "fp32")
    impossible = dataclasses.replace(base, frame_budget_ms=(estimate.latency_ms - estimate.head_latency_ms) / 2,
                                     precisions=("fp32",))
    method = create_method("patchcore", **tiny_build.manifest["method"]["params"])
    with pytest.raises(TargetError, match="no sizing knob can fix it"):
        plan_for_target(fp32, impossible, "fp32", method, precision_is_free=True)
