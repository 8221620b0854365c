"""Class 1 (pixel budgets before decoding) and class 3 (one decoder) of issue 14, on the decoder itself."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.errors import DataError
from adtk.runtime.images import decode_image, read_image
from adtk.runtime.pixels import default_max_pixels, scale_to_uint8, to_rgb_frame
from tests.runtime.hostile_inputs import BUDGET, bombs  # noqa: F401 - bombs is a fixture


def test_every_bomb_is_refused_from_its_header_before_decoding(bombs, tmp_path):
    for name, data in bombs.items():
        assert len(data) < 2_000_000, name  # small files...
        tic = time.perf_counter()
        with pytest.raises(DataError, match="over the pixel budget") as caught:
            decode_image(data, name, max_pixels=BUDGET)
        assert time.perf_counter() - tic < 1.0, name  # ...refused without decoding 16-3,600 MP
        assert name in str(caught.value)
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        with pytest.raises(DataError, match="over the pixel budget"):
            read_image(path, max_pixels=BUDGET)


def test_the_header_check_comes_before_the_truncation_check(bombs):
    # the 60000 x 60000 PNG holds 1 KB of pixel data: only a header check can say "budget", not "truncated"
    with pytest.raises(DataError, match="over the pixel budget"):
        decode_image(bombs["png-header-60000x60000"], max_pixels=BUDGET)


def test_default_budget_is_sized_from_memory_and_overridable(monkeypatch):
    monkeypatch.delenv("ADTK_MAX_PIXELS", raising=False)
    assert default_max_pixels(8 * 1024**3) == 8 * 1024**3 // 8 // 32  # an 8 GB Jetson: 33.5 MP
    assert default_max_pixels(512 * 1024**2) == 4_000_000  # floor
    assert default_max_pixels(1024**4) == 100_000_000  # ceiling
    monkeypatch.setenv("ADTK_MAX_PIXELS", "123456")
    assert default_max_pixels() == 123456
    monkeypatch.setenv("ADTK_MAX_PIXELS", "lots")
    with pytest.raises(DataError, match="ADTK_MAX_PIXELS"):
        default_max_pixels()


@pytest.mark.parametrize("header", [
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n",  # EPS: Pillow would run Ghostscript
    b"8BPS\x00\x01" + b"\x00" * 40,  # PSD
    b"\x00\x00\x01\x00\x01\x00" + b"\x00" * 40,  # ICO
    b"SIMPLE  =                    T" + b" " * 50,  # FITS
])
def test_formats_outside_the_allow_list_are_not_parsed(header):
    with pytest.raises(DataError, match="unrecognised format"):
        decode_image(header + b"\x00" * 200)


def test_nan_floats_are_refused_and_16_bit_scaling_is_the_documented_one(tmp_path):
    values = np.full((20, 20), 0.5, np.float32)
    values[3, 4] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="NaN or infinite"):
        read_image(tmp_path / "nan.tif")
    # 16-bit container: full-range scaling (value / 257); 12-bit data must fill the container (PNG/TIFF rule)
    twelve_bit_filled = np.full((20, 20), (2048 << 4) | (2048 >> 8), np.uint16)
    Image.fromarray(twelve_bit_filled).save(tmp_path / "12bit.png")
    assert int(read_image(tmp_path / "12bit.png")[0, 0, 0]) == 128
    assert scale_to_uint8(np.array([[4095]], np.uint16), "x")[0, 0] == 16  # low-bit 12-bit data: dark, as documented
    with pytest.raises(DataError, match="int64"):
        scale_to_uint8(np.zeros((2, 2), np.int64), "x")


def test_arrays_and_files_share_the_alpha_compositing():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 128
    from_array = to_rgb_frame(rgba, "array")
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    assert np.array_equal(decode_image(buffer.getvalue()), from_array)
    assert tuple(from_array[0, 0]) == (100, 50, 25)


def test_detector_refuses_empty_batches_and_frames_over_budget(tiny_build):
    from adtk.runtime.detector import Detector

    detector = Detector.load(tiny_build.artefact, max_pixels=50_000)
    with pytest.raises(DataError, match="empty batch"):
        detector.predict(np.zeros((0, 64, 64, 3), np.uint8))
    with pytest.raises(DataError, match="pixel budget"):
        detector.predict(np.zeros((1, 300, 300, 3), np.uint8))
    with pytest.raises(DataError, match="pixel budget"):
        detector.predict(np.zeros((300, 300, 3), np.uint8))
    assert detector.predict(np.zeros((1, 200, 200, 3), np.uint8)).pred_score.shape == (1,)


def test_a_bmp_with_a_negative_width_is_malformed_not_over_the_budget(tmp_path, monkeypatch):
    from tests.runtime.hostile_inputs import bmp_declaring

    data = bmp_declaring(-5, 16)  # int32 -5: Pillow reads it unsigned, ~4.3 billion px wide
    path = tmp_path / "negative.bmp"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(DataError, match=r"malformed BMP header: width -5 px") as caught:
            decode_image(source, max_pixels=BUDGET)
        assert "pixel budget" not in str(caught.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own bomb check switched off by someone
    with pytest.raises(DataError, match=r"malformed BMP header: width -5 px"):
        decode_image(data, max_pixels=BUDGET)
    # a genuine bomb BMP is still over the budget
    with pytest.raises(DataError, match="over the pixel budget"):
        decode_image(bmp_declaring(30000, 30000), max_pixels=BUDGET)


@pytest.mark.parametrize("kind, payload_head, where", [
    (b"zTXt", b"Comment\0\0", "before IDAT"),
    (b"zTXt", b"Comment\0\0", "after IDAT"),
    (b"iCCP", b"profile\0\0", "before IDAT"),
])
def test_a_png_with_a_huge_compressed_metadata_chunk_is_refused_in_plain_words(tmp_path, kind, payload_head, where):
    import struct
    import zlib

    from tests.runtime.hostile_inputs import png_bytes

    def chunk(name: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))

    good = png_bytes(np.full((8, 8, 3), 90, np.uint8))
    bomb = chunk(kind, payload_head + zlib.compress(b"\0" * (64 << 20), 9))  # 64 KB inflating to 64 MB
    at = 33 if where == "before IDAT" else len(good) - 12  # after IHDR, or before IEND
    data = good[:at] + bomb + good[at:]
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(DataError, match="oversized metadata chunk") as caught:
            decode_image(source)
        assert "MAX_TEXT" not in str(caught.value) and "PngImagePlugin" not in str(caught.value)
