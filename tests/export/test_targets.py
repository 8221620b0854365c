"""Device targets: every packaged file loads, every figure cites a source, mistakes are named."""

from __future__ import annotations

import dataclasses

import pytest

from adtk.export.targets import list_targets, load_target, parse_target
from adtk.runtime.errors import TargetError

EXPECTED = {"orin_nano_8gb", "orin_nx_16gb", "agx_orin_64gb", "xavier_nx", "x86_cpu", "x86_cuda"}


def test_every_device_of_the_issue_ships_and_loads():
    assert EXPECTED <= set(list_targets())
    for name in list_targets():
        target = load_target(name)
        assert target.name == name
        assert target.default_precision in target.precisions
        figures = [f.name for f in dataclasses.fields(target) if f.name in target.sources]
        assert len(figures) >= 15 and all(target.sources[k].strip() for k in figures)


def test_jetson_targets_run_tensorrt_and_cpu_target_does_not():
    assert all(load_target(n).uses_tensorrt for n in ("orin_nano_8gb", "orin_nx_16gb", "agx_orin_64gb", "xavier_nx"))
    assert not load_target("x86_cpu").uses_tensorrt
    assert load_target("orin-nano-8gb").name == "orin_nano_8gb"  # hyphens are the same name


def _yaml_of(name: str) -> str:
    return (load_target(name).path and open(load_target(name).path).read())


def test_unknown_key_is_refused_with_a_close_match():
    text = _yaml_of("orin_nano_8gb").replace("fp16_tflops:", "tflops_fp61:")
    with pytest.raises(TargetError, match="unknown key 'tflops_fp61'.*did you mean 'fp16_tflops'"):
        parse_target(text, "orin_nano_8gb.yaml")


def test_figure_without_source_is_refused():
    lines = [("int8_tops: 20.0" if line.startswith("int8_tops:") else line)
             for line in _yaml_of("orin_nano_8gb").splitlines()]
    with pytest.raises(TargetError, match="int8_tops must be written as"):
        parse_target("\n".join(lines), "x.yaml")


def test_unknown_target_suggests_names_and_bad_precision_is_refused():
    with pytest.raises(TargetError, match="did you mean 'orin_nano_8gb'"):
        load_target("orin_nano_8g")
    target = dataclasses.replace(load_target("x86_cpu"), precisions=("fp32",))
    with pytest.raises(TargetError, match="does not support precision 'int8'"):
        target.check_precision("int8")
