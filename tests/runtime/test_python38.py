"""The device runtime on Python 3.8 (JetPack 5's Python, the xavier_nx target), in the venv .ci/install makes:
.venv38 holds a wheel of this checkout installed with its [cpu] extra (numpy, Pillow, click, onnxruntime: no
torch, no onnx, no scipy), as a Jetson would. The current sources are put first on its path, so the test checks
this tree, not the wheel's snapshot. Scores must match the 3.11 runtime's on the same frames."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON38 = REPO_ROOT / ".venv38" / "bin" / "python"

pytestmark = pytest.mark.skipif(not PYTHON38.is_file(), reason=f"no Python 3.8 runtime venv at {PYTHON38} "
                                "(.ci/install makes it where a python3.8 interpreter exists)")


@pytest.fixture(scope="module")
def run38(tmp_path_factory):
    """Run Python 3.8 on this checkout's sources: an `adtk` package folder whose parts link to the repo's."""
    shim = tmp_path_factory.mktemp("py38_sources")
    (shim / "adtk").mkdir()
    (shim / "adtk" / "__init__.py").symlink_to(REPO_ROOT / "adtk" / "__init__.py")
    for part in ("runtime", "toolkit", "export", "targets"):
        (shim / "adtk" / part).symlink_to(REPO_ROOT / part, target_is_directory=True)

    def run(*args: str, background: bool = False):
        command = [str(PYTHON38), *args]
        env = {"PYTHONPATH": str(shim), "PATH": "/usr/bin:/bin", "HOME": str(shim)}
        if background:
            return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    version = run("-c", "import sys, adtk.runtime; print(sys.version_info[:2] == (3, 8), adtk.runtime.__file__)")
    assert version.returncode == 0, version.stderr
    is_38, runtime_file = version.stdout.split()
    assert is_38 == "True" and "site-packages" not in runtime_file  # this checkout's sources, not the wheel's
    return run


def test_the_38_venv_has_the_core_install_and_nothing_of_the_offline_stage(run38):
    result = run38("-c", "import importlib.util as u; "
                         "print([m for m in ('numpy', 'PIL', 'click', 'onnxruntime', 'torch', 'onnx', 'scipy', "
                         "'sklearn', 'yaml') if u.find_spec(m)])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['numpy', 'PIL', 'click', 'onnxruntime']"


def test_detector_scores_on_38_as_on_311(run38, tiny_build, tmp_path):
    from adtk.runtime.detector import Detector

    frames = np.random.default_rng(0).integers(0, 256, size=(3, 70, 90, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    result = run38("-c", f"""
import json, numpy as np, adtk
from adtk.runtime.detector import Detector
detector = Detector.load({str(tiny_build.artefact)!r})
p = detector.predict(np.load({str(tmp_path / 'frames.npy')!r}))
print(json.dumps({{"version": adtk.__version__, "scores": p.pred_score.tolist(), "labels": p.pred_label.tolist(),
                  "map": p.anomaly_map.tolist()}}))
""")
    assert result.returncode == 0, result.stderr
    on38 = json.loads(result.stdout)
    reference = Detector.load(tiny_build.artefact, backend="cpu").predict(frames)
    assert on38["version"] == adtk_version()
    np.testing.assert_allclose(on38["scores"], reference.pred_score, atol=1e-5)
    assert on38["labels"] == reference.pred_label.tolist()
    np.testing.assert_allclose(np.array(on38["map"]), reference.anomaly_map, atol=1e-5)


def test_device_commands_on_38(run38, tiny_build, tiny_dataset, tmp_path):
    from adtk.runtime.detector import Detector

    images = [str(s.path) for s in tiny_dataset.test[:3]]
    adtk = ("-m", "adtk.toolkit.cli.main")
    predicted = run38(*adtk, "predict", str(tiny_build.artefact), *images)
    assert predicted.returncode == 0, predicted.stderr
    scores = [json.loads(line)["pred_score"] for line in predicted.stdout.splitlines()]
    reference = Detector.load(tiny_build.artefact, backend="cpu").predict(images).pred_score
    np.testing.assert_allclose(scores, reference, atol=1e-5)

    inspected = run38(*adtk, "inspect", str(tiny_build.artefact))
    assert inspected.returncode == 0, inspected.stderr
    assert "integrity OK" in inspected.stdout and "[onnx] extra" in inspected.stdout

    folder = tmp_path / "frames"
    folder.mkdir()
    for image in images:
        (folder / Path(image).name).symlink_to(image)
    # The daemon watches the folder until SIGTERM: stop it once every image is scored.
    sink = tmp_path / "scores.jsonl"
    daemon = run38(*adtk, "serve", str(tiny_build.artefact), "--source", str(folder), "--sink", f"jsonl:{sink}",
                   background=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and daemon.poll() is None and not (
            sink.is_file() and len(sink.read_text().splitlines()) == len(images)):
        time.sleep(0.5)
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr
    assert [json.loads(line)["source"] for line in sink.read_text().splitlines()] == sorted(
        str(folder / Path(image).name) for image in images)

    flashed = run38(*adtk, "flash", str(tiny_build.artefact), str(tmp_path / "device"))
    assert flashed.returncode == 0, flashed.stderr
    assert (tmp_path / "device" / "model.onnx").read_bytes() == Path(tiny_build.artefact).read_bytes()

    refused = run38(*adtk, "build", "--data", str(folder), "-o", str(tmp_path / "m.onnx"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("adtk build needs Python >= 3.10 (this is 3.8.")


def adtk_version() -> str:
    import adtk

    return adtk.__version__
