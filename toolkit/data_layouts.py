"""Data layouts that users bring from anomalib and the public benchmarks, besides MVTec and a plain folder.

* anomalib's **Folder** layout: ``normal_dir`` (defect-free; training), ``abnormal_dir`` (defective test
  images), ``mask_dir`` (a mask per abnormal image, named like it: ``000.png`` or ``000_mask.png``) and
  ``normal_test_dir`` (defect-free test images), all relative to the data folder. Without
  ``normal_test_dir``, a seeded 20% of the normal images become the good test images, as anomalib's
  ``normal_split_ratio`` does.
* **VisA**: ``split_csv/1cls.csv`` (columns object, split, label, image, mask; paths relative to the VisA
  folder) chooses the images of one object; masks mark defects with any non-zero value.
* **MVTec LOCO**: ``train/good``, ``validation/good``, ``test/good``, ``test/logical_anomalies``,
  ``test/structural_anomalies``, and one folder of masks per defective image
  (``ground_truth/<type>/<stem>/000.png, 001.png, ...``), merged into one mask.

Each indexer returns the same :class:`~adtk.toolkit.data.DatasetIndex` as the MVTec one, and refuses a
layout that is only half present with a DataError that says which part is missing.
"""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

import numpy as np

from adtk.runtime.errors import DataError
from adtk.toolkit.samples import (
    MASK_SUFFIX,
    DatasetIndex,
    Sample,
    index_defect_folder,
    list_images,
    list_subfolders,
)

# index_dataset's layout keywords, as CLI options (`adtk build`, `adtk eval`) and BuildConfig.data_layout keys.
LAYOUT_OPTIONS = {
    "normal_dir": "Folder layout: defect-free training images (relative to --data).",
    "abnormal_dir": "Folder layout: defective test images.",
    "mask_dir": "Folder layout: a mask per abnormal image, named like it (000.png or 000_mask.png).",
    "normal_test_dir": "Folder layout: defect-free test images (default: a seeded 20% of --normal-dir).",
    "category": "VisA: the object to use (a row value of split_csv/1cls.csv's `object` column).",
}
NORMAL_TEST_FRACTION = 0.2  # anomalib Folder's default normal_split_ratio
NORMAL_TEST_SEED = 0
VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
LOCO_VALIDATION = Path("validation") / "good"


def data_layout_options(command):
    """Add --normal-dir, --abnormal-dir, --mask-dir, --normal-test-dir and --category to a click command."""
    import click

    for name, help_text in reversed(LAYOUT_OPTIONS.items()):
        command = click.option(f"--{name.replace('_', '-')}", name, default=None, help=help_text)(command)
    return command


# --------------------------------------------------------------------------------------------
# anomalib Folder
# --------------------------------------------------------------------------------------------


def _given_folder(root: Path, relative: str, flag: str) -> tuple[Path, list[Path]]:
    folder = root / relative
    if not folder.is_dir():
        raise DataError(f"{folder}: {flag} folder not found (it is taken relative to the data folder {root})")
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder}: {flag} folder has no images")
    return folder, images


def _pair_folder_masks(abnormal: list[Path], mask_folder: Path, warnings: list[str]) -> dict[Path, Path]:
    """anomalib names a mask like its image (``000.png``); ``000_mask.png`` is accepted too."""
    by_stem = {image.stem: image for image in abnormal}
    masks: dict[Path, Path] = {}
    for mask in list_images(mask_folder):
        stem = mask.stem[: -len(MASK_SUFFIX)] if mask.stem.endswith(MASK_SUFFIX) else mask.stem
        image = by_stem.get(stem)
        if image is None:
            raise DataError(f"{mask}: mask without its image: no abnormal image named {stem}.* in "
                            f"{abnormal[0].parent}; masks are matched to images by name (000.png <-> 000.png)")
        if image in masks:
            raise DataError(f"{image}: has two masks, {masks[image].name} and {mask.name}; remove one of them")
        masks[image] = mask
    missing = [image.name for image in abnormal if image not in masks]
    if missing:
        warnings.append(f"{mask_folder}: no mask for {len(missing)} of {len(abnormal)} abnormal images "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they count for "
                        "image-level metrics only")
    return masks


