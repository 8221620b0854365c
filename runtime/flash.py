"""`adtk flash`: install a verified artefact on one or many devices, atomically, keeping the previous one.

    flash(artefact, ["models/", "ssh://pi@cam-3/opt/adtk/models"])  -> [FlashResult, ...]
    rollback(["ssh://pi@cam-3/opt/adtk/models"])                     -> [FlashResult, ...]

A destination is a folder, local or `ssh://[user@]host[:port]/absolute/folder`. In it:

    model.onnx            what `adtk serve` runs (and watches: a change is verified and hot-swapped in)
    model.previous.onnx   the artefact it replaced, for `adtk flash --rollback`

Install: the artefact is verified here first (integrity + contract); its bytes go to a hidden temporary
name in the destination folder; the sha256 of what landed is computed ON THE DEVICE and compared; the
old model.onnx is hard-linked (copied where links are impossible, e.g. FAT) to model.previous.onnx; the
temporary file is renamed onto model.onnx. rename(2) within one folder is atomic, so model.onnx is at
every instant either the whole old file or the whole new one, never a partial copy. Rollback swaps the
two files the same way (rolling back twice rolls forward again).

Remote destinations use the system's `ssh` (OpenSSH) with one connection per device: the bytes travel on
stdin to a short POSIX sh script that does the device-side steps, so the device needs only sh, coreutils
(`sha256sum`) and an ssh server, not adtk. The system ssh rather than a Python ssh library: it honours
the user's ~/.ssh/config, agents and known_hosts exactly as their other tools do.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from adtk.runtime.artefact import read_artefact
from adtk.runtime.errors import AdtkError, ConfigError, TargetError

MODEL_NAME = "model.onnx"
SSH_TIMEOUT_S = 600


@dataclass(frozen=True)
class FlashResult:
    destination: str
    ok: bool
    message: str  # what was installed, or what went wrong
    sha256: str | None = None  # sha256 of the whole file now at <dest>/<name> (None on failure)


def previous_name(name: str) -> str:
    return name[: -len(".onnx")] + ".previous.onnx" if name.endswith(".onnx") else name + ".previous"


@dataclass(frozen=True)
class SshDestination:
    user: str | None
    host: str
    port: int | None
    folder: str

    def command(self, ssh_options: tuple[str, ...]) -> list[str]:
        target = f"{self.user}@{self.host}" if self.user else self.host
        port = ["-p", str(self.port)] if self.port else []
        return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *port, *ssh_options, target]


def parse_destination(value: str) -> Path | SshDestination:
    if not value.startswith("ssh://"):
        if "://" in value:
            raise ConfigError(f"destination {value}: expected a folder or ssh://[user@]host[:port]/folder")
        return Path(value)
    parts = urlsplit(value)
    folder = unquote(parts.path)
    if not parts.hostname or not folder.startswith("/") or folder == "/":
        raise ConfigError(f"destination {value}: expected ssh://[user@]host[:port]/absolute/folder")
    return SshDestination(unquote(parts.username) if parts.username else None, parts.hostname, parts.port, folder)


# ---- local folders -------------------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_keeping_old(folder: Path, source: Path, target: Path, keep_as: Path) -> None:
    """Atomically put `source` at `target`, first keeping the old `target` (if any) at `keep_as`."""
    if target.exists():
        keeper = folder / f".{keep_as.name}.{uuid.uuid4().hex}.part"
        try:
            os.link(target, keeper)
        except OSError:  # no hard links on this file system (FAT, some network mounts): copy instead
            shutil.copy2(target, keeper)
        os.replace(keeper, keep_as)
    os.replace(source, target)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every OS; the renames are still atomic
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def install_local(data: bytes, file_sha256: str, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.{uuid.uuid4().hex}.part"
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        landed = _file_sha256(temporary)
        if landed != file_sha256:
            raise TargetError(f"{folder}: the copy's sha256 {landed[:12]}... differs from the artefact's "
                              f"{file_sha256[:12]}...; nothing was replaced. Check the disk and retry.")
        _replace_keeping_old(folder, temporary, folder / name, folder / previous_name(name))
        _fsync_folder(folder)
    finally:
        temporary.unlink(missing_ok=True)
    return landed


def rollback_local(folder: Path, name: str) -> str:
    previous, current = folder / previous_name(name), folder / name
    if not previous.is_file():
        raise TargetError(f"{folder}: no {previous.name} to roll back to (flash has not replaced anything here)")
    swap = folder / f".{name}.{uuid.uuid4().hex}.swap"
    if current.exists():
        try:
            os.link(current, swap)
        except OSError:  # no hard links here: copy
            shutil.copy2(current, swap)
    os.replace(previous, current)
    if swap.exists():
        os.replace(swap, previous)
    _fsync_folder(folder)
    return _file_sha256(current)


# ---- ssh -----------------------------------------------------------------------------------------

# Device side of an install: $1 folder, $2 file name, $3 expected sha256; the artefact arrives on stdin.
_REMOTE_INSTALL = r'''
set -eu
dir=$1; name=$2; want=$3; prev=${name%.onnx}.previous.onnx
mkdir -p "$dir"
tmp="$dir/.$name.$$.part"; keep="$dir/.$prev.$$.part"
trap 'rm -f "$tmp" "$keep"' EXIT
cat > "$tmp"
got=$( { sha256sum "$tmp" 2>/dev/null || shasum -a 256 "$tmp"; } | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "sha256 of the copy on the device is $got, expected $want; nothing was replaced" >&2; exit 3
fi
if [ -e "$dir/$name" ]; then
  ln -f "$dir/$name" "$keep" 2>/dev/null || cp -p "$dir/$name" "$keep"
  mv -f "$keep" "$dir/$prev"
fi
mv -f "$tmp" "$dir/$name"
sync 2>/dev/null || true
echo "$got"
'''

# Device side of a rollback: $1 folder, $2 file name.
_REMOTE_ROLLBACK = r'''
set -eu
dir=$1; name=$2; prev=${name%.onnx}.previous.onnx; swap="$dir/.$name.$$.swap"
[ -f "$dir/$prev" ] || { echo "no $dir/$prev to roll back to (flash has not replaced anything here)" >&2; exit 4; }
if [ -e "$dir/$name" ]; then ln -f "$dir/$name" "$swap" 2>/dev/null || cp -p "$dir/$name" "$swap"; fi
mv -f "$dir/$prev" "$dir/$name"
if [ -e "$swap" ]; then mv -f "$swap" "$dir/$prev"; fi
sync 2>/dev/null || true
{ sha256sum "$dir/$name" 2>/dev/null || shasum -a 256 "$dir/$name"; } | cut -d' ' -f1
'''


def _run_remote(dest: SshDestination, script: str, args: list[str], ssh_options: tuple[str, ...],
                stdin: bytes = b"") -> str:
    remote = " ".join(shlex.quote(part) for part in ["sh", "-c", script, "adtk-flash", *args])
    if shutil.which("ssh") is None:
        raise ConfigError("ssh destinations need the OpenSSH client (`ssh`) on this machine")
    try:
        done = subprocess.run([*dest.command(ssh_options), remote], input=stdin, capture_output=True,
                              timeout=SSH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TargetError(f"{dest.host}: ssh did not finish within {SSH_TIMEOUT_S} s") from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise TargetError(f"{dest.host}:{dest.folder}: {reason[-1] if reason else f'ssh exited {done.returncode}'}")
    return done.stdout.decode().strip().splitlines()[-1]


# ---- public API ----------------------------------------------------------------------------------

def flash(artefact_path: str | Path, destinations: list[str], name: str = MODEL_NAME,
          ssh_options: tuple[str, ...] = ()) -> list[FlashResult]:
    """Install the artefact at every destination; one result per destination, in order, never raising
    for one device's failure (a fleet goes on). A bad artefact is refused before anything is copied."""
    if not name.endswith(".onnx") or "/" in name or name.startswith("."):
        raise ConfigError(f"--name {name}: expected a plain file name ending in .onnx")
    artefact = read_artefact(artefact_path)  # raises ArtefactError: nothing is sent anywhere
    results = []
    for value in destinations:
        try:
            dest = parse_destination(value)
            if isinstance(dest, Path):
                landed = install_local(artefact.model_bytes, artefact.file_sha256, dest, name)
            else:
                landed = _run_remote(dest, _REMOTE_INSTALL, [dest.folder, name, artefact.file_sha256],
                                     ssh_options, stdin=artefact.model_bytes)
            if landed != artefact.file_sha256:
                raise TargetError(f"{value}: device reports sha256 {landed[:12]}..., expected "
                                  f"{artefact.file_sha256[:12]}...")
            results.append(FlashResult(value, True, f"installed {name} (sha256 {landed[:12]}...), "
                                                    f"previous kept as {previous_name(name)}", landed))
        except (AdtkError, OSError) as exc:
            results.append(FlashResult(value, False, f"{type(exc).__name__}: {exc}"))
    return results


def rollback(destinations: list[str], name: str = MODEL_NAME, ssh_options: tuple[str, ...] = ()) -> list[FlashResult]:
    """Swap <name> and its .previous at every destination."""
    results = []
    for value in destinations:
        try:
            dest = parse_destination(value)
            if isinstance(dest, Path):
                restored = rollback_local(dest, name)
            else:
                restored = _run_remote(dest, _REMOTE_ROLLBACK, [dest.folder, name], ssh_options)
            results.append(FlashResult(value, True, f"restored the previous {name} (sha256 {restored[:12]}...)",
                                       restored))
        except (AdtkError, OSError) as exc:
            results.append(FlashResult(value, False, f"{type(exc).__name__}: {exc}"))
    return results
