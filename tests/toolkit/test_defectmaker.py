"""DefectMaker (REB spec §3): reproducibility, the 7 balanced classes, and what the masks promise."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from adtk.toolkit.defectmaker import (
    CLASS_NAMES,
    NUM_CLASSES,
    DefectMaker,
    bezier_mask,
    box_around,
    make_shape,
    noise_fill,
    soft_mask,
)


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(0)
    # smooth gradients plus noise: distinct images, so cut-paste fills are visible
    ramp = np.linspace(0, 200, 96, dtype=np.float32)
    base = np.stack([ramp[None, :].repeat(96, 0), ramp[:, None].repeat(96, 1), np.full((96, 96), 90.0)], -1)
    return np.stack([np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8) for _ in range(4)])


def test_same_seed_same_defects_and_other_seed_other_defects(sources):
    first = DefectMaker(seed=7).make_variants(1, sources)
    again = DefectMaker(seed=7).make_variants(1, sources)
    other = DefectMaker(seed=8).make_variants(1, sources)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert any(not np.array_equal(a.image, c.image) for a, c in zip(first, other))


def test_seven_classes_and_changes_only_inside_the_mask(sources):
    maker = DefectMaker(seed=3)
    for index in range(len(sources)):
        variants = maker.make_variants(index, sources)
        assert [v.label for v in variants] == list(range(NUM_CLASSES)) and len(CLASS_NAMES) == 7
        normal = variants[0]
        assert not normal.mask.any()
        for v in variants:
            assert v.image.shape == sources[index].shape and v.image.dtype == np.uint8
            assert v.mask.shape == sources[index].shape[:2] and v.mask.dtype == np.float32
            assert 0.0 <= v.mask.min() and v.mask.max() <= 1.0
        for v in variants[1:]:
            assert v.mask.any(), CLASS_NAMES[v.label]
            changed = (v.image != normal.image).any(-1)
            assert not (changed & (v.mask == 0)).any()  # nothing outside the defect is touched
            assert changed.sum() > 0.3 * (v.mask > 0.5).sum()  # and the defect really shows


@pytest.mark.parametrize("size", [(40, 25), (7, 15), (60, 60)])
def test_bezier_mask_spans_its_box(size):
    rng = np.random.default_rng(size[0])
    for _ in range(10):
        mask = bezier_mask(size[0], size[1], rng)
        assert mask.shape == (size[1], size[0])
        rows, cols = np.nonzero(mask)
        assert rows.min() == 0 and rows.max() == size[1] - 1 and cols.min() == 0 and cols.max() == size[0] - 1
        assert mask.mean() > 0.05 and np.array_equal(ndimage.binary_fill_holes(mask), mask)  # filled, no holes


def test_shapes_respect_the_spec_boxes():
    rng = np.random.default_rng(1)
    for _ in range(20):
        rect = make_shape("rect", (256, 256), rng)
        assert 0.02 * 256 * 256 * 0.9 <= rect.shape[0] * rect.shape[1] <= 0.15 * 256 * 256 * 1.1
        scar = make_shape("scar", (256, 256), rng)
        assert max(scar.shape) <= 30 * 1.5 + 1  # 7..21 x 15..30 rotated by at most 45 degrees
        clump = make_shape("clump", (256, 256), rng)
        assert clump.sum() < clump.size  # blobs inside the outline, never the full box


def test_noise_fill_shape_and_soft_mask_range():
    rng = np.random.default_rng(2)
    fill = noise_fill(30, 12, rng)
    assert fill.shape == (12, 30, 3) and fill.dtype == np.uint8
    shape = np.zeros((20, 20), bool)
    shape[4:16, 4:16] = True
    soft = soft_mask(shape, 5)
    assert soft.max() <= 1.0 and soft[10, 10] > 0.9 and soft[0, 0] == 0.0
    assert 0 < soft[4, 4] < 0.9  # edges are softened


def test_box_is_clamped_inside_the_image():
    assert box_around((0, 0), (10, 20), (64, 64)) == (0, 0)
    assert box_around((63, 63), (10, 20), (64, 64)) == (54, 44)
    assert box_around((30, 30), (10, 20), (64, 64)) == (25, 20)


def test_cli_writes_examples_with_masks(tiny_dataset, tmp_path):
    from adtk.toolkit.cli.main import cli

    out = tmp_path / "defects"
    result = CliRunner().invoke(cli, ["defects", "--data", str(tiny_dataset.root), "--out", str(out), "-n", "2",
                                      "--size", "64"])
    assert result.exit_code == 0, result.output
    images = sorted(p for p in out.glob("*.png") if not p.stem.endswith("_mask") and p.name != "sheet.png")
    assert len(images) == 2 * NUM_CLASSES
    assert all((out / f"{p.stem}_mask.png").is_file() for p in images)
    assert (out / "sheet.png").is_file()


def test_tall_frames_keep_their_shape_so_a_fine_tune_batch_stacks():
    """The default input of tall parts is not square (toolkit/geometry.py): every variant of every source keeps the
    frame's H x W, whichever transpose was drawn, so REB's fine-tune can stack a batch of several sources."""
    from adtk.toolkit.training.finetune import _make_pass

    rng = np.random.default_rng(1)
    tall = rng.integers(0, 256, (6, 80, 32, 3), dtype=np.uint8)
    maker = DefectMaker(seed=3)
    shapes = {variant.image.shape for index in range(len(tall)) for _ in range(6)
              for variant in maker.make_variants(index, tall)}
    assert shapes == {(80, 32, 3)}
    batch, labels = _make_pass(DefectMaker(seed=4), tall, [0, 1, 2, 3], lambda x: x)
    assert batch.shape == (4 * NUM_CLASSES, 80, 32, 3) and labels.shape == (4 * NUM_CLASSES,)