def index_anomalib_folder(root: Path, normal_dir: str | None, abnormal_dir: str | None, mask_dir: str | None,
                          normal_test_dir: str | None) -> DatasetIndex:
    if not normal_dir:
        raise DataError("the Folder layout needs --normal-dir (the defect-free training images); "
                        "--abnormal-dir, --mask-dir and --normal-test-dir are optional")
    if mask_dir and not abnormal_dir:
        raise DataError(f"--mask-dir {mask_dir} without --abnormal-dir: masks belong to abnormal images; "
                        "give the folder of defective images too")
    warnings: list[str] = []
    _, normal = _given_folder(root, normal_dir, "--normal-dir")
    if normal_test_dir:
        train_images = normal
        test_good = _given_folder(root, normal_test_dir, "--normal-test-dir")[1]
    elif abnormal_dir:
        order = np.random.default_rng(NORMAL_TEST_SEED).permutation(len(normal))
        num_test = int(round(NORMAL_TEST_FRACTION * len(normal)))
        test_good = sorted((normal[i] for i in order[:num_test]), key=lambda p: p.name)
        train_images = sorted((normal[i] for i in order[num_test:]), key=lambda p: p.name)
        warnings.append(f"no --normal-test-dir: {num_test} of {len(normal)} normal images (a seeded "
                        f"{NORMAL_TEST_FRACTION:.0%}, as anomalib) are test images, not training images")
    else:
        train_images, test_good = normal, []
    test = [Sample(image, 0, "good", None) for image in test_good]
    if abnormal_dir:
        abnormal_folder, abnormal = _given_folder(root, abnormal_dir, "--abnormal-dir")
        masks = _pair_folder_masks(abnormal, _given_folder(root, mask_dir, "--mask-dir")[0], warnings) \
            if mask_dir else {}
        test += [Sample(image, 1, abnormal_folder.name, masks.get(image)) for image in abnormal]
    return DatasetIndex(root=root, layout="anomalib_folder", train=tuple(Sample(p, 0, "good", None) for p in
                                                                          train_images),
                        test=tuple(test), defects=(), warnings=tuple(warnings))


# --------------------------------------------------------------------------------------------
# VisA
# --------------------------------------------------------------------------------------------


def find_visa(root: Path, category: str | None) -> tuple[Path, str | None] | None:
    """(VisA folder, object) when root is a VisA folder or one object's folder in it; else None."""
    if (root / "split_csv").is_dir():
        if not (root / VISA_SPLIT_CSV).is_file():
            raise DataError(f"{root / 'split_csv'}: VisA layout half present: no 1cls.csv (the split file with "
                            "columns object,split,label,image,mask that comes with the data set)")
        return root, category
    if (root.parent / VISA_SPLIT_CSV).is_file() and (root / "Data").is_dir():
        if category is not None and category != root.name:
            raise DataError(f"{root}: is VisA's {root.name!r} folder but --category is {category!r}")
        return root.parent, root.name
    return None


