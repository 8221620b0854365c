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
import os
from dataclasses import dataclass
from pathlib import Path

from adtk.runtime.errors import ArtefactError
from adtk.runtime.manifest import INPUT_NAME, OUTPUT_NAMES, SCHEMA_VERSION, validate_manifest
from adtk.runtime.protobuf_wire import (WIRE_32BIT, WIRE_64BIT, WIRE_LEN, WIRE_VARINT, encode_varint,
                                        top_level_fields)

__all__ = ["MANIFEST_KEY", "INTEGRITY_KEY", "INPUT_NAME", "OUTPUT_NAMES", "SCHEMA_VERSION", "VerifiedArtefact",
           "encode_metadata_entry", "seal", "verify_bytes", "read_artefact"]

MANIFEST_KEY = "adtk.manifest"
INTEGRITY_KEY = "adtk.sha256"
MAX_ARTEFACT_BYTES = 2 * 1024**3  # protobuf's 2 GB limit: one file, no external data

_METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto)
def _string_entry(payload: bytes) -> tuple[str, str]:
    """Decode a StringStringEntryProto (key = 1, value = 2)."""
    entry = {1: "", 2: ""}
    for field, wire, _, _, value in top_level_fields(payload):
        if wire == WIRE_LEN and field in entry:
            entry[field] = value.decode("utf-8", errors="strict")
    return entry[1], entry[2]


def encode_metadata_entry(key: str, value: str) -> bytes:
    """The bytes of one top-level ModelProto.metadata_props entry."""
    body = b"".join(
        bytes([(number << 3) | WIRE_LEN]) + encode_varint(len(raw)) + raw
        for number, raw in ((1, key.encode()), (2, value.encode()))
    )
    return encode_varint((_METADATA_PROPS_FIELD << 3) | WIRE_LEN) + encode_varint(len(body)) + body


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


MAX_METADATA_ENTRY_BYTES = 64 * 1024**2  # a manifest is kilobytes; a bigger metadata entry is refused unread
_CHUNK_BYTES = 1 << 20


class _Reader:
    """Sequential reads from bytes (no copies: memoryview slices) or from a binary file (1 MB at a time)."""

    def __init__(self, data=None, stream=None):
        self.view = memoryview(data) if data is not None else None
        self.stream, self.pos = stream, 0

    def take(self, count: int):
        if self.view is not None:
            chunk = self.view[self.pos:self.pos + count]
        else:
            chunk = self.stream.read(count)
        self.pos += len(chunk)
        if len(chunk) != count:
            raise ArtefactError("the file ends inside a protobuf field")
        return chunk

    def varint(self, header: bytearray) -> int:
        value, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            header.append(byte)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ArtefactError("malformed protobuf varint")


def _scan(reader: _Reader, size: int) -> tuple[str | None, str | None, str, str]:
    """One pass over the top-level fields -> (recorded digest, manifest JSON, sha256 of everything but the
    integrity entry, sha256 of the whole file). Memory: one 1 MB chunk and the metadata entries, whatever
    the file's size (a 1 GB artefact is hashed, never held, when read from a file)."""
    covered, whole = hashlib.sha256(), hashlib.sha256()
    recorded, manifest_json = None, None
    while reader.pos < size:
        header = bytearray()
        key = reader.varint(header)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ArtefactError("field number 0")
        length = 0
        if wire == WIRE_VARINT:
            reader.varint(header)
        elif wire in (WIRE_64BIT, WIRE_32BIT):
            length = 8 if wire == WIRE_64BIT else 4
        elif wire == WIRE_LEN:
            length = reader.varint(header)
        else:
            raise ArtefactError(f"unsupported protobuf wire type {wire}")
        if reader.pos + length > size:
            raise ArtefactError("the file ends inside a protobuf field")
        whole.update(header)
        if field == _METADATA_PROPS_FIELD and wire == WIRE_LEN:
            if length > MAX_METADATA_ENTRY_BYTES:
                raise ArtefactError(f"a metadata entry of {length} bytes (over {MAX_METADATA_ENTRY_BYTES})")
            payload = bytes(reader.take(length))
            whole.update(payload)
            entry_key, value = _string_entry(payload)
            if entry_key == INTEGRITY_KEY:
                if recorded is not None:
                    raise ArtefactError("two integrity records")
                recorded = value
                continue
            if entry_key == MANIFEST_KEY:
                if manifest_json is not None:  # which one would a reader take? Neither: refuse the file
                    raise ArtefactError("two manifests")
                manifest_json = value
            covered.update(header)
            covered.update(payload)
            continue
        covered.update(header)
        while length:
            chunk = reader.take(min(length, _CHUNK_BYTES))
            covered.update(chunk)
            whole.update(chunk)
            length -= len(chunk)
    return recorded, manifest_json, covered.hexdigest(), whole.hexdigest()


