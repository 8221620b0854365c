"""Reading images and masks, and indexing data folders (numpy + Pillow only, no torch).

Two layouts are understood:

* MVTec / Folder layout::

      root/train/good/*                         defect-free training images
      root/test/good/*                          defect-free test images
      root/test/<defect type>/*                 defective test images
      root/ground_truth/<defect type>/<stem>_mask.png   pixel masks (optional per image)

* a plain folder of unlabelled images (no ``train/`` folder): every image directly inside it is a
  training image and there is no test set.

Either layout may also hold ``root/defects/<type>/*`` (labelled defect images, e.g. for threshold
calibration) with optional masks in ``root/defects/<type>/masks/<stem>_mask.png``.

Every image becomes uint8 RGB [H, W, 3] whatever its mode or bit depth, and every user-caused
problem (missing folder, corrupt file, mask without image, mask of the wrong size) raises
:class:`~adtk.runtime.errors.DataError` with a message that names the file and says how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from adtk.runtime.errors import DataError, one_line
from adtk.runtime.images import (  # noqa: F401  (re-exported: the toolkit's image API)
    IMAGE_EXTENSIONS,
    MASK_THRESHOLD,
    SKIP_BAD_HINT,
    read_image,
    read_mask,
)
from adtk.runtime.pixels import MIN_FRAME_SIDE_PX, check_frame_side

from adtk.toolkit.samples import (  # noqa: F401  (re-exported: data.py is the toolkit's data API)
    MASK_SUFFIX,
    DatasetIndex,
    Sample,
    index_defect_folder,
    list_images,
    list_subfolders,
    pair_masks,
)

_HASH_CHUNK_BYTES = 1 << 20

def _index_mvtec(root: Path, pending_warnings: list[str]) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(train, test) samples of an MVTec-layout folder."""
    train_good = root / "train" / "good"
    if not train_good.is_dir():
        # a file of that name is not "missing": say what is there
        found = "is a file, not a folder" if train_good.exists() else "folder missing"
        raise DataError(
            f"{train_good}: {found}; an MVTec-layout data set needs its defect-free "
            "training images in train/good/"
        )
    train_images = list_images(train_good)
    if not train_images:
        raise DataError(
            f"{train_good}: empty folder, no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "put the defect-free training images there"
        )
    for other in list_subfolders(root / "train"):
        if other.name != "good":
            pending_warnings.append(f"{other}: ignored, only train/good/ is used for training")
    train = tuple(Sample(image, 0, "good", None) for image in train_images)

    test_folder = root / "test"
    ground_truth = root / "ground_truth"
    test: list[Sample] = []
    test_types: set[str] = set()
    if test_folder.is_dir():
        # "good" first, then the defect types by name: a stable order for reports.
        type_folders = sorted(list_subfolders(test_folder), key=lambda p: (p.name != "good", p.name))
        for type_folder in type_folders:
            images = list_images(type_folder)
            test_types.add(type_folder.name)
            if not images:
                pending_warnings.append(f"{type_folder}: no images, ignored")
                continue
            if type_folder.name == "good":
                # Masks of good images (all black, in some data sets) carry nothing: not paired.
                test.extend(Sample(image, 0, "good", None) for image in images)
                continue
            masks = pair_masks(
                images, ground_truth / type_folder.name, f"test/{type_folder.name}", pending_warnings
            )
            test.extend(Sample(image, 1, type_folder.name, masks.get(image)) for image in images)
    else:
        found = "is a file, not a folder" if test_folder.exists() else "folder missing"
        pending_warnings.append(f"{test_folder}: {found}, so there is no test set to evaluate on")

    if ground_truth.is_dir():
        for mask_folder in list_subfolders(ground_truth):
            if mask_folder.name not in test_types and list_images(mask_folder):
                raise DataError(
                    f"{mask_folder}: mask without its image: there is no test/{mask_folder.name}/ "
                    "folder for these masks; remove them or restore the images"
                )
    return train, tuple(test)


