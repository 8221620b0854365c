"""Class 6 of issue 14: clear errors for every option, before any work; no partial files left behind."""

from __future__ import annotations

import errno
import time

import pytest
from click.testing import CliRunner

from adtk.toolkit.cli.main import cli


def run(args, env=None):
    return CliRunner().invoke(cli, args, env=env)


def test_build_refuses_an_unwritable_output_before_fitting(tiny_dataset, tmp_path):
    tic = time.perf_counter()
    for out, expected in ((tmp_path, "is a folder"), ("/proc/adtk-nowhere/model.onnx", "does not exist")):
        outcome = run(["build", "--method", "patchcore", "--data", str(tiny_dataset.root), "-o", str(out),
                       "--random-weights"])
        assert outcome.exit_code == 2 and expected in outcome.output, outcome.output
        assert "Traceback" not in outcome.output
    assert time.perf_counter() - tic < 20  # refused before the backbone or any image was touched


def test_a_failed_write_leaves_no_partial_file(tiny_build, tmp_path, monkeypatch):
    import onnx

    import adtk.export.formats as formats
    from adtk.runtime.errors import ArtefactError

    model = onnx.load(str(tiny_build.artefact))
    manifest = tiny_build.manifest

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(formats.os, "fsync", disk_full)
    with pytest.raises(ArtefactError, match="No space left on device.*nothing was written"):
        formats.write_artefact(model, manifest, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_serve_options_fail_as_one_line(tiny_build, tmp_path, monkeypatch):
    monkeypatch.delenv("ADTK_SERVE_TOKEN", raising=False)
    bad_token = tmp_path / "token"
    bad_token.write_bytes(b"\xff\xfe\x00token")
    weak = tmp_path / "weak"
    weak.write_text("x\n")
    model = str(tiny_build.artefact)
    cases = [
        (["--http", "127.0.0.1:70000"], "out of range"),
        (["--http", "::1:8080"], "expected HOST:PORT"),
        (["--http", "0.0.0.0:0", "--token-file", str(bad_token)], "not UTF-8"),
        (["--http", "0.0.0.0:0", "--token-file", str(weak)], "too weak"),
        (["--http", "0.0.0.0:0"], "needs a token"),
        (["--http", "127.0.0.1:0", "--max-pixels", "10"], "--max-pixels"),
    ]
    for options, expected in cases:
        outcome = run(["serve", model, *options])
        assert outcome.exit_code == 2 and expected in outcome.output, (options, outcome.output)
        assert "Traceback" not in outcome.output
