"""Class 4 of issue 14: build -> sign -> flash -> hot swap -> rollback as one signed path. The signature
travels with the artefact, every install and rollback verifies, and a daemon given a key never runs an
unsigned model, reports a refusal in /health and /metrics, and retries when the signature arrives."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest

pytest.importorskip("cryptography", reason="signing needs the cryptography package (pip install adtk[sign])")

from adtk.runtime.artefact import read_artefact  # noqa: E402
from adtk.runtime.daemon.http_api import ApiServer  # noqa: E402
from adtk.runtime.daemon.service import ScoringService, ServiceConfig  # noqa: E402
from adtk.runtime.errors import ArtefactError  # noqa: E402
from adtk.runtime.flash import flash, rollback  # noqa: E402
from adtk.runtime.signing import PUBLIC_KEY_ENV, generate_key_pair, sign_file, signature_path  # noqa: E402
from tests.conftest import reseal_with_manifest_edit, reseal_with_note  # noqa: E402


def quiet_log(kind, message):
    pass


@pytest.fixture
def keys(tmp_path, monkeypatch):
    monkeypatch.delenv(PUBLIC_KEY_ENV, raising=False)
    generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    return tmp_path / "key.pem", tmp_path / "key.pub", tmp_path / "other.pem"


@pytest.fixture
def builds(tiny_build, tmp_path):
    """v1 and v2 (valid, different), each signed with the right key; v3 valid but unsigned."""
    out = tmp_path / "builds"
    out.mkdir()
    v1, v2, v3 = out / "v1.onnx", out / "v2.onnx", out / "v3.onnx"
    v1.write_bytes(tiny_build.artefact.read_bytes())
    v2.write_bytes(reseal_with_note(v1.read_bytes(), "v2"))
    v3.write_bytes(reseal_with_note(v1.read_bytes(), "v3"))
    return v1, v2, v3


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return json.loads(response.read())


def test_flash_ships_the_signature_and_refuses_unsigned_artefacts_when_keyed(keys, builds, tmp_path):
    private, public, other = keys
    v1, v2, v3 = builds
    sign_file(v1, private)
    sign_file(v2, private)
    device = tmp_path / "device"
    assert all(r.ok for r in flash(v1, [str(device)], public_key=public))
    assert all(r.ok for r in flash(v2, [str(device)], public_key=public))
    assert (device / "model.onnx.sig").read_bytes() == signature_path(v2).read_bytes()
    assert (device / "model.previous.onnx.sig").read_bytes() == signature_path(v1).read_bytes()
    with pytest.raises(ArtefactError, match="no signature"):
        flash(v3, [str(device)], public_key=public)  # refused before anything is copied
    sign_file(v3, other)
    with pytest.raises(ArtefactError, match="signature check failed"):
        flash(v3, [str(device)], public_key=public)
    assert (device / "model.onnx").read_bytes() == v2.read_bytes()
    # rollback swaps the signatures with the models, and verifies the previous one first
    [result] = rollback([str(device)], public_key=public)
    assert result.ok, result.message
    assert (device / "model.onnx.sig").read_bytes() == signature_path(v1).read_bytes()
    assert (device / "model.previous.onnx.sig").read_bytes() == signature_path(v2).read_bytes()


def test_rollback_refuses_a_junk_or_unsigned_previous(keys, builds, tmp_path):
    private, public, _ = keys
    v1, v2, _ = builds
    device = tmp_path / "device"
    flash(v1, [str(device)])
    flash(v2, [str(device)])
    (device / "model.previous.onnx").write_bytes(b"junk" * 100)
    [result] = rollback([str(device)])
    assert not result.ok and "refusing to roll back" in result.message
    assert (device / "model.onnx").read_bytes() == v2.read_bytes()  # nothing swapped
    (device / "model.previous.onnx").write_bytes(v1.read_bytes())  # valid but unsigned
    [result] = rollback([str(device)], public_key=public)
    assert not result.ok and "no signature" in result.message
    assert (device / "model.onnx").read_bytes() == v2.read_bytes()


def test_a_keyed_daemon_never_runs_an_unsigned_model_and_retries_when_the_signature_arrives(
        keys, builds, tmp_path, run_service, wait):
    private, public, other = keys
    v1, v2, v3 = builds
    device = tmp_path / "device"
    flash(v1, [str(device)])  # unsigned
    with pytest.raises(ArtefactError, match="no signature"):
        ScoringService(ServiceConfig(model=device / "model.onnx", public_key=public), None, [], log=quiet_log).start()
    sign_file(v1, private)
    flash(v1, [str(device)])
    service = ScoringService(ServiceConfig(model=device / "model.onnx", public_key=public, watch_poll_s=0.05),
                             None, [], log=quiet_log)
    run_service(service)
    api = ApiServer(service, "127.0.0.1", 0).start()
    try:
        port = api.address[1]
        assert health(port)["status"] == "ok" and health(port)["signature_required"] is True
        # an unsigned v2 arrives (as a hand copy would bring it): refused, reported, v1 still served
        (device / "model.onnx.sig").unlink()
        shutil.copy(v2, device / "model.onnx")
        wait(lambda: service.model_update is not None, what="the unsigned model refused")
        report = health(port)
        assert report["status"] == "update refused" and "no signature" in report["model_update"]["reason"]
        assert report["model_sha256"] == read_artefact(v1).sha256
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert "adtk_model_update_refused 1.0" in response.read().decode()
        # a signature by another key: still refused
        sign_file(v2, other)
        shutil.copy(signature_path(v2), device / "model.onnx.sig")
        wait(lambda: "signature check failed" in (service.model_update or {}).get("reason", ""),
             what="the wrongly signed model refused")
        # the right signature arrives: the same model file is looked at again and swapped in
        sign_file(v2, private)
        shutil.copy(signature_path(v2), device / "model.onnx.sig")
        wait(lambda: service.detector.artefact.sha256 == read_artefact(v2).sha256, what="v2 swapped in once signed")
        wait(lambda: health(port)["status"] == "ok", what="/health ok again")
        # a re-sealed manifest edit (method renamed: no graph value to contradict) fails the signature
        shutil.copy(signature_path(v2), tmp_path / "v2.sig")
        edited = reseal_with_manifest_edit(v2.read_bytes(), lambda m: m["method"].update(name="renamed"))
        (device / "model.onnx").write_bytes(edited)
        wait(lambda: "signature check failed" in (service.model_update or {}).get("reason", ""),
             what="the re-sealed edit refused")
        assert service.detector.manifest["method"]["name"] != "renamed"
    finally:
        api.shutdown()
