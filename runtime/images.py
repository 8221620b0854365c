"""Decoding image and mask files to uint8 RGB / bool arrays (numpy + Pillow only): THE decoder.

Every encoded image adtk scores goes through `decode_image`: a file given to `Detector.predict`, a file
in a watched folder, the body of `POST /predict`, and the toolkit's training data (adtk.toolkit.data uses
the same functions, so training and deployment decode alike). Raw frames (arrays: cameras, streams,
library callers) go through `adtk.runtime.pixels.to_rgb_frame`, the same conversion this decoder ends in.
Pillow is needed only here: the runtime imports this module only when it is given encoded images.

Hostile input is expected (a daemon decodes what the network sends):

* Only the formats a camera or a vision pipeline writes are opened (PNG, JPEG/MPO, BMP, TIFF, WebP, GIF,
  PPM); Pillow's other ~35 parsers (EPS runs Ghostscript, PSD, ICO, FITS, ...) are never tried.
* A pixel budget: the header's declared width x height is checked against `max_pixels` BEFORE a single
  pixel is decoded, so a 150 KB PNG that declares 13,000 x 13,000 px is refused without allocating
  its 500 MB+. The default is sized from the memory of the machine it runs on (`default_max_pixels`).
  Pillow's own Image.MAX_IMAGE_PIXELS is a process-wide global that only warns below 2x its value and
  is sized for desktop machines; it stays as a second line, never the budget.
* Truncated files always fail (never half-grey frames), whatever Pillow's global switch says.
* Memory and time that the declared size does not show are bounded too: a file is read only as far as the
  memory the pixel budget allows one frame (`read_limit_bytes`: metadata is held in memory as it is read), a
  TIFF tile (decoded whole, whatever the image's size) must fit the budget, and a PNM header must end within
  its first 64 KB (Pillow parses it a byte at a time).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from adtk.runtime.errors import DataError, one_line
from adtk.runtime.pixels import (
    MAX_PIXELS_ENV,
    PEAK_BYTES_PER_PIXEL,
    default_max_pixels,
    pixel_budget,
    pixel_counts,
    scale_to_uint8,
    to_rgb_frame,
)

DECODABLE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF", "PPM")
"""Pillow format plugins the decoder may use (MPO: the multi-picture JPEG many cameras write)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".png", ".apng",
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo",
    ".bmp",
    ".tif", ".tiff",
    ".webp",
    ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".pfm",  # Pillow's PPM plugin: colour, grey (8/16-bit), 1-bit, float
})
"""File extensions (lower case) that count as images when a folder is listed (data sets, `adtk predict DIR`, a
watched folder); matched case-insensitively. Exactly the extensions Pillow registers for DECODABLE_FORMATS, so a
folder lists every file the decoder would open if it were named directly, and no file it always refuses (.jp2,
.tga, .psd: their plugins are not in DECODABLE_FORMATS). Written out rather than read from Pillow so that every
Pillow version lists the same files; tests/toolkit/test_image_extensions.py checks it against Pillow's registry.
Multi-frame files (animated GIF/PNG, multi-page TIFF, MPO) give their first frame, as `decode_image` says."""

MASK_THRESHOLD = 127
"""Mask pixels > this value are defective: real masks have soft (anti-aliased) edges."""

SKIP_BAD_HINT = "remove it or pass --skip-bad"

# Pillow's switch for accepting truncated files is a module global; when some other library has
# switched it on, decoding flips it off under this lock so a truncated file always fails.
_truncation_switch_lock = threading.Lock()


# --------------------------------------------------------------------------------------------
# Decoding single images
# --------------------------------------------------------------------------------------------


