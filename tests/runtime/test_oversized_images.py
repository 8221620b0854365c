"""Images whose cost the declared size does not show, found by probing every entry point with oversized and malformed
files of the formats a folder lists since .gif/.ppm/.pgm/.pbm/.pfm were added (decode_image is the one decoder of
`adtk predict`, `adtk build`/`eval`, Detector.predict with paths or bytes, a watched folder and POST /predict)."""

from __future__ import annotations

import io
import struct
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.daemon.sources import FolderSource, FrameCounter
from adtk.runtime.errors import DataError
from adtk.runtime.images import decode_image, pillow_image_to_rgb, read_image_size
from adtk.runtime.pixels import check_frame_pixels

GRADIENT = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 3  # 32 x 32 grey, every pixel known


def tiled_tiff(width: int, height: int, tile: int, pixels: np.ndarray) -> bytes:
    """A deflate-compressed grey TIFF of width x height px stored in ONE tile x tile px tile holding `pixels`
    (tile x tile uint8): libtiff decodes into a buffer of the tile's size, whatever the image's."""
    data = zlib.compress(pixels.tobytes())
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (277, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile)]
    offset = 8 + 2 + (len(entries) + 2) * 12 + 4
    entries += [(324, 4, 1, offset), (325, 4, 1, len(data))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in sorted(entries)) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_private_chunks(count: int, size: int) -> bytes:
    """A 16 x 16 px grey PNG carrying `count` private chunks of `size` bytes: Pillow keeps every one in memory."""
    rows = b"".join(b"\0" + bytes(range(16)) for _ in range(16))
    chunk = png_chunk(b"prVt", b"\0" * size)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
            + chunk * count + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def jpeg_with_app_segments(count: int) -> bytes:
    """A 16 x 16 px JPEG carrying `count` APP9 segments of 64 KB: Pillow keeps every one in memory."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 80, 120)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    return jpeg[:2] + (b"\xff\xe9" + struct.pack(">H", 65535) + b"\0" * 65533) * count + jpeg[2:]


# ---- TIFF tiles larger than the pixel budget


def test_a_tiff_whose_tile_is_over_the_budget_is_refused_though_its_image_fits(tmp_path):
    """A 780 KB TIFF declaring 64 x 64 px in one 16384 x 16384 px tile took 805 MB (the tile buffer, filled by a
    deflate bomb) through every entry point; its declared size passed the budget."""
    data = tiled_tiff(32, 32, 1024, np.zeros((1024, 1024), np.uint8))  # a 1 MP tile for 1,024 px of image
    (tmp_path / "tiles.tif").write_bytes(data)
    expected = "TIFF tiles of 1024x1024 px = 1.0 MP each are over the pixel budget of 0.1 MP"
    for source in (tmp_path / "tiles.tif", data):
        with pytest.raises(DataError, match="cannot decode image") as caught:
            decode_image(source, "tiles.tif", max_pixels=100_000)
        assert expected in str(caught.value) and "tiles.tif" in str(caught.value)
    with Image.open(tmp_path / "tiles.tif") as opened, pytest.raises(DataError) as caught:  # a caller's image
        pillow_image_to_rgb(opened, "frame 0", max_pixels=100_000)
    assert str(caught.value).startswith("frame 0: cannot decode image (TIFF tiles of 1024x1024 px")


def test_a_tiff_whose_tiles_fit_the_budget_decodes_to_its_pixels():
    tile = np.zeros((48, 48), np.uint8)  # tiles are multiples of 16 px, here larger than the 32 x 32 image
    tile[:32, :32] = GRADIENT
    image = decode_image(tiled_tiff(32, 32, 48, tile), max_pixels=48 * 48)
    assert np.array_equal(image, np.repeat(GRADIENT[:, :, None], 3, axis=2))


# ---- reading a file stops where the pixel budget's memory ends


@pytest.mark.parametrize("make, count", [(png_with_private_chunks, 40), (jpeg_with_app_segments, 640)],
                         ids=["png-private-chunks", "jpeg-app-segments"])
def test_a_file_is_read_only_as_far_as_the_budget_allows(tmp_path, monkeypatch, make, count):
    """A 16 x 16 px image in a 40 MB file (a 1 GB one in a watched folder took the daemon 1 GB): Pillow holds the
    metadata it reads, so the decoder reads at most the memory the pixel budget allows one frame (at least 16 MB)."""
    path = tmp_path / "padded.img"
    path.write_bytes(make(count, 1 << 20) if make is png_with_private_chunks else make(count))
    assert path.stat().st_size > 40 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            decode_image(path, max_pixels=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot decode image (reading it took over 17 MB for one frame within the "
                              "pixel budget") and "\n" not in message
    assert peak < 24 << 20, f"{peak / 2**20:.0f} MB held while reading"
    monkeypatch.setenv("ADTK_MAX_PIXELS", "256")  # the header-only look (the build's --size auto) reads as far
    with pytest.raises(DataError, match=r"cannot read the image header \(metadata far beyond any real image's\)"):
        read_image_size(path)
    monkeypatch.delenv("ADTK_MAX_PIXELS")
    # a budget of 128 MB reads it all (a JPEG twice: its markers, then libjpeg from the start)
    assert decode_image(path, max_pixels=4_000_000).shape == (16, 16, 3)


def test_a_multi_page_tiff_larger_than_the_read_limit_decodes_its_first_page(tmp_path):
    """Only what is read counts: the pages after the first are never read, however large."""
    first = Image.fromarray(GRADIENT[:16, :16])
    big = Image.new("L", (4200, 4200), 9)  # 17.6 MB uncompressed, over the 16 MB the budget below allows
    first.save(tmp_path / "stack.tif", save_all=True, append_images=[big])
    assert (tmp_path / "stack.tif").stat().st_size > 16 << 20
    image = decode_image(tmp_path / "stack.tif", max_pixels=256)
    assert np.array_equal(image[:, :, 0], GRADIENT[:16, :16])


# ---- PNM headers that Pillow would parse a byte at a time


@pytest.mark.parametrize("padding", [b"#" + b"x" * (4 << 20) + b"\n", b"#\n" * (2 << 20), b" " * (4 << 20)],
                         ids=["one-long-comment", "many-comments", "blank-space"])
def test_a_pnm_header_padded_to_megabytes_is_refused_at_once(padding):
    """30 MB of comment before a PGM's width took 25 s of a daemon's CPU for one POST /predict (Pillow reads the
    header a byte at a time); 4 MB took ~3 s and then decoded."""
    data = b"P5\n" + padding + b"16 16\n255\n" + GRADIENT[:16, :16].tobytes()
    tic = time.perf_counter()
    with pytest.raises(DataError) as caught:
        decode_image(data, "padded.pgm")
    assert time.perf_counter() - tic < 0.5
    assert str(caught.value).startswith("padded.pgm: cannot decode image (a PNM header that does not end within its "
                                        "first 64 KB")


def test_a_large_pnm_with_a_commented_header_decodes():
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)  # 360 KB of raster after the header
    for header in (b"P6\n# written by a camera\n400 300\n255\n", b"P6 400\t300 # the size\n255\n"):
        assert np.array_equal(decode_image(header + pixels.tobytes()), pixels)


# ---- refusals that read alike and name the problem


def test_one_pixel_over_the_budget_says_by_how_much():
    """It read '1000x1001 px = 1.0 MP is over the pixel budget of 1.0 MP'."""
    at, over = (Image.new("L", (1000, rows), 80) for rows in (1000, 1001))
    encoded = []
    for image in (at, over):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    assert decode_image(encoded[0], max_pixels=1_000_000).shape == (1000, 1000, 3)
    with pytest.raises(DataError, match=r"declared size 1000x1001 px = 1,001,000 px is over the pixel budget of "
                                        r"1,000,000 px \(--max-pixels"):
        decode_image(encoded[1], max_pixels=1_000_000)
    with pytest.raises(DataError, match=r"frame of 1000x1001 px = 1,001,000 px is over the pixel budget of 1,000,000"):
        check_frame_pixels(1000, 1001, "frame", 1_000_000)
    with pytest.raises(DataError, match=r"= 16.0 MP is over the pixel budget of 1.0 MP"):  # far over: megapixels
        check_frame_pixels(4000, 4000, "frame", 1_000_000)


def test_pillow_messages_in_bytes_and_bare_codec_codes_read_as_words():
    """'b'Token too long found in data: 99999999999'' (a bytes repr) and 'decoder error -2' reached users."""
    with pytest.raises(DataError) as caught:
        decode_image(b"P2\n16 16\n255\n" + b"99999999999999999999\x1b[31m " * 256, "a.pgm")
    assert "(Token too long found in data: 99999999999)" in str(caught.value) and "b'" not in str(caught.value)
    with pytest.raises(DataError, match=r"a.pfm: cannot decode image \(a colour PFM \(PF\): not supported, grey PFM"):
        decode_image(b"PF\n16 16\n-1.0\n" + bytes(16 * 16 * 12), "a.pfm")
    broken = bytearray(tiled_tiff(32, 32, 32, GRADIENT))
    broken[-20:] = b"\xff" * 20  # the deflate stream's end, corrupt
    with pytest.raises(DataError, match=r"cannot decode image \((corrupt or cut-off compressed data|truncated)"):
        decode_image(bytes(broken), "a.tif")


def test_a_caller_opened_image_that_is_cut_off_is_named_cut_off_not_an_unsupported_mode(tmp_path):
    """Image.open reads the header only: the caller's image failed in the mode conversion, which said 'unsupported
    image mode 'RGB': image file is truncated ...; convert it to RGB first'."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(tmp_path / "cut.png") as opened, pytest.raises(DataError) as caught:
        pillow_image_to_rgb(opened, "frame 0")
    assert str(caught.value) == "frame 0: cannot decode image (truncated file); check the file it was opened from"


# ---- the watched folder goes on


def test_a_watched_folder_skips_a_tile_bomb_by_name_and_scores_the_next_frame(tmp_path):
    (tmp_path / "a_bomb.tif").write_bytes(tiled_tiff(32, 32, 1024, np.zeros((1024, 1024), np.uint8)))
    Image.fromarray(GRADIENT).save(tmp_path / "b_good.png")
    source, stop = FolderSource(tmp_path, poll_s=0.01, max_pixels=100_000), threading.Event()
    deadline = threading.Timer(10.0, stop.set)
    deadline.start()
    frames = []
    for frame in source.frames(FrameCounter(), stop):
        frames.append(frame)
        if len(frames) == 2:
            break
    deadline.cancel()
    assert [frame.source.rsplit("/", 1)[-1] for frame in frames] == ["a_bomb.tif", "b_good.png"]
    assert frames[0].image is None and "TIFF tiles of 1024x1024 px" in frames[0].error
    assert frames[0].error.endswith("skipped; the daemon goes on with the next frame")
    assert frames[1].image is not None and frames[1].image.shape == (32, 32, 3)
