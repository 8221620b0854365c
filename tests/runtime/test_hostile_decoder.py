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


def tiff_bytes(samples: np.ndarray, *, planar: bool = False, sample_format: int = 1) -> bytes:
    """A minimal uncompressed little-endian TIFF of samples [H, W] or [H, W, C] (one strip per plane), for the
    layouts Pillow cannot write: colour planes stored separately, signed 8-bit samples, float RGB."""
    import struct

    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    data = samples.astype(samples.dtype.newbyteorder("<"))
    strips = ([np.ascontiguousarray(data[..., c]).tobytes() for c in range(channels)] if planar and channels > 1
              else [np.ascontiguousarray(data).tobytes()])
    body = bytearray(b"II*\0\0\0\0\0")
    offsets = []
    for strip in strips:
        offsets.append(len(body))
        body += strip

    def array(kind: str, values) -> int:  # out-of-line values -> their offset
        at = len(body)
        body.extend(struct.pack(f"<{len(values)}{kind}", *values))
        return at

    short, long_ = 3, 4
    per_sample = lambda value: [value] * channels  # noqa: E731
    entries = [(256, long_, [width]), (257, long_, [height]), (258, short, per_sample(data.dtype.itemsize * 8)),
               (259, short, [1]), (262, short, [2 if channels >= 3 else 1]), (273, long_, offsets),
               (277, short, [channels]), (278, long_, [height]), (279, long_, [len(s) for s in strips]),
               (284, short, [2 if planar else 1]), (339, short, per_sample(sample_format))]
    packed = []
    for tag, kind, values in entries:
        code = "H" if kind == short else "I"
        if struct.calcsize(f"<{len(values)}{code}") <= 4:
            field = struct.pack(f"<{len(values)}{code}", *values).ljust(4, b"\0")
        else:
            field = struct.pack("<I", array(code, values))
        packed.append(struct.pack("<HHI", tag, kind, len(values)) + field)
    if len(body) % 2:
        body += b"\0"
    struct.pack_into("<I", body, 4, len(body))
    body += struct.pack("<H", len(packed)) + b"".join(packed) + b"\0\0\0\0"
    return bytes(body)


def test_tiff_layouts_pillow_would_decode_into_wrong_pixels_are_refused_by_name():
    """Pillow reads 16-bit colour planes stored separately (uncompressed) as 8-bit planes, mixing them into
    noise, and signed 8-bit samples as unsigned (-1 as 255), both without an error: a silently wrong score."""
    rgb16 = np.random.default_rng(0).integers(0, 65536, (20, 24, 3)).astype(np.uint16)
    interleaved = decode_image(tiff_bytes(rgb16))  # the same pixels interleaved: decoded (8-bit, from the top byte)
    assert np.abs(interleaved.astype(int) - rgb16 / 257).max() <= 1
    with pytest.raises(DataError, match=r"planar16.tif: .*16-bit samples in separate colour planes, uncompressed"):
        decode_image(tiff_bytes(rgb16, planar=True), "planar16.tif")
    rgb8 = (rgb16 >> 8).astype(np.uint8)
    assert np.array_equal(decode_image(tiff_bytes(rgb8, planar=True)), rgb8)  # 8-bit planes: Pillow reads them right
    signed = np.full((20, 24), -1, np.int8)
    with pytest.raises(DataError, match=r"signed 8-bit samples"):
        decode_image(tiff_bytes(signed, sample_format=2), "signed.tif")


def test_integer_pixels_beyond_16_bits_are_refused_not_saturated(tmp_path):
    # a 32-bit integer TIFF was clipped to 65535: a white frame, scored without a word
    Image.fromarray(np.full((20, 20), 100_000, np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(DataError, match=r"int32.tif: .*values 100000..100000 are outside the 16-bit range"):
        read_image(tmp_path / "int32.tif")
    negative = np.full((20, 20), -300, np.int16)
    with pytest.raises(DataError, match=r"values -300..-300 are outside the 16-bit range"):
        decode_image(tiff_bytes(negative, sample_format=2))
    assert int(decode_image(tiff_bytes(np.full((20, 20), 257 * 7, np.int16), sample_format=2))[0, 0, 0]) == 7


def test_a_known_format_that_cannot_be_read_is_named_as_that_format():
    float_rgb = np.full((20, 20, 3), 0.5, np.float32)  # OpenCV writes float RGB TIFFs; Pillow has no mode for them
    with pytest.raises(DataError, match=r"a TIFF whose pixel layout this decoder does not support"):
        decode_image(tiff_bytes(float_rgb, sample_format=3))
    from tests.runtime.hostile_inputs import png_bytes

    with pytest.raises(DataError, match=r"a PNG file whose header is corrupt or cut off"):
        decode_image(png_bytes(np.zeros((20, 20, 3), np.uint8))[:30])


def test_read_image_size_is_the_decoded_size_from_the_header_without_blocking(tmp_path):
    import os

    from adtk.runtime.images import read_image_size

    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter: stored 40 x 20 (width x height), shown 20 x 40
    Image.new("RGB", (40, 20)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    Image.new("RGB", (40, 20)).save(tmp_path / "turned.tif", exif=exif.tobytes())
    for name in ("turned.jpg", "turned.tif"):
        decoded = read_image(tmp_path / name)
        assert read_image_size(tmp_path / name) == (decoded.shape[1], decoded.shape[0]) == (20, 40), name
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")  # opened plainly, a FIFO blocks its reader forever
        with pytest.raises(DataError, match="pipe.png: cannot read the image header"):
            read_image_size(tmp_path / "pipe.png")


def test_detector_takes_pillow_images_and_encoded_bytes_as_their_files_and_names_other_types(tiny_build, tmp_path):
    from adtk.runtime.detector import Detector

    detector = Detector.load(tiny_build.artefact)
    pixels = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    palette = Image.fromarray(pixels).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    from_file = detector.predict(str(tmp_path / "palette.png")).raw_score
    # np.asarray of a palette image is its indices: a list of Pillow images was scored as a dark grey frame
    for given in (palette, [palette], (tmp_path / "palette.png").read_bytes()):
        assert np.array_equal(detector.predict(given).raw_score, from_file), type(given)
    for wrong, name in ((None, "NoneType"), ({"frame": pixels}, "dict"), (7, "int")):
        with pytest.raises(DataError, match=f"got {name}$"):
            detector.predict(wrong)
