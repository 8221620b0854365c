"""Labelled defects as fit input: the >= 10% patch rule on the feature grid and the choice of images."""

from __future__ import annotations

import numpy as np
import pytest

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.labelled_defects import (
    LabelledFeatures,
    extract_labelled_features,
    labelled_defect_samples,
    mask_fractions,
    patch_masks,
)


def test_mask_fractions_are_area_averages_on_the_grid():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 60)) < 0.3
    expected = mask.reshape(4, 10, 6, 10).mean(axis=(1, 3))  # 10x10 pixel cells
    np.testing.assert_allclose(mask_fractions(mask, (4, 6)), expected, atol=1e-6)


def test_a_patch_is_defective_from_a_tenth_of_its_area():
    mask = np.zeros((20, 20), dtype=bool)
    mask[0, 0:4] = True  # 4 of cell (0,0)'s 100 pixels: 4%
    mask[0:10, 10] = True  # 10 of cell (0,1)'s 100 pixels: exactly 10%
    mask[10:20, 10:20] = True  # cell (1,1) full
    labels = patch_masks([mask], (2, 2))[0]
    np.testing.assert_array_equal(labels, [[False, True], [False, True]])


def test_defective_patches_are_gathered_image_major():
    features = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    masks = np.zeros((2, 2, 2), dtype=bool)
    masks[0, 1, 0] = masks[1, 0, 1] = True
    labelled = LabelledFeatures(features, masks)
    np.testing.assert_array_equal(labelled.defective_patches(), [features[0, :, 1, 0], features[1, :, 0, 1]])
    assert labelled.num_defective_patches == 2


def test_defect_samples_come_from_defects_folder_and_chosen_test_types(tiny_dataset):
    from dataclasses import replace

    assert labelled_defect_samples(tiny_dataset) == []
    chosen = labelled_defect_samples(tiny_dataset, ("hole", "stain"))
    assert sorted({s.defect_type for s in chosen}) == ["hole", "stain"] and len(chosen) == 4
    with pytest.raises(ConfigError, match="no such defect type"):
        labelled_defect_samples(tiny_dataset, ("crack",))
    unmasked = replace(tiny_dataset, defects=(replace(chosen[0], mask_path=None),))
    warnings = []
    assert labelled_defect_samples(unmasked, (), warnings.append) == []
    assert "no mask" in warnings[0]
    with pytest.raises(DataError, match="defects/<type>"):
        extract_labelled_features(None, [])
