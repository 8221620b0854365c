"""`adtk flash`: install a verified artefact on one or many devices, atomically, keeping the previous one.

    flash(artefact, ["models/", "ssh://pi@cam-3/opt/adtk/models"])  -> [FlashResult, ...]
    rollback(["ssh://pi@cam-3/opt/adtk/models"])                     -> [FlashResult, ...]

A destination is a folder, local or `ssh://[user@]host[:port]/absolute/folder`. In it:

    model.onnx            what `adtk serve` runs (and watches: a change is verified and hot-swapped in)
    model.onnx.sig        its signature, when the artefact was signed (`adtk sign`): it travels with it
    model.previous.onnx   the artefact it replaced, for `adtk flash --rollback` (and its .sig)

Install: the artefact is verified here first (integrity + schema, streamed: a 1 GB file is hashed, never
held in memory; with a public key, its signature too); its bytes go to a hidden temporary
name in the destination folder; the sha256 of what landed is computed ON THE DEVICE and compared; the
old model.onnx is hard-linked (copied where links are impossible, e.g. FAT) to model.previous.onnx; the
signature is renamed onto model.onnx.sig, then the temporary file onto model.onnx. rename(2) within one
folder is atomic, so model.onnx is at every instant either the whole old file or the whole new one, never
a partial copy. Temporary files of an interrupted flash (their writer's process is gone) are removed by
the next one. Rollback first verifies model.previous.onnx (integrity, and its signature with a key; a
remote one is fetched and verified here), then swaps the two files and their signatures the same way
(rolling back twice rolls forward again).

Each destination succeeds or fails alone (a bad port, an unreachable host, a full disk): the fleet goes
on and the summary lists every destination. Host and user names are checked before ssh sees them: a
value starting with `-` would be read by ssh as an option (`ssh -oProxyCommand=...`), so it is refused,
and `--` ends ssh's options in any case.

Remote destinations use the system's `ssh` (OpenSSH) with one connection per device: the bytes travel on
stdin to a short POSIX sh script that does the device-side steps, so the device needs only sh, coreutils
(`sha256sum`) and an ssh server, not adtk. The system ssh rather than a Python ssh library: it honours
the user's ~/.ssh/config, agents and known_hosts exactly as their other tools do.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from adtk.runtime.artefact import verify_file
from adtk.runtime.errors import AdtkError, ArtefactError, ConfigError, TargetError
from adtk.runtime.regular_files import open_regular
from adtk.runtime.signing import (configured_public_key, read_signature_bytes, signature_path,
                                  verify_signature_digest)

MODEL_NAME = "model.onnx"
SSH_TIMEOUT_S = 600
_CHUNK_BYTES = 1 << 20
# host names, IPv4/IPv6 literals and user names as ssh accepts them, never starting with "-"
_SAFE_HOST = re.compile(r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]*$")
_SAFE_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@+-]*$")


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
        # "--": whatever the target is, ssh reads no option after it
        return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *port, *ssh_options, "--", target]


def parse_destination(value: str) -> Path | SshDestination:
    """A folder or ssh://[user@]host[:port]/absolute/folder -> a destination; ConfigError naming the problem."""
    if not value.startswith("ssh://"):
        if "://" in value:
            raise ConfigError(f"destination {value}: expected a folder or ssh://[user@]host[:port]/folder")
        return Path(value)
    parts = urlsplit(value)
    folder = unquote(parts.path)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"destination {value}: the port must be a number in 1..65535") from None
    if port == 0:
        raise ConfigError(f"destination {value}: the port must be a number in 1..65535")
    if not parts.hostname or not folder.startswith("/") or folder == "/":
        raise ConfigError(f"destination {value}: expected ssh://[user@]host[:port]/absolute/folder")
    host = parts.hostname
    user = unquote(parts.username) if parts.username else None
    if not _SAFE_HOST.match(host) or (user is not None and not _SAFE_USER.match(user)):
        raise ConfigError(f"destination {value}: host {host!r} or user {user!r} is not a plain name (it starts "
                          "with '-' or holds spaces or shell characters); ssh would read it as an option")
    if "\n" in folder or "\0" in folder:
        raise ConfigError(f"destination {value}: the folder holds a newline or NUL")
    return SshDestination(user, host, port, folder)


