"""Hostile inputs for the device side (issue 14): decompression bombs of every format the decoder opens."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

BUDGET = 1_000_000  # pixels: the bombs below declare 16-36 MP, the good frames are < 0.01 MP


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width x height, with a tiny (truncated) IDAT: a file whose
    header is all a decoder sees before it allocates."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def bmp_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="BMP")
    data = bytearray(buffer.getvalue())
    data[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER width, height
    return bytes(data)


def encoded(width: int, height: int, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 7).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def bombs() -> dict[str, bytes]:
    """Small files that declare far more pixels than BUDGET, one per format the decoder opens."""
    return {
        "png-header-60000x60000": png_declaring(60000, 60000),
        "png-real-6000x6000": encoded(6000, 6000, "PNG", optimize=True),
        "jpeg-6000x6000": encoded(6000, 6000, "JPEG", quality=10),
        "tiff-deflate-6000x6000": encoded(6000, 6000, "TIFF", compression="tiff_adobe_deflate"),
        "bmp-header-30000x30000": bmp_declaring(30000, 30000),
        "webp-6000x6000": encoded(6000, 6000, "WEBP", quality=10),
        "gif-6000x6000": encoded(6000, 6000, "GIF"),
        "ppm-header-20000x20000": b"P6\n20000 20000\n255\n" + b"\0" * 1000,
    }


def png_bytes(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def allocation_bomb(artefact_bytes: bytes, floats_per_input_value: int) -> bytes:
    """The artefact, re-sealed, with raw_score plus the sum of a ConstantOfShape tensor of `floats_per_input_value`
    float32 zeros per value of the input frame (x 64 * 64 * 3 at the tiny build's model size): the file stays small
    and every output keeps its value, but each frame allocates that much. The size is computed from the frame's
    shape, so no optimiser can fold it away before a frame arrives."""
    from onnx import helper, numpy_helper

    from tests.runtime.test_artefact_tampered_files import resealed

    def add_bomb(model) -> None:
        nodes = list(model.graph.node)
        producer = next(node for node in nodes if "raw_score" in node.output)
        producer.output[list(producer.output).index("raw_score")] = "bomb.raw_score"
        bomb = [helper.make_node("Shape", ["frames"], ["bomb.shape"]),
                helper.make_node("ReduceProd", ["bomb.shape"], ["bomb.values"], keepdims=1),
                helper.make_node("Mul", ["bomb.values", "bomb.factor"], ["bomb.size"]),
                helper.make_node("ConstantOfShape", ["bomb.size"], ["bomb.zeros"],
                                 value=numpy_helper.from_array(np.zeros(1, np.float32))),
                helper.make_node("ReduceSum", ["bomb.zeros"], ["bomb.sum"], keepdims=0),
                helper.make_node("Add", ["bomb.raw_score", "bomb.sum"], ["raw_score"])]
        at = nodes.index(producer) + 1  # before raw_score's consumers: the graph stays topologically sorted
        del model.graph.node[:]
        model.graph.node.extend(nodes[:at] + bomb + nodes[at:])
        model.graph.initializer.append(numpy_helper.from_array(np.array([floats_per_input_value], np.int64),
                                                               "bomb.factor"))

    return resealed(artefact_bytes, add_bomb)
