"""Build config files: generic over BuildConfig's fields, type-checked, round-tripped, validated before any image
is read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from adtk.runtime.errors import ConfigError
from adtk.toolkit.build import BuildConfig
from adtk.toolkit.build_config import (
    config_fields,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    read_config_file,
    validate_build_config,
)


def test_every_buildconfig_field_is_an_option():
    assert list(config_fields()) == [f.name for f in dataclasses.fields(BuildConfig)]


def test_round_trip_through_yaml(tmp_path):
    config = BuildConfig(data=tmp_path / "data", out=tmp_path / "m.onnx", method="padim",
                         method_params={"coreset_ratio": 0.2, "num_neighbors": 3}, stages=("blocks.2", "blocks.4"),
                         image_size_px=128, max_train_images=40, defects_from_test=("crack",), target="x86_cpu")
    (tmp_path / "build.yaml").write_text(config_to_yaml(config_to_dict(config)))
    assert config_from_dict(read_config_file(tmp_path / "build.yaml")) == config


def test_a_file_may_give_only_some_options(tmp_path):
    (tmp_path / "b.yaml").write_text("method: knn\nimage_size_px: 96\nstages: blocks.2, blocks.4\n")
    values = read_config_file(tmp_path / "b.yaml")
    assert values == {"method": "knn", "image_size_px": 96, "stages": ("blocks.2", "blocks.4")}
    with pytest.raises(ConfigError, match="missing data, out"):
        config_from_dict(values)


@pytest.mark.parametrize("text, message", [
    ("image_size: 96\n", "unknown build option 'image_size'; did you mean 'image_size_px'"),
    ("seed: big\n", "seed: expected int, got 'big'"),
    ("random_weights: 1\n", "random_weights: expected bool, got 1"),
    ("method_params: 3\n", "method_params: expected a mapping"),
    ("- method\n", "expected a mapping of build options"),
    ("method: [unclosed\n", "not valid YAML"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, text, message):
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        read_config_file(tmp_path / "b.yaml")


@pytest.fixture
def valid(tmp_path):
    (tmp_path / "data").mkdir()
    return BuildConfig(data=tmp_path / "data", out=tmp_path / "model.onnx")


@pytest.mark.parametrize("change, message", [
    ({"method": "patchcor"}, "no method 'patchcor'; did you mean 'patchcore'"),
    ({"target": "orin_nano"}, "--target: no target 'orin_nano'"),
    ({"precision": "int4"}, "--precision 'int4'"),
    ({"image_size_px": 8}, r"--size \(image_size_px\) must be at least 32"),
    ({"max_train_images": 1}, "--max-train-images must be at least 2"),
    ({"calib_fraction": 1.0}, "--calib-fraction must be in"),
    ({"out": Path("/nonexistent-folder/m.onnx")}, "does not exist"),
    ({"data": Path("/nonexistent-data")}, "--data /nonexistent-data: no such folder"),
])
def test_validation_refuses_each_bad_option(valid, change, message):
    with pytest.raises(ConfigError, match=message):
        validate_build_config(dataclasses.replace(valid, **change))


def test_output_path_must_be_a_writable_file(valid, tmp_path):
    validate_build_config(valid)
    with pytest.raises(ConfigError, match="is a folder"):
        validate_build_config(dataclasses.replace(valid, out=tmp_path))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    import os

    if os.access(locked, os.W_OK):  # root ignores permission bits
        pytest.skip("running as root: a read-only folder is still writable")
    with pytest.raises(ConfigError, match="not writable"):
        validate_build_config(dataclasses.replace(valid, out=locked / "m.onnx"))
