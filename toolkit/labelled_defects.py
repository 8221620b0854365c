"""Labelled defect images as fit input (seed 003; spec softcore_semlp_labeled_patchcore.md B.2.4).

A method that learns from known defects declares `uses_labelled_defects = True`; the build then gives its
fit a LabelledFeatures: the features of the labelled defect images (the same pipeline as the good images)
and, per patch, whether it is defective. The defect images come from the data set's ``defects/<type>/``
folder (with masks in ``defects/<type>/masks/``) and, on request, from ``test/<type>`` folders.

Patch labels: the binary mask is area-averaged onto the feature grid (PIL's BOX filter = cv2 INTER_AREA)
giving the masked fraction of every patch; a patch is defective when the fraction is >= 0.1 (B.2.4).
Patches of defect images below 0.1 are neither defective nor good: the methods drop them (B.9.4). The
model input is a plain resize of the whole frame (toolkit/preprocess.py), so the grid covers the whole
mask and the fraction is taken from the mask at its own resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.data import DatasetIndex, Sample, iter_images, read_sample_mask

DEFECT_PATCH_FRACTION = 0.1  # spec B.2.4: "at least a tenth of the pixels"


@dataclass(frozen=True)
class LabelledFeatures:
    features: np.ndarray  # float32 [K, D, h, w], the defect images' patch features
    patch_masks: np.ndarray  # bool [K, h, w], True = defective patch (masked fraction >= 0.1)

    @property
    def num_defective_patches(self) -> int:
        return int(self.patch_masks.sum())

    def defective_patches(self) -> np.ndarray:
        """[P, D] features of the defective patches (image-major, then row-major order)."""
        patches = self.features.transpose(0, 2, 3, 1)  # [K, h, w, D]
        return np.ascontiguousarray(patches[self.patch_masks], dtype=np.float32)


def mask_fractions(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """bool mask [H, W] -> float32 [h, w]: the masked fraction of every grid cell (area averaging)."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.float32), mode="F")
    return np.asarray(image.resize((grid_hw[1], grid_hw[0]), Image.BOX), dtype=np.float32)


def patch_masks(masks: Iterable[np.ndarray], grid_hw: tuple[int, int],
                fraction: float = DEFECT_PATCH_FRACTION) -> np.ndarray:
    """bool masks [H_i, W_i] -> bool [K, h, w]: cells whose masked fraction is >= `fraction`."""
    # 1e-6: area averages of exact tenths (e.g. 0.1 of a 10-pixel cell) come out as 0.09999999 in float32
    return np.stack([mask_fractions(m, grid_hw) >= fraction - 1e-6 for m in masks])


def labelled_defect_samples(index: DatasetIndex, from_test_types: Sequence[str] = (), warn=print) -> list[Sample]:
    """The labelled defect images to fit on: every ``defects/`` image plus ``test/<type>`` for the given types.

    Images without a mask cannot label patches: they are skipped with a warning.
    """
    unknown = sorted(set(from_test_types) - {s.defect_type for s in index.test if s.label == 1})
    if unknown:
        known = sorted({s.defect_type for s in index.test if s.label == 1})
        raise ConfigError(f"--defects-from-test {','.join(unknown)}: no such defect type in {index.root}/test "
                          f"(types there: {', '.join(known) or 'none'})")
    chosen = [*index.defects, *(s for s in index.test if s.label == 1 and s.defect_type in set(from_test_types))]
    unmasked = [s for s in chosen if s.mask_path is None]
    if unmasked:
        warn(f"{len(unmasked)} labelled defect images have no mask and are not used to fit "
             f"(e.g. {unmasked[0].path}); add <stem>_mask.png to learn from them")
    return [s for s in chosen if s.mask_path is not None]


def extract_labelled_features(pipeline, samples: Sequence[Sample], skip_bad: bool = False,
                              on_warning=None) -> LabelledFeatures:
    """Features of the defect images through the build's pipeline, with their masks on the feature grid."""
    if not samples:
        raise DataError("this method learns from labelled defects, but none were found: put defect images "
                        "in DATA/defects/<type>/ with masks in DATA/defects/<type>/masks/<stem>_mask.png, "
                        "or pick test folders with --defects-from-test TYPE[,TYPE]")
    features, used = pipeline.features(samples, skip_bad, on_warning=on_warning)
    grid_hw = tuple(features.shape[-2:])
    masks = (read_sample_mask(s, image.shape[:2]) for s, image in iter_images(used))
    labels = patch_masks(masks, grid_hw)
    if not labels.any():
        raise DataError(f"none of the {len(used)} labelled defect images has a patch that is at least "
                        f"{DEFECT_PATCH_FRACTION:.0%} masked on the {grid_hw[0]}x{grid_hw[1]} feature grid; "
                        "check the masks, or use a larger --size")
    return LabelledFeatures(features, labels)


def defects_manifest_entry(samples: Sequence[Sample], labelled: LabelledFeatures) -> dict:
    """What the artefact records about the labelled defects it learnt from (provenance, not data)."""
    from adtk.toolkit.data import training_list_sha256

    return {"num_images": len(samples), "types": sorted({s.defect_type for s in samples}),
            "num_defective_patches": labelled.num_defective_patches, "patch_fraction": DEFECT_PATCH_FRACTION,
            "list_sha256": training_list_sha256(samples)}
