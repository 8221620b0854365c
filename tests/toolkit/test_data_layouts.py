"""anomalib Folder, VisA and MVTec LOCO layouts on small synthetic trees: indexed like MVTec, masks read with the
layout's rules, and a half-present layout refused with a message that says what is missing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.errors import DataError
from adtk.toolkit.data import index_dataset, read_sample_mask

SIZE = (12, 10)  # (width, height) of every synthetic image


def image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((SIZE[1], SIZE[0], 3), value, np.uint8)).save(path)
    return path


def mask(path: Path, box: tuple[int, int, int, int], value: int = 255) -> Path:
    """A mask with `value` inside box (x0, y0, x1, y1) and 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = value
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------- anomalib Folder


@pytest.fixture
def folder_tree(tmp_path):
    for i in range(10):
        image(tmp_path / "ok" / f"{i:03d}.png")
    for i in range(3):
        image(tmp_path / "ok_test" / f"{i:03d}.png")
        image(tmp_path / "ng" / f"{i:03d}.png", 200)
    mask(tmp_path / "masks" / "000.png", (0, 0, 4, 4))
    mask(tmp_path / "masks" / "001_mask.png", (2, 2, 6, 6))
    return tmp_path


def test_folder_layout_with_every_dir(folder_tree):
    index = index_dataset(folder_tree, normal_dir="ok", abnormal_dir="ng", mask_dir="masks",
                          normal_test_dir="ok_test")
    assert index.layout == "anomalib_folder"
    assert [s.path.name for s in index.train] == [f"{i:03d}.png" for i in range(10)]
    assert [(s.label, s.defect_type, s.mask_path.name if s.mask_path else None) for s in index.test] == [
        (0, "good", None)] * 3 + [(1, "ng", "000.png"), (1, "ng", "001_mask.png"), (1, "ng", None)]
    assert any("no mask for 1 of 3 abnormal images" in w for w in index.warnings)
    assert read_sample_mask(index.test[3], (SIZE[1], SIZE[0])).sum() == 16


def test_folder_layout_without_normal_test_dir_holds_out_a_seeded_fifth(folder_tree):
    index = index_dataset(folder_tree, normal_dir="ok", abnormal_dir="ng")
    good_test = [s.path.name for s in index.test if s.label == 0]
    assert len(good_test) == 2 and len(index.train) == 8
    assert not set(good_test) & {s.path.name for s in index.train}
    assert good_test == [s.path.name for s in index_dataset(folder_tree, normal_dir="ok", abnormal_dir="ng").test
                         if s.label == 0]  # seeded
    assert index.test[-1].mask_path is None


@pytest.mark.parametrize("flags, message", [
    ({"abnormal_dir": "ng"}, "needs --normal-dir"),
    ({"normal_dir": "ok", "mask_dir": "masks"}, "--mask-dir masks without --abnormal-dir"),
    ({"normal_dir": "nothing"}, "--normal-dir folder not found"),
    ({"normal_dir": "ok", "abnormal_dir": "missing"}, "--abnormal-dir folder not found"),
])
def test_folder_layout_half_present(folder_tree, flags, message):
    with pytest.raises(DataError, match=message):
        index_dataset(folder_tree, **flags)


def test_folder_layout_mask_without_image(folder_tree):
    mask(folder_tree / "masks" / "007.png", (0, 0, 1, 1))
    with pytest.raises(DataError, match="007.png: mask without its image"):
        index_dataset(folder_tree, normal_dir="ok", abnormal_dir="ng", mask_dir="masks")


# ---------------------------------------------------------------- VisA


def write_visa(root: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)


@pytest.fixture
def visa_tree(tmp_path):
    rows = []
    for obj in ("candle", "pcb1"):
        for i in range(4):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            image(tmp_path / rel)
            rows.append((obj, "train" if i < 3 else "test", "normal", rel, ""))
        for i in range(2):
            rel, rel_mask = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            image(tmp_path / rel, 200)
            mask(tmp_path / rel_mask, (1, 1, 3, 4), value=1)  # VisA marks defects with 1
            rows.append((obj, "test", "anomaly", rel, rel_mask))
    write_visa(tmp_path, rows)
    return tmp_path


def test_visa_by_category_and_by_object_folder(visa_tree):
    index = index_dataset(visa_tree, category="candle")
    assert index.layout == "visa" and len(index.train) == 3
    assert [(s.label, s.defect_type) for s in index.test] == [(0, "good"), (1, "anomaly"), (1, "anomaly")]
    assert all("candle" in str(s.path) for s in (*index.train, *index.test))
    # VisA masks are 0/1: read as defects (MVTec's > 127 rule would find none)
    assert read_sample_mask(index.test[1], (SIZE[1], SIZE[0])).sum() == 6
    same = index_dataset(visa_tree / "candle")
    assert [s.path for s in same.test] == [s.path for s in index.test]


