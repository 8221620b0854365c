"""Synthetic-defect validation: seeded, paired (each good image also with a defect), thin defects 1-3 px."""

from __future__ import annotations

import numpy as np
import pytest

from adtk.runtime.errors import DataError
from adtk.toolkit.validation import (ALL_KINDS, MIN_VALIDATION_IMAGES, synthetic_validation, thin_defect_mask)


def _goods(count=10, shape=(120, 300)):
    rng = np.random.default_rng(1)
    return [np.clip(rng.normal(128, 10, (*shape, 3)), 0, 255).astype(np.uint8) for _ in range(count)]


def test_every_good_image_appears_as_itself_and_with_a_defect_whose_mask_marks_changed_pixels():
    goods = _goods(12)
    data = synthetic_validation(goods, seed=0, kinds=ALL_KINDS)
    assert len(data) == 24 and data.labels.tolist() == [0, 1] * 12
    for i in range(12):
        good, defective, mask = data.frames[2 * i], data.frames[2 * i + 1], data.masks[2 * i + 1]
        assert np.array_equal(good, goods[i]) and not data.masks[2 * i].any()
        assert mask.any() and defective.shape == good.shape
        changed = np.abs(defective.astype(int) - good.astype(int)).max(-1) > 0
        assert changed[mask].mean() > 0.5  # the mask is where the defect is
    assert set(data.kinds) - {"good"} <= set(ALL_KINDS)


def test_the_same_seed_gives_the_same_set_and_another_seed_another():
    a, b, c = (synthetic_validation(_goods(), seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames)) and a.kinds == b.kinds
    assert not all(np.array_equal(x, y) for x, y in zip(a.frames, c.frames))


@pytest.mark.parametrize("kind", ["scratch", "crack"])
def test_thin_defects_are_at_most_3_px_wide_at_the_images_own_resolution(kind):
    from scipy import ndimage

    for seed in range(5):
        mask = thin_defect_mask(kind, (1250, 500), np.random.default_rng(seed))
        assert mask.any()
        # a 3 px line survives erosion by a 2-px-radius disk nowhere (the joints may leave a speck)
        eroded = ndimage.binary_erosion(mask, structure=np.ones((5, 5), bool))
        assert eroded.sum() <= 0.01 * mask.sum()


def test_too_few_held_out_images_is_a_clear_error():
    with pytest.raises(DataError, match=f"at least {MIN_VALIDATION_IMAGES} held-out good images, got 3"):
        synthetic_validation(_goods(3))


def test_several_defects_per_image_each_of_another_kind_after_the_image_itself():
    goods = _goods(10)
    one = synthetic_validation(goods, seed=2, kinds=ALL_KINDS)
    data = synthetic_validation(goods, seed=2, kinds=ALL_KINDS, defects_per_image=3)
    assert len(data) == 40 and data.labels.tolist() == [0, 1, 1, 1] * 10
    assert "each also with 3 synthetic defects" in data.description
    for i in range(10):
        group = slice(4 * i, 4 * i + 4)
        assert np.array_equal(data.frames[4 * i], goods[i])
        kinds = data.kinds[group][1:]
        assert len(set(kinds)) == 3  # three kinds, as many as there are
        assert kinds[0] == one.kinds[2 * i + 1]  # the first defect's kind is the one-defect set's
        for defective, mask in zip(data.frames[group][1:], data.masks[group][1:]):
            changed = np.abs(defective.astype(int) - goods[i].astype(int)).max(-1) > 0
            assert mask.any() and changed[mask].mean() > 0.5
    with pytest.raises(ValueError, match="at least 1"):
        synthetic_validation(goods, defects_per_image=0)
