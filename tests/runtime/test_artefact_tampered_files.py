"""Files that must be refused before they are used or installed: a re-sealed artefact whose manifest disagrees
with its graph, or whose graph lacks an output, is refused by `adtk flash` (the working model stays); a file over
the 2 GB limit is refused before any byte of it is read."""

from __future__ import annotations

import os

import pytest

from adtk.runtime.artefact import read_artefact, seal, verify_bytes, verify_file
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


def resealed(artefact_bytes: bytes, edit_model=None, extra: bytes = b"") -> bytes:
    """An attacker with write access: the model edited by `edit_model(model)` (onnx's ModelProto, in place), any
    raw protobuf fields appended, then sealed again so its integrity record matches."""
    onnx = pytest.importorskip("onnx")
    from adtk.runtime.artefact import INTEGRITY_KEY

    model = onnx.load_from_string(artefact_bytes)
    props = [(p.key, p.value) for p in model.metadata_props if p.key != INTEGRITY_KEY]
    del model.metadata_props[:]
    for key, value in props:
        model.metadata_props.add(key=key, value=value)
    if edit_model is not None:
        edit_model(model)
    return seal(model.SerializeToString() + extra)


def _external(location: str, where: str):
    """An edit that moves one tensor's values to `location` on disk (ONNX external data)."""
    from onnx import AttributeProto, TensorProto

    def point_outside(tensor) -> None:
        size = len(tensor.raw_data) or 8
        for name in ("raw_data", "int64_data", "float_data"):
            tensor.ClearField(name)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
            tensor.external_data.add(key=key, value=value)

    def edit(model) -> None:
        if where == "initializer":
            point_outside(next(t for t in model.graph.initializer if t.name == "preprocess.scale"))
            return
        branch = next(n for n in model.graph.node if n.op_type == "If").attribute[0].g  # the frame-size If's body
        constant = next(a for node in branch.node for a in node.attribute if a.type == AttributeProto.TENSOR)
        point_outside(constant.t)

    return edit


@pytest.mark.parametrize("location, where", [("secret.bin", "initializer"), ("../../etc/hostname", "initializer"),
                                             ("/etc/hostname", "initializer"), ("secret.bin", "If body constant")])
