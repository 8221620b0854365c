"""ed25519 signatures: a signed artefact loads with the key; unsigned, re-signed or altered ones do not."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("cryptography", reason="signing needs the cryptography package (pip install adtk[sign])")

from adtk.runtime.detector import Detector  # noqa: E402
from adtk.runtime.errors import ArtefactError  # noqa: E402
from adtk.runtime.signing import PUBLIC_KEY_ENV, generate_key_pair, sign_file, signature_path  # noqa: E402


@pytest.fixture()
def signed(tiny_build, tmp_path):
    artefact = tmp_path / "model.onnx"
    shutil.copy(tiny_build.artefact, artefact)
    generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    sign_file(artefact, tmp_path / "key.pem")
    return artefact, tmp_path / "key.pub", tmp_path


def test_signed_artefact_loads_with_its_public_key(signed):
    artefact, public, _ = signed
    assert Detector.load(artefact, backend="cpu", public_key=public).manifest["format"] == "adtk-artefact"


def test_missing_signature_or_other_key_is_refused(signed):
    artefact, public, tmp = signed
    generate_key_pair(tmp / "other.pem", tmp / "other.pub")
    with pytest.raises(ArtefactError, match="signature check failed"):
        Detector.load(artefact, backend="cpu", public_key=tmp / "other.pub")
    signature_path(artefact).unlink()
    with pytest.raises(ArtefactError, match="no signature"):
        Detector.load(artefact, backend="cpu", public_key=public)


def test_signature_of_another_file_is_refused_and_env_key_is_used(signed, monkeypatch, tiny_build):
    artefact, public, tmp = signed
    record = json.loads(signature_path(artefact).read_text())
    other = tmp / "other.onnx"
    other.write_bytes(tiny_build.artefact.read_bytes())
    sign_file(other, tmp / "key.pem")
    signature_path(artefact).write_text(json.dumps({**record, "signature": json.loads(
        signature_path(other).read_text())["signature"][:-4] + "AAA="}))
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(public))
    with pytest.raises(ArtefactError, match="signature check failed"):
        Detector.load(artefact, backend="cpu")
    monkeypatch.delenv(PUBLIC_KEY_ENV)
    Detector.load(artefact, backend="cpu")  # no key configured: signatures are not checked


def test_a_signature_path_that_is_a_directory_is_named_as_one(signed):
    artefact, public, _ = signed
    sig = signature_path(artefact)
    sig.unlink()
    sig.mkdir()
    with pytest.raises(ArtefactError, match=r"model\.onnx\.sig: is a directory, not a signature file") as caught:
        Detector.load(artefact, backend="cpu", public_key=public)
    assert "no signature" not in str(caught.value)
