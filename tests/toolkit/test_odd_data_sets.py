"""Odd data folders found by probing `adtk build` / `adtk eval`: each gives a clear one-line error or works."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
from PIL import Image

from adtk.runtime.errors import DataError
from adtk.toolkit.data import index_dataset, iter_images, training_list_sha256


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (90, 90, 90)).save(path)
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="a file name that is not valid UTF-8 needs a byte-named filesystem")
def test_a_training_image_whose_name_is_not_utf8_is_hashed_by_its_bytes(tmp_path):
    """`adtk build` stopped with 'internal error ... UnicodeEncodeError' after the whole fit, when the training list
    was hashed for the manifest, if one file name was not valid UTF-8 (a Latin-1 name from an old camera share)."""
    _image(tmp_path / "a.png")
    latin1 = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"))
    with open(latin1, "wb") as stream:
        stream.write((tmp_path / "a.png").read_bytes())
    index = index_dataset(tmp_path)
    assert len([image for _, image in iter_images(index.train)]) == 2
    digest = training_list_sha256(index.train)
    content = hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    size = (tmp_path / "a.png").stat().st_size
    expected = hashlib.sha256(f"a.png\0{size}\0{content}\n".encode() + b"caf\xe9.png" + f"\0{size}\0{content}\n".encode())
    assert digest == expected.hexdigest()


def test_the_hash_of_valid_names_is_unchanged(tmp_path):
    """Artefacts record this hash: names that are valid UTF-8 must hash as before (their UTF-8 bytes)."""
    _image(tmp_path / "ünï 画像.png")
    content = hashlib.sha256((tmp_path / "ünï 画像.png").read_bytes()).hexdigest()
    size = (tmp_path / "ünï 画像.png").stat().st_size
    expected = hashlib.sha256(f"ünï 画像.png\0{size}\0{content}\n".encode("utf-8")).hexdigest()
    assert training_list_sha256(index_dataset(tmp_path).train) == expected


def test_train_good_that_is_a_file_is_named_as_a_file_not_as_missing(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "good").write_text("x")
    with pytest.raises(DataError) as caught:
        index_dataset(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'train' / 'good'}: is a file, not a folder;")


def test_test_that_is_a_file_is_named_in_the_warning(tmp_path):
    _image(tmp_path / "train" / "good" / "a.png")
    (tmp_path / "test").write_text("x")
    index = index_dataset(tmp_path)
    assert f"{tmp_path / 'test'}: is a file, not a folder, so there is no test set to evaluate on" in index.warnings
