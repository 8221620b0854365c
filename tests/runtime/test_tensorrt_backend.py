"""TensorRT backend. The engine tests need TensorRT and a CUDA GPU and skip with a reason without them
(as on adtk's build machines); the fallbacks are checked everywhere."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from adtk.runtime.detector import Detector
from adtk.runtime.errors import BackendError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the behaviour without TensorRT")
def test_without_tensorrt_the_backend_says_so_and_auto_uses_onnxruntime(tiny_build):
    with pytest.raises(BackendError, match="needs NVIDIA TensorRT"):
        Detector.load(tiny_build.artefact, backend="tensorrt")
    assert Detector.load(tiny_build.artefact, backend="auto").backend.name == "onnxruntime"


def test_without_tensorrt_compile_runs_the_checks_then_refuses(tiny_build):
    if HAS_TENSORRT:
        pytest.skip("checks the behaviour without TensorRT")
    from adtk.export.tensorrt import build_engine

    with pytest.raises(BackendError, match="needs NVIDIA TensorRT"):
        build_engine(tiny_build.artefact, "orin_nano_8gb", log=lambda m: None)


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed here (not installable on adtk's build "
                    "machines); run on a Jetson or an x86 + NVIDIA GPU machine with the tensorrt package")
def test_engine_matches_onnxruntime(tiny_build, tmp_path):
    from adtk.export.tensorrt import build_engine

    engine = build_engine(tiny_build.artefact, "x86_cuda", out=tmp_path / "model.engine", log=lambda m: None)
    frames = np.random.default_rng(0).integers(0, 256, (1, 80, 70, 3), dtype=np.uint8)
    reference = Detector.load(tiny_build.artefact, backend="cpu").predict(frames)
    from adtk.runtime.artefact import read_artefact
    from adtk.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(read_artefact(tiny_build.artefact), engine_path=engine)
    got = backend.run({"frames": frames})
    np.testing.assert_allclose(got["raw_score"], reference.raw_score, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("meta", [b"{not json", b"[1, 2]", b"\xff\xfe", b"{" * 100_000, b" " * 70_000, "fifo"])
def test_engine_metadata_that_cannot_be_read_is_refused_in_one_line(tiny_build, tmp_path, meta):
    """The engine's .json is read before anything trusts the engine: bad JSON, another JSON type, bytes that are not
    UTF-8, a nesting bomb, an oversized file or a FIFO (which would block the reader) are one ArtefactError each."""
    import hashlib
    import json
    import os

    from adtk.runtime.artefact import read_artefact
    from adtk.runtime.backends.tensorrt import engine_metadata_path, read_engine
    from adtk.runtime.errors import ArtefactError

    artefact = read_artefact(tiny_build.artefact)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    good = {"engine_sha256": hashlib.sha256(b"engine bytes").hexdigest(), "artefact_sha256": artefact.file_sha256}
    engine_metadata_path(engine).write_text(json.dumps(good))
    assert read_engine(engine, artefact) == b"engine bytes"
    engine_metadata_path(engine).unlink()
    if meta == "fifo":
        os.mkfifo(engine_metadata_path(engine))
    else:
        engine_metadata_path(engine).write_bytes(meta)
    expected = "no metadata" if meta == "fifo" else "cannot be used"  # a FIFO is no file: refused unopened
    with pytest.raises(ArtefactError, match=f"{expected}.*rebuild it with `adtk compile`"):
        read_engine(engine, artefact)
