"""The adtk artefact format: one ONNX file that carries its manifest and an integrity record.

    metadata_props["adtk.manifest"]  one JSON document (schema: runtime/manifest.py); never Python repr
    metadata_props["adtk.sha256"]    sha256 of every byte of the file except this one entry

The integrity entry is appended as the last top-level field of the serialised ModelProto (a repeated
protobuf field may be appended to a message), so the digest covers exactly the bytes written before it:
graph, weights, opsets and the manifest. Verification walks the top-level protobuf fields, leaves out
the integrity entry and hashes the rest. That walk is written by hand (about 40 lines) because no
library exposes the raw byte spans of fields, and it lets the runtime verify an artefact with neither
the `onnx` package nor an inference session: nothing in the file is used before its digest matches,
and nothing in it is ever unpickled or evaluated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from adtk.runtime.errors import ArtefactError
from adtk.runtime.manifest import INPUT_NAME, OUTPUT_NAMES, SCHEMA_VERSION, validate_manifest

__all__ = ["MANIFEST_KEY", "INTEGRITY_KEY", "INPUT_NAME", "OUTPUT_NAMES", "SCHEMA_VERSION", "VerifiedArtefact",
           "encode_metadata_entry", "seal", "verify_bytes", "read_artefact"]

MANIFEST_KEY = "adtk.manifest"
INTEGRITY_KEY = "adtk.sha256"
MAX_ARTEFACT_BYTES = 2 * 1024**3  # protobuf's 2 GB limit: one file, no external data

_METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto)
_WIRE_VARINT, _WIRE_64BIT, _WIRE_LEN, _WIRE_32BIT = 0, 1, 2, 5


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ArtefactError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ArtefactError("malformed protobuf varint")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _top_level_fields(data: bytes):
    """Yield (field_number, wire_type, start, end, payload) for each top-level field of a message."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            _, pos = _read_varint(data, pos)
            payload = b""
        elif wire == _WIRE_64BIT:
            pos += 8
            payload = b""
        elif wire == _WIRE_32BIT:
            pos += 4
            payload = b""
        elif wire == _WIRE_LEN:
            length, pos = _read_varint(data, pos)
            payload = data[pos:pos + length]
            pos += length
        else:
            raise ArtefactError(f"unsupported protobuf wire type {wire}")
        if pos > len(data) or field == 0:
            raise ArtefactError("the file ends inside a protobuf field")
        yield field, wire, start, pos, payload


def _string_entry(payload: bytes) -> tuple[str, str]:
    """Decode a StringStringEntryProto (key = 1, value = 2)."""
    entry = {1: "", 2: ""}
    for field, wire, _, _, value in _top_level_fields(payload):
        if wire == _WIRE_LEN and field in entry:
            entry[field] = value.decode("utf-8", errors="strict")
    return entry[1], entry[2]


def encode_metadata_entry(key: str, value: str) -> bytes:
    """The bytes of one top-level ModelProto.metadata_props entry."""
    body = b"".join(
        bytes([(number << 3) | _WIRE_LEN]) + _encode_varint(len(raw)) + raw
        for number, raw in ((1, key.encode()), (2, value.encode()))
    )
    return _encode_varint((_METADATA_PROPS_FIELD << 3) | _WIRE_LEN) + _encode_varint(len(body)) + body


def seal(model_bytes: bytes) -> bytes:
    """Append the integrity entry to a serialised ModelProto that has none yet."""
    digest = hashlib.sha256(model_bytes).hexdigest()
    return model_bytes + encode_metadata_entry(INTEGRITY_KEY, digest)


@dataclass(frozen=True)
class VerifiedArtefact:
    model_bytes: bytes  # the exact bytes that were verified; hand these, not the path, to a backend
    manifest: dict
    sha256: str  # the digest recorded in (and checked against) the file
    file_sha256: str  # sha256 of the whole file, for fleet inventories


def verify_bytes(data: bytes, source: str = "artefact") -> VerifiedArtefact:
    """Check integrity and contract of an artefact's bytes; raise ArtefactError naming the problem."""
    if len(data) == 0:
        raise ArtefactError(f"{source}: empty file")
    if len(data) > MAX_ARTEFACT_BYTES:
        raise ArtefactError(f"{source}: {len(data)} bytes is over the 2 GB single-file limit")
    recorded, manifest_json, covered = None, None, []
    try:
        for field, wire, start, end, payload in _top_level_fields(data):
            if field == _METADATA_PROPS_FIELD and wire == _WIRE_LEN:
                key, value = _string_entry(payload)
                if key == INTEGRITY_KEY:
                    if recorded is not None:
                        raise ArtefactError("two integrity records")
                    recorded = value
                    continue
                if key == MANIFEST_KEY:
                    manifest_json = value
            covered.append(data[start:end])
    except (ArtefactError, UnicodeDecodeError) as exc:
        raise ArtefactError(
            f"{source}: not a readable ONNX artefact ({exc}); the file is truncated, corrupt or not ONNX. "
            "Copy it again from the build machine.") from None
    if recorded is None:
        raise ArtefactError(
            f"{source}: no integrity record ({INTEGRITY_KEY}); it is not an adtk artefact or it was "
            "truncated. Rebuild it with `adtk build` or copy it again.")
    actual = hashlib.sha256(b"".join(covered)).hexdigest()
    if actual != recorded:
        raise ArtefactError(
            f"{source}: integrity check failed (recorded sha256 {recorded[:12]}..., actual {actual[:12]}...): "
            "the file was altered or damaged after it was built. Do not use it; copy it again.")
    if manifest_json is None:
        raise ArtefactError(f"{source}: no manifest ({MANIFEST_KEY}) in the artefact")
    try:
        manifest = json.loads(manifest_json)
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"{source}: manifest is not valid JSON ({exc})") from None
    validate_manifest(manifest, source)  # runtime/manifest.py: the one schema, checked before any use
    return VerifiedArtefact(data, manifest, recorded, hashlib.sha256(data).hexdigest())


def read_artefact(path: str | Path) -> VerifiedArtefact:
    """Read and verify an artefact file. The returned bytes are the only ones a backend may use."""
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: no such artefact file")
    return verify_bytes(path.read_bytes(), str(path))
