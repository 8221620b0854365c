"""Raw pixels -> the uint8 RGB [H, W, 3] frame every model takes (numpy only).

The last step of every input path: the image decoder (adtk.runtime.images) ends here, and raw frames
(camera and stream frames, arrays given to `Detector.predict`) go through `to_rgb_frame` too, so one
picture gives one frame whichever way it arrives. The documented conversions:

* 16-bit samples (uint16): scaled by the container's full range, value / 257 rounded (65535 -> 255,
  257 * k -> k). 12-bit (or 10-bit) data must fill the 16-bit range, as the PNG and TIFF specifications
  require of their writers (a 12-bit sample v is stored as v << 4 | v >> 8); 12-bit values left in the
  low bits of the container (0..4095) decode as a dark image (0..16), exactly as every viewer shows them.
* float samples: NaN or infinite values are refused (a DataError, never a silent score); values are taken
  as 0..1 when every value is <= 1, else as 0..255; clipped to that range.
* alpha (2 or 4 channels): composited over black, because the colour stored under transparent pixels is
  undefined (often editor garbage) and black is stable.
* one channel (or [H, W]): grey, repeated into R, G and B.
"""

from __future__ import annotations

import os

import numpy as np

from adtk.runtime.errors import DataError


def scale_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Samples of any supported dtype -> uint8 with the documented scaling (see the module docstring)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        # round(v / 257) in integers: v / 257 never ends in exactly .5 (257 is odd), so no tie to break
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype.kind == "f":
        if array.size and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise DataError(f"{name}: {bad} pixel value(s) are NaN or infinite; a float image must hold finite "
                            "values (0..1 or 0..255)")
        values = array.astype(np.float32, copy=False)
        scale = np.float32(255.0) if values.size and values.max() <= 1.0 else np.float32(1.0)
        return np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)
    raise DataError(f"{name}: pixels of type {array.dtype} are not supported (uint8, uint16 or float)")


def to_rgb_frame(array: np.ndarray, name: str, batch: bool = False) -> np.ndarray:
    """uint8 [H, W], [H, W, 1|2|3|4] -> C-contiguous uint8 RGB [H, W, 3]; alpha composited over black.
    batch=True: uint8 [B, H, W, 1|2|3|4] -> [B, H, W, 3], each frame converted exactly as one frame is (the
    same rules for one frame and a batch, so a grey or RGBA batch scores as its frames given one by one)."""
    if array.dtype != np.uint8:
        raise DataError(f"{name}: expected uint8 pixels (0..255), got {array.dtype}; convert with "
                        "np.clip(x, 0, 255).astype(np.uint8) if the values are in that range")
    if array.ndim == 2 and not batch:
        array = array[:, :, None]
    if array.ndim != (4 if batch else 3) or array.shape[-1] not in (1, 2, 3, 4):
        expected = "frames [B, H, W, C]" if batch else "an image [H, W, C]"
        raise DataError(f"{name}: expected {expected} with C = 3 (RGB), 1 (grey), 2 (grey + alpha) or 4 (RGBA); "
                        f"got shape {list(array.shape)}")
    channels = array.shape[-1]
    if channels in (2, 4):  # grey + alpha, RGB + alpha
        alpha = array[..., -1:].astype(np.uint16)
        array = ((array[..., :-1].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


MIN_FRAME_SIDE_PX = 16
"""The shortest side a frame may have: smaller ones are refused by the runtime (`Detector.predict`) and by the
toolkit's loaders (training, calibration and test images) alike."""


def check_frame_side(width: int, height: int, source: str, min_side_px: int = MIN_FRAME_SIDE_PX,
                     hint: str | None = None) -> None:
    """Refuse a frame whose shorter side is under min_side_px, naming `source` (DataError; `hint` appended)."""
    if min(width, height) < min_side_px:
        raise DataError(f"{source}: image of {width}x{height} px is too small ({min_side_px} px minimum)"
                        + (f"; {hint}" if hint else ""))

MAX_PIXELS_ENV = "ADTK_MAX_PIXELS"
# Peak bytes per declared pixel while one frame is decoded and scored: the decoded buffer (up to 8 for
# 16-bit RGBA), its orientation/RGB copies (~6) and the graph's float32 input before it resizes (12+).
# Measured at 26-30 bytes/px for a 16-bit RGBA PNG through decode + predict with onnxruntime's arena off.
PEAK_BYTES_PER_PIXEL = 32


def default_max_pixels(memory_bytes: int | None = None) -> int:
    """The default pixel budget of one frame: $ADTK_MAX_PIXELS, else 1/8 of this machine's physical memory
    at PEAK_BYTES_PER_PIXEL (an 8 GB Jetson: 33.5 MP, e.g. 6,700 x 5,000 px, ~1 GB at the peak),
    clamped to 4..100 MP. The device the runtime runs on IS the target, so its memory is the measure."""
    configured = os.environ.get(MAX_PIXELS_ENV)
    if configured:
        try:
            value = int(configured)
        except ValueError:
            raise DataError(f"${MAX_PIXELS_ENV}={configured!r}: expected a whole number of pixels") from None
        if value < 256:
            raise DataError(f"${MAX_PIXELS_ENV}={value}: a budget under 256 px cannot fit any frame")
        return value
    if memory_bytes is None:
        from adtk.runtime.memory import physical_memory_bytes

        memory_bytes = physical_memory_bytes()
    return int(min(max(memory_bytes // 8 // PEAK_BYTES_PER_PIXEL, 4_000_000), 100_000_000))


def pixel_budget(max_pixels: int | None) -> int:
    """The budget in force: the one given (--max-pixels, a Detector's), else default_max_pixels()."""
    return default_max_pixels() if max_pixels is None else int(max_pixels)


def pixel_counts(pixels: int, budget: int) -> tuple[str, str]:
    """`pixels` and `budget` in words for a refusal: megapixels, or exact counts where one decimal of a megapixel
    would print the two alike (1000x1001 px is over a budget of 1,000,000 px, not "1.0 MP over 1.0 MP")."""
    size, limit = f"{pixels / 1e6:.1f} MP", f"{budget / 1e6:.1f} MP"
    return (f"{pixels:,} px", f"{budget:,} px") if size == limit else (size, limit)


def check_frame_pixels(width: int, height: int, name: str, max_pixels: int | None) -> None:
    """A frame already in memory still costs ~10x its size inside the graph (float input before the
    resize): frames over the pixel budget are refused like encoded images are."""
    budget = pixel_budget(max_pixels)
    if width * height > budget:
        size, limit = pixel_counts(width * height, budget)
        raise DataError(f"{name}: frame of {width}x{height} px = {size} is over the "
                        f"pixel budget of {limit} (--max-pixels / ${MAX_PIXELS_ENV})")