# ---- local folders -------------------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _temporary(folder: Path, name: str, suffix: str = "part") -> Path:
    """A hidden temporary name that records its writer's pid, so a later flash can tell an orphan."""
    return folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_orphans(folder: Path, name: str) -> list[Path]:
    """Remove temporary files of interrupted flashes/rollbacks here (their writer is no longer running)."""
    removed = []
    prefixes = tuple(f".{n}." for n in (name, name + ".sig", previous_name(name), previous_name(name) + ".sig"))
    for path in folder.iterdir() if folder.is_dir() else ():
        if not path.name.startswith(prefixes) or not path.name.endswith((".part", ".swap")):
            continue
        prefix = max((p for p in prefixes if path.name.startswith(p)), key=len)
        pid_field = path.name[len(prefix):].split(".")[0]
        pid = int(pid_field) if pid_field.isdigit() else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue  # another flash is writing it now
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link to `source`, else (no hard links on this file system: FAT, sshfs, some network
    mounts) a copy. A symlink is kept as the symlink, never followed: the device side may point model.onnx at any
    file of the machine running flash (~/.ssh/id_ed25519), whose bytes must not be copied into the device folder."""
    try:
        os.link(source, target, follow_symlinks=False)
    except (OSError, NotImplementedError):  # NotImplementedError: no linkat on this OS
        shutil.copy2(source, target, follow_symlinks=False)


def _keep(folder: Path, source: Path, keep_as: Path) -> None:
    """Put a copy of `source` at `keep_as` atomically (hard link where possible, else copy)."""
    keeper = _temporary(folder, keep_as.name)
    try:
        _link_or_copy(source, keeper)
        os.replace(keeper, keep_as)
    finally:  # keep_as is a folder, say: the temporary name must not stay behind
        keeper.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every OS; the renames are still atomic
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    # open_regular: the artefact swapped for a FIFO after it was verified must not block flash (a different file
    # is caught by the sha256 comparison)
    with open_regular(source) as reading, open(target, "wb") as writing:
        for block in iter(lambda: reading.read(_CHUNK_BYTES), b""):
            digest.update(block)
            writing.write(block)
        writing.flush()
        os.fsync(writing.fileno())
    return digest.hexdigest()


def install_local(source: Path, file_sha256: str, folder: Path, name: str, signature: bytes | None) -> str:
    """Copy `source` (streamed) to folder/name, its signature (or none) to folder/name.sig, keeping the old
    pair as the .previous pair. Nothing at folder/name changes unless the copy's sha256 is file_sha256."""
    if os.path.lexists(folder) and not folder.is_dir():  # mkdir would say only "File exists"
        raise TargetError(f"{folder}: exists and is not a folder (a file?); give the folder the model goes in")
    folder.mkdir(parents=True, exist_ok=True)
    clean_orphans(folder, name)
    target, target_sig = folder / name, folder / (name + ".sig")
    previous = folder / previous_name(name)
    temporary, temporary_sig = _temporary(folder, name), _temporary(folder, name + ".sig")
    try:
        landed = _copy_hashing(source, temporary)
        if landed != file_sha256:
            raise TargetError(f"{folder}: the copy's sha256 {landed[:12]}... differs from the artefact's "
                              f"{file_sha256[:12]}... (changed while copying, or a disk error); nothing was "
                              "replaced. Check the disk and retry.")
        if signature is not None:
            with open(temporary_sig, "wb") as stream:
                stream.write(signature)
                stream.flush()
                os.fsync(stream.fileno())
        if target.exists():
            _keep(folder, target, previous)
            if target_sig.exists():
                _keep(folder, target_sig, signature_path(previous))
            else:
                signature_path(previous).unlink(missing_ok=True)
        # the signature first: a watcher that sees the new model sees its signature with it
        if signature is not None:
            os.replace(temporary_sig, target_sig)
        else:
            target_sig.unlink(missing_ok=True)  # an older model's signature must not sit beside this one
        os.replace(temporary, target)
        _fsync_folder(folder)
    finally:
        temporary.unlink(missing_ok=True)
        temporary_sig.unlink(missing_ok=True)
    return landed