def index_dataset(root: str | Path, *, normal_dir: str | None = None, abnormal_dir: str | None = None,
                  mask_dir: str | None = None, normal_test_dir: str | None = None,
                  category: str | None = None) -> DatasetIndex:
    """Index a data folder. The layout is found from what the folder holds:

    * anomalib's Folder layout when any of ``normal_dir``/``abnormal_dir``/``mask_dir``/``normal_test_dir``
      is given (folders relative to ``root``; see :mod:`adtk.toolkit.data_layouts`);
    * VisA when ``root/split_csv/1cls.csv`` exists (``category`` names the object), or ``root`` is one
      object's folder of a VisA tree (``root/../split_csv/1cls.csv``);
    * MVTec LOCO when ``root/validation/`` exists or masks are per-image folders
      (``ground_truth/<type>/<stem>/000.png``);
    * MVTec when ``root/train/`` exists; otherwise a plain folder of good images.

    Args:
        root: the data folder; paths in the index are built from it as given.

    Returns:
        DatasetIndex with sorted samples; ``warnings`` lists allowed oddities (defect images
        without masks, ignored files) for the caller to show.

    Raises:
        DataError: root missing or not a folder; train/good missing or empty; a plain folder
            with no images; a mask whose image does not exist; ambiguous mask pairing; a layout
            that is only half present (the message says which part is missing).
    """
    from adtk.toolkit import data_layouts

    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a data folder; pass the folder that holds the images")
    folder_dirs = {"normal_dir": normal_dir, "abnormal_dir": abnormal_dir, "mask_dir": mask_dir,
                   "normal_test_dir": normal_test_dir}
    if any(folder_dirs.values()):
        return data_layouts.index_anomalib_folder(root, **folder_dirs)
    visa = data_layouts.find_visa(root, category)
    if visa is not None:
        return data_layouts.index_visa(*visa)
    if category is not None:
        raise DataError(f"{root}: --category {category!r} is for VisA trees (split_csv/1cls.csv), and there is "
                        "none here or in the parent folder")
    if data_layouts.looks_like_mvtec_loco(root):
        return data_layouts.index_mvtec_loco(root)
    data_layouts.refuse_half_present(root)

    pending_warnings: list[str] = []
    if (root / "train").is_dir():
        layout = "mvtec"
        train, test = _index_mvtec(root, pending_warnings)
    else:
        if (root / "test").is_dir() or (root / "ground_truth").is_dir():
            # Treating such a folder as a plain folder would silently train on nothing useful.
            raise DataError(
                f"{root}: has test/ or ground_truth/ but no train/; an MVTec-layout data set "
                "needs train/good/ with the defect-free training images"
            )
        layout = "folder"
        train_images = list_images(root)
        if not train_images:
            raise DataError(
                f"{root}: empty folder, no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) directly "
                "inside it (sub-folders are not searched); use a plain folder of defect-free "
                "images or the MVTec layout train/good/, test/<type>/, ground_truth/<type>/"
            )
        train = tuple(Sample(image, 0, "good", None) for image in train_images)
        test = ()
    defects = index_defect_folder(root, pending_warnings)
    return DatasetIndex(
        root=root,
        layout=layout,
        train=train,
        test=test,
        defects=defects,
        warnings=tuple(pending_warnings),
    )


def read_sample_mask(sample: Sample, expected_hw: tuple[int, int]) -> np.ndarray:
    """bool [H, W] defect mask of a sample with a mask: its mask files (one, or several for MVTec LOCO)
    merged, with the layout's rule for which pixel values are defective."""
    threshold = 0 if sample.mask_nonzero else MASK_THRESHOLD
    mask = read_mask(sample.mask_path, expected_hw, sample.path, threshold=threshold)
    for extra in sample.extra_mask_paths:
        mask |= read_mask(extra, expected_hw, sample.path, threshold=threshold)
    return mask


# --------------------------------------------------------------------------------------------
# Loading many images
# --------------------------------------------------------------------------------------------


def _describe_folder(samples: list[Sample]) -> str:
    parents = {str(s.path.parent) for s in samples}
    return parents.pop() if len(parents) == 1 else os.path.commonpath(sorted(parents)) or "."


