"""Tests of adtk.toolkit.data: decoding every image mode, bad files, layouts, skip-bad, hashing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from adtk.runtime.errors import DataError
from adtk.toolkit.data import (
    DatasetIndex,
    Sample,
    index_dataset,
    iter_images,
    load_images,
    read_image,
    read_mask,
    training_list_sha256,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MAGNETIC_TILE = (REPO_ROOT / ".." / "shared" / "data" / "magnetic-tile").resolve()


# ------------------------------------------------------------------------------------------
# helpers


def write_rgb(path: Path, height: int = 16, width: int = 20, value: int = 100, fmt: str = "PNG") -> Path:
    """Write a uniform RGB image and return its path (16 px high: the loaders refuse frames under MIN_FRAME_SIDE_PX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (value, value, value)).save(path, format=fmt)
    return path


def write_mask(path: Path, height: int = 16, width: int = 20, defect_rows: slice = slice(2, 4)) -> Path:
    """Write an L mask with 255 on ``defect_rows`` and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((height, width), np.uint8)
    mask[defect_rows] = 255
    Image.fromarray(mask).save(path)
    return path


def make_mvtec(root: Path) -> Path:
    """A tiny MVTec-layout folder: 3 train, 2 test/good, 2 crack (masked), 1 dent (no mask)."""
    for name in ("b.png", "a.png", "c.jpg"):
        write_rgb(root / "train" / "good" / name, fmt="JPEG" if name.endswith(".jpg") else "PNG")
    for name in ("001.png", "000.png"):
        write_rgb(root / "test" / "good" / name)
    for stem in ("000", "001"):
        write_rgb(root / "test" / "crack" / f"{stem}.png")
        write_mask(root / "ground_truth" / "crack" / f"{stem}_mask.png")
    write_rgb(root / "test" / "dent" / "000.png")
    return root


def names(samples) -> list[str]:
    return [s.path.name for s in samples]


# ------------------------------------------------------------------------------------------
# read_image: modes


@pytest.mark.parametrize(
    ("mode", "fmt", "stored", "expected"),
    [
        ("L", "PNG", 77, (77, 77, 77)),
        ("1", "PNG", 1, (255, 255, 255)),
        ("RGB", "PNG", (10, 20, 30), (10, 20, 30)),
        ("I;16", "PNG", 65535, (255, 255, 255)),
        ("I;16", "PNG", 257 * 100, (100, 100, 100)),
        ("I;16", "TIFF", 257 * 100 + 120, (100, 100, 100)),  # value/257 rounds, not clips
        ("I;16B", "TIFF", 257 * 200, (200, 200, 200)),
        ("I", "TIFF", 65535, (255, 255, 255)),
        ("F", "TIFF", 0.5, (128, 128, 128)),  # all values <= 1: the 0..1 convention
        ("F", "TIFF", 200.0, (200, 200, 200)),  # otherwise 0..255
        ("CMYK", "JPEG", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", "TIFF", (0, 255, 0, 0), (255, 0, 255)),
    ],
)
def test_read_image_converts_each_mode_to_uint8_rgb(tmp_path, mode, fmt, stored, expected):
    path = tmp_path / f"image.{fmt.lower()}"
    Image.new(mode, (5, 3), stored).save(path, format=fmt)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (3, 5, 3)
    # JPEG is lossy: allow a small error there, exact elsewhere.
    tolerance = 3 if fmt == "JPEG" else 0
    assert np.abs(image.astype(int) - np.array(expected)).max() <= tolerance


def test_read_image_composites_alpha_over_black(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (200, 100, 50, 255))
    rgba.putpixel((0, 0), (200, 100, 50, 0))  # fully transparent: black
    rgba.putpixel((1, 0), (200, 100, 50, 128))  # half: half
    rgba.save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert tuple(image[0, 0]) == (0, 0, 0)
    assert tuple(image[0, 1]) == (100, 50, 25)
    assert tuple(image[1, 3]) == (200, 100, 50)

    la = Image.new("LA", (2, 2), (90, 255))
    la.putpixel((0, 0), (90, 0))
    la.save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert tuple(image[0, 0]) == (0, 0, 0) and tuple(image[1, 1]) == (90, 90, 90)


def test_read_image_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30, 250, 250, 250] + [0] * (256 - 3) * 3)
    palette.putpixel((0, 0), 2)
    palette.save(tmp_path / "opaque.png")
    image = read_image(tmp_path / "opaque.png")
    assert tuple(image[0, 0]) == (250, 250, 250) and tuple(image[1, 2]) == (10, 200, 30)

    palette.save(tmp_path / "transparent.png", transparency=2)  # index 2 transparent
    image = read_image(tmp_path / "transparent.png")
    assert tuple(image[0, 0]) == (0, 0, 0) and tuple(image[1, 2]) == (10, 200, 30)


def test_read_image_applies_exif_orientation(tmp_path):
    pixels = np.zeros((2, 4, 3), np.uint8)  # 2 high, 4 wide, one white pixel top-left
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (4, 2, 3)
    assert image[0, 1].min() > 200  # top-left went to top-right


# ------------------------------------------------------------------------------------------
# read_image: bad files


def truncated_copy(good: Path, bad: Path, keep_fraction: float = 0.6) -> Path:
    data = good.read_bytes()
    bad.write_bytes(data[: int(len(data) * keep_fraction)])
    return bad


@pytest.fixture
def noisy_rgb() -> np.ndarray:
    # Noise so the compressed stream is long and truncation cuts real pixel data.
    return np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_data_error_naming_the_file(tmp_path, noisy_rgb, fmt):
    good = tmp_path / f"good.{fmt.lower()}"
    Image.fromarray(noisy_rgb).save(good, format=fmt)
    bad = truncated_copy(good, tmp_path / f"0042.{fmt.lower()}")
    with pytest.raises(DataError, match=r"0042\.(png|jpeg).*truncated.*--skip-bad"):
        read_image(bad)


def test_truncated_file_fails_even_if_pillow_was_told_to_accept_truncation(tmp_path, noisy_rgb):
    Image.fromarray(noisy_rgb).save(tmp_path / "good.png")
    bad = truncated_copy(tmp_path / "good.png", tmp_path / "bad.png")
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(DataError, match="bad.png"):
            read_image(bad)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "empty file"),
        ("notes.png", b"this is a text file, not a PNG\n", "unrecognised format"),
    ],
)
def test_empty_and_non_image_files_raise_data_error(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_image(tmp_path / name)
    assert name in str(caught.value) and reason in str(caught.value)
    assert "--skip-bad" in str(caught.value)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="gone.png.*not found"):
        read_image(tmp_path / "gone.png")


# ------------------------------------------------------------------------------------------
# read_mask


def test_read_mask_thresholds_soft_edges_and_uses_max_over_channels(tmp_path):
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "soft_mask.png")
    assert read_mask(tmp_path / "soft_mask.png", (1, 4)).tolist() == [[False, False, True, True]]

    coloured = np.zeros((1, 3, 3), np.uint8)
    coloured[0, 1] = (0, 0, 200)  # drawn in blue only
    Image.fromarray(coloured).save(tmp_path / "rgb_mask.png")
    mask = read_mask(tmp_path / "rgb_mask.png", (1, 3))
    assert mask.dtype == bool and mask.tolist() == [[False, True, False]]


def test_read_mask_of_wrong_size_names_both_sizes_and_files(tmp_path):
    write_mask(tmp_path / "x_mask.png", height=8, width=10)
    with pytest.raises(DataError) as caught:
        read_mask(tmp_path / "x_mask.png", (8, 12), image_path=tmp_path / "x.png")
    message = str(caught.value)
    assert "x_mask.png" in message and "x.png" in message
    assert "10x8" in message and "12x8" in message


# ------------------------------------------------------------------------------------------
# index_dataset


def test_index_mvtec_layout_labels_types_and_masks(tmp_path):
    root = make_mvtec(tmp_path / "set")
    (root / "train" / "good" / "README").write_text("not an image")
    index = index_dataset(root)
    assert isinstance(index, DatasetIndex) and index.layout == "mvtec" and index.root == root
    assert names(index.train) == ["a.png", "b.png", "c.jpg"]  # sorted, README ignored
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in index.train)
    assert [(s.defect_type, s.path.name, s.label) for s in index.test] == [
        ("good", "000.png", 0),
        ("good", "001.png", 0),
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("dent", "000.png", 1),
    ]
    crack = [s for s in index.test if s.defect_type == "crack"]
    assert [s.mask_path.name for s in crack] == ["000_mask.png", "001_mask.png"]
    assert all(s.mask_path.parent == root / "ground_truth" / "crack" for s in crack)
    dent = next(s for s in index.test if s.defect_type == "dent")
    assert dent.mask_path is None  # image-level only: allowed, but reported
    assert any("test/dent" in w and "no mask" in w for w in index.warnings)
    assert index.defect_types == ("crack", "dent")
    assert index.defects == ()


def test_index_reads_defects_folder_with_optional_masks(tmp_path):
    root = make_mvtec(tmp_path / "set")
    write_rgb(root / "defects" / "scratch" / "s1.png")
    write_rgb(root / "defects" / "scratch" / "s2.png")
    write_mask(root / "defects" / "scratch" / "masks" / "s1_mask.png")
    index = index_dataset(root)
    assert [(s.path.name, s.label, s.defect_type) for s in index.defects] == [
        ("s1.png", 1, "scratch"),
        ("s2.png", 1, "scratch"),
    ]
    assert index.defects[0].mask_path.name == "s1_mask.png" and index.defects[1].mask_path is None
    assert index.defect_types == ("crack", "dent", "scratch")


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_mvtec(tmp_path / "set")
    write_rgb(root / "train" / "good" / ".hidden.png")
    write_rgb(root / "train" / "good" / "._a.png")  # macOS resource fork
    (root / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x01")
    write_rgb(root / "test" / ".ipynb_checkpoints" / "x.png")
    write_rgb(root / "train" / "good" / "UPPER.PNG")  # extensions match case-insensitively
    index = index_dataset(root)
    assert names(index.train) == ["UPPER.PNG", "a.png", "b.png", "c.jpg"]
    assert ".ipynb_checkpoints" not in {s.defect_type for s in index.test}


def test_mask_without_its_image_raises(tmp_path):
    root = make_mvtec(tmp_path / "set")
    write_mask(root / "ground_truth" / "crack" / "007_mask.png")
    with pytest.raises(DataError, match=r"007_mask\.png.*mask without its image"):
        index_dataset(root)


def test_mask_folder_without_test_folder_raises(tmp_path):
    root = make_mvtec(tmp_path / "set")
    write_mask(root / "ground_truth" / "hole" / "000_mask.png")
    with pytest.raises(DataError, match="hole.*mask without its image"):
        index_dataset(root)


def test_missing_train_good_raises(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="folder missing") as caught:
        index_dataset(tmp_path)
    assert str(tmp_path / "train" / "good") in str(caught.value)


def test_train_good_without_images_raises(tmp_path):
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "train" / "good" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="empty folder") as caught:
        index_dataset(tmp_path)
    assert str(tmp_path / "train" / "good") in str(caught.value)


def test_root_missing_or_a_file_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        index_dataset(tmp_path / "nowhere")
    write_rgb(tmp_path / "one.png")
    with pytest.raises(DataError, match="not a data folder"):
        index_dataset(tmp_path / "one.png")


def test_plain_folder_layout(tmp_path):
    for name in ("z.bmp", "m.tif", "a.webp", "b.jpeg"):
        fmt = {".bmp": "BMP", ".tif": "TIFF", ".webp": "WEBP", ".jpeg": "JPEG"}[Path(name).suffix]
        write_rgb(tmp_path / name, fmt=fmt)
    (tmp_path / "README.md").write_text("hello")
    write_rgb(tmp_path / "sub" / "nested.png")  # sub-folders are not searched
    index = index_dataset(tmp_path)
    assert index.layout == "folder" and index.test == ()
    assert names(index.train) == ["a.webp", "b.jpeg", "m.tif", "z.bmp"]
    assert all(s.label == 0 for s in index.train)
    images, kept = load_images(index.train)
    assert [img.shape for img in images] == [(16, 20, 3)] * 4 and kept == list(index.train)


def test_plain_folder_without_images_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="empty folder"):
        index_dataset(tmp_path)


def test_test_folder_without_train_raises(tmp_path):
    write_rgb(tmp_path / "test" / "good" / "a.png")
    with pytest.raises(DataError, match="no train/"):
        index_dataset(tmp_path)


# ------------------------------------------------------------------------------------------
# load_images / iter_images


def test_load_images_stops_at_first_bad_file_without_skip_bad(tmp_path):
    write_rgb(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    index = index_dataset(tmp_path)
    with pytest.raises(DataError, match="b.png"):
        load_images(index.train)


def test_skip_bad_skips_reports_and_keeps_alignment(tmp_path):
    write_rgb(tmp_path / "a.png", value=10)
    (tmp_path / "b.png").write_text("garbage")
    write_rgb(tmp_path / "c.png", value=30)
    index = index_dataset(tmp_path)
    reported: list[str] = []
    images, kept = load_images(index.train, skip_bad=True, on_warning=reported.append)
    assert names(kept) == ["a.png", "c.png"]
    assert [int(img[0, 0, 0]) for img in images] == [10, 30]
    assert len(reported) == 1 and "b.png" in reported[0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        streamed = list(iter_images(index.train, skip_bad=True))
    assert [s.path.name for s, _ in streamed] == ["a.png", "c.png"]
    assert any("b.png" in str(w.message) for w in caught)


def test_skip_bad_with_nothing_usable_raises(tmp_path):
    samples = []
    for name in ("x.png", "y.png"):
        (tmp_path / name).write_bytes(b"")
        samples.append(Sample(tmp_path / name, 0, "good", None))
    with pytest.raises(DataError, match="no usable images"):
        load_images(samples, skip_bad=True, on_warning=lambda message: None)


# ------------------------------------------------------------------------------------------
# training_list_sha256


def test_training_list_sha256_is_stable_and_sees_one_byte(tmp_path):
    root = make_mvtec(tmp_path / "set")
    train = index_dataset(root).train
    first = training_list_sha256(train)
    assert len(first) == 64 and first == training_list_sha256(train)
    assert first == training_list_sha256(reversed(train))  # order of the list does not matter

    # The same files elsewhere give the same hash: paths are relative to the common folder.
    moved = make_mvtec(tmp_path / "elsewhere")
    assert training_list_sha256(index_dataset(moved).train) == first

    target = root / "train" / "good" / "b.png"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte; same size
    target.write_bytes(bytes(data))
    assert training_list_sha256(train) != first


def test_training_list_sha256_sees_a_renamed_file(tmp_path):
    root = make_mvtec(tmp_path / "set")
    first = training_list_sha256(index_dataset(root).train)
    (root / "train" / "good" / "b.png").rename(root / "train" / "good" / "bb.png")
    assert training_list_sha256(index_dataset(root).train) != first


# ------------------------------------------------------------------------------------------
# the real data set


@pytest.mark.realdata
@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason=f"real data set not found at {MAGNETIC_TILE}")
def test_magnetic_tile_indexes_with_expected_counts():
    index = index_dataset(MAGNETIC_TILE)
    assert index.layout == "mvtec"
    assert len(index.train) == 761
    good = [s for s in index.test if s.label == 0]
    defective = [s for s in index.test if s.label == 1]
    assert len(good) == 191 and len(defective) == 392
    assert sum(s.mask_path is not None for s in defective) == 392
    assert index.defect_types == ("blowhole", "break", "crack", "fray", "uneven")

    image = read_image(index.train[0].path)  # an 8-bit grayscale JPEG
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])
    sample = defective[0]
    mask = read_mask(sample.mask_path, read_image(sample.path).shape[:2], image_path=sample.path)
    assert mask.any()


def test_prefetched_keeps_order_raises_where_raised_and_stops_with_its_caller():
    import threading
    import time

    from adtk.toolkit.data import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))
    assert list(prefetched(iter([]))) == []

    def failing():
        yield 1
        yield 2
        raise DataError("bad image 3")

    seen = []
    with pytest.raises(DataError, match="bad image 3"):
        for item in prefetched(failing()):
            seen.append(item)
    assert seen == [1, 2]

    made = []

    def endless():
        for i in range(10**6):
            made.append(i)
            yield i

    for item in prefetched(endless()):
        if item == 3:
            break
    time.sleep(0.2)
    assert len(made) <= 6  # one ahead and one waiting at most, not the whole stream
    assert not [t for t in threading.enumerate() if t.name == "adtk-prefetch"]


def test_entries_named_like_images_that_cannot_be_read_are_indexed_reported_and_hashed_without_blocking(tmp_path):
    """A broken link, a link loop or a FIFO named like an image was left out of the index without a word; now the
    build names it (or --skip-bad reports it), and hashing the image list neither blocks on the FIFO nor stops."""
    import os

    write_rgb(tmp_path / "a.png", height=20, width=20)
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    expected = ["a.png", "broken.png", "loop.png"]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")
        expected.append("pipe.png")
    (tmp_path / "folder.png").mkdir()
    index = index_dataset(tmp_path)
    assert names(index.train) == expected
    with pytest.raises(DataError, match="broken.png: file not found"):
        load_images(index.train)
    reported: list[str] = []
    images, kept = load_images(index.train, skip_bad=True, on_warning=reported.append)
    assert names(kept) == ["a.png"]
    assert [message.split(": ")[1].rsplit("/", 1)[-1] for message in reported] == expected[1:]
    assert not any("--skip-bad" in message for message in reported)  # it was given: no hint to pass it
    assert len(training_list_sha256(index.train)) == 64