def _read_visa_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; VisA's split file has "
                            f"{','.join(VISA_COLUMNS)}")
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def index_visa(visa_root: Path, category: str | None) -> DatasetIndex:
    csv_path = visa_root / VISA_SPLIT_CSV
    rows = _read_visa_rows(csv_path)
    objects = sorted({row["object"] for row in rows})
    if category is None:
        if len(objects) != 1:
            raise DataError(f"{visa_root}: a VisA folder holds {len(objects)} objects ({', '.join(objects)}); "
                            "choose one with --category NAME, or pass the object's folder as --data")
        category = objects[0]
    if category not in objects:
        close = difflib.get_close_matches(category, objects, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(f"{csv_path}: no object {category!r}; {hint}(known: {', '.join(objects)})")
    train: list[Sample] = []
    test: list[Sample] = []
    warnings: list[str] = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if row["object"] != category:
            continue
        image = visa_root / row["image"]
        if not image.is_file():
            raise DataError(f"{csv_path}:{number}: image {row['image']} not found under {visa_root}; "
                            "VisA layout half present (the split file lists images that are not there)")
        if row["label"] not in ("normal", "anomaly") or row["split"] not in ("train", "test"):
            raise DataError(f"{csv_path}:{number}: label {row['label']!r} / split {row['split']!r}; expected "
                            "normal|anomaly and train|test")
        if row["label"] == "normal":
            (train if row["split"] == "train" else test).append(Sample(image, 0, "good", None))
            continue
        if row["split"] == "train":
            raise DataError(f"{csv_path}:{number}: an anomalous image in the train split; adtk fits on "
                            "defect-free images only (use the 1cls split)")
        mask = visa_root / row["mask"] if row["mask"] else None
        if mask is not None and not mask.is_file():
            raise DataError(f"{csv_path}:{number}: mask {row['mask']} not found under {visa_root}")
        if mask is None:
            warnings.append(f"{csv_path}:{number}: anomalous image {row['image']} has no mask (image level only)")
        test.append(Sample(image, 1, "anomaly", mask, mask_nonzero=True))
    if not train:
        raise DataError(f"{csv_path}: no train/normal rows for {category!r}")
    key = (lambda s: (s.label, str(s.path)))
    return DatasetIndex(root=visa_root / category, layout="visa", train=tuple(sorted(train, key=key)),
                        test=tuple(sorted(test, key=key)), defects=(), warnings=tuple(warnings))


# --------------------------------------------------------------------------------------------
# MVTec LOCO
# --------------------------------------------------------------------------------------------


def _has_per_image_mask_folders(root: Path) -> bool:
    ground_truth = root / "ground_truth"
    return ground_truth.is_dir() and any(
        list_subfolders(type_folder) for type_folder in list_subfolders(ground_truth))


def looks_like_mvtec_loco(root: Path) -> bool:
    return (root / "validation").is_dir() or _has_per_image_mask_folders(root)


def index_mvtec_loco(root: Path) -> DatasetIndex:
    validation_folder = root / LOCO_VALIDATION
    if not validation_folder.is_dir() or not list_images(validation_folder):
        raise DataError(f"{validation_folder}: MVTec LOCO layout half present: no validation images (LOCO has "
                        "train/good, validation/good, test/<type> and ground_truth/<type>/<stem>/)")
    warnings: list[str] = []
    train_good = root / "train" / "good"
    if not train_good.is_dir() or not list_images(train_good):
        raise DataError(f"{train_good}: MVTec LOCO layout half present: no training images")
    train = tuple(Sample(image, 0, "good", None) for image in list_images(train_good))
    validation = tuple(Sample(image, 0, "good", None) for image in list_images(validation_folder))
    test: list[Sample] = []
    test_types: set[str] = set()
    type_folders = sorted(list_subfolders(root / "test"), key=lambda p: (p.name != "good", p.name)) \
        if (root / "test").is_dir() else []
    for type_folder in type_folders:
        images = list_images(type_folder)
        test_types.add(type_folder.name)
        if type_folder.name == "good":
            test += [Sample(image, 0, "good", None) for image in images]
            continue
        mask_root = root / "ground_truth" / type_folder.name
        if images and not mask_root.is_dir():
            raise DataError(f"{mask_root}: MVTec LOCO layout half present: test/{type_folder.name}/ has "
                            f"{len(images)} images but there is no ground_truth/{type_folder.name}/ folder")
        stems = {image.stem for image in images}
        for mask_folder in list_subfolders(mask_root):
            if mask_folder.name not in stems:
                raise DataError(f"{mask_folder}: masks without their image: no test/{type_folder.name}/"
                                f"{mask_folder.name}.*")
        unmasked = []
        for image in images:
            masks = list_images(mask_root / image.stem) if (mask_root / image.stem).is_dir() else []
            if (mask_root / image.stem).is_dir() and not masks:
                raise DataError(f"{mask_root / image.stem}: empty mask folder for {image}")
            if not masks:
                unmasked.append(image.name)
            test.append(Sample(image, 1, type_folder.name, masks[0] if masks else None,
                               extra_mask_paths=tuple(masks[1:]), mask_nonzero=True))
        if unmasked:
            warnings.append(f"{mask_root}: no mask folder for {len(unmasked)} of {len(images)} images "
                            f"({', '.join(unmasked[:3])}); they count for image-level metrics only")
    if not test:
        warnings.append(f"{root / 'test'}: no test images, so there is nothing to evaluate on")
    ground_truth = root / "ground_truth"
    for mask_type in list_subfolders(ground_truth) if ground_truth.is_dir() else []:
        if mask_type.name not in test_types:
            raise DataError(f"{mask_type}: masks without their images: there is no test/{mask_type.name}/")
    defects = index_defect_folder(root, warnings)
    return DatasetIndex(root=root, layout="mvtec_loco", train=train, test=tuple(test), defects=defects,
                        warnings=tuple(warnings), validation=validation)


# --------------------------------------------------------------------------------------------
# Half-present layouts that would otherwise fall through to MVTec or a plain folder
# --------------------------------------------------------------------------------------------


def refuse_half_present(root: Path) -> None:
    """A VisA tree without its split file would index as a plain folder with no images: say what is missing."""
    raw_visa = [folder.name for folder in list_subfolders(root) if (folder / "Data" / "Images").is_dir()]
    if (root / "Data" / "Images").is_dir():
        raw_visa.append(root.name)
    if raw_visa:
        raise DataError(f"{root}: looks like VisA ({', '.join(raw_visa)}: Data/Images/) but there is no "
                        f"{VISA_SPLIT_CSV} here or in the parent folder; VisA's train/test split comes from it")

