"""A small example data set that adtk makes itself, so the README's first command needs no data.

The normal images are random crops of one CC0 texture photo bundled inside the scikit-image
package (``skimage.data.brick()``, ``gravel()`` or ``grass()``: they load offline, from the
installed wheel). Defective test images get synthetic defects of three types with pixel masks,
written in the MVTec layout that :func:`adtk.toolkit.data.index_dataset` reads::

    out_dir/train/good/000.png ...
    out_dir/test/good/000.png ...
    out_dir/test/{hole,scratch,stain}/000.png ...
    out_dir/ground_truth/{hole,scratch,stain}/000_mask.png   (0 = good, 255 = defect)
    out_dir/README.txt                                        (what it is, source licence)

Everything is drawn from numpy Generators seeded by (seed, split, index), so the same seed gives
byte-identical files and each image does not depend on how many other images were asked for.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.data import DatasetIndex, index_dataset

README_MARKER = "adtk example data set"
"""First line of README.txt; a folder starting with it may be overwritten by a new example set."""

DEFECT_TYPES: tuple[str, ...] = ("hole", "scratch", "stain")

# The licence statement scikit-image gives for each bundled texture (from the docstrings of
# skimage.data.brick/gravel/grass; skimage/data/README.txt and the wheel's LICENSE.txt, which is
# BSD-3-Clause for the code, do not list the data files).
TEXTURE_LICENCE_STATEMENTS: dict[str, str] = {
    "brick": (
        "The original image was downloaded from CC0Textures "
        "<https://cc0textures.com/view.php?tex=Bricks25> and licensed under the Creative Commons "
        "CC0 License. A perspective transform was then applied to the image, prior to rotating it "
        "by 90 degrees, cropping and scaling it to obtain the final image."
    ),
    "gravel": (
        "The original image was downloaded from CC0Textures "
        "<https://cc0textures.com/view.php?tex=Gravel04> and licensed under the Creative Commons "
        "CC0 License. The downloaded image was then rescaled to (1024, 1024), then the top left "
        "(512, 512) pixel region was cropped prior to converting the image to grayscale and uint8 "
        "data type."
    ),
    "grass": (
        "The original image was downloaded from DeviantArt "
        "<https://www.deviantart.com/linolafett/art/Grass-01-434853879> and licensed under the "
        "Creative Commons CC0 License. The downloaded image was cropped to include a region of "
        "(512, 512) pixels around the top left corner, converted to grayscale, then to uint8."
    ),
}

# The bundled textures are grayscale; a fixed tint per texture makes the images RGB so that a
# stain's colour shift is a real colour change, as on coloured parts.
_TEXTURE_TINT_RGB: dict[str, tuple[float, float, float]] = {
    "brick": (1.0, 0.80, 0.66),
    "gravel": (0.98, 0.96, 0.90),
    "grass": (0.72, 0.96, 0.58),
}

_SIZE_JITTER = 0.10  # each side is image_size_px * U(1 - 0.1, 1 + 0.1)
_MIN_DEFECT_AREA_FRACTION = 0.004
_MAX_DEFECT_AREA_FRACTION = 0.06
_SPLIT_CODES = {"train": 0, "test_good": 1, "test_defect": 2}


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """An independent Generator for one image, so images do not depend on the counts asked for."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _load_texture_rgb(texture: str, min_side_px: int) -> np.ndarray:
    """The tinted texture as float64 RGB [S, S, 3] in 0..255, upscaled when S < min_side_px."""
    import skimage.data  # lazy: only the demo needs scikit-image

    gray = getattr(skimage.data, texture)()  # uint8 [512, 512], loaded from the installed wheel
    if min(gray.shape) < min_side_px:
        scale = min_side_px / min(gray.shape)
        new_size = (int(np.ceil(gray.shape[1] * scale)), int(np.ceil(gray.shape[0] * scale)))
        gray = np.asarray(Image.fromarray(gray).resize(new_size, Image.Resampling.BICUBIC))
    tint = np.asarray(_TEXTURE_TINT_RGB[texture], dtype=np.float64)
    return gray.astype(np.float64)[:, :, None] * tint[None, None, :]


