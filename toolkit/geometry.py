"""Input geometry: the model's input size (any height and width, or kept from the training images' aspect
ratio) and the tiling of a frame into overlapping tiles inside the scoring graph.

    --size auto         the default: 256 x 256 for near-square training images (long / short side <= 4:3),
                        otherwise their median aspect ratio kept with the short side at the images' own median
                        short side, within 256..512 px (a 500 x 1250 frame -> 496 x 1248, at its own resolution:
                        neither squashed to a square nor shrunk)
    --size 256          square 256 x 256 (anomalib's image_size; every frame squashed to it)
    --size 256x640      height 256, width 640 (HxW, as every shape in adtk)
    --size auto:65536   the training images' median aspect ratio at this pixel budget
    --tile 256[:64]     cut the (aspect-kept) frame into 256 x 256 tiles overlapping by at least 64 px

With --tile, --size says what the tiles are cut from: N = the aspect-kept frame with its short side at N px,
HxW = exactly that, auto (the CLI's default with --tile) = short side at the tile size (one row or column of
tiles), auto:PIXELS = the aspect-kept frame at that pixel budget.

Sizes are checked against the backbone's deepest tapped stride before any feature is extracted: a side that is
not a multiple of it gives stage maps whose grids do not line up (ceil(H / 8) != 2 * ceil(H / 16)), so the
deeper maps would be stretched by a fraction of a cell onto the first stage's grid. `auto` rounds to it.

Tiling (the `Tiling` module, composed between preprocess and backbone by export/compose.py): the frame is
resized to the working size (aspect kept), cut into an ny x nx grid of square tiles whose positions are
spread evenly from edge to edge, and the tiles go through backbone and head as one batch [B * ny * nx, ...].
The image score is the maximum over a frame's tiles; the map is stitched by postprocess.TiledMapSmoother.
Plain BuildConfig values (strings, ints) go in; `parse_size`/`parse_tile`/`resolve_geometry` are what a recipe
search calls to check a candidate without building it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.postprocess import AnomalyMapSmoother, TiledMapSmoother

DEFAULT_SHORT_SIDE_PX = 256
# Plain `auto` squashes near-square frames into the square (a shape changes by at most a third, and the square is
# what every cost figure was measured at) and keeps the aspect ratio of elongated ones: squashing a 500 x 1250 frame
# into 256 x 256 narrows a thin crack across the long side 2.5x more than along the short one. Measured with the
# default PatchCore (bench/results/geometry.md, 2026-12-03): three self-made tall sets gain 16-22 image AUROC
# points with the short side at 256 (a 256x256-pixel budget, auto:65536, gains ~5); magnetic-tile (median
# height / width 1.16) scores 0.9578 at 304 x 256 against 0.9621 squashed, at 1.19x the cost.
NEAR_SQUARE_ASPECT = 4 / 3
# Elongated frames keep their own resolution, up to this short side: a thin crack 1-3 px wide in a 500-px-wide frame
# shrunk to 256 px is 0.5-1.5 px wide at the backbone's input. Measured with the default PatchCore on two self-made
# tall sets with thin cracks (bench/results/geometry.md, 2026-12-04), short side 256 / 400 / 496 px, the bank at
# 256 px's rows (build.bank_rows_as_at_256): image AUROC 0.883 / 0.918 / 0.923 and 0.896 / 0.987 / 0.996, AU-PRO
# 0.79 / 0.94 / 0.94 and 0.75 / 0.96 / 0.97, at 108 / 292 / 420 ms per 1250 x 500 frame (2 cores). The frame's cost
# grows with its pixels: beyond 512 px a default would outrun most devices; --size HxW or --tile go further.
MAX_AUTO_SHORT_SIDE_PX = 512
MAX_SIDE_PX = 4096  # the exported graph accepts frames up to 8192 px a side; a model side beyond 4096 px would
# not fit any target's frame budget anyway
DEFAULT_TILE_OVERLAP_FRACTION = 0.25

_FIXED = re.compile(r"^\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*$")
_AUTO = re.compile(r"^\s*auto\s*(?::\s*(\S+))?\s*$")
_TILE = re.compile(r"^\s*(\S+?)\s*(?::\s*(\S+))?\s*$")


@dataclass(frozen=True)
class SizeSpec:
    """What --size asked for: a fixed (height, width), or `auto` at a pixel budget."""

    fixed_hw: tuple[int, int] | None = None
    pixel_budget: int | None = None  # set for auto:PIXELS
    square: bool = False  # given as one number N (with --tile: the short side of the working size)
    budget_given: bool = False  # auto:PIXELS rather than plain auto (which has no budget: see auto_model_size)

    @property
    def is_auto(self) -> bool:
        return self.fixed_hw is None

    def __str__(self) -> str:
        if self.fixed_hw is not None:
            return f"{self.fixed_hw[0]}x{self.fixed_hw[1]}"
        return f"auto:{self.pixel_budget}" if self.budget_given else "auto"


@dataclass(frozen=True)
class TileSpec:
    size_px: int
    min_overlap_px: int


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one frame lie at the working size: top-left corners (rows x cols)."""

    working_hw: tuple[int, int]
    tile_px: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def num_tiles(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def as_dict(self) -> dict:
        return {"working_size_px": list(self.working_hw), "tile_px": self.tile_px,
                "grid": [len(self.row_starts), len(self.col_starts)], "row_starts": list(self.row_starts),
                "col_starts": list(self.col_starts)}


@dataclass(frozen=True)
class Geometry:
    """The resolved input geometry of a build: the size frames are resized to, and the tiles cut from it."""

    model_hw: tuple[int, int]  # the resize target; also the anomaly map's size
    tiles: TileLayout | None = None

    @property
    def backbone_input_hw(self) -> tuple[int, int]:
        """The size one backbone input has (a tile, or the whole frame)."""
        return (self.tiles.tile_px, self.tiles.tile_px) if self.tiles else self.model_hw

    def as_dict(self) -> dict:
        return {"model_size_px": list(self.model_hw), "tiling": self.tiles.as_dict() if self.tiles else None}


def _positive_int(text: str, what: str, example: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: {text!r} is not a whole number of pixels; e.g. {example}") from None
    if value <= 0:
        raise ConfigError(f"{what}: {value} px makes no sense, it must be positive; e.g. {example}")
    return value


def parse_size(value: int | str | Sequence[int] | SizeSpec) -> SizeSpec:
    """--size / BuildConfig.image_size_px -> SizeSpec; a clear ConfigError for anything else."""
    if isinstance(value, SizeSpec):
        return value
    if isinstance(value, bool):
        raise ConfigError(f"--size: expected N, HxW, auto or auto:PIXELS, got {value!r}")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ConfigError(f"--size: expected (height, width), got {list(value)!r}")
        value = f"{value[0]}x{value[1]}"
    if not isinstance(value, str):
        raise ConfigError(f"--size: expected N, HxW, auto or auto:PIXELS, got {value!r}")
    text = value.strip().lower()
    fixed = _FIXED.match(text.replace("-", "~"))  # a negative number fails here and gets the message below
    if fixed:
        height = _positive_int(fixed.group(1), "--size", "--size 256 or --size 256x640")
        width = _positive_int(fixed.group(2), "--size", "--size 256x640") if fixed.group(2) else height
        return SizeSpec(fixed_hw=(height, width), square=fixed.group(2) is None)
    auto = _AUTO.match(text)
    if auto:
        if auto.group(1) is None:
            return SizeSpec()
        budget = _positive_int(auto.group(1), "--size auto:PIXELS", "--size auto:65536")
        return SizeSpec(pixel_budget=budget, budget_given=True)
    if re.match(r"^\s*-", text) or re.search(r"x\s*-", text):
        raise ConfigError(f"--size {value!r}: sizes must be positive; e.g. --size 256 or --size 256x640")
    raise ConfigError(f"--size {value!r}: expected N (square), HxW (e.g. 256x640), auto or auto:PIXELS "
                      "(e.g. auto:65536)")


def parse_tile(value: str | int | None) -> TileSpec | None:
    """--tile SIZE[:OVERLAP] -> TileSpec (overlap default: a quarter of the tile), or None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"--tile: expected SIZE or SIZE:OVERLAP in px, got {value!r}")
    match = _TILE.match(str(value))
    if not match:
        raise ConfigError(f"--tile {value!r}: expected SIZE or SIZE:OVERLAP in px, e.g. --tile 256:64")
    size = _positive_int(match.group(1), f"--tile {value}", "--tile 256:64")
    if match.group(2) is None:
        overlap = int(round(size * DEFAULT_TILE_OVERLAP_FRACTION))
    else:
        try:
            overlap = int(match.group(2))
        except ValueError:
            raise ConfigError(f"--tile {value!r}: the overlap {match.group(2)!r} is not a whole number of "
                              "pixels; e.g. --tile 256:64") from None
        if overlap < 0:
            raise ConfigError(f"--tile {value!r}: the overlap must be 0 or more px, got {overlap}")
    if overlap >= size:
        raise ConfigError(f"--tile {value!r}: the overlap ({overlap} px) must be smaller than the tile "
                          f"({size} px); e.g. --tile {size}:{size // 4}")
    return TileSpec(size, overlap)


def round_to_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def auto_size(aspect_hw: float, pixel_budget: int, stride: int) -> tuple[int, int]:
    """(H, W) with H / W ~= aspect_hw and H * W ~= pixel_budget, each a multiple of `stride`."""
    width = math.sqrt(pixel_budget / aspect_hw)
    return round_to_multiple(width * aspect_hw, stride), round_to_multiple(width, stride)


def auto_model_size(aspect_hw: float, stride: int, native_short_side_px: float | None = None) -> tuple[int, int]:
    """Plain `--size auto`: DEFAULT_SHORT_SIDE_PX square for near-square images (long / short <=
    NEAR_SQUARE_ASPECT), otherwise the aspect ratio kept with the short side at the images' own
    (native_short_side_px: their median; None = unknown) rounded down to `stride`, within DEFAULT_SHORT_SIDE_PX ..
    MAX_AUTO_SHORT_SIDE_PX, the long side rounded to `stride`."""
    if max(aspect_hw, 1 / aspect_hw) <= NEAR_SQUARE_ASPECT:
        return DEFAULT_SHORT_SIDE_PX, DEFAULT_SHORT_SIDE_PX
    own = DEFAULT_SHORT_SIDE_PX if native_short_side_px is None else int(native_short_side_px) // stride * stride
    short_side_px = min(max(own, DEFAULT_SHORT_SIDE_PX), MAX_AUTO_SHORT_SIDE_PX)
    longest = (MAX_SIDE_PX // stride) * stride  # a line-scan strip is squashed beyond 16:1, not refused
    return tuple(min(side, longest) for side in short_side_hw(aspect_hw, short_side_px, stride))


def short_side_hw(aspect_hw: float, short_side_px: int, stride: int) -> tuple[int, int]:
    """(H, W) with H / W ~= aspect_hw and the shorter side exactly short_side_px; the longer rounded to `stride`."""
    if aspect_hw >= 1:
        return round_to_multiple(short_side_px * aspect_hw, stride), short_side_px
    return short_side_px, round_to_multiple(short_side_px / aspect_hw, stride)


def check_model_size(hw: tuple[int, int], stride: int, what: str = "--size") -> None:
    """A model size the backbone can use: both sides multiples of its deepest stride, >= 2 strides, bounded."""
    for side_name, side in zip(("height", "width"), hw):
        if side > MAX_SIDE_PX:
            raise ConfigError(f"{what}: a {side_name} of {side} px is over the {MAX_SIDE_PX} px limit; use "
                              "--tile for large frames")
        if side < 2 * stride:
            raise ConfigError(f"{what}: a {side_name} of {side} px is too small for a backbone whose deepest "
                              f"tapped stage has stride {stride}; use at least {2 * stride} px")
        if side % stride:
            low, high = (side // stride) * stride, (side // stride + 1) * stride
            raise ConfigError(f"{what}: a {side_name} of {side} px is not a multiple of the backbone's deepest "
                              f"stride {stride} (its stage grids would not line up); use {low} or {high}")


def tile_starts(length: int, tile: int, min_overlap: int) -> tuple[int, ...]:
    """Tile starts covering [0, length): the fewest tiles overlapping by >= min_overlap, spread evenly
    from edge to edge (first at 0, last at length - tile)."""
    if length <= tile:
        return (0,)
    count = max(2, math.ceil((length - min_overlap) / (tile - min_overlap)))
    return tuple(int(round(i * (length - tile) / (count - 1))) for i in range(count))


def resolve_geometry(size: int | str | Sequence[int] | SizeSpec, tile: str | int | TileSpec | None, stride: int,
                     aspect_hw: float | None, native_short_side_px: float | None = None) -> Geometry:
    """The build's geometry from --size and --tile, checked (ConfigError) before any feature is extracted.

    stride: the backbone's deepest tapped stride (the LCM over the members of an ensemble); aspect_hw: the
    training images' median height / width (needed for `auto`, and for --tile without an explicit --size);
    native_short_side_px: their median short side (plain `auto` keeps an elongated frame's own resolution up to
    MAX_AUTO_SHORT_SIDE_PX; None: the short side is DEFAULT_SHORT_SIDE_PX).
    With --tile and no fixed size, the working size keeps the aspect ratio with its short side at the tile
    size (a tall frame becomes one column of tiles), or at the pixel budget given as auto:PIXELS.
    """
    spec = parse_size(size)
    tile_spec = tile if isinstance(tile, TileSpec) or tile is None else parse_tile(tile)
    if tile_spec is None:
        if spec.is_auto:
            if aspect_hw is None:
                raise ConfigError("--size auto needs the training images' aspect ratio; none was read")
            hw = (auto_size(aspect_hw, spec.pixel_budget, stride) if spec.budget_given
                  else auto_model_size(aspect_hw, stride, native_short_side_px))
        else:
            hw = spec.fixed_hw
        check_model_size(hw, stride)
        return Geometry(hw)
    check_model_size((tile_spec.size_px, tile_spec.size_px), stride, what=f"--tile {tile_spec.size_px}")
    if spec.fixed_hw is not None and not spec.square:
        working = spec.fixed_hw
    else:
        if aspect_hw is None:
            raise ConfigError("--tile needs the training images' aspect ratio to choose the working size; "
                              "none was read (or give --size HxW)")
        if spec.is_auto and spec.budget_given:
            working = auto_size(aspect_hw, spec.pixel_budget, stride)
        else:
            short = spec.fixed_hw[0] if spec.square else tile_spec.size_px
            working = short_side_hw(aspect_hw, short, stride)
    check_model_size(working, stride, what="--size (the working size the tiles are cut from)")
    if tile_spec.size_px > min(working):
        raise ConfigError(f"--tile {tile_spec.size_px}: the tile is larger than the frame's working size "
                          f"{working[0]}x{working[1]} px; use a tile of at most {min(working)} px or a larger --size")
    layout = TileLayout(working, tile_spec.size_px,
                        tile_starts(working[0], tile_spec.size_px, tile_spec.min_overlap_px),
                        tile_starts(working[1], tile_spec.size_px, tile_spec.min_overlap_px))
    return Geometry(working, layout)


@dataclass(frozen=True)
class ImageShape:
    """The training images' medians, from their headers: what `auto` sizes and the recipe search read."""

    aspect_hw: float  # height / width
    short_side_px: float
    pixels: float  # height x width


def median_image_shape(samples, max_images: int = 400) -> ImageShape:
    """Medians over (up to max_images of) the samples, from the image headers only (as decoded: EXIF orientation
    applied, so portrait frames a camera stored turned count as portrait)."""
    from adtk.runtime.images import read_image_size

    samples = list(samples)
    if len(samples) > max_images:  # evenly spaced, deterministic
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_images).round().astype(int)]
    sizes = []
    for sample in samples:
        try:
            width, height = read_image_size(sample.path)
        except DataError:  # an unreadable image is reported (or skipped) when it is decoded
            continue
        if width > 0 and height > 0:
            sizes.append((height, width))
    if not sizes:
        raise ConfigError("--size auto / --tile: no training image header could be read to find the aspect ratio")
    heights, widths = np.array(sizes, dtype=np.float64).T
    return ImageShape(float(np.median(heights / widths)), float(np.median(np.minimum(heights, widths))),
                      float(np.median(heights * widths)))


