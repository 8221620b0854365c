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