def _open_fully_decoded(source: Path | bytes, name: str, what: str, hint: str,
                        max_pixels: int | None) -> Image.Image:
    """Open ``source`` (a path or the encoded bytes), check its declared size against the pixel budget,
    then decode every pixel now, so that corrupt/truncated files fail here.

    Returns the Pillow image with EXIF orientation applied. Raises DataError
    ``"<name>: cannot decode <what> (<reason>); <hint>"``.
    """

    def fail(reason: str) -> DataError:
        return DataError(f"{name}: cannot decode {what} ({reason}); {hint}")

    if isinstance(source, Path):
        from adtk.runtime.regular_files import NotARegularFile, open_regular

        try:
            size_bytes = source.stat().st_size
        except FileNotFoundError:  # nothing to remove and nothing to skip: say what is wrong with the name
            raise DataError(f"{name}: file not found; it does not exist") from None
        except OSError as error:
            raise fail(f"cannot read file: {error.strerror or error}") from None
        if not source.is_file():
            raise fail("not a file")
        if size_bytes == 0:
            raise fail("empty file, 0 bytes")
        try:  # one descriptor from here on: a name swapped for a FIFO since the look above cannot block the reader
            stream = open_regular(source)
        except NotARegularFile:
            raise fail("not a file") from None
        except FileNotFoundError:  # removed since the look above
            raise DataError(f"{name}: file not found; it does not exist") from None
        except OSError as error:
            raise fail(f"cannot read file: {error.strerror or error}") from None
        budget = pixel_budget(max_pixels)
        with stream:
            # read through a counter: bytes (HTTP bodies, library callers) are in memory already, a file is not
            bounded = io.BufferedReader(_BoundedReads(stream.raw, read_limit_bytes(budget)))
            return _decode_switching_truncation_off(bounded, fail, budget)
    if len(source) == 0:
        raise fail("empty file, 0 bytes")
    return _decode_switching_truncation_off(io.BytesIO(source), fail, pixel_budget(max_pixels))


READ_LIMIT_FLOOR_BYTES = 16 << 20
"""The least `read_limit_bytes` allows whatever the budget: room for any real image's metadata (ICC profiles, EXIF
with its thumbnail, XMP: kilobytes to a few MB) under the smallest --max-pixels."""


def read_limit_bytes(max_pixels: int) -> int:
    """How much of one file the decoder may read: the memory the pixel budget allows one frame (PEAK_BYTES_PER_PIXEL
    a pixel, more than the largest uncompressed frame takes: 16-bit RGBA, 8 bytes). Pillow holds what it reads of
    the metadata (a PNG's private chunks, a JPEG's APP segments, a GIF's comments) in memory: a 64x64 px PNG or JPEG
    of 1 GB took 1 GB, so a file in a watched folder could take the daemon's memory whatever its pixel budget.
    Only what is read counts: the other pages of a multi-page TIFF are not, however large the file."""
    return max(int(max_pixels) * PEAK_BYTES_PER_PIXEL, READ_LIMIT_FLOOR_BYTES)


class _ReadLimitReached(Exception):
    """Not an OSError or ValueError: Pillow's parsers catch those, and this must reach the decoder."""


class _BoundedReads(io.RawIOBase):
    """A file's raw stream that refuses to read past `limit` bytes in all (re-reads count: Pillow seeks back to
    parse, and each read is memory or time). fileno() is the file's, so libtiff reads its strips itself, as it does
    from any file."""

    def __init__(self, raw, limit: int):
        super().__init__()
        self._raw, self.limit, self.bytes_read = raw, limit, 0

    @property
    def over_limit(self) -> bool:
        return self.bytes_read > self.limit

    def readinto(self, buffer) -> int | None:
        if self.over_limit:  # every read after the first refusal refuses again: none is swallowed for good
            raise _ReadLimitReached()
        count = self._raw.readinto(buffer)
        self.bytes_read += count or 0
        if self.over_limit:
            raise _ReadLimitReached()
        return count

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()


def _over_read_limit(source) -> str | None:
    """Why decoding `source` stopped, if it was the read limit of `_BoundedReads` (whatever error Pillow raised)."""
    bounded = getattr(source, "raw", None)
    if isinstance(bounded, _BoundedReads) and bounded.over_limit:
        return (f"reading it took over {bounded.limit / 1e6:.0f} MB for one frame within the pixel budget "
                f"(--max-pixels / ${MAX_PIXELS_ENV}): metadata far beyond any real image's; refused before it fills "
                "memory")
    return None


def _decode_switching_truncation_off(stream, fail: Callable[[str], DataError], budget: int) -> Image.Image:
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        # The usual case: no lock, so threads can decode in parallel (Pillow releases the GIL).
        return _decode_strictly(stream, fail, budget)
    with _truncation_switch_lock:
        # Someone switched on Pillow's global "accept truncated files"; switch it off while we
        # decode (serialised: rare) so that a truncated file still fails, then put it back.
        previous_switch = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            return _decode_strictly(stream, fail, budget)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous_switch


