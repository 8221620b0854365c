"""Optional ed25519 signatures of artefacts (and engines), checked on load when a public key is configured.

    adtk sign model.onnx --key signing_key.pem       -> model.onnx.sig (JSON, beside the artefact)
    Detector.load("model.onnx", public_key="signing_key.pub.pem")   or   ADTK_PUBLIC_KEY=path

The signature is detached (a `.sig` file) so that signing never changes the artefact's bytes or its
integrity record. What is signed: the domain-separated message b"adtk-artefact-v1\\0" + sha256(file), so a
signature cannot be replayed onto a different file or a different kind of message. The primitive is
ed25519 from the `cryptography` package (pip install adtk[sign]), imported only when signing or when a key
is configured; the runtime without a key needs nothing more than before.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from adtk.runtime.errors import ArtefactError, ConfigError
from adtk.runtime.extras import require

SIGNATURE_SUFFIX = ".sig"
PUBLIC_KEY_ENV = "ADTK_PUBLIC_KEY"
MAX_SIGNATURE_BYTES = 64 * 1024  # `adtk sign` writes ~300 bytes of JSON
_DOMAIN = b"adtk-artefact-v1\0"


def _crypto():
    serialization = require("cryptography.hazmat.primitives.serialization", "artefact signing")
    ed25519 = require("cryptography.hazmat.primitives.asymmetric.ed25519", "artefact signing")
    return serialization, ed25519


def signature_path(artefact: str | Path) -> Path:
    return Path(str(artefact) + SIGNATURE_SUFFIX)


def key_id(public_key) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(private_path: str | Path, public_path: str | Path) -> str:
    """Write a new ed25519 key pair as PEM files (the private one readable by the owner only) -> key id."""
    serialization, ed25519 = _crypto()
    private = ed25519.Ed25519PrivateKey.generate()
    private_path, public_path = Path(private_path), Path(public_path)
    private_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    os.chmod(private_path, 0o600)
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(private.public_key())


def _load_key(path: str | Path, private: bool):
    serialization, ed25519 = _crypto()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such key file")
    try:
        if private:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        else:
            key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM {'private' if private else 'public'} key ({exc})") from None
    expected = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, expected):
        raise ConfigError(f"{path}: not an ed25519 key (adtk signs with ed25519 only)")
    return key


def sign_file(artefact: str | Path, private_key_path: str | Path) -> Path:
    """Sign a file's bytes; write `<file>.sig` and return its path."""
    key = _load_key(private_key_path, private=True)
    data = Path(artefact).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    signature = key.sign(_DOMAIN + bytes.fromhex(digest))
    record = {"algorithm": "ed25519", "message": "adtk-artefact-v1 + sha256(file)", "file_sha256": digest,
              "key_id": key_id(key.public_key()), "signature": base64.b64encode(signature).decode()}
    out = signature_path(artefact)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def configured_public_key(public_key: str | Path | None) -> Path | None:
    """The key to verify with: the argument, else $ADTK_PUBLIC_KEY, else None (signatures not checked)."""
    if public_key is not None:
        return Path(public_key)
    from_env = os.environ.get(PUBLIC_KEY_ENV)
    return Path(from_env) if from_env else None


def verify_signature(data: bytes, source: str | Path, public_key_path: str | Path) -> str:
    """Check `<source>.sig` against the exact bytes about to be used; -> key id. Raises ArtefactError."""
    return verify_signature_digest(hashlib.sha256(data).hexdigest(), source, signature_path(source), public_key_path)


def _directory_message(sig_path: Path, source: str | Path) -> str:
    return (f"{sig_path}: is a directory, not a signature file; replace it with the file "
            f"`adtk sign {Path(source).name} --key PRIVATE.pem` writes")


def read_signature_bytes(sig_path: str | Path, source: str | Path) -> bytes:
    """The bytes of a signature file, read once as a regular file of at most MAX_SIGNATURE_BYTES (a .sig that is a
    FIFO, a device or a 10 GB file next to an artefact must neither block the reader nor fill its memory), for a
    caller that passes the same bytes on (adtk flash: the bytes it verified are the bytes it installs).
    ArtefactError naming the file otherwise."""
    from adtk.runtime.regular_files import open_regular

    sig_path = Path(sig_path)
    if sig_path.is_dir():
        raise ArtefactError(_directory_message(sig_path, source))
    try:
        with open_regular(sig_path) as stream:
            data = stream.read(MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:  # NotARegularFile among them
        raise ArtefactError(f"{sig_path}: cannot read the signature file ({exc.strerror or exc})") from None
    if len(data) > MAX_SIGNATURE_BYTES:
        raise ArtefactError(f"{sig_path}: not a valid adtk signature file (larger than {MAX_SIGNATURE_BYTES // 1024} "
                            "KB)")
    return data


def verify_signature_digest(file_sha256: str, source: str | Path, sig_path: str | Path,
                            public_key_path: str | Path, signature_bytes: bytes | None = None) -> str:
    """Check the signature file `sig_path` (or, when given, `signature_bytes`: that file's contents as the caller
    read them with read_signature_bytes) against a file's sha256 (hex; computed by the caller while
    streaming, or over the exact bytes about to be used) -> key id. Raises ArtefactError."""
    key = _load_key(public_key_path, private=False)  # first: says which extra is missing, in one line
    from cryptography.exceptions import InvalidSignature

    sig_path = Path(sig_path)
    if signature_bytes is None and sig_path.is_dir():
        raise ArtefactError(_directory_message(sig_path, source))
    if signature_bytes is None and not sig_path.is_file():
        raise ArtefactError(f"{source}: a public key is configured ({public_key_path}) but there is no signature "
                            f"{sig_path.name}; sign it with `adtk sign {Path(source).name} --key PRIVATE.pem`")
    from adtk.runtime.regular_files import read_small_json

    try:
        # read_small_json: a .sig swapped for a FIFO must not block the model watcher
        record = read_small_json(sig_path, MAX_SIGNATURE_BYTES) if signature_bytes is None else \
            json.loads(signature_bytes.decode("utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise ArtefactError(f"{sig_path}: not a valid adtk signature file ({exc})") from None
    digest = bytes.fromhex(file_sha256)
    try:
        key.verify(signature, _DOMAIN + digest)
    except InvalidSignature:
        raise ArtefactError(f"{source}: signature check failed against {public_key_path} (key {key_id(key)}): the "
                            "file was changed after signing or was signed by another key. Do not use it.") from None
    return key_id(key)
