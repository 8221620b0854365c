"""Artefact integrity: a sealed file verifies; any altered, truncated or foreign file is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adtk.runtime.artefact import (INTEGRITY_KEY, MANIFEST_KEY, encode_metadata_entry, read_artefact, seal,
                                   verify_bytes)
from adtk.runtime.detector import Detector
from adtk.runtime.errors import ArtefactError


@pytest.fixture(scope="module")
def artefact_bytes(tiny_build):
    return tiny_build.artefact.read_bytes()


def test_sealed_artefact_verifies_and_exposes_its_manifest(artefact_bytes):
    verified = verify_bytes(artefact_bytes)
    assert verified.manifest["format"] == "adtk-artefact"
    assert verified.manifest["method"]["name"] == "patchcore"
    assert verified.model_bytes == artefact_bytes


def test_integrity_record_is_checked_with_onnx_too(artefact_bytes):
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(artefact_bytes)  # still a plain, valid ONNX file for every other tool
    props = {p.key: p.value for p in model.metadata_props}
    assert set(props) == {MANIFEST_KEY, INTEGRITY_KEY}
    onnx.checker.check_model(model)


@pytest.mark.parametrize("position", [0.1, 0.5, 0.9, 0.999])
def test_one_flipped_byte_is_refused(artefact_bytes, position):
    data = bytearray(artefact_bytes)
    data[int(len(data) * position)] ^= 0x01
    with pytest.raises(ArtefactError):
        verify_bytes(bytes(data))


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1])
def test_truncated_file_is_refused(artefact_bytes, keep):
    size = int(len(artefact_bytes) * keep) if isinstance(keep, float) else (keep % len(artefact_bytes))
    with pytest.raises(ArtefactError, match="truncated|empty|integrity|not a readable"):
        verify_bytes(artefact_bytes[:size])


def test_edited_manifest_is_refused(artefact_bytes):
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(artefact_bytes)
    for prop in model.metadata_props:
        if prop.key == MANIFEST_KEY:
            manifest = json.loads(prop.value)
            manifest["calibration"]["threshold"] = 0.0
            prop.value = json.dumps(manifest)
    with pytest.raises(ArtefactError, match="integrity check failed"):
        verify_bytes(model.SerializeToString())


def test_resealed_foreign_manifest_breaks_the_contract(artefact_bytes):
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(artefact_bytes)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = MANIFEST_KEY, json.dumps({"format": "adtk-artefact", "schema": 99})
    with pytest.raises(ArtefactError, match="schema 99"):
        verify_bytes(seal(model.SerializeToString()))


def test_plain_onnx_without_record_and_non_onnx_files_are_refused(artefact_bytes, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(artefact_bytes)
    del model.metadata_props[:]
    with pytest.raises(ArtefactError, match="no integrity record"):
        verify_bytes(model.SerializeToString())
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(ArtefactError):
        read_artefact(text)
    with pytest.raises(ArtefactError, match="no such artefact"):
        read_artefact(tmp_path / "missing.onnx")


def test_two_integrity_records_are_refused(artefact_bytes):
    with pytest.raises(ArtefactError):
        verify_bytes(artefact_bytes + encode_metadata_entry(INTEGRITY_KEY, "0" * 64))


def test_detector_refuses_a_damaged_file_and_loads_a_good_one(tiny_build, tmp_path):
    damaged = tmp_path / "damaged.onnx"
    data = bytearray(tiny_build.artefact.read_bytes())
    data[len(data) // 3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArtefactError):
        Detector.load(damaged)
    detector = Detector.load(tiny_build.artefact)
    frames = np.zeros((1, 80, 70, 3), dtype=np.uint8)
    prediction = detector.predict(frames)
    assert prediction.pred_score.shape == (1,)