def test_a_tensor_stored_outside_the_artefact_is_refused_before_onnxruntime_reads_the_file(
        tiny_build, tmp_path, monkeypatch, location, where):
    """onnxruntime resolves a relative external-data location against the working directory of a model loaded from
    bytes (1.32 refuses only absolute and `..` ones; older releases none): a re-sealed artefact would read a file of
    the device into its weights. Refused by every way in: load, flash, the daemon's candidate check."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"\x00\x00\x80\x7f" * 16)  # what a working-directory file would feed in
    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(resealed(tiny_build.artefact.read_bytes(), _external(location, where)))
    for check in (read_artefact, verify_file):
        with pytest.raises(ArtefactError, match="refers to data outside the artefact"):
            check(candidate)
    from adtk.runtime.detector import Detector

    with pytest.raises(ArtefactError, match="outside the artefact"):
        Detector.load(candidate, backend="cpu")
    device = tmp_path / "device"
    device.mkdir()
    with pytest.raises(ArtefactError, match="outside the artefact"):
        flash(candidate, [str(device)])
    assert list(device.iterdir()) == []


def _nested_if_graph_field(depth: int) -> bytes:
    """A ModelProto.graph field (merged into the graph by protobuf) adding one If whose then-branch nests `depth`
    If levels (hand-encoded: the onnx package itself refuses to build it)."""
    from adtk.runtime.protobuf_wire import encode_varint

    def field(number: int, payload: bytes) -> bytes:
        return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload

    def kind(number: int, value: int) -> bytes:
        return encode_varint(number << 3) + encode_varint(value)

    def graph_attribute(name: str, graph: bytes) -> bytes:
        return field(5, field(1, name.encode()) + kind(20, 5) + field(6, graph))

    leaf = field(1, field(2, b"y") + field(4, b"Identity")) + field(2, b"leaf")
    graph = leaf
    for _ in range(depth):
        graph = field(1, field(1, b"c") + field(2, b"y") + field(4, b"If") + graph_attribute("then_branch", graph)
                      + graph_attribute("else_branch", leaf))
    node = field(1, b"bomb_c") + field(2, b"bomb_y") + field(4, b"If") + graph_attribute("then_branch", graph) \
        + graph_attribute("else_branch", leaf)
    return field(7, field(1, node))


def test_subgraphs_nested_thousands_deep_are_refused_in_one_line_by_load_and_inspect(tiny_build, tmp_path, runner):
    from adtk.toolkit.cli.main import cli

    candidate = tmp_path / "nested.onnx"
    candidate.write_bytes(resealed(tiny_build.artefact.read_bytes(), extra=_nested_if_graph_field(3000)))
    for check in (read_artefact, verify_file):
        with pytest.raises(ArtefactError, match="nested more than 16 levels"):
            check(candidate)
    result = runner.invoke(cli, ["inspect", str(candidate)])
    assert result.exit_code == 1 and "nested more than 16 levels" in result.output
    assert "internal error" not in result.output and "DecodeError" not in result.output
    shallow = tmp_path / "shallow.onnx"  # a few levels pass this check (onnxruntime judges the graph itself)
    shallow.write_bytes(resealed(tiny_build.artefact.read_bytes(), extra=_nested_if_graph_field(3)))
    verify_file(shallow)


def test_a_graph_input_besides_frames_is_refused_on_load_not_on_the_first_frame(tiny_build, tmp_path):
    from onnx import TensorProto, helper

    def add_inputs(model) -> None:
        model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))

    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(resealed(tiny_build.artefact.read_bytes(), add_inputs))
    for check in (read_artefact, verify_file):
        with pytest.raises(ArtefactError, match="inputs besides the contract's frames \\('extra'\\)"):
            check(candidate)

    def initializer_as_input(model) -> None:  # an input an initializer backs has a value: still an artefact
        model.graph.input.append(helper.make_tensor_value_info("preprocess.scale", TensorProto.FLOAT, [1, 3, 1, 1]))

    candidate.write_bytes(resealed(tiny_build.artefact.read_bytes(), initializer_as_input))
    read_artefact(candidate)


def test_two_manifests_are_refused_not_one_of_them_picked(tiny_build):
    import json

    def second_manifest(model) -> None:
        manifest = json.loads(next(p.value for p in model.metadata_props if p.key == "adtk.manifest"))
        manifest["calibration"]["method"] = "the attacker's"
        model.metadata_props.add(key="adtk.manifest", value=json.dumps(manifest))

    with pytest.raises(ArtefactError, match="two manifests"):
        verify_bytes(resealed(tiny_build.artefact.read_bytes(), second_manifest))


@pytest.mark.parametrize("edit, words", [
    (lambda text: text[:-1] + ', "note": ' + "9" * 5000 + "}", "a number of thousands of digits"),
    (lambda text: text.replace('"seed": ', '"seed": ' + "7" * 5000 + ', "seed_again": ', 1),
     "a number of thousands of digits"),
    (lambda text: text[:-1] + ', "format": "adtk-artefact"}', "the key 'format' appears twice"),
])
def test_a_manifest_json_python_cannot_hold_or_reads_two_ways_is_refused_in_one_line(tiny_build, tmp_path, runner,
                                                                                     edit, words):
    from adtk.toolkit.cli.main import cli

    def edit_manifest(model) -> None:
        entry = next(p for p in model.metadata_props if p.key == "adtk.manifest")
        entry.value = edit(entry.value)

    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(resealed(tiny_build.artefact.read_bytes(), edit_manifest))
    with pytest.raises(ArtefactError, match=f"manifest is not valid JSON \\({words}"):
        read_artefact(candidate)
    result = runner.invoke(cli, ["inspect", str(candidate)])
    assert result.exit_code == 1 and "internal error" not in result.output and words in result.output