def _registered_formats() -> tuple[str, ...]:
    """DECODABLE_FORMATS that this Pillow has (Image.open raises KeyError for a name not registered yet)."""
    Image.init()  # registers every plugin once; later calls return at once
    return tuple(name for name in DECODABLE_FORMATS if name in Image.OPEN)


def check_pixel_budget(width: int, height: int, max_pixels: int, fail: Callable[[str], DataError]) -> None:
    """Refuse a declared size over the budget (or a degenerate one) before anything is allocated for it."""
    if width <= 0 or height <= 0:
        raise fail(f"declared size {width}x{height} px is empty")
    if width * height > max_pixels:
        size, limit = pixel_counts(width * height, max_pixels)
        raise fail(f"declared size {width}x{height} px = {size} is over the pixel budget of {limit} "
                   f"(--max-pixels / ${MAX_PIXELS_ENV}); downscale it before sending")


# Pillow's PNG plugin refuses a text (tEXt/zTXt/iTXt) or colour-profile (iCCP) chunk that decompresses past
# PngImagePlugin.MAX_TEXT_CHUNK, or text chunks past MAX_TEXT_MEMORY in all: its messages name those internals
_METADATA_LIMITS = ("MAX_TEXT_CHUNK", "MAX_TEXT_MEMORY")
_BMP_INFO_HEADER_SIZES = (40, 52, 56, 64, 108, 124)  # the BMP headers with a signed 32-bit width at offset 18


def _malformed_size(source) -> str | None:
    """Why a header's enormous declared size is no size at all, or None: a BMP's width is a signed 32-bit field
    that Pillow reads unsigned, so a negative one (a corrupt or crafted header) reads as ~4.3 billion px."""
    try:  # the open file the decoder reads (a file's stream or the bytes' BytesIO): read its start, put it back
        position = source.tell()
        source.seek(0)
        head = source.read(26)
        source.seek(position)
    except (OSError, ValueError):
        return None
    if len(head) == 26 and head[:2] == b"BM":
        header_size, width = struct.unpack_from("<Ii", head, 14)
        if header_size in _BMP_INFO_HEADER_SIZES and width <= 0:
            return f"malformed BMP header: width {width} px"
    return None


_TIFF_PLANAR_CONFIGURATION, _TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT = 284, 258, 339
_SIGNED_INTEGER_SAMPLES = 2  # TIFF SampleFormat


def _misread_tiff_layout(opened: Image.Image) -> str | None:
    """Why Pillow would decode this TIFF into wrong pixels without an error, or None. Two layouts it reads silently
    wrong: 16-bit samples in separate colour planes, uncompressed (each plane is read as 8-bit samples: the planes
    mix into noise), and signed 8-bit samples (read as unsigned: -1 becomes 255)."""
    try:
        tags = opened.tag_v2
        planar = tags.get(_TIFF_PLANAR_CONFIGURATION, 1)
        bits = tags.get(_TIFF_BITS_PER_SAMPLE, (1,))
        bits = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)
        sample_format = tags.get(_TIFF_SAMPLE_FORMAT, (1,))
        sample_format = tuple(sample_format) if isinstance(sample_format, (tuple, list)) else (sample_format,)
    except Exception:  # noqa: BLE001 - a malformed tag: Pillow's own decoding decides
        return None
    compressed = opened.info.get("compression", "raw") != "raw"
    if planar == 2 and not compressed and any(b != 8 for b in bits):
        return (f"TIFF with {'/'.join(map(str, sorted(set(bits))))}-bit samples in separate colour planes, "
                "uncompressed: not supported (its planes would decode mixed up); save it with the colour planes "
                "interleaved (PlanarConfiguration 1) or compressed (LZW, deflate)")
    if _SIGNED_INTEGER_SAMPLES in sample_format and all(b == 8 for b in bits):
        return ("TIFF with signed 8-bit samples (SampleFormat 2): not supported (they would decode as unsigned, "
                "-1 as 255); save it as unsigned 8- or 16-bit")
    return None


