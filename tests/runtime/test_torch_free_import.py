"""adtk.runtime must import and run with numpy + onnxruntime only (what the device has)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

DEVICE_ABSENT = ("torch", "timm", "faiss", "sklearn", "torchvision", "scipy", "onnx", "PIL", "click")
BLOCKER = textwrap.dedent("""
    import builtins, sys
    BLOCKED = set(sys.argv[1:])
    real_import = builtins.__import__
    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked on the device: {name}")
        return real_import(name, *args, **kwargs)
    builtins.__import__ = guarded
""")


def run_isolated(code: str, also_absent: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing any of DEVICE_ABSENT (+ also_absent) fails."""
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *DEVICE_ABSENT, *also_absent],
                          capture_output=True, text=True, timeout=120)


def test_blocker_really_blocks():
    result = run_isolated("import torch")
    assert result.returncode != 0 and "blocked on the device" in result.stderr


def test_runtime_imports_without_torch_timm_faiss_sklearn_onnx_pillow():
    result = run_isolated("""
        import adtk.runtime, adtk.runtime.detector, adtk.runtime.artefact, adtk.runtime.backends.onnxruntime
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_runtime_verifies_and_scores_without_torch(tiny_build):
    result = run_isolated(f"""
        import numpy as np
        from adtk.runtime.detector import Detector
        detector = Detector.load({str(tiny_build.artefact)!r})
        prediction = detector.predict(np.full((2, 90, 77, 3), 128, dtype=np.uint8))
        print(prediction.pred_score.shape, prediction.anomaly_map.shape)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2,) (2, 64, 64)"


def test_the_manifest_schema_needs_only_the_standard_library():
    result = run_isolated("""
        from adtk.runtime.manifest import validate_manifest
        print("ok")
    """, also_absent=("numpy", "onnxruntime"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
