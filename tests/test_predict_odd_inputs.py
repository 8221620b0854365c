"""`adtk predict` on a folder with odd images: a frame too small to score is one error record naming it
(--skip-bad) and the rest are scored; overlays of images that share a stem do not overwrite each other."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from adtk.toolkit.cli.main import cli


def test_a_too_small_image_is_skipped_by_name_and_the_others_are_scored(runner, tiny_build, tmp_path):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "a_tiny.png")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "b_ok.png")
    result = runner.invoke(cli, ["predict", str(tiny_build.artefact), str(tmp_path), "--skip-bad"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == ["a_tiny.png", "b_ok.png"]
    assert "a_tiny.png" in records[0]["error"] and "too small" in records[0]["error"]
    assert "pred_score" in records[1]
    result = runner.invoke(cli, ["predict", str(tiny_build.artefact), str(tmp_path / "a_tiny.png")])
    assert result.exit_code != 0 and "a_tiny.png" in result.output and "Traceback" not in result.output


def test_overlays_of_images_sharing_a_stem_are_all_kept(runner, tiny_build, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    picture = Image.fromarray(np.full((40, 40, 3), 90, np.uint8))
    for suffix in (".png", ".jpg", ".bmp"):
        picture.save(frames / f"part{suffix}")
    result = runner.invoke(cli, ["predict", str(tiny_build.artefact), str(frames), "--overlays",
                                 str(tmp_path / "overlays")])
    assert result.exit_code == 0, result.output
    written = [json.loads(line)["overlay"] for line in result.output.splitlines() if line.startswith("{")]
    assert len(set(written)) == 3
    assert len(list((tmp_path / "overlays").iterdir())) == 3


def test_an_output_path_that_cannot_be_written_is_named_not_called_a_bug(runner, tiny_build, tmp_path):
    picture = tmp_path / "part.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(picture)
    unwritable = "/proc/adtk_overlays"  # no folder can be made there, whoever runs the tests
    result = runner.invoke(cli, ["predict", str(tiny_build.artefact), str(picture), "--overlays", unwritable])
    assert result.exit_code != 0
    assert "cannot use" in result.output and unwritable in result.output
    assert "internal error" not in result.output and "Traceback" not in result.output


def test_inspect_names_a_malformed_optional_manifest_section(runner, tiny_build, tmp_path):
    from tests.conftest import reseal_with_manifest_edit

    edited = tmp_path / "edited.onnx"
    edited.write_bytes(reseal_with_manifest_edit(tiny_build.artefact.read_bytes(),
                                                 lambda m: m["input"].update(tiling={"size": 0})))
    # the schema describes the optional sections too (runtime/manifest.py): refused on load, naming the field,
    # before inspect's own guard could meet it
    for extra in ([], ["--json"]):
        result = runner.invoke(cli, ["inspect", str(edited), *extra])
        assert result.exit_code != 0
        assert "input.tiling.working_size_px: missing" in result.output and "rebuild the artefact" in result.output
        assert "internal error" not in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_an_image_path_that_does_not_exist_is_named_as_missing(runner, tiny_build, tmp_path):
    missing = tmp_path / "no_such_part.png"
    result = runner.invoke(cli, ["predict", str(tiny_build.artefact), str(missing)])
    assert result.exit_code != 0
    assert f"{missing}: file not found; it does not exist" in result.output
    assert "remove it" not in result.output and "cannot decode" not in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_inspect_escapes_control_characters_of_a_re_sealed_manifest(runner, tiny_build, tmp_path):
    """A manifest string with a newline and ESC codes (an attacker's re-seal) prints as one escaped line: no
    forged line, no terminal control sequence."""
    from tests.conftest import reseal_with_manifest_edit

    edited = tmp_path / "edited.onnx"
    forged = "imagenet\x1b[2J\nadtk inspect: integrity OK"
    edited.write_bytes(reseal_with_manifest_edit(tiny_build.artefact.read_bytes(),
                                                 lambda m: m["backbone"].update(weights_source=forged)))
    result = runner.invoke(cli, ["inspect", str(edited)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b[2J\\nadtk inspect: integrity OK" in result.output
    assert not any(line.startswith("adtk inspect:") for line in result.output.splitlines())


def test_a_folder_run_names_every_entry_it_cannot_read_and_writes_strict_json(runner, tiny_build, tmp_path):
    """Broken links, link loops and FIFOs named like images were left out of a folder run without a word; a name
    with a newline stopped --overlays with an internal error; a name's undecodable bytes were written as lone
    surrogate escapes, which strict JSON parsers refuse."""
    import os

    frames = tmp_path / "frames"
    frames.mkdir()
    picture = Image.fromarray(np.full((40, 40, 3), 90, np.uint8))
    picture.save(frames / "good.png")
    picture.save(frames / "new\nline.png")
    (frames / "dangling.png").symlink_to(frames / "nowhere.png")
    (frames / "loop.png").symlink_to(frames / "loop.png")
    expected_errors = {"dangling.png", "loop.png"}
    if hasattr(os, "mkfifo"):
        os.mkfifo(frames / "pipe.png")
        expected_errors.add("pipe.png")
    try:
        picture.save(os.fsencode(frames) + b"/odd\xffbyte.png")
    except OSError:  # a file system that takes only UTF-8 names
        pass
    (frames / "folder.png").mkdir()  # a folder named like an image is a folder: not listed
    result = runner.invoke(cli, ["predict", str(tiny_build.artefact), str(frames), "--skip-bad", "--overlays",
                                 str(tmp_path / "overlays")])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    records = [json.loads(line) for line in lines]
    for line in lines:
        line.encode("utf-8")  # a lone surrogate cannot be encoded: strict parsers refuse it
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in records if "error" in r}
    assert set(errors) == expected_errors
    assert all(name in message for name, message in errors.items())
    scored = {r["path"].rsplit("/", 1)[-1] for r in records if "pred_score" in r}
    assert {"good.png", "new\nline.png"} <= scored and len(records) == len(errors) + len(scored)
    assert "folder.png" not in result.output


def test_an_error_naming_a_file_with_a_newline_or_escape_codes_is_one_line(runner, tiny_build, tmp_path):
    bad = tmp_path / "part.png\nDataError: all good\x1b[2J.png"
    bad.write_bytes(b"not an image")
    result = runner.invoke(cli, ["predict", str(tiny_build.artefact), str(bad)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "\x1b" not in result.output
    assert "part.png\\nDataError: all good\\x1b[2J.png: cannot decode image" in result.output


def test_eval_names_test_images_it_cannot_use_and_skips_them_with_skip_bad(runner, tiny_build, tiny_dataset,
                                                                           tmp_path):
    """A test image under 16 px stopped `adtk eval` as "frame 6: ... too small", naming no file, even with
    --skip-bad; a corrupt mask stopped it with --skip-bad; skipped files came as Python warnings with a source line."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.root, data)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(data / "test" / "good" / "tiny.png")
    mask = sorted((data / "ground_truth").rglob("*_mask.png"))[0]
    mask.write_bytes(b"")
    model = str(tiny_build.artefact)
    result = runner.invoke(cli, ["eval", model, "--data", str(data)])
    assert result.exit_code == 1 and "tiny.png: image of 1x1 px is too small" in result.output
    result = runner.invoke(cli, ["eval", model, "--data", str(data), "--json", "-", "--skip-bad"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: skipped: ")]
    assert len(warnings) == 2 and "tiny.png" in warnings[0] and mask.name in warnings[1], result.output
    assert "UserWarning" not in result.output and "evaluate.py" not in result.output
    assert json.loads(result.output[result.output.index("{"):])["num_images"] == 12 - 1