_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323


def _tiff_tiles_over_budget(opened: Image.Image, max_pixels: int) -> str | None:
    """Why a tiled TIFF is refused, or None: libtiff decodes one whole tile at a time, into a buffer of the size the
    header gives its tiles, which need not be the image's. A 780 KB file declaring a 64x64 px image in 16384x16384 px
    tiles (a deflate bomb in the one tile) took 805 MB and 5 s; a 32 MB request could ask for tens of GB."""
    try:
        width = int(opened.tag_v2.get(_TIFF_TILE_WIDTH, 0) or 0)
        length = int(opened.tag_v2.get(_TIFF_TILE_LENGTH, 0) or 0)
    except Exception:  # noqa: BLE001 - a malformed tag: libtiff refuses the file itself
        return None
    if width * length <= max_pixels:
        return None
    size, limit = pixel_counts(width * length, max_pixels)
    return (f"TIFF tiles of {width}x{length} px = {size} each are over the pixel budget of {limit} "
            f"(--max-pixels / ${MAX_PIXELS_ENV}; a tile is decoded whole, whatever the image's size); save it in "
            "strips or with smaller tiles")


_PNM_HEADER_BYTES = 64 * 1024
_PNM_WHITESPACE = b" \t\n\r\x0b\x0c"  # Pillow's PPM plugin's
_PNM_MAGIC = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"Pf", b"PF")


def _overlong_pnm_header(source) -> str | None:
    """Why a PNM/PFM file is refused before Pillow parses its header, or None. Pillow reads that header a byte at a
    time in Python, comments and blank space included: 30 MB of comment before the width took 25 s of a daemon's
    CPU per request. A real header (magic, width, height, maxval, a comment or two) takes a few dozen bytes."""
    try:
        position = source.tell()
        source.seek(0)
        magic = source.read(2)  # every other format stops here: its first 64 KB are not read twice
        head = magic + source.read(_PNM_HEADER_BYTES - 2) if magic in _PNM_MAGIC else b""
        source.seek(position)
    except (OSError, ValueError):
        return None
    if len(head) < _PNM_HEADER_BYTES:
        return None  # not a PNM, or short enough that Pillow parses it at once
    needed = 2 if head[1:2] in (b"1", b"4") else 3  # width, height (and maxval or scale)
    index, tokens, in_token = 2, 0, False
    while index < len(head):
        byte = head[index:index + 1]
        if byte == b"#":  # a comment runs to the end of its line, and a token goes on after it (as Pillow reads)
            ends = [end for end in (head.find(b"\n", index), head.find(b"\r", index)) if end >= 0]
            if not ends:
                break
            index = min(ends) + 1
            continue
        if byte in _PNM_WHITESPACE:
            if in_token:
                tokens, in_token = tokens + 1, False
                if tokens == needed:
                    return None
        else:
            in_token = True
        index += 1
    return (f"a PNM header that does not end within its first {_PNM_HEADER_BYTES // 1024} KB (padded with comments "
            "or blank space; a real one takes a few dozen bytes)")


def _unreadable_variant(source) -> str | None:
    """For a file no allowed plugin opened, what one of them recognised in its first bytes, or None: a TIFF whose
    pixel layout Pillow has no mode for (float RGB, 64-bit samples: OpenCV writes float RGB TIFFs), or a header of
    a known format that is corrupt or cut off."""
    try:
        position = source.tell()
        source.seek(0)
        prefix = source.read(16)
    except (OSError, ValueError):
        return None
    if prefix[:2] == b"PF":  # Pillow's PPM plugin opens grey PFM (Pf) only
        return "a colour PFM (PF): not supported, grey PFM (Pf) is; save it as a 16-bit PNG or TIFF"
    try:
        for name in _registered_formats():
            factory, accept = Image.OPEN[name]
            if accept is None or accept(prefix) is not True:
                continue
            label = {"MPO": "JPEG", "WEBP": "WebP"}.get(name, name)
            if name == "TIFF":
                try:  # it failed inside Image.open; parsed again only to learn why
                    source.seek(0)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        factory(source, "").close()
                except Exception as error:  # noqa: BLE001 - only its message is used, as Image.open ignored it
                    if str(error) == "unknown pixel mode":
                        return ("a TIFF whose pixel layout this decoder does not support (e.g. float RGB or 64-bit "
                                "samples); save it as 8- or 16-bit integer or single-channel float32")
            return f"a {label} file whose header is corrupt or cut off"
    finally:
        try:
            source.seek(position)
        except (OSError, ValueError):
            pass
    return None


