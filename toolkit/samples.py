"""The index of a data folder: Sample, DatasetIndex, and the listing and mask pairing every layout shares.

Its own module so that the layout readers (data.py's MVTec and plain folders, data_layouts.py's anomalib Folder,
VisA and MVTec LOCO) build on it without importing each other (tests/test_import_graph.py: no circles).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adtk.runtime.errors import DataError
from adtk.runtime.images import IMAGE_EXTENSIONS

MASK_SUFFIX = "_mask"
"""A mask for image ``<stem>.<ext>`` is named ``<stem>_mask.<image ext>`` (MVTec convention)."""

# --------------------------------------------------------------------------------------------
# Dataset index
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image of a data set."""

    path: Path
    label: int  # 0 = good, 1 = defective
    defect_type: str  # "good" or the name of the defect folder
    mask_path: Path | None  # None for good images, and for defects without a mask (image-level only)
    # MVTec LOCO: the image's other mask files (one per defect region), merged with mask_path by read_sample_mask.
    extra_mask_paths: tuple[Path, ...] = ()
    # Masks whose defective pixels are any non-zero value (VisA: 0/1; LOCO: one value per defect), not > 127.
    mask_nonzero: bool = False


@dataclass(frozen=True)
class DatasetIndex:
    """The images of one data folder, sorted deterministically (by folder, then file name)."""

    root: Path
    layout: str  # "mvtec", "folder" (plain), "anomalib_folder", "visa" or "mvtec_loco"
    train: tuple[Sample, ...]  # defect-free training images
    test: tuple[Sample, ...]  # test/good then test/<type> images; empty for a plain folder
    defects: tuple[Sample, ...]  # labelled images from root/defects/<type>/; empty if absent
    warnings: tuple[str, ...] = ()  # things that are allowed but worth telling the user
    validation: tuple[Sample, ...] = ()  # MVTec LOCO's validation/good (defect-free); empty elsewhere

    @property
    def defect_types(self) -> tuple[str, ...]:
        """Sorted names of the defect types in test/ and defects/ (never "good")."""
        return tuple(
            sorted({s.defect_type for s in (*self.test, *self.defects) if s.label == 1})
        )


def _is_hidden(path: Path) -> bool:
    # Covers .DS_Store, macOS "._name" resource forks and folders such as .ipynb_checkpoints.
    return path.name.startswith(".")


def _is_image_file(path: Path) -> bool:
    # Anything named like an image but a folder: a broken link, a link loop or a FIFO is listed too, so that the
    # decoder names it (or --skip-bad reports it) instead of the index leaving it out without a word.
    return not _is_hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name."""
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def list_subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p)), key=lambda p: p.name)


def _mask_stem(mask_path: Path) -> str | None:
    """``"0042"`` for ``0042_mask.png``; None when the name lacks the ``_mask`` suffix."""
    stem = mask_path.stem
    if stem.lower().endswith(MASK_SUFFIX) and len(stem) > len(MASK_SUFFIX):
        return stem[: -len(MASK_SUFFIX)]
    return None


def _images_by_stem(images: list[Path]) -> dict[str, Path]:
    """Map stem -> image; two images sharing a stem would make mask pairing ambiguous."""
    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            raise DataError(
                f"{image.parent}: {by_stem[image.stem].name} and {image.name} share the name "
                f"{image.stem!r}, so a mask {image.stem}{MASK_SUFFIX}.png could belong to either; "
                "rename or remove one of them"
            )
        by_stem[image.stem] = image
    return by_stem


def pair_masks(
    images: list[Path], mask_folder: Path, image_folder_label: str, pending_warnings: list[str]
) -> dict[Path, Path]:
    """Pair each image with ``mask_folder/<stem>_mask.<ext>``.

    Returns image -> mask for the images that have one. Raises DataError for a mask whose
    image does not exist, or two masks for one image. Images without a mask are allowed
    (image-level labels only) and reported in ``pending_warnings``.
    """
    by_stem = _images_by_stem(images)
    mask_of_image: dict[Path, Path] = {}
    if mask_folder.is_dir():
        for mask in list_images(mask_folder):
            stem = _mask_stem(mask)
            if stem is None:
                pending_warnings.append(
                    f"{mask}: ignored, a mask must be named <image stem>{MASK_SUFFIX}.png"
                )
                continue
            image = by_stem.get(stem)
            if image is None:
                raise DataError(
                    f"{mask}: mask without its image: no {image_folder_label}/{stem}.* exists; "
                    "remove the mask or restore the image"
                )
            if image in mask_of_image:
                raise DataError(
                    f"{image}: has two masks, {mask_of_image[image].name} and {mask.name}; "
                    "remove one of them"
                )
            mask_of_image[image] = mask
    unmasked = [image.name for image in images if image not in mask_of_image]
    if unmasked:
        examples = ", ".join(unmasked[:3]) + (", ..." if len(unmasked) > 3 else "")
        pending_warnings.append(
            f"{image_folder_label}: {len(unmasked)} of {len(images)} images have no mask in "
            f"{mask_folder} ({examples}); they count for image-level metrics only"
        )
    return mask_of_image


def index_defect_folder(
    root: Path, pending_warnings: list[str]
) -> tuple[Sample, ...]:
    """Samples of ``root/defects/<type>/*`` with masks from ``root/defects/<type>/masks/``."""
    defects_folder = root / "defects"
    if not defects_folder.is_dir():
        return ()
    samples: list[Sample] = []
    for type_folder in list_subfolders(defects_folder):
        images = list_images(type_folder)
        if not images:
            pending_warnings.append(f"{type_folder}: no images, ignored")
            continue
        masks = pair_masks(images, type_folder / "masks", f"defects/{type_folder.name}", pending_warnings)
        samples.extend(Sample(image, 1, type_folder.name, masks.get(image)) for image in images)
    return tuple(samples)
