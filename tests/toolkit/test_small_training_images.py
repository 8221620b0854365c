"""Images under the runtime's minimum frame side (MIN_FRAME_SIDE_PX) are bad files for the toolkit's loaders too.

`adtk build` trained (and calibrated) on 10 x 8 px images that the artefact's runtime then refuses to score; now such
an image stops the build naming the file and its size, or is skipped and reported with --skip-bad, like a corrupt one."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from adtk.runtime.errors import DataError
from adtk.runtime.pixels import MIN_FRAME_SIDE_PX
from adtk.toolkit.cli.main import cli
from adtk.toolkit.data import Sample, iter_images, load_images


def _write(path, width: int, height: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 90, 90)).save(path)
    return Sample(path, 0, "good", None)


def test_an_image_under_the_minimum_side_is_a_bad_file_by_default(tmp_path):
    side = MIN_FRAME_SIDE_PX
    samples = [_write(tmp_path / "a_ok.png", side, side), _write(tmp_path / "b_narrow.png", side - 1, 200),
               _write(tmp_path / "c_ok.png", 40, side)]
    with pytest.raises(DataError) as caught:
        load_images(samples)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "b_narrow.png"))
    assert f"image of {side - 1}x200 px is too small ({side} px minimum)" in message and "--skip-bad" in message

    reported: list[str] = []
    images, kept = load_images(samples, skip_bad=True, on_warning=reported.append)
    assert [s.path.name for s in kept] == ["a_ok.png", "c_ok.png"] and len(images) == 2
    assert reported == [f"skipped: {tmp_path / 'b_narrow.png'}: image of {side - 1}x200 px is too small "
                        f"({side} px minimum)"]


def test_only_too_small_images_say_so_with_skip_bad(tmp_path):
    samples = [_write(tmp_path / f"{i}.png", 10, 8) for i in range(2)]
    with pytest.raises(DataError, match="no usable images .* all 2 files were skipped as undecodable or too small"):
        list(iter_images(samples, skip_bad=True, on_warning=lambda message: None))


@pytest.fixture(scope="module")
def data_with_a_tiny_training_image(tiny_dataset, tmp_path_factory):
    data = tmp_path_factory.mktemp("small") / "data"
    shutil.copytree(tiny_dataset.root, data)
    _write(data / "train" / "good" / "tiny.png", 10, 8)
    return data


def test_build_names_a_too_small_training_image_or_skips_it(runner, data_with_a_tiny_training_image, tmp_path):
    data = data_with_a_tiny_training_image
    args = ["build", "--data", str(data), "-o", str(tmp_path / "model.onnx"), "--random-weights", "--size", "64",
            "--calib-fraction", "0.25", "--param", "coreset_ratio=0.25"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert f"{data / 'train' / 'good' / 'tiny.png'}: image of 10x8 px is too small (16 px minimum)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "model.onnx").exists()

    result = runner.invoke(cli, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "warning: skipped: " in result.output and "tiny.png: image of 10x8 px is too small" in result.output
    assert (tmp_path / "model.onnx").exists()