_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, TypeError, IndexError, KeyError,
                   ZeroDivisionError, OverflowError, AttributeError)
"""What Pillow's parsers raise on malformed files (fuzzed files found each one)."""

_CODEC_STATUS = {-2: "corrupt or cut-off compressed data", -9: "not enough memory to decode it"}
"""Pillow's codec status codes, which its TIFF plugin reports as bare 'decoder error -N'."""


def _decoder_reason(error: BaseException) -> str:
    """A parser's exception as the reason of a one-line refusal."""
    if isinstance(error, MemoryError):
        return "not enough memory to decode it"
    argument = error.args[0] if error.args else None
    # some of Pillow's messages are bytes holding the file's own bytes (the PPM plugin's "Token too long: ..."):
    # as text, with anything unprintable escaped, not as a b'...' repr
    message = one_line(argument.decode("latin-1") if isinstance(argument, bytes) else str(error))
    if any(limit in message for limit in _METADATA_LIMITS):
        return ("oversized metadata chunk: a text or colour-profile chunk that decompresses far beyond any real one; "
                "refused")
    if message.startswith("decoder error "):
        code = message[len("decoder error "):]
        if code.lstrip("-").isdigit() and int(code) in _CODEC_STATUS:
            return f"{_CODEC_STATUS[int(code)]} ({message})"
    return ("truncated file" if "truncat" in message.lower()
            else "corrupt or cut-off WebP data" if message == "could not create decoder object"  # libwebp's
            else message or type(error).__name__)


def _decode_strictly(source, fail: Callable[[str], DataError], max_pixels: int) -> Image.Image:
    """Header -> budget checks -> decode all pixels -> EXIF orientation; map decoder errors to ``fail``."""
    try:
        return _decode_checked(source, fail, max_pixels)
    except _ReadLimitReached:  # raised by any read, Pillow's or the helpers' that name the cause of a failure
        raise fail(_over_read_limit(source) or "read limit reached") from None


