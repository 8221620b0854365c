"""Files that must be refused before they are used or installed: a re-sealed artefact whose manifest disagrees
with its graph, or whose graph lacks an output, is refused by `adtk flash` (the working model stays); a file over
the 2 GB limit is refused before any byte of it is read."""

from __future__ import annotations

import os

import pytest

from adtk.runtime.artefact import read_artefact, seal, verify_file
from adtk.runtime.errors import ArtefactError
from adtk.runtime.flash import flash
from tests.conftest import reseal_with_manifest_edit


def without_output(artefact_bytes: bytes, output: str) -> bytes:
    onnx = pytest.importorskip("onnx")
    from adtk.runtime.artefact import INTEGRITY_KEY

    model = onnx.load_from_string(artefact_bytes)
    kept = [value for value in model.graph.output if value.name != output]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    props = [(p.key, p.value) for p in model.metadata_props if p.key != INTEGRITY_KEY]
    del model.metadata_props[:]
    for key, value in props:
        model.metadata_props.add(key=key, value=value)
    return seal(model.SerializeToString())


@pytest.mark.parametrize("tamper", ["threshold", "mean", "dropped output"])
def test_flash_refuses_a_resealed_artefact_and_keeps_the_working_model(tiny_build, tmp_path, tamper):
    original = tiny_build.artefact.read_bytes()
    if tamper == "threshold":
        bad = reseal_with_manifest_edit(original, lambda m: m["calibration"].update(threshold=1e6))
    elif tamper == "mean":
        bad = reseal_with_manifest_edit(original, lambda m: m["input"]["normalise"].update(mean=[0.1, 0.2, 0.3]))
    else:
        bad = without_output(original, "pred_label")
    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(bad)
    device = tmp_path / "device"
    device.mkdir()
    (device / "model.onnx").write_bytes(original)
    with pytest.raises(ArtefactError, match="disagrees with the graph|lacks the artefact contract"):
        flash(candidate, [str(device)])
    assert (device / "model.onnx").read_bytes() == original
    assert sorted(p.name for p in device.iterdir()) == ["model.onnx"]
    with pytest.raises(ArtefactError):
        verify_file(candidate)
    with pytest.raises(ArtefactError):
        read_artefact(candidate)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as stream:  # sparse: no disk used, but read_bytes would hold 2 GB
        stream.truncate(2 * 1024 ** 3 + 1)
    read = []
    original_read_bytes = type(huge).read_bytes

    def spy(self):
        read.append(self)
        return original_read_bytes(self)

    monkeypatch.setattr(type(huge), "read_bytes", spy)
    try:
        with pytest.raises(ArtefactError, match="over the 2 GB single-file limit"):
            read_artefact(huge)
    finally:
        os.remove(huge)
    assert read == []


def test_what_is_not_an_artefact_file_is_named_for_what_it_is(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop)
    cases = {folder: "is a folder", loop: "cannot read it", tmp_path / "missing.onnx": "no such artefact file"}
    for path, words in cases.items():
        for check in (read_artefact, verify_file):
            with pytest.raises(ArtefactError, match=words):
                check(path)