def _verify_candidate(path: Path, public_key: Path | None, what: str, signature: bytes | None = None) -> str:
    """Integrity + schema of `path` (streamed) and, with a key, its signature (`signature`: the .sig's bytes as
    read, else the file) -> its whole-file sha256."""
    verified = verify_file(path)
    if public_key is not None:
        verify_signature_digest(verified.file_sha256, path, signature_path(path), public_key, signature)
    return verified.file_sha256


def rollback_local(folder: Path, name: str, public_key: Path | None = None) -> str:
    previous, current = folder / previous_name(name), folder / name
    if not previous.is_file():
        raise TargetError(f"{folder}: no {previous.name} to roll back to (flash has not replaced anything here)")
    try:
        _verify_candidate(previous, public_key, "previous")
    except ArtefactError as exc:
        raise TargetError(f"{folder}: refusing to roll back: {exc}") from None
    clean_orphans(folder, name)
    pairs = [(previous, current), (signature_path(previous), signature_path(current))]
    swaps = [_temporary(folder, name, "swap"), _temporary(folder, name + ".sig", "swap")]
    for (old, new), swap in zip(pairs, swaps):  # keep what is current, for rolling forward again
        if new.exists():
            _link_or_copy(new, swap)
    # signatures first (see install_local), then the model
    for (old, new), swap in reversed(list(zip(pairs, swaps))):
        if old.exists():
            os.replace(old, new)
        else:
            new.unlink(missing_ok=True)
        if swap.exists():
            os.replace(swap, old)
    _fsync_folder(folder)
    return _file_sha256(current)


# ---- ssh -----------------------------------------------------------------------------------------

# Removes temporary files of interrupted runs: hidden names ".<file>.<pid>.0.part|swap" whose pid is gone.
_REMOTE_CLEAN = r'''
for f in "$dir"/.*.0.part "$dir"/.*.0.swap; do
  [ -e "$f" ] || continue
  base=${f%.0.*}; pid=${base##*.}
  case $pid in ''|*[!0-9]*) continue;; esac
  kill -0 "$pid" 2>/dev/null || rm -f "$f"
done
'''

# Device side of an install: $1 folder, $2 file name, $3 expected sha256, $4 the signature (or empty);
# the artefact arrives on stdin.
_REMOTE_INSTALL = r'''
set -eu
dir=$1; name=$2; want=$3; sig=$4; prev=${name%.onnx}.previous.onnx
mkdir -p "$dir"
''' + _REMOTE_CLEAN + r'''
tmp="$dir/.$name.$$.0.part"; sigtmp="$dir/.$name.sig.$$.0.part"
keep="$dir/.$prev.$$.0.part"; keepsig="$dir/.$prev.sig.$$.0.part"
trap 'rm -f "$tmp" "$sigtmp" "$keep" "$keepsig"' EXIT
cat > "$tmp"
got=$( { sha256sum "$tmp" 2>/dev/null || shasum -a 256 "$tmp"; } | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "sha256 of the copy on the device is $got, expected $want; nothing was replaced" >&2; exit 3
fi
if [ -n "$sig" ]; then printf '%s' "$sig" > "$sigtmp"; fi
if [ -e "$dir/$name" ]; then
  ln -f "$dir/$name" "$keep" 2>/dev/null || cp -p "$dir/$name" "$keep"
  mv -f "$keep" "$dir/$prev"
  if [ -e "$dir/$name.sig" ]; then
    ln -f "$dir/$name.sig" "$keepsig" 2>/dev/null || cp -p "$dir/$name.sig" "$keepsig"
    mv -f "$keepsig" "$dir/$prev.sig"
  else
    rm -f "$dir/$prev.sig"
  fi
fi
if [ -n "$sig" ]; then mv -f "$sigtmp" "$dir/$name.sig"; else rm -f "$dir/$name.sig"; fi
mv -f "$tmp" "$dir/$name"
sync 2>/dev/null || true
echo "$got"
'''

