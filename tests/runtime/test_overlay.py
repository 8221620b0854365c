"""The overlay renderer: map coloured only above the visible threshold, region outlined, banner with the label."""

from __future__ import annotations

import numpy as np

from adtk.runtime.overlay import OUTLINE_RGB, outline, render_overlay, save_png


def hot_square_map(size: int = 16, value: float = 0.9) -> np.ndarray:
    anomaly_map = np.full((size, size), 0.2, dtype=np.float32)  # a good background, below the threshold
    anomaly_map[5:11, 5:11] = value
    return anomaly_map


def test_only_the_region_above_the_threshold_is_coloured_and_it_is_outlined():
    frame = np.full((320, 320, 3), 100, dtype=np.uint8)
    picture = render_overlay(frame, hot_square_map(), pred_score=0.8, pred_label=True)
    banner_px = picture.shape[0] - 320
    body = picture[banner_px:].astype(int)
    assert body.shape == (320, 320, 3)
    assert body[10, 10].tolist() == [100, 100, 100]  # below the threshold: the frame, untouched
    centre = body[160, 160]
    assert centre[0] > 180 and centre[2] < 80  # above: warm colour
    is_outline = np.all(body == OUTLINE_RGB, axis=-1)
    assert is_outline.any() and not is_outline[160, 160] and not is_outline[10, 10]
    # the outline encloses the hot square (frame rows 100..220 after the 20x bilinear upsampling)
    rows = np.flatnonzero(is_outline.any(axis=1))
    assert 80 < rows.min() < 130 and 190 < rows.max() < 240


def test_a_good_frame_is_left_as_it_is_with_a_green_banner():
    frame = np.random.default_rng(0).integers(0, 256, (400, 500, 3), dtype=np.uint8)
    picture = render_overlay(frame, np.full((16, 16), 0.3, np.float32), pred_score=0.21, pred_label=False)
    banner_px = picture.shape[0] - 400
    assert np.array_equal(picture[banner_px:], frame)
    banner = picture[:banner_px].reshape(-1, 3)
    assert (banner == (30, 130, 60)).all(axis=1).mean() > 0.5  # mostly green; the rest is its white text
    assert (banner == (255, 255, 255)).all(axis=1).any()


def test_the_banner_says_anomalous_in_red_and_small_frames_are_enlarged_for_legibility():
    picture = render_overlay(np.zeros((64, 96, 3), np.uint8), hot_square_map(), 0.9, True, caption="x" * 500)
    assert picture.shape[1] == 480 and picture.shape[0] > 320  # min side 64 -> 320
    assert tuple(picture[1, 1]) == (200, 30, 30)


def test_outline_of_an_empty_mask_is_empty_and_of_a_square_is_its_border():
    assert not outline(np.zeros((8, 8), bool)).any()
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    edge = outline(mask, width_px=1)
    assert edge[3, 3] and edge[3, 5] and not edge[4, 4] and not edge[0, 0]


def test_save_png_leaves_no_temporary_file(tmp_path):
    from PIL import Image

    picture = render_overlay(np.zeros((32, 32, 3), np.uint8), hot_square_map(), 0.7, True)
    path = save_png(picture, tmp_path / "a" / "x.png")
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]
    assert np.array_equal(np.asarray(Image.open(path)), picture)


def test_a_long_thin_frame_is_enlarged_only_up_to_the_overlay_pixel_limit():
    """A 16 x 70,000 px frame (a 1 KB PNG) enlarged to the 320 px short side would be 1.4 million px wide: the
    daemon's overlay sink was killed for memory at 23 GB. Enlarging stops at MAX_DISPLAY_PIXELS, larger frames
    shrink to it, and frames that need neither are drawn as they are."""
    from adtk.runtime.overlay import MAX_DISPLAY_PIXELS, display_size_hw

    for size_hw in ((16, 70000), (1, 100000), (70000, 16), (12000, 9000), (16, 4000)):
        height, width = display_size_hw(size_hw)
        assert 1 <= height * width <= MAX_DISPLAY_PIXELS, size_hw
        assert (height > width) == (size_hw[0] > size_hw[1])  # the aspect ratio kept
    assert display_size_hw((400, 500)) == (400, 500)
    assert display_size_hw((64, 96)) == (320, 480)


def test_a_caption_with_a_newline_or_escape_codes_is_one_line_and_a_long_one_is_cut_quickly():
    import time

    frame = np.zeros((320, 320, 3), np.uint8)
    # a file named with a newline: Pillow cannot measure multi-line text (adtk predict --overlays stopped, an
    # internal error, and the daemon's overlay sink failed on the frame)
    picture = render_overlay(frame, hot_square_map(), 0.9, True, caption="part\nDataError: \x1b[2Jforged.png")
    assert picture.shape[1] == 320
    tic = time.perf_counter()
    render_overlay(frame, hot_square_map(), 0.9, True, caption="deep/" * 800 + "part.png")
    assert time.perf_counter() - tic < 1.0  # 5.7 s when the cut dropped one character per measurement
