"""CLI conventions: build options from a file with flags on top, the resolved options recorded in the artefact and
re-run from it, options validated before any image is read, exit codes (1 runtime, 2 usage), --json, -q."""

from __future__ import annotations

import json

import pytest
import yaml

from adtk.toolkit.cli.main import cli

TINY = ["--random-weights", "--size", "64", "--coreset-ratio", "0.2", "--calib-fraction", "0.25"]


@pytest.fixture(scope="module")
def built_with_json(runner, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("conventions") / "a.onnx"
    result = runner.invoke(cli, ["-q", "build", "--data", str(tiny_dataset.root), "-o", str(out), *TINY,
                                 "--param", "num_neighbors=3", "--json"])
    assert result.exit_code == 0, result.stderr
    return out, result


def test_build_json_is_one_document_and_quiet_hides_progress(built_with_json):
    out, result = built_with_json
    document = json.loads(result.stdout)
    assert document["artefact"] == str(out) and document["bytes"] == out.stat().st_size
    assert document["manifest"]["build_config"]["method_params"] == {"coreset_ratio": 0.2, "num_neighbors": 3}
    assert result.stderr == ""  # -q: no log lines, no progress bars


def test_a_build_reruns_from_its_artefact(runner, built_with_json, tmp_path, tiny_dataset):
    """inspect --config -> build --config reproduces the options and, seeded, the very same scores."""
    first, _ = built_with_json
    shown = runner.invoke(cli, ["inspect", str(first), "--config"])
    assert shown.exit_code == 0, shown.stderr
    options = yaml.safe_load(shown.stdout)
    assert str(options["image_size_px"]) == "64" and options["random_weights"] is True and options["out"] == str(first)
    (tmp_path / "build.yaml").write_text(shown.stdout)
    second = tmp_path / "b.onnx"
    printed = runner.invoke(cli, ["build", "--config", str(tmp_path / "build.yaml"), "-o", str(second),
                                  "--print-config"])
    assert printed.exit_code == 0, printed.stderr
    assert yaml.safe_load(printed.stdout) == {**options, "out": str(second)}
    assert not second.exists()  # --print-config builds nothing

    rebuilt = runner.invoke(cli, ["-q", "build", "--config", str(tmp_path / "build.yaml"), "-o", str(second)])
    assert rebuilt.exit_code == 0, rebuilt.stderr
    from adtk.runtime.detector import Detector

    images = [str(s.path) for s in tiny_dataset.test]
    a, b = Detector.load(first), Detector.load(second)
    assert b.manifest["build_config"] == {**a.manifest["build_config"], "out": str(second)}
    assert a.predict(images).raw_score.tolist() == b.predict(images).raw_score.tolist()


def test_flags_override_the_file_and_dicts_merge(runner, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "b.yaml").write_text(
        f"data: {tmp_path / 'data'}\nout: {tmp_path / 'm.onnx'}\nmethod: padim\nimage_size_px: 128\n"
        "method_params: {coreset_ratio: 0.05, num_neighbors: 9}\ndata_layout: {normal_dir: ok}\n")
    result = runner.invoke(cli, ["build", "--config", str(tmp_path / "b.yaml"), "--size", "96", "--param",
                                 "num_neighbors=3", "--abnormal-dir", "ng", "--print-config"])
    assert result.exit_code == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["method"] == "padim"  # from the file (the flag's default does not override it)
    assert str(resolved["image_size_px"]) == "96"  # the flag given wins (--size is "N", "HxW" or "auto")
    assert resolved["method_params"] == {"coreset_ratio": 0.05, "num_neighbors": 3}
    assert resolved["data_layout"] == {"normal_dir": "ok", "abnormal_dir": "ng"}
    assert resolved["backbone"] == "tf_efficientnet_lite0"  # a default, printed so the file is complete


@pytest.mark.parametrize("args, code, message", [
    (["--method", "patchcor"], 2, "no method 'patchcor'; did you mean 'patchcore'"),
    (["--target", "orin_nanoo"], 2, "no target 'orin_nanoo'"),
    (["--size", "8"], 2, "--size (image_size_px) must be at least 32"),
    (["--precision", "int4"], 2, "Invalid value for '--precision'"),
    (["--calib-fraction", "1.5"], 2, "--calib-fraction must be in [0, 1)"),
])
def test_bad_options_exit_2_before_any_image_is_read(runner, tmp_path, args, code, message):
    """The data folder's only image is corrupt: an option error reported instead proves options come first."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "broken.png").write_bytes(b"not a png")
    result = runner.invoke(cli, ["build", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "m.onnx"),
                                 "--random-weights", *args])
    assert result.exit_code == code, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) <= 4  # click: usage + error
    assert "broken.png" not in result.stderr and not (tmp_path / "m.onnx").exists()


def test_output_path_that_is_a_folder_is_a_usage_error(runner, tmp_path, tiny_dataset):
    result = runner.invoke(cli, ["build", "--data", str(tiny_dataset.root), "-o", str(tmp_path), *TINY])
    assert result.exit_code == 2 and "is a folder" in result.stderr


def test_missing_data_is_a_usage_error_naming_the_flag_and_the_file_key(runner, tmp_path):
    result = runner.invoke(cli, ["build", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "missing data (give --data or `data:` in the --config file)" in result.stderr


def test_runtime_errors_exit_1(runner, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage")
    result = runner.invoke(cli, ["predict", str(tmp_path / "model.onnx"), str(tmp_path / "x.png")])
    assert result.exit_code == 1 and result.stderr.startswith("ArtefactError: ")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(cli, ["build", "--data", str(empty), "-o", str(tmp_path / "m.onnx"), "--random-weights"])
    assert result.exit_code == 1 and result.stderr.startswith("DataError: ")


def test_an_unexpected_error_is_one_line_not_a_traceback(runner, monkeypatch):
    """A bug inside a command (here: target loading raising a plain ValueError) reaches the user as one line that
    names the command and the error, exit 1; --debug gives the traceback back."""
    import adtk.export.targets as targets

    def broken(name):
        raise ValueError("all input arrays must have the same shape\nsecond line")

    monkeypatch.setattr(targets, "load_target", broken)
    result = runner.invoke(cli, ["targets"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("internal error in adtk targets: ValueError: all input arrays must have the "
                                    "same shape (") and "--debug" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    debug = runner.invoke(cli, ["--debug", "targets"])
    assert isinstance(debug.exception, ValueError)


def test_click_usage_errors_exit_2(runner):
    result = runner.invoke(cli, ["build", "--no-such-flag"])
    assert result.exit_code == 2 and "No such option" in result.stderr


def test_eval_reads_the_folder_layout(runner, tiny_build, tiny_dataset, tmp_path):
    """The tiny MVTec set re-laid out as anomalib's Folder layout gives eval the same images and masks."""
    defect_type = tiny_dataset.defect_types[0]
    defects = [s for s in tiny_dataset.test if s.defect_type == defect_type]
    for folder, samples in (("ok", tiny_dataset.train), ("ok_test", [s for s in tiny_dataset.test if s.label == 0]),
                            ("ng", defects)):
        (tmp_path / folder).mkdir()
        for sample in samples:
            (tmp_path / folder / sample.path.name).symlink_to(sample.path)
    (tmp_path / "masks").mkdir()
    for sample in (s for s in defects if s.mask_path is not None):
        (tmp_path / "masks" / sample.mask_path.name).symlink_to(sample.mask_path)
    result = runner.invoke(cli, ["eval", str(tiny_build.artefact), "--data", str(tmp_path), "--normal-dir", "ok",
                                 "--abnormal-dir", "ng", "--mask-dir", "masks", "--normal-test-dir", "ok_test",
                                 "--json", "-"])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["num_images"] == len(defects) + sum(s.label == 0 for s in tiny_dataset.test)
    assert metrics["num_defective"] == len(defects) and metrics["pixel_auroc"] is not None