# Device side of a rollback fetch: $1 folder, $2 file name, $3 "model" or "sig" -> that previous file on stdout.
_REMOTE_FETCH_PREVIOUS = r'''
set -eu
dir=$1; name=$2; prev=${name%.onnx}.previous.onnx
[ -f "$dir/$prev" ] || { echo "no $dir/$prev to roll back to (flash has not replaced anything here)" >&2; exit 4; }
if [ "$3" = sig ]; then [ -f "$dir/$prev.sig" ] && cat "$dir/$prev.sig"; exit 0; fi
cat "$dir/$prev"
'''

# Device side of a rollback: $1 folder, $2 file name, $3 the sha256 the previous file was verified with here.
_REMOTE_ROLLBACK = r'''
set -eu
dir=$1; name=$2; want=$3; prev=${name%.onnx}.previous.onnx
''' + _REMOTE_CLEAN + r'''
swap="$dir/.$name.$$.0.swap"; sigswap="$dir/.$name.sig.$$.0.swap"
[ -f "$dir/$prev" ] || { echo "no $dir/$prev to roll back to (flash has not replaced anything here)" >&2; exit 4; }
got=$( { sha256sum "$dir/$prev" 2>/dev/null || shasum -a 256 "$dir/$prev"; } | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "$prev changed after it was verified (sha256 $got, verified $want); nothing was swapped" >&2; exit 5
fi
if [ -e "$dir/$name" ]; then ln -f "$dir/$name" "$swap" 2>/dev/null || cp -p "$dir/$name" "$swap"; fi
if [ -e "$dir/$name.sig" ]; then ln -f "$dir/$name.sig" "$sigswap" 2>/dev/null || cp -p "$dir/$name.sig" "$sigswap"; fi
if [ -e "$dir/$prev.sig" ]; then mv -f "$dir/$prev.sig" "$dir/$name.sig"; else rm -f "$dir/$name.sig"; fi
mv -f "$dir/$prev" "$dir/$name"
if [ -e "$sigswap" ]; then mv -f "$sigswap" "$dir/$prev.sig"; fi
if [ -e "$swap" ]; then mv -f "$swap" "$dir/$prev"; fi
sync 2>/dev/null || true
echo "$got"
'''


