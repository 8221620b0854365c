"""A command whose extra is not installed prints one line naming the extra and the pip command, exits 1, and
never shows a traceback. Each case runs `adtk` in a fresh interpreter where the extra's packages are absent
(their import raises ModuleNotFoundError, as it does when a package is not installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

ABSENT_PACKAGES = textwrap.dedent("""
    import builtins, sys
    ABSENT = set(sys.argv[1].split(","))
    real_import = builtins.__import__
    def without(name, *args, **kwargs):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
        return real_import(name, *args, **kwargs)
    builtins.__import__ = without
    sys.argv = ["adtk", *sys.argv[2:]]
    from adtk.toolkit.cli.main import main
    main()
""")


def run_adtk(absent: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ABSENT_PACKAGES, ",".join(absent), *args],
                          capture_output=True, text=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == expected


def test_eval_without_scipy_names_the_eval_extra(tmp_path):
    result = run_adtk(("scipy", "sklearn"), "eval", str(tmp_path / "model.onnx"), "--data", str(tmp_path))
    assert_one_line(result, "adtk eval needs the [eval] extra (scipy is not installed): pip install 'adtk[eval]'")


def test_build_without_torch_names_the_build_extra(tmp_path):
    result = run_adtk(("torch", "timm"), "build", "--data", str(tmp_path), "-o", str(tmp_path / "m.onnx"))
    assert_one_line(result, "adtk build needs the [build] extra (torch is not installed): pip install 'adtk[build]'")
    assert not (tmp_path / "m.onnx").exists()


def test_sign_without_cryptography_names_the_sign_extra(tmp_path):
    result = run_adtk(("cryptography",), "sign", "--generate-key", str(tmp_path / "key.pem"))
    assert_one_line(result, "artefact signing needs the [sign] extra (cryptography is not installed): "
                            "pip install 'adtk[sign]'")
    assert list(tmp_path.iterdir()) == []


def test_predict_without_onnxruntime_names_a_flavour(tiny_build, tiny_dataset):
    image = str(tiny_dataset.test[0].path)
    result = run_adtk(("onnxruntime",), "predict", str(tiny_build.artefact), image)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("scoring with onnxruntime needs the [cpu] extra (onnxruntime is not installed): "
                                    "pip install 'adtk[cpu]' (or 'adtk[gpu]'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_inspect_without_onnx_still_shows_the_artefact(tiny_build):
    result = run_adtk(("onnx",), "inspect", str(tiny_build.artefact))
    assert result.returncode == 0, result.stderr
    assert "integrity OK" in result.stdout
    assert "outputs   pred_score float32['batch'], pred_label bool['batch']" in result.stdout
    assert "operators (not listed: listing them needs the [onnx] extra" in result.stdout


def test_a_missing_module_that_is_no_extra_is_a_real_bug(tmp_path):
    # numpy is core: its absence is not an install hint, so the traceback stays (nothing is hidden).
    result = run_adtk(("numpy",), "eval", str(tmp_path / "model.onnx"), "--data", str(tmp_path))
    assert result.returncode == 1 and "Traceback" in result.stderr


@pytest.mark.parametrize("command", ["build", "demo"])
def test_offline_commands_refuse_old_pythons_in_one_line(command, monkeypatch):
    from click.testing import CliRunner

    from adtk.toolkit.cli import main

    monkeypatch.setattr(main.sys, "version_info", (3, 8, 18, "final", 0))
    result = CliRunner().invoke(main.cli, [command, "--help"])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"adtk {command} needs Python >= 3.10")
