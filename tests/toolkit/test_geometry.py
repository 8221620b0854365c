"""Input geometry: --size / --tile parsing and checks, tile layouts, the tile split and the stitched map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.runtime.errors import ConfigError
from adtk.toolkit.geometry import (
    MAX_AUTO_SHORT_SIDE_PX, MAX_SIDE_PX, Tiling, TileLayout, auto_size, parse_size, parse_tile, resolve_geometry,
    tile_starts,
)
from adtk.toolkit.postprocess import AnomalyMapSmoother, TiledMapSmoother


@pytest.mark.parametrize("text, hw", [("256", (256, 256)), ("256x640", (256, 640)), (" 96X32 ", (96, 32)),
                                      (128, (128, 128)), ((64, 96), (64, 96))])
def test_fixed_sizes_parse(text, hw):
    assert parse_size(text).fixed_hw == hw


def test_auto_sizes_parse_with_and_without_a_budget():
    plain = parse_size("auto")
    assert plain.is_auto and not plain.budget_given and str(plain) == "auto"
    assert parse_size("auto:65536").pixel_budget == 65536
    assert parse_size("AUTO:4096").is_auto and str(parse_size("auto:4096")) == "auto:4096"


@pytest.mark.parametrize("aspect_hw, hw", [
    (1.0, (256, 256)), (1.16, (256, 256)), (0.8, (256, 256)), (4 / 3, (256, 256)),  # near-square: the square
    (1250 / 500, (640, 256)), (500 / 1250, (256, 640)),  # tall / wide frames: short side 256, not squashed
    (1080 / 1920, (256, 448)), (1.5, (384, 256)),
])
def test_plain_auto_squares_near_square_frames_and_keeps_the_aspect_of_elongated_ones(aspect_hw, hw):
    geometry = resolve_geometry("auto", None, stride=16, aspect_hw=aspect_hw)
    assert geometry.model_hw == hw and geometry.tiles is None
    assert resolve_geometry("auto", None, stride=32, aspect_hw=aspect_hw).model_hw[0] % 32 == 0


@pytest.mark.parametrize("native_short_side, hw", [
    (500, (1248, 496)),  # a 500 x 1250 frame at its own resolution (rounded down to the stride)
    (330, (800, 320)), (1200, (1280, 512)),  # 330 -> 320 (the stride); larger frames stop at MAX_AUTO_SHORT_SIDE_PX
    (200, (640, 256)), (None, (640, 256)),  # small frames are not shrunk below 256 px; unknown: 256
])
def test_plain_auto_keeps_an_elongated_frame_at_its_own_resolution_up_to_a_cap(native_short_side, hw):
    geometry = resolve_geometry("auto", None, stride=16, aspect_hw=1250 / 500, native_short_side_px=native_short_side)
    assert geometry.model_hw == hw
    assert MAX_AUTO_SHORT_SIDE_PX == 512
    wide = resolve_geometry("auto", None, stride=16, aspect_hw=500 / 1250, native_short_side_px=native_short_side)
    assert wide.model_hw == hw[::-1]


def test_plain_auto_keeps_near_square_frames_at_256_whatever_their_resolution():
    assert resolve_geometry("auto", None, stride=16, aspect_hw=1.16, native_short_side_px=1024).model_hw == (256, 256)


def test_the_native_short_side_changes_only_plain_auto():
    assert resolve_geometry("auto:65536", None, stride=16, aspect_hw=2.5, native_short_side_px=500).model_hw == (400, 160)
    assert resolve_geometry("256x640", None, stride=16, aspect_hw=2.5, native_short_side_px=500).model_hw == (256, 640)
    tiled = resolve_geometry("auto", "256", stride=16, aspect_hw=2.5, native_short_side_px=500)
    assert tiled.model_hw == (640, 256)  # with --tile, auto is the short side at the tile size, as before


def test_plain_auto_caps_a_line_scan_strip_at_the_side_limit_instead_of_refusing_it():
    assert resolve_geometry("auto", None, stride=16, aspect_hw=1 / 40).model_hw == (256, MAX_SIDE_PX)


def test_the_default_build_size_is_plain_auto():
    from adtk.toolkit.build_config import BuildConfig

    assert str(parse_size(BuildConfig(data=".", out="x.onnx").image_size_px)) == "auto"


@pytest.mark.parametrize("bad, message", [
    ("0", "positive"), ("-256", "positive"), ("256x0", "positive"), ("256x-8", "positive"), ("abc", "expected N"),
    ("auto:0", "positive"), ("auto:many", "whole number"), ("", "expected N"), ((1, 2, 3), "height, width"),
])
def test_bad_sizes_are_refused_with_a_message(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_size(bad)


@pytest.mark.parametrize("bad, message", [("0", "positive"), ("-64", "positive"), ("256:256", "smaller than"),
                                          ("256:-1", "0 or more"), ("x", "whole number"), ("256:a", "whole")])
def test_bad_tiles_are_refused_with_a_message(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_tile(bad)


def test_tile_default_overlap_is_a_quarter():
    assert parse_tile("256").min_overlap_px == 64
    assert parse_tile("256:0").min_overlap_px == 0
    assert parse_tile(None) is None


def test_auto_size_keeps_the_aspect_ratio_at_the_budget_on_the_stride():
    height, width = auto_size(2.5, 65536, 16)
    assert height % 16 == 0 and width % 16 == 0
    assert abs(height / width - 2.5) < 0.15
    assert 0.85 * 65536 <= height * width <= 1.15 * 65536


def test_sizes_off_the_backbone_stride_are_refused_before_any_fit():
    with pytest.raises(ConfigError, match="multiple of the backbone's deepest stride 16.*use 240 or 256"):
        resolve_geometry("250", None, stride=16, aspect_hw=None)
    with pytest.raises(ConfigError, match="too small"):
        resolve_geometry("16", None, stride=16, aspect_hw=None)
    with pytest.raises(ConfigError, match="limit"):
        resolve_geometry("8192x256", None, stride=16, aspect_hw=None)


def test_tiles_larger_than_the_frame_are_refused():
    with pytest.raises(ConfigError, match="larger than the frame"):
        resolve_geometry("128x512", "256", stride=16, aspect_hw=None)
    with pytest.raises(ConfigError, match="larger than the frame"):
        resolve_geometry("128", "256", stride=16, aspect_hw=2.5)


def test_tile_of_the_quick_check_layout():
    """A 500 x 1250 (H x W) frame, --tile 256:64: 256 x 640 working size, three tiles overlapping by 64 px."""
    geometry = resolve_geometry(256, "256:64", stride=16, aspect_hw=500 / 1250)
    assert geometry.model_hw == (256, 640)
    assert geometry.tiles.row_starts == (0,)
    assert geometry.tiles.col_starts == (0, 192, 384)
    tall = resolve_geometry("auto", "256", stride=16, aspect_hw=1250 / 500)
    assert tall.model_hw == (640, 256) and tall.tiles.num_tiles == 3
    explicit = resolve_geometry("512x768", "256:32", stride=16, aspect_hw=None)
    assert explicit.tiles.row_starts == (0, 128, 256)  # two tiles would not overlap
    assert len(explicit.tiles.col_starts) == 4


@pytest.mark.parametrize("length, tile, overlap", [(640, 256, 64), (256, 256, 0), (1000, 96, 10), (300, 256, 0)])
def test_tile_starts_cover_everything_with_the_minimum_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def _layout():
    return TileLayout(working_hw=(48, 80), tile_px=32, row_starts=(0, 16), col_starts=(0, 24, 48))


def test_tiling_cuts_frame_major_row_major_and_takes_the_max_score():
    images = torch.arange(2 * 1 * 48 * 80, dtype=torch.float32).reshape(2, 1, 48, 80)
    tiling = Tiling(_layout())
    tiles = tiling(images)
    assert tiles.shape == (12, 1, 32, 32)
    torch.testing.assert_close(tiles[6 + 4], images[1, :, 16:48, 24:56])
    scores = torch.zeros(12)
    scores[7] = 5.0
    torch.testing.assert_close(tiling.frame_scores(scores), torch.tensor([0.0, 5.0]))


def test_stitched_map_is_the_overlap_average_of_each_tiles_smoothed_map():
    layout = _layout()
    generator = torch.Generator().manual_seed(0)
    patch_scores = torch.rand(2 * 6, 4, 4, generator=generator)
    stitched = TiledMapSmoother(layout, sigma=2.0)(patch_scores)
    per_tile = AnomalyMapSmoother((32, 32), sigma=2.0)(patch_scores).numpy()
    expected = np.zeros((2, 48, 80))
    count = np.zeros((48, 80))
    for frame in range(2):
        for k, (y, x) in enumerate((y, x) for y in layout.row_starts for x in layout.col_starts):
            expected[frame, y:y + 32, x:x + 32] += per_tile[frame * 6 + k]
            if frame == 0:
                count[y:y + 32, x:x + 32] += 1
    np.testing.assert_allclose(stitched.numpy(), expected / count, atol=1e-5)


def test_the_median_aspect_of_the_training_images_is_that_of_the_decoded_frames(tmp_path):
    """--size auto read the stored size: a camera's portrait frames stored turned (EXIF orientation 6) counted as
    landscape, so every frame was squashed; a FIFO among them blocked the build."""
    import os

    from PIL import Image

    from adtk.toolkit.data import Sample
    from adtk.toolkit.geometry import median_aspect_hw

    exif = Image.Exif()
    exif[0x0112] = 6
    samples = []
    for i in range(3):
        Image.new("RGB", (64, 32)).save(tmp_path / f"{i}.jpg", exif=exif.tobytes())  # shown 32 wide, 64 tall
        samples.append(Sample(tmp_path / f"{i}.jpg", 0, "good", None))
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        samples.append(Sample(tmp_path / "pipe.jpg", 0, "good", None))
    assert median_aspect_hw(samples) == 2.0
