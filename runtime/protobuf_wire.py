"""The protobuf wire format, read and written by hand with the standard library: the runtime walks an artefact's
top-level fields to verify its integrity record (runtime/artefact.py) and to read initializer values
(runtime/graph_values.py) without the `onnx` package. No library exposes the raw byte spans of fields, hence
this ~60-line reader."""

from __future__ import annotations

from adtk.runtime.errors import ArtefactError

WIRE_VARINT, WIRE_64BIT, WIRE_LEN, WIRE_32BIT = 0, 1, 2, 5


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
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


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def top_level_fields(data: bytes):
    """Yield (field_number, wire_type, start, end, payload) for each top-level field of a message; payload is
    the value for a varint, the bytes (a slice of `data`: pass a memoryview to avoid copies) for a
    length-delimited field, b"" for fixed-width ones."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == WIRE_VARINT:
            payload, pos = read_varint(data, pos)  # the value itself (an int)
        elif wire == WIRE_64BIT:
            pos += 8
            payload = b""
        elif wire == WIRE_32BIT:
            pos += 4
            payload = b""
        elif wire == WIRE_LEN:
            length, pos = read_varint(data, pos)
            payload = data[pos:pos + length]
            pos += length
        else:
            raise ArtefactError(f"unsupported protobuf wire type {wire}")
        if pos > len(data) or field == 0:
            raise ArtefactError("the file ends inside a protobuf field")
        yield field, wire, start, pos, payload