def plain_auto_short_side(shape: ImageShape | None, frame_budget_binds: bool) -> float | None:
    """The short side plain `auto` may keep for an elongated frame (resolve_geometry's native_short_side_px): the
    images' own median, unless a frame budget binds the build (--target), which keeps the 256-px short side its
    sizing was measured with and spends the budget on the bank. One rule for a build and for `--method auto`'s
    candidate of the same geometry, so the search validates the input the final build will have."""
    if shape is None or frame_budget_binds:
        return None
    return shape.short_side_px


def median_aspect_hw(samples, max_images: int = 400) -> float:
    """Median height / width of the samples (median_image_shape)."""
    return median_image_shape(samples, max_images).aspect_hw


class Tiling(nn.Module):
    """[B, C, H, W] at the working size -> [B * T, C, t, t] tiles (frame-major, then row-major over the grid),
    and the tiles' image scores [B * T] -> the frames' [B] (maximum over a frame's tiles).

    The tile positions are constants of the graph: the frame was resized to the working size just before, so
    the crops export as fixed Slice nodes and the runtime needs nothing new.
    """

    def __init__(self, layout: TileLayout):
        super().__init__()
        self.layout = layout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        t = self.layout.tile_px
        tiles = [images[:, :, y:y + t, x:x + t] for y in self.layout.row_starts for x in self.layout.col_starts]
        return torch.stack(tiles, dim=1).flatten(0, 1)

    def frame_scores(self, tile_scores: torch.Tensor) -> torch.Tensor:
        return tile_scores.reshape(-1, self.layout.num_tiles).max(dim=1).values


def make_tiling(geometry: Geometry) -> Tiling | None:
    """The graph's tiling part, or None when the whole frame is the backbone's one input."""
    return Tiling(geometry.tiles) if geometry.tiles is not None else None


def make_smoother(geometry: Geometry, sigma: float, grid_hw: Sequence[int]) -> nn.Module:
    """Patch scores -> the anomaly map at the model size: upsample + blur, and the stitch when tiled."""
    if geometry.tiles is not None:
        return TiledMapSmoother(geometry.tiles, sigma=sigma, grid_hw=grid_hw)
    return AnomalyMapSmoother(geometry.model_hw, sigma=sigma, grid_hw=grid_hw)