def _object_without_repeated_keys(pairs: list) -> dict:
    """A JSON object as a dict, refusing one that names a key twice (json keeps the last, other readers the first:
    a re-sealed manifest could show one threshold to one tool and another to the next)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"the key {repeated!r:.80} appears twice in one object")
    return result


def _verified_manifest(reader: _Reader, size: int, source: str) -> tuple[dict, str, str]:
    """Integrity and manifest of one artefact -> (manifest, recorded sha256, whole-file sha256)."""
    if size == 0:
        raise ArtefactError(f"{source}: empty file")
    if size > MAX_ARTEFACT_BYTES:
        raise ArtefactError(f"{source}: {size} bytes is over the 2 GB single-file limit")
    try:
        recorded, manifest_json, actual, file_sha256 = _scan(reader, size)
    except (ArtefactError, UnicodeDecodeError) as exc:
        raise ArtefactError(
            f"{source}: not a readable ONNX artefact ({exc}); the file is truncated, corrupt or not ONNX. "
            "Copy it again from the build machine.") from None
    if recorded is None:
        raise ArtefactError(
            f"{source}: no integrity record ({INTEGRITY_KEY}); it is not an adtk artefact or it was "
            "truncated. Rebuild it with `adtk build` or copy it again.")
    if actual != recorded:
        raise ArtefactError(
            f"{source}: integrity check failed (recorded sha256 {recorded[:12]}..., actual {actual[:12]}...): "
            "the file was altered or damaged after it was built. Do not use it; copy it again.")
    if manifest_json is None:
        raise ArtefactError(f"{source}: no manifest ({MANIFEST_KEY}) in the artefact")
    try:
        manifest = json.loads(manifest_json, object_pairs_hook=_object_without_repeated_keys)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, a repeated key, an int of 4,300+ digits
        reason = "a number of thousands of digits" if "integer string conversion" in str(exc) else str(exc)[:200]
        raise ArtefactError(f"{source}: manifest is not valid JSON ({reason})") from None
    validate_manifest(manifest, source)  # runtime/manifest.py: the one schema, checked before any use
    return manifest, recorded, file_sha256


def verify_bytes(data: bytes, source: str = "artefact") -> VerifiedArtefact:
    """Check integrity, manifest schema, and the manifest against the graph's own values (threshold,
    normalisation, model size: adtk.runtime.graph_values) of an artefact's bytes; ArtefactError names
    the problem."""
    manifest, recorded, file_sha256 = _verified_manifest(_Reader(data=data), len(data), source)
    _check_graph(data, manifest, source)
    return VerifiedArtefact(data, manifest, recorded, file_sha256)


def _check_graph(data, manifest: dict, source: str) -> None:
    """What the graph may not hold (graph_structure: external data, deep nesting), then the manifest against the
    graph's own values (graph_values); data: bytes or a read-only mmap."""
    from adtk.runtime.graph_structure import check_graph_structure
    from adtk.runtime.graph_values import check_manifest_against_graph

    problem = None
    try:
        check_graph_structure(data, source)
        check_manifest_against_graph(data, manifest, source)
    except ArtefactError as exc:  # ours name the file; the protobuf walk's do not
        problem = str(exc) if str(exc).startswith(f"{source}: ") else f"{source}: the graph cannot be read ({exc})"
    except (IndexError, ValueError, UnicodeDecodeError) as exc:  # a graph field the walk cannot read
        problem = f"{source}: the graph cannot be read ({exc})"
    if problem is not None:  # raised out here: a traceback kept alive would hold views of an mmap being closed
        raise ArtefactError(problem)