@pytest.mark.parametrize("category, message", [(None, "holds 2 objects .* choose one with --category"),
                                               ("candel", "no object 'candel'; did you mean 'candle'")])
def test_visa_needs_a_known_object(visa_tree, category, message):
    with pytest.raises(DataError, match=message):
        index_dataset(visa_tree, category=category)


def test_visa_half_present(visa_tree):
    (visa_tree / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG").unlink()
    with pytest.raises(DataError, match=r"1cls.csv:\d+: image candle/Data/Images/Anomaly/001.JPG not found"):
        index_dataset(visa_tree, category="candle")
    (visa_tree / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DataError, match="VisA layout half present: no 1cls.csv"):
        index_dataset(visa_tree)
    (visa_tree / "split_csv").rmdir()
    with pytest.raises(DataError, match="looks like VisA .* no split_csv/1cls.csv"):
        index_dataset(visa_tree)


def test_visa_split_file_with_wrong_columns(tmp_path):
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("object,image\ncandle,a.JPG\n")
    with pytest.raises(DataError, match="missing column"):
        index_dataset(tmp_path, category="candle")


# ---------------------------------------------------------------- MVTec LOCO


@pytest.fixture
def loco_tree(tmp_path):
    for i in range(4):
        image(tmp_path / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        image(tmp_path / "validation" / "good" / f"{i:03d}.png")
        image(tmp_path / "test" / "good" / f"{i:03d}.png")
        image(tmp_path / "test" / "logical_anomalies" / f"{i:03d}.png", 200)
        image(tmp_path / "test" / "structural_anomalies" / f"{i:03d}.png", 220)
    # 000 of logical_anomalies has two defect regions in two files, with LOCO-style values (not 255)
    mask(tmp_path / "ground_truth" / "logical_anomalies" / "000" / "000.png", (0, 0, 2, 2), value=39)
    mask(tmp_path / "ground_truth" / "logical_anomalies" / "000" / "001.png", (5, 5, 8, 8), value=255)
    mask(tmp_path / "ground_truth" / "logical_anomalies" / "001" / "000.png", (0, 0, 1, 1), value=1)
    for i in range(2):
        mask(tmp_path / "ground_truth" / "structural_anomalies" / f"{i:03d}" / "000.png", (3, 3, 5, 5))
    return tmp_path


def test_loco_merges_per_image_masks_and_lists_validation(loco_tree):
    index = index_dataset(loco_tree)
    assert index.layout == "mvtec_loco"
    assert len(index.train) == 4 and [s.path.parent.name for s in index.validation] == ["good", "good"]
    assert index.defect_types == ("logical_anomalies", "structural_anomalies")
    first = next(s for s in index.test if s.defect_type == "logical_anomalies")
    assert first.mask_path.name == "000.png" and [p.name for p in first.extra_mask_paths] == ["001.png"]
    merged = read_sample_mask(first, (SIZE[1], SIZE[0]))
    assert merged.sum() == 4 + 9 and merged[0, 0] and merged[6, 6]


def test_loco_half_present(loco_tree):
    import shutil

    shutil.rmtree(loco_tree / "ground_truth" / "structural_anomalies")
    with pytest.raises(DataError, match="half present: test/structural_anomalies/ has 2 images but there is no "
                                        "ground_truth/structural_anomalies/"):
        index_dataset(loco_tree)
    shutil.rmtree(loco_tree / "validation" / "good")
    with pytest.raises(DataError, match="half present: no validation images"):
        index_dataset(loco_tree)


def test_loco_mask_folder_without_image(loco_tree):
    mask(loco_tree / "ground_truth" / "logical_anomalies" / "009" / "000.png", (0, 0, 1, 1))
    with pytest.raises(DataError, match="masks without their image: no test/logical_anomalies/009"):
        index_dataset(loco_tree)


def test_mvtec_and_plain_folders_are_unchanged(tmp_path):
    image(tmp_path / "plain" / "a.png")
    assert index_dataset(tmp_path / "plain").layout == "folder"
    image(tmp_path / "mvtec" / "train" / "good" / "a.png")
    image(tmp_path / "mvtec" / "test" / "crack" / "b.png")
    mask(tmp_path / "mvtec" / "ground_truth" / "crack" / "b_mask.png", (0, 0, 2, 2), value=100)  # <= 127: none
    index = index_dataset(tmp_path / "mvtec")
    assert index.layout == "mvtec" and read_sample_mask(index.test[0], (SIZE[1], SIZE[0])).sum() == 0
    with pytest.raises(DataError, match="--category 'x' is for VisA trees"):
        index_dataset(tmp_path / "mvtec", category="x")
