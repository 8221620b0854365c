"""One overlay renderer for people: the frame, the anomaly map coloured only where it is above a visible
threshold, the defect region outlined, and a banner with the label and the score. numpy + Pillow only
(no torch, no matplotlib, no OpenCV): `adtk predict --overlays`, the daemon's overlay sink and its device
page all draw with this.

    picture = render_overlay(image, anomaly_map, pred_score=0.83, pred_label=True)   # uint8 [H', W', 3]
    save_png(picture, "out/frame.png")                                               # atomic

Why not a full-frame colour map (jet over everything, as most tools do): a good frame then looks as alarming
as a bad one, and a reader has to compare colours with a colour bar. Here a good frame stays the frame, and
only what lies beyond every held-out good image (anomaly_map > 0.5, the map threshold) is coloured, from
yellow at the threshold to red at the top of the scale, with the defect region (the same 0.5 cut, i.e.
pred_mask at the frame's resolution) outlined in cyan, a colour neither the heat ramp nor most parts use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from adtk.runtime.errors import one_line

MAP_THRESHOLD = 0.5  # anomaly_map's calibrated threshold (the artefact contract: 0.5 = beyond any good image)
MIN_SIDE_PX = 320  # smaller frames are enlarged so that the outline and the banner stay legible
# The frame in an overlay has at most this many pixels: a 16 x 70,000 px frame (a 1 KB PNG) enlarged to the
# 320 px short side would be 1.4 million px wide (the daemon's overlay sink was killed for memory at 23 GB), and
# drawing takes ~64 bytes per pixel, so a larger frame within the pixel budget (up to 100 MP) is drawn smaller
# too: 8 MP, ~0.5 GB at the peak; a 3264 x 2448 camera frame is drawn as it is, a 4K one at 98%.
MAX_DISPLAY_PIXELS = 8_000_000
OUTLINE_RGB = (0, 255, 255)
ANOMALOUS_RGB, GOOD_RGB = (200, 30, 30), (30, 130, 60)


def _heat_colours(strength: np.ndarray) -> np.ndarray:
    """strength in 0..1 (0 = at the threshold, 1 = the top of the map's scale) -> RGB float [.., 3]:
    yellow -> orange -> red, a ramp that reads as 'warmer = worse' without a colour bar."""
    red = np.full_like(strength, 255.0)
    green = 210.0 * (1.0 - strength)
    blue = np.full_like(strength, 0.0)
    return np.stack([red, green, blue], axis=-1)


def _resize_map(anomaly_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    resized = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32), mode="F")
    return np.asarray(resized.resize((size_hw[1], size_hw[0]), Image.BILINEAR), dtype=np.float32)


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """mask moved by (dy, dx), with False shifted in at the edges."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def outline(mask: np.ndarray, width_px: int = 2) -> np.ndarray:
    """The boundary of a bool mask [H, W], `width_px` thick, inside and outside the region (bool [H, W]).

    A few shifted copies rather than scipy.ndimage: the runtime keeps to numpy + Pillow."""
    if not mask.any():
        return np.zeros_like(mask)
    eroded = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        eroded &= _shifted(mask, dy, dx)
    edge = mask & ~eroded
    thick = edge.copy()
    for dy in range(-width_px + 1, width_px):
        for dx in range(-width_px + 1, width_px):
            if dy or dx:
                thick |= _shifted(edge, dy, dx)
    return thick


def _font(size_px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size_px)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # without FreeType: the small bitmap font, still legible


def _draw_centred(draw, text: str, font, x: float, banner_px: int, align_right: bool) -> float:
    """White text centred vertically in the banner, starting (or ending, align_right) at x; -> its right edge.
    Placed from its bounding box rather than with anchors: the bitmap fallback font has no anchors."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    start = x - (right - left) if align_right else x
    draw.text((start - left, (banner_px - (bottom - top)) / 2 - top), text, fill=(255, 255, 255), font=font)
    return start + (right - left)


def display_size_hw(size_hw: tuple[int, int], min_side_px: int = MIN_SIDE_PX,
                    max_pixels: int = MAX_DISPLAY_PIXELS) -> tuple[int, int]:
    """The frame's size in the overlay (below the banner): enlarged so the shorter side is min_side_px, but to
    no more than max_pixels (a long thin frame is enlarged less), and shrunk to max_pixels when larger."""
    height, width = max(1, int(size_hw[0])), max(1, int(size_hw[1]))
    scale = min(max(1.0, min_side_px / min(height, width)), math.sqrt(max_pixels / (height * width)))
    if scale == 1.0:
        return height, width
    return max(1, int(height * scale)), max(1, int(width * scale))  # rounded down: never past max_pixels


def render_overlay(image: np.ndarray, anomaly_map: np.ndarray, pred_score: float, pred_label: bool,
                   visible_threshold: float = MAP_THRESHOLD, caption: str | None = None,
                   min_side_px: int = MIN_SIDE_PX) -> np.ndarray:
    """-> uint8 [H' + banner, W', 3]: the frame (enlarged to min_side_px if smaller) with the map coloured
    above `visible_threshold`, the region above MAP_THRESHOLD outlined, and a banner on top:
    "ANOMALOUS  score 0.83" (red) or "good  score 0.21" (green), scores on the 0..1 scale (0.5 = threshold).

    image: uint8 [H, W, 3] RGB; anomaly_map: float [S, S] in 0..1 (the artefact's normalised map, any size).
    caption: optional second text in the banner (a file name, a frame id).
    """
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    size_hw = display_size_hw(image.shape[:2], min_side_px)
    frame = image if size_hw == image.shape[:2] else np.asarray(
        Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.BILINEAR))
    heat = _resize_map(anomaly_map, size_hw)

    picture = frame.astype(np.float32)
    above = heat > visible_threshold
    if above.any():
        strength = np.clip((heat - visible_threshold) / max(1e-6, 1.0 - visible_threshold), 0.0, 1.0)
        alpha = (0.5 + 0.3 * strength)[..., None] * above[..., None]  # stronger where the map is higher
        picture = picture * (1 - alpha) + _heat_colours(strength) * alpha
    edge = outline(heat > MAP_THRESHOLD, width_px=max(2, round(min(size_hw) / 160)))
    picture[edge] = OUTLINE_RGB

    text = f"{'ANOMALOUS' if pred_label else 'good'}  score {pred_score:.2f}"
    top = banner(size_hw[1], banner_height_px(size_hw), text, ANOMALOUS_RGB if pred_label else GOOD_RGB, caption)
    return np.concatenate([top, np.clip(picture, 0, 255).astype(np.uint8)])


def banner_height_px(size_hw: tuple[int, int]) -> int:
    return max(22, round(min(size_hw) / 11))


def banner(width_px: int, height_px: int, text: str, rgb: tuple[int, int, int], caption: str | None = None):
    """uint8 [height_px, width_px, 3]: `text` in white on `rgb`, and `caption` smaller at the right."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width_px, height_px), rgb)
    draw = ImageDraw.Draw(canvas)
    font = _font(round(height_px * 0.62))
    margin = round(height_px * 0.25)
    text_right = _draw_centred(draw, text, font, margin, height_px, align_right=False)
    if caption:
        # one line, control characters escaped: a file name holding a newline cannot be measured as one line
        caption = one_line(caption)
        small = _font(round(height_px * 0.42))
        room = width_px - margin - text_right - 2 * margin
        if draw.textlength(caption, font=small) > room:
            # too long for the banner: keep the longest end that fits (a file name's end says most), marked as cut;
            # a binary search (the width grows with the characters kept), so a 4,000-character name costs ~12 looks
            fits, too_long = 0, len(caption)
            while too_long - fits > 1:
                middle = (fits + too_long) // 2
                if draw.textlength("\u2026" + caption[-middle:], font=small) <= room:
                    fits = middle
                else:
                    too_long = middle
            caption = "\u2026" + caption[-fits:] if fits else ""
        if caption:
            _draw_centred(draw, caption, small, width_px - margin, height_px, align_right=True)
    return np.asarray(canvas)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write uint8 [H, W, 3] as PNG through a hidden temporary name and a rename: no reader sees half a file."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    Image.fromarray(picture).save(temporary, format="PNG")
    os.replace(temporary, path)
    return path
