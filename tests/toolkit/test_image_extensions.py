"""Which files count as images when a folder is listed: exactly those the decoder opens when named directly.

.gif, .ppm, .pgm (and the other PNM names) decoded when a file was given by name, but a data folder, `adtk predict
DIR` and a watched folder left them out without a word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.errors import DataError
from adtk.runtime.images import DECODABLE_FORMATS, IMAGE_EXTENSIONS, expand_image_paths, read_image
from adtk.toolkit.data import index_dataset, iter_images

COLOUR = (10, 200, 30)


def _frame(mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", (24, 20), COLOUR)
    return image.convert(mode)


# name -> how Pillow writes it; every one is a format the decoder opens
WRITERS = {
    "a.gif": lambda path: _frame().save(path, format="GIF"),
    "b.ppm": lambda path: _frame().save(path, format="PPM"),
    "c.pgm": lambda path: _frame("L").save(path, format="PPM"),
    "d.pbm": lambda path: _frame("1").save(path, format="PPM"),
    "e.pnm": lambda path: _frame().save(path, format="PPM"),
    "f.jfif": lambda path: _frame().save(path, format="JPEG"),
    "g.PNG": lambda path: _frame().save(path, format="PNG"),
}


def test_the_list_is_every_extension_pillow_registers_for_the_decodable_formats():
    """Written out (every Pillow lists the same files), so checked against this Pillow's registry both ways."""
    Image.init()
    registered = {ext for ext, fmt in Image.registered_extensions().items() if fmt in DECODABLE_FORMATS}
    assert registered <= IMAGE_EXTENSIONS, f"decodable but not listed in a folder: {registered - IMAGE_EXTENSIONS}"
    assert IMAGE_EXTENSIONS - registered <= {".pfm"}  # PFM: Pillow >= 10.3 only, absent in older ones
    assert not {".jp2", ".tga", ".psd", ".ico", ".eps"} & IMAGE_EXTENSIONS  # the decoder refuses these formats


def test_a_folder_lists_and_decodes_the_files_a_named_path_decodes(tmp_path):
    for name, write in WRITERS.items():
        write(tmp_path / name)
    (tmp_path / "h.tga").write_bytes(b"\x00" * 64)  # a format the decoder refuses: not listed
    (tmp_path / "notes.txt").write_text("x")
    index = index_dataset(tmp_path)
    assert sorted(s.path.name for s in index.train) == sorted(WRITERS)
    assert sorted(name.as_posix() for _, name in expand_image_paths([tmp_path])) == sorted(WRITERS)
    for sample, image in iter_images(index.train):
        named = read_image(sample.path)  # the single-file path: same pixels
        assert np.array_equal(image, named) and image.shape == (20, 24, 3), sample.path.name
        if sample.path.suffix.lower() in (".gif", ".ppm", ".pnm", ".png"):  # lossless colour
            assert tuple(image[5, 5]) == COLOUR, sample.path.name


def test_a_multi_frame_gif_gives_its_first_frame_in_a_folder_and_by_name(tmp_path):
    frames = [Image.new("RGB", (24, 20), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=40)
    with Image.open(tmp_path / "anim.gif") as opened:
        assert opened.n_frames == 3
    (_, image), = list(iter_images(index_dataset(tmp_path).train))
    assert tuple(image[0, 0]) == tuple(read_image(tmp_path / "anim.gif")[0, 0]) == (255, 0, 0)


def test_a_folder_of_only_unlisted_formats_names_the_listed_extensions(tmp_path):
    (tmp_path / "frame.jp2").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=r"empty folder, no images \(.*\.gif.*\.pgm") as caught:
        index_dataset(tmp_path)
    assert "\n" not in str(caught.value)
