"""Class 5 of issue 14: flash to a fleet. Each destination fails alone with a clear message, hosts and
users that ssh would read as options are refused, orphan temporary files of an interrupted flash are
cleaned by the next one (locally and over a real sshd), artefacts are hashed and copied streaming, and
the signature travels over ssh too."""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest
from click.testing import CliRunner

from adtk.runtime.artefact import seal, verify_file
from adtk.runtime.protobuf_wire import encode_varint
from adtk.runtime.flash import flash, parse_destination, rollback
from adtk.runtime.errors import ConfigError
from adtk.toolkit.cli.main import cli
from tests.runtime.test_flash import listing, sshd, versions  # noqa: F401 - fixtures: a real sshd, v1 and v2


@pytest.mark.parametrize("bad", [
    "ssh://pi@cam-3:99999/opt/models",  # port out of range: urlsplit raised ValueError -> traceback before
    "ssh://pi@cam-3:http/opt/models",
    "ssh://pi@cam-3:0/opt/models",
    "ssh://-oProxyCommand=touch%20pwned/opt/models",  # host read by ssh as an option
    "ssh://-oProxyCommand=x@cam-3/opt/models",  # user likewise
    "ssh://pi@cam%203/opt/models",
])
def test_hostile_destinations_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_destination(bad)


def test_each_destination_fails_alone_and_the_summary_lists_all(versions, tmp_path):
    good_a, good_b = tmp_path / "cam-a", tmp_path / "cam-b"
    destinations = [str(good_a), "ssh://pi@cam-3:99999/opt/models", "ssh://-oProxyCommand=sh@cam-4/opt/models",
                    "ftp://cam-5/models", str(good_b)]
    outcome = CliRunner().invoke(cli, ["flash", str(versions[0]), *destinations, "--json"])
    assert outcome.exit_code == 1, outcome.output
    report = json.loads(outcome.output)
    assert [r["ok"] for r in report["results"]] == [True, False, False, False, True]
    assert all(r["message"].startswith("ConfigError") for r in report["results"][1:4])
    assert report["succeeded"] == 2 and report["failed"] == 3
    assert not (tmp_path / "pwned").exists()


def test_orphan_temporary_files_are_cleaned_locally(versions, tmp_path):
    device = tmp_path / "device"
    device.mkdir()
    dead_pid = 2 ** 22 + 12345  # above any pid this machine hands out (pid_max <= 4194304)
    orphans = [device / f".model.onnx.{dead_pid}.0123456789ab.part", device / f".model.onnx.sig.{dead_pid}.ab.part",
               device / f".model.previous.onnx.{dead_pid}.cd.part"]
    for orphan in orphans:
        orphan.write_bytes(b"half a model")
    live = device / f".model.onnx.{os.getppid()}.ef.part"  # a flash still running (our parent's pid)
    live.write_bytes(b"being written")
    assert all(r.ok for r in flash(versions[0], [str(device)]))
    assert listing(device) == sorted(["model.onnx", live.name])


def test_orphans_are_cleaned_and_the_signature_travels_over_ssh(sshd, versions, tmp_path):  # noqa: F811
    pytest.importorskip("cryptography")
    from adtk.runtime.signing import generate_key_pair, sign_file, signature_path

    user, port, options = sshd
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / ".model.onnx.4199999.0.part").write_bytes(b"orphan of an interrupted flash")
    generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    v1, v2 = versions
    signed = tmp_path / "signed"
    signed.mkdir()
    for version in (v1, v2):
        (signed / version.name).write_bytes(version.read_bytes())
        sign_file(signed / version.name, tmp_path / "key.pem")
    dest = f"ssh://{user}@127.0.0.1:{port}{folder}"
    for version in ("v1.onnx", "v2.onnx"):
        [result] = flash(signed / version, [dest], ssh_options=options, public_key=tmp_path / "key.pub")
        assert result.ok and "with its signature" in result.message, result.message
    assert listing(folder) == ["model.onnx", "model.onnx.sig", "model.previous.onnx", "model.previous.onnx.sig"]
    assert (folder / "model.onnx.sig").read_bytes() == signature_path(signed / "v2.onnx").read_bytes()
    # a junk previous on the device: fetched, verified here, refused; nothing swapped
    good_previous = (folder / "model.previous.onnx").read_bytes()
    (folder / "model.previous.onnx").write_bytes(b"junk")
    [result] = rollback([dest], ssh_options=options)
    assert not result.ok and "refusing to roll back" in result.message
    (folder / "model.previous.onnx").write_bytes(good_previous)
    [result] = rollback([dest], ssh_options=options, public_key=tmp_path / "key.pub")
    assert result.ok, result.message
    assert (folder / "model.onnx").read_bytes() == v1.read_bytes()
    assert (folder / "model.onnx.sig").read_bytes() == signature_path(signed / "v1.onnx").read_bytes()


def test_flash_streams_a_large_artefact_instead_of_holding_it(versions, tmp_path):
    """A valid 64 MB artefact (a 64 MB doc_string, field 6 of ModelProto, before the seal): verification
    and the copy hold 1 MB chunks, not the file (before: ~3x its size)."""
    body = versions[0].read_bytes()
    record_start = body.rindex(b"adtk.sha256") - 4  # the integrity entry is the file's last field
    unsealed = body[:record_start]
    assert seal(unsealed) == body
    padding = b"x" * (64 * 1024 ** 2)
    large = tmp_path / "large.onnx"
    large.write_bytes(seal(unsealed + encode_varint((6 << 3) | 2) + encode_varint(len(padding)) + padding))
    del padding, body, unsealed
    assert verify_file(large).size > 64 * 1024 ** 2
    tracemalloc.start()
    try:
        [result] = flash(large, [str(tmp_path / "device")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok, result.message
    assert peak < 8 * 1024 ** 2, f"flash held {peak / 1e6:.0f} MB of Python memory for a 64 MB artefact"
