"""Decoding image and mask files to uint8 RGB / bool arrays (numpy + Pillow only).

Part of the runtime so that the device can score image paths without the offline toolkit; the toolkit's
data loading (adtk.toolkit.data) uses the same functions, so training and deployment decode alike.
Pillow is needed only here: the runtime imports this module only when it is given paths.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from adtk.runtime.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)
"""File extensions (lower case) that count as images; matched case-insensitively."""

MASK_THRESHOLD = 127
"""Mask pixels > this value are defective: real masks have soft (anti-aliased) edges."""

SKIP_BAD_HINT = "remove it or pass --skip-bad"

# Pillow's switch for accepting truncated files is a module global; when some other library has
# switched it on, decoding flips it off under this lock so a truncated file always fails.
_truncation_switch_lock = threading.Lock()


# --------------------------------------------------------------------------------------------
# Decoding single files
# --------------------------------------------------------------------------------------------


def _open_fully_decoded(path: Path, what: str, hint: str) -> Image.Image:
    """Open ``path`` and decode every pixel now, so that corrupt/truncated files fail here.

    Returns the Pillow image with EXIF orientation applied. Raises DataError
    ``"<path>: cannot decode <what> (<reason>); <hint>"``.
    """

    def fail(reason: str) -> DataError:
        return DataError(f"{path}: cannot decode {what} ({reason}); {hint}")

    try:
        size_bytes = path.stat().st_size
    except FileNotFoundError:
        raise fail("file not found") from None
    except OSError as error:
        raise fail(f"cannot read file: {error.strerror or error}") from None
    if not path.is_file():
        raise fail("not a file")
    if size_bytes == 0:
        raise fail("empty file, 0 bytes")

    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        # The usual case: no lock, so threads can decode in parallel (Pillow releases the GIL).
        return _decode_strictly(path, fail)
    with _truncation_switch_lock:
        # Someone switched on Pillow's global "accept truncated files"; switch it off while we
        # decode (serialised: rare) so that a truncated file still fails, then put it back.
        previous_switch = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            return _decode_strictly(path, fail)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous_switch


def _decode_strictly(path: Path, fail: Callable[[str], DataError]) -> Image.Image:
    """Decode all pixels of ``path`` now and apply EXIF orientation; map decoder errors to ``fail``."""
    try:
        with Image.open(path) as opened:
            # load() inside the try: Image.open only reads the header, pixels decode lazily.
            opened.load()
            return _apply_exif_orientation(opened)
    except UnidentifiedImageError:
        raise fail("unrecognised format: not an image, or its header is corrupt or cut off") from None
    except Image.DecompressionBombError as error:
        raise fail(f"too large: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        message = str(error)
        reason = "truncated file" if "truncat" in message.lower() else message or type(error).__name__
        raise fail(reason) from None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """A copy of ``image`` rotated/flipped as its EXIF orientation tag says (detached from the file).

    Cameras store the orientation in EXIF instead of rotating the pixels; applying it makes an
    image and its mask (drawn on the displayed image) line up.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not make good pixels unusable
        return image.copy()


def _to_rgb_uint8(image: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to uint8 RGB [H, W, 3].

    * 16-bit ("I;16*", and "I", whose values are taken to be 0..65535 and clipped to it):
      value / 257 rounded, so 65535 -> 255 and 257*k -> k (a rescale, not a clip).
    * float ("F"): taken as 0..1 when every finite value is <= 1, else as 0..255; NaN -> 0.
    * alpha (LA, RGBA, PA, P with transparency): composited over black, because the colour
      stored under transparent pixels is undefined (often editor garbage) and black is stable.
    * everything else (1, L, P, CMYK, YCbCr, ...): Pillow's convert("RGB").
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        values = np.where(np.isfinite(values), values, 0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        gray = np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or (
        mode == "P" and "transparency" in image.info
    )
    try:
        if has_alpha:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
            alpha = rgba[:, :, 3:4]
            rgb = (rgba[:, :, :3] * alpha + 127) // 255
            return np.ascontiguousarray(rgb.astype(np.uint8))
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except (ValueError, OSError) as error:
        raise DataError(
            f"{path}: cannot decode (unsupported image mode {mode!r}: {error}); {SKIP_BAD_HINT}"
        ) from None


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as uint8 RGB.

    Any size, any mode (see :func:`_to_rgb_uint8` for the conversions); the EXIF orientation is
    applied; multi-frame files (GIF, multi-page TIFF) give their first frame.

    Returns:
        np.ndarray uint8 [H, W, 3], C-contiguous.

    Raises:
        DataError: missing, empty, corrupt, truncated or non-image file, e.g.
            ``train/good/0042.png: cannot decode (truncated file); remove it or pass --skip-bad``.
    """
    path = Path(path)
    image = _open_fully_decoded(path, "image", SKIP_BAD_HINT)
    rgb = _to_rgb_uint8(image, path)
    # Pillow hands out read-only buffers; callers (torch.from_numpy among them) expect a writable array.
    return rgb if rgb.flags.writeable else rgb.copy()


def read_mask(
    path: str | Path, expected_hw: tuple[int, int], image_path: str | Path | None = None
) -> np.ndarray:
    """Read a defect mask as a boolean array the size of its image.

    Pixels > 127 are defective (masks have soft edges); a multi-channel mask uses the max over
    its channels (an RGB(A) mask may be drawn in any colour; alpha is composited over black).

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
    image = _open_fully_decoded(path, "mask", hint)
    rgb = _to_rgb_uint8(image, path)
    mask_hw = rgb.shape[:2]
    expected_height, expected_width = int(expected_hw[0]), int(expected_hw[1])
    if mask_hw != (expected_height, expected_width):
        image_name = f"its image {image_path}" if image_path is not None else "its image"
        raise DataError(
            f"{path}: mask is {mask_hw[1]}x{mask_hw[0]} px (width x height) but {image_name} is "
            f"{expected_width}x{expected_height} px; a mask must be the same size as its image"
        )
    return rgb.max(axis=2) > MASK_THRESHOLD


def expand_image_paths(paths) -> list[tuple[Path, Path]]:
    """Files and folders (searched recursively, hidden entries skipped, sorted) -> [(image path, name)],
    where name is the path relative to the folder given (or the file name), for naming outputs."""
    found: list[tuple[Path, Path]] = []
    for given in map(Path, paths):
        if given.is_dir():
            images = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(given).parts))
            if not images:
                raise DataError(f"{given}: no images in this folder ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            found += [(p, p.relative_to(given)) for p in images]
        else:
            found.append((given, Path(given.name)))
    return found