def _run_remote(dest: SshDestination, script: str, args: list[str], ssh_options: tuple[str, ...],
                stdin: bytes | Path = b"", stdout_to: Path | None = None) -> str:
    """Run `script` on the device; stdin from bytes or streamed from a file; stdout to a file or returned."""
    remote = " ".join(shlex.quote(part) for part in ["sh", "-c", script, "adtk-flash", *args])
    if shutil.which("ssh") is None:
        raise ConfigError("ssh destinations need the OpenSSH client (`ssh`) on this machine")
    stdin_file = open_regular(stdin) if isinstance(stdin, Path) else None  # as in _copy_hashing
    stdout_file = open(stdout_to, "wb") if stdout_to is not None else None
    try:
        done = subprocess.run([*dest.command(ssh_options), remote],
                              input=None if stdin_file else stdin, stdin=stdin_file,
                              stdout=stdout_file or subprocess.PIPE, stderr=subprocess.PIPE, timeout=SSH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TargetError(f"{dest.host}: ssh did not finish within {SSH_TIMEOUT_S} s") from None
    finally:
        for handle in (stdin_file, stdout_file):
            if handle is not None:
                handle.close()
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise TargetError(f"{dest.host}:{dest.folder}: {reason[-1] if reason else f'ssh exited {done.returncode}'}")
    if stdout_to is not None:
        return ""
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _rollback_remote(dest: SshDestination, name: str, ssh_options: tuple[str, ...], public_key: Path | None) -> str:
    """Fetch the device's previous artefact (and signature) into a local temporary folder, verify them here,
    then swap on the device only if the file there is still the one verified."""
    with tempfile.TemporaryDirectory(prefix="adtk-rollback-") as scratch:
        fetched = Path(scratch) / previous_name(name)
        _run_remote(dest, _REMOTE_FETCH_PREVIOUS, [dest.folder, name, "model"], ssh_options, stdout_to=fetched)
        _run_remote(dest, _REMOTE_FETCH_PREVIOUS, [dest.folder, name, "sig"], ssh_options,
                    stdout_to=signature_path(fetched))
        if signature_path(fetched).stat().st_size == 0:
            signature_path(fetched).unlink()
        try:
            verified_sha256 = _verify_candidate(fetched, public_key, "previous")
        except ArtefactError as exc:
            raise TargetError(f"{dest.host}:{dest.folder}: refusing to roll back: {exc}") from None
    return _run_remote(dest, _REMOTE_ROLLBACK, [dest.folder, name, verified_sha256], ssh_options)


# ---- public API ----------------------------------------------------------------------------------

def _check_name(name: str) -> None:
    if not name.endswith(".onnx") or "/" in name or name.startswith(".") or name.endswith(".previous.onnx"):
        raise ConfigError(f"--name {name}: expected a plain file name ending in .onnx (not .previous.onnx)")


def _failure(value: str, exc: Exception) -> FlashResult:
    return FlashResult(value, False, f"{type(exc).__name__}: {exc}")


def flash(artefact_path: str | Path, destinations: list[str], name: str = MODEL_NAME,
          ssh_options: tuple[str, ...] = (), public_key: str | Path | None = None) -> list[FlashResult]:
    """Install the artefact (and its `.sig`, when there is one) at every destination; one result per
    destination, in order, never raising for one device's failure (a fleet goes on). A bad artefact, or
    with a public key (the argument or $ADTK_PUBLIC_KEY) a missing or wrong signature, is refused before
    anything is copied."""
    _check_name(name)
    artefact_path = Path(artefact_path)
    key = configured_public_key(public_key)
    sig_file = signature_path(artefact_path)
    # read once, bounded: the bytes verified with the key are the bytes installed
    signature = read_signature_bytes(sig_file, artefact_path) if os.path.lexists(sig_file) else None
    try:
        if signature is not None and "\0" in signature.decode("utf-8"):  # the ssh script takes it as an argument
            raise ValueError("binary")
    except (ValueError, UnicodeDecodeError):
        raise ArtefactError(f"{sig_file}: not an adtk signature file (JSON text of a few hundred bytes)") from None
    file_sha256 = _verify_candidate(artefact_path, key, "artefact", signature)  # raises: nothing is sent anywhere
    results = []
    for value in destinations:
        try:
            dest = parse_destination(value)
            if isinstance(dest, Path):
                landed = install_local(artefact_path, file_sha256, dest, name, signature)
            else:
                landed = _run_remote(dest, _REMOTE_INSTALL,
                                     [dest.folder, name, file_sha256, (signature or b"").decode("utf-8")],
                                     ssh_options, stdin=artefact_path)
            if landed != file_sha256:
                raise TargetError(f"{value}: device reports sha256 {landed[:12]}..., expected {file_sha256[:12]}...")
            signed = " with its signature" if signature is not None else " (unsigned)"
            results.append(FlashResult(value, True, f"installed {name}{signed} (sha256 {landed[:12]}...), the "
                                                    f"model it replaced, if any, kept as {previous_name(name)}",
                                       landed))
        except (AdtkError, OSError) as exc:
            results.append(_failure(value, exc))
    return results


def rollback(destinations: list[str], name: str = MODEL_NAME, ssh_options: tuple[str, ...] = (),
             public_key: str | Path | None = None) -> list[FlashResult]:
    """Swap <name> and its .previous (with their signatures) at every destination, after verifying the
    previous artefact (integrity + schema; its signature too with a public key)."""
    _check_name(name)
    key = configured_public_key(public_key)
    results = []
    for value in destinations:
        try:
            dest = parse_destination(value)
            if isinstance(dest, Path):
                restored = rollback_local(dest, name, key)
            else:
                restored = _rollback_remote(dest, name, ssh_options, key)
            results.append(FlashResult(value, True, f"restored the previous {name} (sha256 {restored[:12]}...)",
                                       restored))
        except (AdtkError, OSError) as exc:
            results.append(_failure(value, exc))
    return results