def _decode_checked(source, fail: Callable[[str], DataError], max_pixels: int) -> Image.Image:
    try:
        if overlong := _overlong_pnm_header(source):
            raise fail(overlong)
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning above its own global limit: our budget decides; a
            # UserWarning per malformed TIFF/EXIF tag): a hostile file must not write to the daemon's stderr
            warnings.simplefilter("ignore")
            with Image.open(source, formats=_registered_formats()) as opened:
                # Image.open read only the header: nothing of the declared size exists yet.
                if opened.width * opened.height > max_pixels and (malformed := _malformed_size(source)):
                    raise fail(malformed)
                check_pixel_budget(opened.width, opened.height, max_pixels, fail)
                if opened.format == "TIFF" and (misread := (_misread_tiff_layout(opened)
                                                            or _tiff_tiles_over_budget(opened, max_pixels))):
                    raise fail(misread)
                opened.load()  # inside the try: pixels decode lazily, and a truncated stream fails here
                if opened.width * opened.height > max_pixels:  # a plugin that resized on load (JPEG draft)
                    check_pixel_budget(opened.width, opened.height, max_pixels, fail)
                return _apply_exif_orientation(opened)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise fail(_over_read_limit(source) or _unreadable_variant(source)
                   or "unrecognised format: not a PNG, JPEG, BMP, TIFF, WebP, GIF or PPM image, or its header is "
                   "corrupt or cut off") from None
    except Image.DecompressionBombError:  # Pillow's own limit tripped inside Image.open: far over any budget
        raise fail(_malformed_size(source) or f"declared size is over the pixel budget of {max_pixels / 1e6:.1f} MP "
                   "(and over Pillow's decompression-bomb limit); downscale it before sending") from None
    except (MemoryError, *_DECODER_ERRORS) as error:
        raise fail(_over_read_limit(source) or _decoder_reason(error)) from None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """A copy of ``image`` rotated/flipped as its EXIF orientation tag says (detached from the file).

    Cameras store the orientation in EXIF instead of rotating the pixels; applying it makes an
    image and its mask (drawn on the displayed image) line up.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not make good pixels unusable
        return image.copy()


def _to_rgb_uint8(image: Image.Image, name: str, hint: str = SKIP_BAD_HINT) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to uint8 RGB [H, W, 3].

    Pillow turns the rarer modes (1, P, PA, CMYK, YCbCr, LAB, HSV, I;16 variants) into one of
    L / LA / RGB / RGBA / I (32-bit integers) / F (float); `scale_to_uint8` then applies the documented
    scalings (16-bit and float: see adtk.runtime.pixels) and `to_rgb_frame` the alpha compositing
    (over black) that raw frames get too.
    """
    mode = image.mode
    try:
        if mode.startswith("I;16") or mode == "I":
            array = np.asarray(image.convert("I") if mode not in ("I;16", "I") else image)
            if array.dtype == np.int32:  # "I": 16-bit data stored as int32; the documented range is 0..65535
                low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
                if low < 0 or high > 65535:  # a 32-bit or signed TIFF: clipping would saturate it into a flat image
                    raise DataError(f"{name}: cannot decode image (integer pixel values {low}..{high} are outside "
                                    f"the 16-bit range 0..65535: a 32-bit or signed image; convert it to 8- or 16-bit "
                                    f"unsigned); {hint}")
                array = array.astype(np.uint16)
        elif mode == "F":
            array = np.asarray(image)
        elif mode in ("L", "LA", "RGB", "RGBA"):
            array = np.asarray(image)
        elif mode in ("La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
            array = np.asarray(image.convert("RGBA"))
        else:
            array = np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as error:
        raise DataError(
            f"{name}: cannot decode (unsupported image mode {mode!r}: {error}); {hint}"
        ) from None
    return to_rgb_frame(scale_to_uint8(array, name), name)


def pillow_image_to_rgb(image: Image.Image, name: str, max_pixels: int | None = None) -> np.ndarray:
    """An image a caller opened with Pillow -> uint8 RGB [H, W, 3], converted as a decoded file is (any mode: its
    pixels, not its raw buffer: np.asarray of a palette image gives the indices). Not re-oriented: a caller that
    opened the file applies its EXIF orientation or not. Raises DataError for a mode that cannot be converted, or
    pixels that cannot be decoded: Image.open reads only the header, so a corrupt or cut-off file fails here, and
    is named as such (it read "unsupported image mode 'L': decoder error -2")."""

    def fail(reason: str) -> DataError:
        return DataError(f"{name}: cannot decode image ({reason}); check the file it was opened from")

    if getattr(image, "format", None) == "TIFF" and (tiles := _tiff_tiles_over_budget(image, pixel_budget(max_pixels))):
        raise fail(tiles)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except (MemoryError, *_DECODER_ERRORS) as error:
        raise fail(_decoder_reason(error)) from None
    rgb = _to_rgb_uint8(image, name, "convert it to RGB first")
    return rgb if rgb.flags.writeable else rgb.copy()


def decode_image(source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int | None = None,
                 hint: str = SKIP_BAD_HINT) -> np.ndarray:
    """Decode one encoded image (a file path, or the file's bytes) to uint8 RGB [H, W, 3].

    The one decoding path (file, folder, HTTP body, training data). Any of DECODABLE_FORMATS, any mode
    (see :func:`_to_rgb_uint8`); the EXIF orientation is applied; multi-frame files (GIF, multi-page
    TIFF) give their first frame; the declared size must fit ``max_pixels`` (default:
    :func:`default_max_pixels`), checked before decoding.

    Raises:
        DataError: missing, empty, corrupt, truncated, over-budget or non-image input, e.g.
            ``train/good/0042.png: cannot decode image (truncated file); remove it or pass --skip-bad``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "image bytes"
    else:
        data = Path(source)
        name = name or str(data)
    image = _open_fully_decoded(data, name, "image", hint, max_pixels)
    rgb = _to_rgb_uint8(image, name, hint)
    # Pillow hands out read-only buffers; callers (torch.from_numpy among them) expect a writable array.
    return rgb if rgb.flags.writeable else rgb.copy()


_HEADER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, TypeError, IndexError, KeyError,
                  ZeroDivisionError, OverflowError, AttributeError, MemoryError, Image.DecompressionBombError)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as `read_image` returns it (its EXIF orientation applied), from the header
    alone: nothing is decoded or allocated for the declared size. For decisions over many files (the build's
    --size auto); like the decoder, it opens only a regular file (a FIFO cannot block it) and only the allowed
    formats. Raises DataError for a file whose header it cannot read; that file is named (or skipped) again when
    it is decoded."""
    from adtk.runtime.regular_files import open_regular

    try:
        with open_regular(path) as stream, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bounded = io.BufferedReader(_BoundedReads(stream.raw, read_limit_bytes(default_max_pixels())))
            with Image.open(bounded, formats=_registered_formats()) as opened:
                width, height = opened.size
                try:
                    orientation = opened.getexif().get(0x0112)  # EXIF Orientation
                except Exception:  # noqa: BLE001 - a malformed EXIF block: the decoder ignores it too
                    orientation = None
                # 5..8 turn the picture a quarter: the decoder's exif_transpose swaps width and height; Pillow's TIFF
                # plugin reports the turned size already
                if orientation in (5, 6, 7, 8) and opened.format != "TIFF":
                    width, height = height, width
    except (*_HEADER_ERRORS, _ReadLimitReached) as error:
        reason = (error.strerror if isinstance(error, OSError) and error.strerror
                  else "metadata far beyond any real image's" if isinstance(error, _ReadLimitReached)
                  else type(error).__name__)
        raise DataError(f"{path}: cannot read the image header ({reason})") from None
    return width, height


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read one image file as uint8 RGB [H, W, 3] (C-contiguous): `decode_image` of a path."""
    return decode_image(Path(path), max_pixels=max_pixels)


def read_mask(
    path: str | Path, expected_hw: tuple[int, int], image_path: str | Path | None = None,
    threshold: int = MASK_THRESHOLD,
) -> np.ndarray:
    """Read a defect mask as a boolean array the size of its image.

    Pixels > threshold are defective: 127 by default (MVTec masks are 0/255 with soft edges); 0 for data sets
    whose masks mark defects with small label values (VisA's are 0/1, MVTec LOCO's one value per defect).
    A multi-channel mask uses the max over its channels (an RGB(A) mask may be drawn in any colour; alpha is
    composited over black).

    Args:
        path: the mask file.
        expected_hw: (height, width) of the image the mask belongs to.
        image_path: that image, only to name it in the error message.

    Returns:
        np.ndarray bool [H, W].

    Raises:
        DataError: the mask cannot be decoded, or its size differs from expected_hw.
    """
    path = Path(path)
    hint = "replace or remove the mask"
    image = _open_fully_decoded(path, str(path), "mask", hint, None)
    rgb = _to_rgb_uint8(image, str(path))
    mask_hw = rgb.shape[:2]
    expected_height, expected_width = int(expected_hw[0]), int(expected_hw[1])
    if mask_hw != (expected_height, expected_width):
        image_name = f"its image {image_path}" if image_path is not None else "its image"
        raise DataError(
            f"{path}: mask is {mask_hw[1]}x{mask_hw[0]} px (width x height) but {image_name} is "
            f"{expected_width}x{expected_height} px; a mask must be the same size as its image"
        )
    return rgb.max(axis=2) > threshold


def expand_image_paths(paths) -> list[tuple[Path, Path]]:
    """Files and folders (searched recursively, hidden entries skipped, sorted) -> [(image path, name)],
    where name is the path relative to the folder given (or the file name), for naming outputs. In a folder,
    everything named like an image but a folder is listed, a broken link, a link loop or a FIFO too: the decoder
    names it (an error record with --skip-bad) rather than the run leaving it out without a word."""
    found: list[tuple[Path, Path]] = []
    for given in map(Path, paths):
        if given.is_dir():
            images = sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()
                            and not any(part.startswith(".") for part in p.relative_to(given).parts))
            if not images:
                raise DataError(f"{given}: no images in this folder ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            found += [(p, p.relative_to(given)) for p in images]
        else:
            found.append((given, Path(given.name)))
    return found