def iter_images(
    samples: Iterable[Sample],
    skip_bad: bool = False,
    on_warning: Callable[[str], None] | None = None,
    min_side_px: int = MIN_FRAME_SIDE_PX,
) -> Iterator[tuple[Sample, np.ndarray]]:
    """Decode samples one at a time, yielding (sample, uint8 RGB [H, W, 3]).

    Args:
        samples: the samples to read, in order.
        skip_bad: False: the first bad file raises DataError. True: a bad file is reported
            through ``on_warning`` and not yielded.
        on_warning: called with one message per skipped file; default ``warnings.warn``.
        min_side_px: an image with a shorter side is a bad file too. Default: the runtime's
            MIN_FRAME_SIDE_PX, so no image the runtime would refuse to score is trained, calibrated or
            evaluated on (a model fitted on such frames could never be used on them).

    Raises:
        DataError: a bad file (skip_bad False), or every sample was bad (skip_bad True).
    """
    report = on_warning if on_warning is not None else (lambda message: warnings.warn(message, stacklevel=3))
    seen: list[Sample] = []
    yielded = 0
    for sample in samples:
        seen.append(sample)
        try:
            image = read_image(sample.path)
            check_frame_side(image.shape[1], image.shape[0], str(sample.path), min_side_px, SKIP_BAD_HINT)
        except DataError as error:
            if not skip_bad:
                raise
            # one line (a file name may hold a newline or ESC codes), without the hint to pass --skip-bad
            message = str(error)
            if message.endswith(f"; {SKIP_BAD_HINT}"):
                message = message[:-len(f"; {SKIP_BAD_HINT}")]
            report(f"skipped: {one_line(message)}")
            continue
        yielded += 1
        yield sample, image
    if seen and yielded == 0:
        raise DataError(
            f"no usable images in {_describe_folder(seen)}: all {len(seen)} files were skipped as "
            "undecodable or too small (see the warnings above)"
        )


def prefetched(items):
    """Iterate `items` one step ahead on a worker thread -> the same items, in order. An exception raised by
    `items` reaches the caller at the item where it was raised; a caller that stops early stops the worker.

    Why: the build's feature extraction decodes and resizes a batch in torch, then runs the trunk in
    onnxruntime, which releases the GIL: with the next batch prepared meanwhile, the default build's features
    took 3.8-3.9 s instead of 4.5-4.9 (2 x86 cores). The standard library's executors keep every result of a
    map, not one ahead."""
    slots: queue.Queue = queue.Queue(maxsize=1)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, None))
            slots.put((done, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            slots.put((done, error))

    worker = threading.Thread(target=produce, daemon=True, name="adtk-prefetch")
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full slot
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def load_images(
    samples: Iterable[Sample],
    skip_bad: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[list[np.ndarray], list[Sample]]:
    """Decode all samples into memory; see :func:`iter_images` for ``skip_bad``/``on_warning``.

    Returns:
        (images, kept_samples): images[i] is uint8 RGB [H_i, W_i, 3] of kept_samples[i]; with
        skip_bad, bad files are missing from both lists so they stay aligned.
    """
    images: list[np.ndarray] = []
    kept: list[Sample] = []
    for sample, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
        kept.append(sample)
        images.append(image)
    return images, kept


# --------------------------------------------------------------------------------------------
# Identifying a training set
# --------------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in chunks so large files stay cheap; (-1, "unreadable") for one
    that cannot be read as a regular file (a broken link, a FIFO, no permission): --skip-bad skipped it already,
    and a held-out image is hashed too, so neither a FIFO (it would block) nor the error may stop the build here."""
    from adtk.runtime.regular_files import open_regular

    digest = hashlib.sha256()
    size_bytes = 0
    try:
        with open_regular(path) as stream:
            while chunk := stream.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
                size_bytes += len(chunk)
    except OSError:
        return -1, "unreadable"
    return size_bytes, digest.hexdigest()


def training_list_sha256(samples: Iterable[Sample]) -> str:
    """A sha256 (hex) that identifies a set of training files by name and content.

    Hashes, in sorted order of the paths relative to the samples' common folder (so moving the
    data set elsewhere keeps the hash): one line ``<relative posix path>\\0<size>\\0<sha256>\\n``
    per file. It changes when any file's bytes, name or the file list change.
    """
    paths = [Path(s.path) for s in samples]
    if not paths:
        return hashlib.sha256(b"").hexdigest()
    common = Path(os.path.commonpath([str(p.parent.absolute()) for p in paths]))
    relative = sorted(
        (p.absolute().relative_to(common).as_posix(), p) for p in paths
    )
    digest = hashlib.sha256()
    for relative_path, path in relative:
        size_bytes, content_sha = _file_sha256(path)
        # the name's bytes as on disk: a name that is not valid UTF-8 (a Latin-1 name from an old camera share) holds
        # surrogate escapes that .encode("utf-8") refuses; for every valid name these are the same bytes as UTF-8
        digest.update(os.fsencode(relative_path) + f"\0{size_bytes}\0{content_sha}\n".encode("utf-8"))
    return digest.hexdigest()
