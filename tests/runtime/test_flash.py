"""`adtk flash`: atomic install keeping the previous artefact, rollback, fleets with a summary, and the
same over ssh against a real sshd started on a loopback port with a throwaway key."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from adtk.runtime.errors import ArtefactError, TargetError
from adtk.runtime.flash import SshDestination, _REMOTE_INSTALL, _run_remote, flash, parse_destination, rollback
from adtk.toolkit.cli.main import cli
from tests.conftest import reseal_with_note


@pytest.fixture(scope="module")
def versions(tiny_build, tmp_path_factory):
    """Two different valid artefacts, v1 and v2."""
    folder = tmp_path_factory.mktemp("versions")
    v1, v2 = folder / "v1.onnx", folder / "v2.onnx"
    v1.write_bytes(tiny_build.artefact.read_bytes())
    v2.write_bytes(reseal_with_note(v1.read_bytes(), "v2"))
    return v1, v2


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_flash_installs_atomically_keeps_the_previous_and_rolls_back(versions, tmp_path):
    v1, v2 = versions
    dest = tmp_path / "device" / "models"
    assert all(r.ok for r in flash(v1, [str(dest)]))
    assert listing(dest) == ["model.onnx"] and (dest / "model.onnx").read_bytes() == v1.read_bytes()
    [result] = flash(v2, [str(dest)])
    assert result.ok, result.message
    assert listing(dest) == ["model.onnx", "model.previous.onnx"]  # no temporary file left behind
    assert (dest / "model.onnx").read_bytes() == v2.read_bytes()
    assert (dest / "model.previous.onnx").read_bytes() == v1.read_bytes()
    [result] = rollback([str(dest)])
    assert result.ok and (dest / "model.onnx").read_bytes() == v1.read_bytes()
    assert (dest / "model.previous.onnx").read_bytes() == v2.read_bytes()  # rolling back again rolls forward
    assert listing(dest) == ["model.onnx", "model.previous.onnx"]


def test_a_bad_artefact_is_refused_before_anything_is_copied(versions, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(versions[0].read_bytes()[:5000])
    dest = tmp_path / "models"
    with pytest.raises(ArtefactError):
        flash(truncated, [str(dest)])
    assert not dest.exists()


def test_rollback_without_a_previous_artefact_fails_cleanly(versions, tmp_path):
    flash(versions[0], [str(tmp_path)])
    [result] = rollback([str(tmp_path)])
    assert not result.ok and "no model.previous.onnx" in result.message
    assert (tmp_path / "model.onnx").read_bytes() == versions[0].read_bytes()


def test_fleet_command_reports_which_destinations_succeeded(versions, tmp_path):
    good_a, good_b, not_a_folder = tmp_path / "cam-a", tmp_path / "cam-b", tmp_path / "cam-c"
    not_a_folder.write_text("a file where a folder should be")
    result = CliRunner().invoke(cli, ["flash", str(versions[1]), str(good_a), str(not_a_folder), str(good_b),
                                      "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert [r["ok"] for r in report["results"]] == [True, False, True]
    assert report["succeeded"] == 2 and report["failed"] == 1
    for folder in (good_a, good_b):
        assert (folder / "model.onnx").read_bytes() == versions[1].read_bytes()
    result = CliRunner().invoke(cli, ["flash", "--rollback", str(good_a)])
    assert result.exit_code == 1 and "0 of 1 destinations succeeded" in result.output


def test_destinations_parse():
    assert parse_destination("ssh://pi@cam-3:2222/opt/adtk/models") == SshDestination("pi", "cam-3", 2222,
                                                                                       "/opt/adtk/models")
    assert parse_destination("models") == Path("models")
    for bad in ("ssh://cam-3", "ssh://cam-3/", "ftp://cam-3/x"):
        with pytest.raises(Exception, match="expected"):
            parse_destination(bad)


# ---- ssh against a real sshd ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on a loopback port accepting one throwaway key -> (user, port, ssh options)."""
    sshd_bin = shutil.which("sshd") or next((p for p in ["/usr/sbin/sshd"] if os.path.exists(p)), None)
    if sshd_bin is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH's sshd, ssh and ssh-keygen (Debian: apt-get install openssh-server)")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        # sshd started as root insists on its privilege-separation directory, which Debian's service unit
        # creates (RuntimeDirectory=sshd) and a container without systemd lacks; it is empty and harmless.
        try:
            os.makedirs("/run/sshd", mode=0o755)
        except OSError as exc:
            pytest.skip(f"sshd as root needs /run/sshd and it cannot be created: {exc}")
    folder = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port, user = free_port(), getpass.getuser()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\nPidFile {folder}/sshd.pid\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n")
    process = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    options = ("-i", str(folder / "client_key"), "-oIdentitiesOnly=yes", "-oStrictHostKeyChecking=no",
               "-oUserKnownHostsFile=/dev/null", "-oLogLevel=ERROR")
    try:
        deadline = time.monotonic() + 10
        while True:
            probe = subprocess.run(["ssh", "-p", str(port), "-oBatchMode=yes", *options, f"{user}@127.0.0.1",
                                    "true"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log = process.stdout.read().decode(errors="replace")[-600:]
                pytest.skip(f"could not start a test sshd on 127.0.0.1:{port} or log in to it "
                            f"(ssh: {probe.stderr.decode(errors='replace').strip()[-300:]}; sshd: {log})")
            time.sleep(0.2)
        yield user, port, options
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_flash_and_rollback_over_ssh(sshd, versions, tmp_path):
    user, port, options = sshd
    v1, v2 = versions
    dest_folder = tmp_path / "remote" / "models"
    dest = f"ssh://{user}@127.0.0.1:{port}{dest_folder}"
    for version in (v1, v2):
        [result] = flash(version, [dest], ssh_options=options)
        assert result.ok, result.message
    assert listing(dest_folder) == ["model.onnx", "model.previous.onnx"]
    assert (dest_folder / "model.onnx").read_bytes() == v2.read_bytes()
    assert (dest_folder / "model.previous.onnx").read_bytes() == v1.read_bytes()
    [result] = rollback([dest], ssh_options=options)
    assert result.ok, result.message
    assert (dest_folder / "model.onnx").read_bytes() == v1.read_bytes()


def test_device_side_sha256_mismatch_replaces_nothing(sshd, versions, tmp_path):
    user, port, options = sshd
    dest_folder = tmp_path / "models"
    flash(versions[0], [f"ssh://{user}@127.0.0.1:{port}{dest_folder}"], ssh_options=options)
    damaged = bytearray(versions[1].read_bytes())
    damaged[1000] ^= 0xFF  # as if corrupted in transit: the device's own sha256 must catch it
    from adtk.runtime.artefact import read_artefact

    expected = read_artefact(versions[1]).file_sha256
    with pytest.raises(TargetError, match="nothing was replaced"):
        _run_remote(SshDestination(user, "127.0.0.1", port, str(dest_folder)), _REMOTE_INSTALL,
                    [str(dest_folder), "model.onnx", expected, ""], options, stdin=bytes(damaged))
    assert listing(dest_folder) == ["model.onnx"]
    assert (dest_folder / "model.onnx").read_bytes() == versions[0].read_bytes()


def test_unreachable_device_is_reported_and_the_fleet_goes_on(sshd, versions, tmp_path):
    user, _, options = sshd
    results = flash(versions[0], [f"ssh://{user}@127.0.0.1:{free_port()}/tmp/nowhere", str(tmp_path / "ok")],
                    ssh_options=options)
    assert [r.ok for r in results] == [False, True]
    assert "TargetError" in results[0].message
