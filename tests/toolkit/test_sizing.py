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
from tests.conftest import write_tight_target


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


def _tight_target(fp32, precision: str, head_share: float):
    """orin_nano_8gb with a frame budget that leaves the head `head_share` of its predicted time at `precision`."""
    from adtk.toolkit.sizing import _as_costed

    base = load_target("orin_nano_8gb")
    estimate = estimate_cost(_as_costed(fp32, precision), base, precision)
    rest = estimate.latency_ms - estimate.head_latency_ms
    return dataclasses.replace(base, frame_budget_ms=rest + estimate.head_latency_ms * head_share), estimate


def test_a_free_precision_shrinks_the_head_at_the_default_before_trying_int8(fp32, tiny_build):
    """Issue 13: INT8 loses far more on a large bank than a smaller fp16 bank does, so the default is sized first."""
    tight, _ = _tight_target(fp32, "fp16", 0.5)
    method = create_method("patchcore", **tiny_build.manifest["method"]["params"])
    plan = plan_for_target(fp32, tight, "fp16", method, precision_is_free=True)
    assert not plan.fits and plan.precision == "fp16"
    assert plan.params["coreset_ratio"] < tiny_build.manifest["method"]["params"]["coreset_ratio"]


def test_int8_is_tried_only_when_no_knob_reaches_the_budget_at_the_default(fp32, tiny_build):
    tight, _ = _tight_target(fp32, "fp16", 0.5)
    params = {**tiny_build.manifest["method"]["params"], "coreset_ratio": 0.0015}  # cannot halve past 0.001
    # at 64 px the graph is memory-bound, so INT8 is predicted no faster: it is tried, and refused too
    with pytest.raises(TargetError, match="fp16 does not fit .* past its sizing knobs' limits.*; int8 does not fit"):
        plan_for_target(fp32, tight, "fp16", create_method("patchcore", **params), precision_is_free=True)
    with pytest.raises(TargetError, match="fp16 does not fit") as refused:  # not free: fp16 only
        plan_for_target(fp32, tight, "fp16", create_method("patchcore", **params), precision_is_free=False)
    assert "int8" not in str(refused.value)


def _target_build_config(tiny_dataset, out, target):
    from adtk.toolkit.build import BuildConfig

    # the tiny_build fixture's settings, so the first fit is the one `fp32` was exported from
    return BuildConfig(data=tiny_dataset.root, out=out, method="patchcore", method_params={"coreset_ratio": 0.25},
                       backbone="tf_efficientnet_lite0", random_weights=True, image_size_px=64, calib_fraction=0.25,
                       target=str(target))


@pytest.mark.slow  # a second tiny build plus a refit and an fp16 compile: ~40 s on 2 idle cores
def test_a_target_build_ends_with_a_smaller_fp16_bank_that_fits(fp32, tiny_build, tiny_dataset, tmp_path):
    from adtk.toolkit.build import build

    tight, estimate = _tight_target(fp32, "fp16", 0.5)
    out = tmp_path / "model.onnx"
    result = build(_target_build_config(tiny_dataset, out, write_tight_target(tmp_path, tight.frame_budget_ms)),
                   log=lambda message: None, index=tiny_dataset)
    target = result.manifest["target"]
    assert out.is_file() and target["precision"] == "fp16" and target["cost"]["fits"]
    assert result.manifest["method"]["params"]["coreset_ratio"] < 0.25
    assert (result.manifest["method"]["fit"]["memory_bank_rows"]
            < tiny_build.manifest["method"]["fit"]["memory_bank_rows"])
    assert "synthetic defect" in target["precision_check"]["images"]  # no defects/: never the test split


def test_a_backbone_over_budget_is_refused_before_any_feature_extraction(tiny_dataset, tmp_path, monkeypatch):
    from adtk.toolkit import build as build_module

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted for a build that could not fit")

    monkeypatch.setattr(build_module.FeatureExtractorPipeline, "features", no_extraction)
    monkeypatch.setattr(build_module.FeatureExtractorPipeline, "feature_batches", no_extraction)
    out = tmp_path / "model.onnx"
    with pytest.raises(TargetError, match="nothing was fitted"):
        build_module.build(_target_build_config(tiny_dataset, out, write_tight_target(tmp_path, 0.001)),
                           log=lambda message: None, index=tiny_dataset)
    assert not out.exists()


def test_the_probe_is_exported_static_and_costed_like_the_artefacts_graph(tiny_build):
    """probe_model exports with static shapes (~2-3x faster); its estimate must stay within a few percent of the
    same graph exported for frames of any size, as every artefact is (export.formats.export_onnx_bytes)."""
    from adtk.export.formats import export_model
    from adtk.toolkit.sizing import probe_graph, probe_model

    parts = (tiny_build.graph.preprocess, tiny_build.graph.backbone, tiny_build.graph.embedding,
             create_method("patchcore", coreset_ratio=0.25))
    probe = probe_model(*parts, blur_sigma=4.0)
    assert all(dim.HasField("dim_value") for dim in probe.graph.input[0].type.tensor_type.shape.dim)
    preprocess = tiny_build.graph.preprocess
    dynamic = export_model(probe_graph(*parts, blur_sigma=4.0), {"input": preprocess.contract()},
                           preprocess.image_size_px)  # the same graph as an artefact exports it
    assert not all(dim.HasField("dim_value") for dim in dynamic.graph.input[0].type.tensor_type.shape.dim)
    for name, precision in [("x86_cpu", "fp32"), ("orin_nano_8gb", "fp16")]:
        static_estimate = estimate_cost(probe, load_target(name), precision)
        dynamic_estimate = estimate_cost(dynamic, load_target(name), precision)
        assert static_estimate.head_latency_ms == pytest.approx(dynamic_estimate.head_latency_ms, rel=1e-6)
        assert static_estimate.latency_ms == pytest.approx(dynamic_estimate.latency_ms, rel=0.03)
        assert static_estimate.memory_mb == pytest.approx(dynamic_estimate.memory_mb, rel=0.03)