def _normal_image(texture_rgb: np.ndarray, rng: np.random.Generator, image_size_px: int) -> np.ndarray:
    """A defect-free image: a randomly placed, rotated and flipped crop with mild lighting changes.

    Returns float64 RGB [H, W, 3] in 0..255 with H, W each within +/-10 % of image_size_px.
    """
    height, width = (
        int(round(image_size_px * rng.uniform(1 - _SIZE_JITTER, 1 + _SIZE_JITTER))) for _ in range(2)
    )
    # Rotate/flip the whole texture first so a non-square crop needs no special case.
    oriented = np.rot90(texture_rgb, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        oriented = oriented[:, ::-1]
    top = int(rng.integers(0, oriented.shape[0] - height + 1))
    left = int(rng.integers(0, oriented.shape[1] - width + 1))
    crop = oriented[top : top + height, left : left + width].copy()
    # Real lines vary a little in illumination and have sensor noise; without it every normal
    # image would be a pristine crop and the task would be unrealistically easy.
    crop *= rng.normal(1.0, 0.03)
    crop += rng.normal(0.0, 1.5, size=crop.shape)
    return crop


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates, float64 [H, W] each."""
    rows, cols = np.mgrid[0:height, 0:width]
    return rows.astype(np.float64), cols.astype(np.float64)


def _ellipse_distance(
    height: int, width: int, centre: tuple[float, float], radii: tuple[float, float], angle_rad: float
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance to an ellipse's centre (1 on its outline) and the polar angle, [H, W]."""
    rows, cols = _pixel_grid(height, width)
    dy, dx = rows - centre[0], cols - centre[1]
    cos_a, sin_a = np.cos(angle_rad), np.sin(angle_rad)
    along, across = dx * cos_a + dy * sin_a, -dx * sin_a + dy * cos_a
    distance = np.sqrt((along / radii[1]) ** 2 + (across / radii[0]) ** 2)
    return distance, np.arctan2(across, along)


def _random_centre(rng: np.random.Generator, height: int, width: int, margin: float) -> tuple[float, float]:
    """A point at least ``margin`` (fraction of the side) away from the borders."""
    return (rng.uniform(margin, 1 - margin) * height, rng.uniform(margin, 1 - margin) * width)


def _add_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin random polyline, darker or brighter. Returns (image float [H, W, 3], mask bool [H, W])."""
    from skimage.filters import gaussian

    height, width = image.shape[:2]
    short_side = min(height, width)
    thickness_px = max(2, int(round(short_side / 48)))
    num_segments = int(rng.integers(3, 6))
    segment_px = rng.uniform(0.35, 0.6) * short_side / num_segments
    row, col = _random_centre(rng, height, width, margin=0.25)
    heading = rng.uniform(0, 2 * np.pi)
    points = [(col, row)]
    for _ in range(num_segments):
        heading += rng.normal(0.0, 0.5)  # a gently bending line, as a tool drag leaves
        row = float(np.clip(row + segment_px * np.sin(heading), 0, height - 1))
        col = float(np.clip(col + segment_px * np.cos(heading), 0, width - 1))
        points.append((col, row))
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=thickness_px, joint="curve")
    mask = np.asarray(canvas) > 127
    # Soften the edge a little so the scratch is not a pixel-perfect stroke.
    strength = gaussian(mask.astype(np.float64), sigma=0.6)
    contrast = rng.uniform(55, 85) * (1 if rng.random() < 0.5 else -1)
    return image + strength[:, :, None] * contrast, mask


def _add_stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A soft irregular blob that shifts the colour. Returns (image, mask bool [H, W])."""
    height, width = image.shape[:2]
    short_side = min(height, width)
    radii = (rng.uniform(0.06, 0.11) * short_side, rng.uniform(0.06, 0.11) * short_side)
    distance, polar = _ellipse_distance(
        height, width, _random_centre(rng, height, width, 0.2), radii, rng.uniform(0, np.pi)
    )
    # A wobbly outline: the radius varies with angle by a few low harmonics.
    wobble = 1.0 + sum(
        rng.uniform(0.05, 0.12) * np.sin(harmonic * polar + rng.uniform(0, 2 * np.pi))
        for harmonic in (2, 3)
    )
    distance = distance / wobble
    alpha = np.clip((1.15 - distance) / 0.3, 0.0, 1.0)  # 1 inside, soft ramp over the edge
    alpha = alpha * alpha * (3 - 2 * alpha)  # smoothstep
    stain_colours = np.array([[45.0, 40.0, 30.0], [60.0, 105.0, 115.0], [150.0, 75.0, 25.0]])
    colour = stain_colours[int(rng.integers(len(stain_colours)))]
    opacity = rng.uniform(0.55, 0.7)
    weight = (alpha * opacity)[:, :, None]
    return image * (1 - weight) + colour[None, None, :] * weight, alpha >= 0.5


def _add_hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark filled ellipse with a slightly brighter rim. Returns (image, mask bool [H, W])."""
    height, width = image.shape[:2]
    short_side = min(height, width)
    radii = (rng.uniform(0.04, 0.07) * short_side, rng.uniform(0.04, 0.07) * short_side)
    distance, _ = _ellipse_distance(
        height, width, _random_centre(rng, height, width, 0.15), radii, rng.uniform(0, np.pi)
    )
    rim_outer = 1.3
    inside = np.clip((1.05 - distance) / 0.1, 0.0, 1.0)  # 1 in the hole, 1-px soft edge
    rim = np.clip(1 - np.abs(distance - 1.12) / 0.15, 0.0, 1.0) * (distance < rim_outer)
    floor = rng.uniform(15, 35) + rng.normal(0.0, 3.0, size=(height, width))
    darkened = image * (1 - inside[:, :, None]) + floor[:, :, None] * inside[:, :, None]
    brightened = darkened + rim[:, :, None] * rng.uniform(35, 55)
    return brightened, distance < rim_outer


_DEFECT_PAINTERS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "hole": _add_hole,
    "scratch": _add_scratch,
    "stain": _add_stain,
}


def _defective_image(
    texture_rgb: np.ndarray, rng: np.random.Generator, image_size_px: int, defect_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """A normal image with one defect covering ~0.4-6 % of its area: (float RGB [H, W, 3], bool [H, W])."""
    base = _normal_image(texture_rgb, rng, image_size_px)
    for _ in range(20):
        defective, mask = _DEFECT_PAINTERS[defect_type](base, rng)
        if _MIN_DEFECT_AREA_FRACTION <= mask.mean() <= _MAX_DEFECT_AREA_FRACTION:
            return defective, mask
    # Random geometry keeps landing outside the range only for very odd sizes; keep the last one.
    return defective, mask


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _prepare_out_dir(out_dir: Path) -> None:
    """Create out_dir, or clear a previous example set in it; refuse a folder holding anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file; choose a folder for the example data set")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        readme = out_dir / "README.txt"
        first_line = readme.read_text(encoding="utf-8").splitlines()[:1] if readme.is_file() else []
        if first_line != [README_MARKER]:
            raise DataError(
                f"{out_dir}: folder is not empty and is not an adtk example data set; "
                "choose a new or empty folder"
            )
        # Ours: remove only what we write, so counts from an earlier call do not linger.
        for name in ("train", "test", "ground_truth"):
            if (out_dir / name).is_dir():
                shutil.rmtree(out_dir / name)
        readme.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _readme_text(
    texture: str, seed: int, num_train: int, num_test_good: int, num_test_defect: int, image_size_px: int
) -> str:
    import skimage

    statement = TEXTURE_LICENCE_STATEMENTS[texture]
    return f"""{README_MARKER}
(synthetic; written by adtk.toolkit.demo.make_example_dataset)

WHAT IT IS
A small anomaly-detection data set in the MVTec layout, for trying adtk without data of your
own. It is NOT real inspection data: use it to check that the tool chain works, not to judge a
method. Category: {texture}. The normal images are random crops (random position, 90-degree
rotation, flip, sides within +/-10 % of {image_size_px} px, slight brightness change and noise)
of one texture photo, tinted to RGB. The defective test images add one synthetic defect each:
  hole     dark filled ellipse with a slightly brighter rim
  scratch  thin random polyline, darker or brighter than the surface
  stain    soft irregular blob that shifts the colour

LAYOUT
  train/good/             {num_train} defect-free images
  test/good/              {num_test_good} defect-free images
  test/<type>/            {num_test_defect} defective images in all (types: {", ".join(DEFECT_TYPES)})
  ground_truth/<type>/    <stem>_mask.png for every defective image: 0 = good, 255 = defect

Made with seed={seed}, numpy {np.__version__}, scikit-image {skimage.__version__}.

SOURCE TEXTURE AND LICENCE
skimage.data.{texture}(): the file skimage/data/{texture}.png bundled inside the scikit-image
package. scikit-image's documentation of that function says:
  "{statement}"
CC0 places the source photo in the public domain, so these derived images carry no
restrictions from it.
"""


def make_example_dataset(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 60,
    num_test_good: int = 20,
    num_test_defect: int = 20,
    image_size_px: int = 128,
    texture: str = "brick",
) -> DatasetIndex:
    """Write a small MVTec-layout example data set and return its index.

    Args:
        out_dir: folder to write; created if missing. It must be empty or hold an earlier
            example set (which is replaced).
        seed: the same seed gives byte-identical files (on the same numpy/Pillow versions).
        num_train: defect-free training images (>= 1).
        num_test_good: defect-free test images (>= 0).
        num_test_defect: defective test images (>= 0), spread round-robin over hole, scratch
            and stain, each with a mask.
        image_size_px: nominal side; each image's height and width are drawn within +/-10 % of
            it so loaders see varied sizes (32..1024).
        texture: "brick", "gravel" or "grass" (scikit-image's bundled CC0 textures).

    Returns:
        DatasetIndex of out_dir, as index_dataset reads it.

    Raises:
        ConfigError: unknown texture, counts or size out of range.
        DataError: out_dir is a file, or a non-empty folder that is not an example set.
    """
    if texture not in TEXTURE_LICENCE_STATEMENTS:
        raise ConfigError(
            f"texture {texture!r} is not known; choose one of {', '.join(sorted(TEXTURE_LICENCE_STATEMENTS))}"
        )
    if num_train < 1 or num_test_good < 0 or num_test_defect < 0:
        raise ConfigError(
            f"counts must be num_train >= 1 and num_test_good, num_test_defect >= 0; got "
            f"{num_train}, {num_test_good}, {num_test_defect}"
        )
    if not 32 <= image_size_px <= 1024:
        raise ConfigError(f"image_size_px must be in 32..1024 (defects need room); got {image_size_px}")

    out_dir = Path(out_dir).expanduser()
    _prepare_out_dir(out_dir)
    max_side_px = int(np.ceil(image_size_px * (1 + _SIZE_JITTER))) + 1
    texture_rgb = _load_texture_rgb(texture, min_side_px=max_side_px)
    digits = max(3, len(str(max(num_train, num_test_good, num_test_defect))))

    for index in range(num_train):
        image = _normal_image(texture_rgb, _image_rng(seed, "train", index), image_size_px)
        _save_png(_to_uint8(image), out_dir / "train" / "good" / f"{index:0{digits}d}.png")
    for index in range(num_test_good):
        image = _normal_image(texture_rgb, _image_rng(seed, "test_good", index), image_size_px)
        _save_png(_to_uint8(image), out_dir / "test" / "good" / f"{index:0{digits}d}.png")
    for index in range(num_test_defect):
        defect_type = DEFECT_TYPES[index % len(DEFECT_TYPES)]
        stem = f"{index // len(DEFECT_TYPES):0{digits}d}"
        image, mask = _defective_image(
            texture_rgb, _image_rng(seed, "test_defect", index), image_size_px, defect_type
        )
        _save_png(_to_uint8(image), out_dir / "test" / defect_type / f"{stem}.png")
        _save_png(mask.astype(np.uint8) * 255, out_dir / "ground_truth" / defect_type / f"{stem}_mask.png")

    (out_dir / "README.txt").write_text(
        _readme_text(texture, seed, num_train, num_test_good, num_test_defect, image_size_px),
        encoding="utf-8",
    )
    return index_dataset(out_dir)