@dataclass(frozen=True)
class VerifiedFile:
    """An artefact file whose integrity and manifest were checked while streaming it (never held whole)."""
    path: Path
    manifest: dict
    sha256: str
    file_sha256: str
    size: int


def not_a_file_message(path: Path) -> str:
    """Why `path` is not an artefact file to read, in the user's words (a folder, a link that leads nowhere)."""
    try:
        if path.is_dir():
            return f"{path}: is a folder, not an artefact file"
        path.stat()
    except OSError as exc:
        if os.path.lexists(path):  # the name is there, but it cannot be followed (a symlink loop, no permission)
            return f"{path}: cannot read it ({exc.strerror or type(exc).__name__})"
        return f"{path}: no such artefact file"
    return f"{path}: not a regular file (a device, a pipe or a socket), not an artefact file"


def verify_file(path: str | Path) -> VerifiedFile:
    """Verify an artefact file as verify_bytes does (integrity record, manifest, the manifest against the
    graph), without holding it in memory: streamed in 1 MB chunks, the graph walked through a read-only map.
    For copying artefacts around (adtk flash: a re-sealed file whose manifest disagrees with its graph is
    refused before it replaces a working model) and for a first look at a large file."""
    import mmap

    path = Path(path)
    with _open_artefact(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        manifest, recorded, file_sha256 = _verified_manifest(_Reader(stream=stream), size, str(path))
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            _check_graph(mapped, manifest, str(path))
    return VerifiedFile(path, manifest, recorded, file_sha256, size)


# Files above this size are verified by streaming before they are read into memory (read_artefact): a large
# damaged or foreign file is refused without being held (a 1.5 GB junk file in a watched model folder took the
# daemon from 94 MB to 1.6 GB before). Below it, one read and one check.
STREAM_FIRST_BYTES = 256 * 1024 ** 2


def read_artefact(path: str | Path) -> VerifiedArtefact:
    """Read and verify an artefact file. The returned bytes are the only ones a backend may use."""
    path = Path(path)
    with _open_artefact(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > MAX_ARTEFACT_BYTES:  # before any byte is read
            raise ArtefactError(f"{path}: {size} bytes is over the 2 GB single-file limit")
        if size > STREAM_FIRST_BYTES:
            verify_file(path)
        data = stream.read(size)  # what fstat saw: a file still growing is read to that size, and verified as such
    return verify_bytes(data, str(path))


def _open_artefact(path: Path):
    """The artefact file opened for reading, only if it is a regular file (regular_files.open_regular: a name
    swapped for a FIFO after a look at it must not block the model watcher forever); ArtefactError otherwise."""
    from adtk.runtime.regular_files import NotARegularFile, open_regular

    if not path.is_file():
        raise ArtefactError(not_a_file_message(path))
    try:
        return open_regular(path)
    except NotARegularFile:  # it was swapped since is_file (for a pipe, a device)
        message = f"{path}: not a regular file (a device, a pipe or a socket), not an artefact file"
    except FileNotFoundError:
        message = f"{path}: no such artefact file"
    except OSError as exc:  # no permission to read it
        message = f"{path}: cannot read it ({exc.strerror or type(exc).__name__})"
    raise ArtefactError(message)
