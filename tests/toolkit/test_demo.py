"""Tests of adtk.toolkit.demo: the self-made example data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.data import index_dataset, read_image, read_mask
from adtk.toolkit.demo import DEFECT_TYPES, README_MARKER, make_example_dataset

SMALL = dict(num_train=4, num_test_good=2, num_test_defect=6, image_size_px=64)


def file_bytes(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("example")
    return out_dir, make_example_dataset(out_dir, seed=0, **SMALL)


def test_example_set_indexes_with_the_requested_counts(example):
    out_dir, returned = example
    index = index_dataset(out_dir)
    assert index == returned and index.layout == "mvtec" and index.warnings == ()
    assert len(index.train) == 4
    assert sum(s.label == 0 for s in index.test) == 2
    defective = [s for s in index.test if s.label == 1]
    assert len(defective) == 6 and index.defect_types == tuple(sorted(DEFECT_TYPES))
    assert all(s.mask_path is not None for s in defective)


def test_images_vary_in_size_around_the_nominal_one(example):
    _, index = example
    shapes = {read_image(s.path).shape for s in (*index.train, *index.test)}
    assert len(shapes) > 1
    assert all(57 <= h <= 71 and 57 <= w <= 71 and c == 3 for h, w, c in shapes)


def test_masks_are_binary_non_empty_and_small(example):
    _, index = example
    for sample in index.test:
        if sample.label == 0:
            continue
        image = read_image(sample.path)
        mask = read_mask(sample.mask_path, image.shape[:2], image_path=sample.path)
        assert 0.004 <= mask.mean() <= 0.06, (sample.path, mask.mean())
        # The defect is visible: pixels under the mask differ from the rest of the image.
        inside, outside = image[mask].astype(float).mean(0), image[~mask].astype(float).mean(0)
        assert np.abs(inside - outside).max() > 10, sample.path
        raw = np.unique(np.asarray(Image.open(sample.mask_path)))
        assert set(raw.tolist()) <= {0, 255}


def test_readme_states_the_source_licence(example):
    out_dir, _ = example
    readme = (out_dir / "README.txt").read_text(encoding="utf-8")
    assert readme.splitlines()[0] == README_MARKER
    assert "skimage.data.brick()" in readme and "Creative Commons CC0 License" in readme


def test_same_seed_gives_identical_files_and_other_seeds_differ(example, tmp_path):
    out_dir, _ = example
    again = make_example_dataset(tmp_path / "again", seed=0, **SMALL)
    assert file_bytes(again.root) == file_bytes(out_dir)
    other = make_example_dataset(tmp_path / "other", seed=1, **SMALL)
    first, second = file_bytes(out_dir), file_bytes(other.root)
    images = [name for name in first if name.endswith(".png") and name in second]
    assert images and all(first[name] != second[name] for name in images)


def test_rerun_replaces_an_earlier_example_set_but_not_other_folders(tmp_path):
    out_dir = tmp_path / "set"
    make_example_dataset(out_dir, seed=0, **SMALL)
    smaller = make_example_dataset(
        out_dir, seed=0, num_train=2, num_test_good=1, num_test_defect=3, image_size_px=64
    )
    assert len(smaller.train) == 2 and len(smaller.test) == 4  # no leftovers of the first run

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not empty"):
        make_example_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_bad_arguments_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="texture"):
        make_example_dataset(tmp_path / "a", texture="marble")
    with pytest.raises(ConfigError, match="image_size_px"):
        make_example_dataset(tmp_path / "b", image_size_px=8)


def test_other_textures_load_offline(tmp_path):
    index = make_example_dataset(
        tmp_path / "gravel",
        texture="gravel",
        num_train=1,
        num_test_good=0,
        num_test_defect=3,
        image_size_px=48,
    )
    assert len(index.train) == 1 and len(index.test) == 3
