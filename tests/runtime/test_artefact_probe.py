"""What an adversarial probe of loading and `adtk flash` found past the earlier hardening: a manifest number of
hundreds of digits (an internal error), graph values stored so that the manifest check read another value than
onnxruntime uses, outputs of the right names but the wrong shape, type or range (internal errors, NaN printed as a
score), and on the flash side a device symlink whose target was copied into the device folder, a .sig read whole
(a 3 GB one took 3 GB), an artefact swapped for a FIFO after its check (flash hung), and unclear refusals."""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc

import numpy as np
import pytest

from adtk.runtime.artefact import read_artefact, verify_file
from adtk.runtime.errors import ArtefactError
from adtk.runtime.flash import flash, rollback
from tests.conftest import reseal_with_manifest_edit
from tests.runtime.test_artefact_tampered_files import resealed


def _cli(args):
    from click.testing import CliRunner

    from adtk.toolkit.cli.main import cli

    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["calibration"].update(threshold=10 ** 400), "calibration.threshold: must be a finite number"),
    (lambda m: m["input"]["normalise"].update(std=[10 ** 400] * 3), "preprocess.scale: the manifest does not state"),
])
def test_a_manifest_number_of_hundreds_of_digits_is_refused_in_one_line(tiny_build, tmp_path, edit, words):
    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(reseal_with_manifest_edit(tiny_build.artefact.read_bytes(), edit))
    for check in (read_artefact, verify_file):
        with pytest.raises(ArtefactError, match=words):
            check(candidate)
    result = _cli(["inspect", str(candidate)])
    assert result.exit_code == 1 and words in result.output and "internal error" not in result.output


def _field(number: int, payload: bytes) -> bytes:
    from adtk.runtime.protobuf_wire import encode_varint

    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def _threshold_variant(kind: str, artefact: bytes) -> bytes:
    """The artefact re-sealed with normaliser.threshold at 1e6 in a form the manifest check did not read (or read
    another copy of), the manifest unchanged."""
    import struct

    from onnx import helper, numpy_helper

    from adtk.runtime.protobuf_wire import encode_varint

    def drop(model) -> None:
        kept = [t for t in model.graph.initializer if t.name != "normaliser.threshold"]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)

    def edit(model) -> None:
        if kind == "constant node":
            model.graph.node.insert(0, helper.make_node("Constant", [], ["normaliser.threshold"],
                                                        value=numpy_helper.from_array(np.array(1e6, np.float32))))
        elif kind == "sparse initializer":
            values = numpy_helper.from_array(np.array([1e6], np.float32), "normaliser.threshold")
            model.graph.sparse_initializer.append(
                helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0], np.int64)), []))
        elif kind == "65 values":
            threshold = next(t for t in model.graph.initializer if t.name == "normaliser.threshold")
            threshold.CopyFrom(numpy_helper.from_array(np.full([65], 1e6, np.float32), "normaliser.threshold"))
        else:
            drop(model)

    if kind != "unpacked float_data":
        return resealed(artefact, edit)
    # float_data written unpacked (field 4, wire type 5, one field per value): the onnx package never writes it,
    # protobuf parsers (onnxruntime's) read it; hand-encoded in a second graph field, which protobuf merges in
    tensor = encode_varint(2 << 3) + encode_varint(1) + _field(8, b"normaliser.threshold") + \
        encode_varint(4 << 3 | 5) + struct.pack("<f", 1e6)
    return resealed(artefact, edit, extra=_field(7, _field(5, tensor)))


@pytest.mark.parametrize("kind", ["unpacked float_data", "constant node", "sparse initializer", "65 values"])
def test_the_threshold_checked_is_the_one_onnxruntime_uses(tiny_build, tmp_path, kind):
    import onnxruntime

    original = tiny_build.artefact.read_bytes()
    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(_threshold_variant(kind, original))
    frame = np.full((1, 64, 64, 3), 128, np.uint8)

    def pred_score(data: bytes):
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(["pred_score"], {"frames": frame})[0]

    # the threat is real: onnxruntime scores with the 1e6 threshold the manifest does not state
    assert not np.allclose(pred_score(candidate.read_bytes()), pred_score(original))
    for check in (read_artefact, verify_file):
        with pytest.raises(ArtefactError, match="normaliser.threshold"):
            check(candidate)


@pytest.mark.parametrize("nodes, constant, words", [
    (lambda i, o: [("Unsqueeze", [i, "probe.c"], ["probe.u"]), ("Concat", ["probe.u", "probe.u"], [o], {"axis": 1})],
     np.array([1], np.int64), "pred_score is float32 [1, 2], expected float [1]"),
    (lambda i, o: [("ReduceMax", [i], [o], {"keepdims": 0})], None, "pred_score is float32 [], expected float [1]"),
    (lambda i, o: [("Slice", [i, "probe.c", "probe.c"], [o])], np.array([0], np.int64), "pred_score is float32 [0]"),
    (lambda i, o: [("Mul", [i, "probe.c"], [o])], np.array([np.nan], np.float32), "pred_score [nan] is not within"),
    (lambda i, o: [("Add", [i, "probe.c"], [o])], np.array([7.0], np.float32), "is not within 0..1"),
])
def test_outputs_that_break_the_contract_are_refused_in_one_line(tiny_build, tmp_path, nodes, constant, words):
    """Re-sealed graphs whose pred_score keeps its name but not its shape or range: before, `adtk predict` failed
    with an internal error (a [1, 2], a scalar or an empty score) or printed NaN (not JSON) or 7.0 as a score."""
    from onnx import helper, numpy_helper

    from adtk.runtime.detector import Detector

    def edit(model) -> None:
        for node in model.graph.node:
            node.output[:] = ["probe.in" if name == "pred_score" else name for name in node.output]
        model.graph.node.extend(helper.make_node(*spec[:3], **(spec[3] if len(spec) > 3 else {}))
                                for spec in nodes("probe.in", "pred_score"))
        if constant is not None:
            model.graph.initializer.append(numpy_helper.from_array(constant, "probe.c"))
        next(o for o in model.graph.output if o.name == "pred_score").type.tensor_type.ClearField("shape")

    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(resealed(tiny_build.artefact.read_bytes(), edit))
    detector = Detector.load(candidate, backend="cpu")  # the graph's values and outputs' names are as built
    with pytest.raises(ArtefactError, match="breaks the output contract"):
        detector.predict(np.full((1, 64, 64, 3), 128, np.uint8))
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    result = _cli(["predict", str(candidate), str(image)])
    assert result.exit_code == 1 and words in result.output and "internal error" not in result.output
    assert "NaN" not in result.output and '"pred_score"' not in result.output


def test_a_float_label_or_a_map_of_another_size_is_refused(tiny_build, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from adtk.runtime.detector import Detector

    def rewire(output: str, make) -> bytes:
        def edit(model) -> None:
            for node in model.graph.node:
                node.output[:] = ["probe.in" if name == output else name for name in node.output]
            new_nodes, constants = make("probe.in", output)
            model.graph.node.extend(new_nodes)
            model.graph.initializer.extend(constants)
            value = next(o for o in model.graph.output if o.name == output)
            value.type.tensor_type.elem_type = TensorProto.FLOAT
            value.type.tensor_type.ClearField("shape")
        return resealed(tiny_build.artefact.read_bytes(), edit)

    cases = {
        "pred_label is float32 [1], expected bool or integer [1]": rewire("pred_label", lambda i, o: (
            [helper.make_node("Cast", [i], [o], to=TensorProto.FLOAT)], [])),
        "anomaly_map is float32 [1, 128, 128], expected float [1, 64, 64]": rewire("anomaly_map", lambda i, o: (
            [helper.make_node("Tile", [i, "probe.reps"], [o])],
            [numpy_helper.from_array(np.array([1, 2, 2], np.int64), "probe.reps")])),
    }
    for words, data in cases.items():
        candidate = tmp_path / "candidate.onnx"
        candidate.write_bytes(data)
        with pytest.raises(ArtefactError, match=words.replace("[", r"\[")):
            Detector.load(candidate, backend="cpu").predict(np.full((1, 64, 64, 3), 128, np.uint8))


def _no_hard_links(monkeypatch) -> None:
    """A file system without hard links (sshfs, SMB, FAT): flash falls back to copying."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", refuse)


def test_flash_and_rollback_never_copy_what_a_device_symlink_points_to(tiny_build, tmp_path, monkeypatch):
    """The device folder (an SD card, a mount) is the other side's: a model.onnx -> ~/.ssh/id_ed25519 there had
    the key's bytes copied into model.previous.onnx (and its .sig likewise) where hard links are unsupported."""
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- the operator's key")
    artefact = tmp_path / "model.onnx"
    artefact.write_bytes(tiny_build.artefact.read_bytes())
    device = tmp_path / "device"
    device.mkdir()
    (device / "model.onnx").symlink_to(secret)
    (device / "model.onnx.sig").symlink_to(secret)
    _no_hard_links(monkeypatch)

    def copied_secret() -> list[str]:
        return [p.name for p in device.iterdir() if not p.is_symlink() and b"PRIVATE KEY" in p.read_bytes()]

    [result] = flash(artefact, [str(device)])
    assert result.ok, result.message
    assert copied_secret() == []
    assert (device / "model.onnx").read_bytes() == artefact.read_bytes()

    (device / "model.previous.onnx").unlink()  # now: a valid previous artefact, the current one a link to the key
    (device / "model.previous.onnx").write_bytes(artefact.read_bytes())
    (device / "model.onnx").unlink()
    (device / "model.onnx").symlink_to(secret)
    [result] = rollback([str(device)])
    assert result.ok, result.message
    assert copied_secret() == []


def test_flash_reads_a_signature_file_bounded_and_only_a_regular_one(tiny_build, tmp_path):
    """A .sig of 200 MB was read whole (a sparse 3 GB one: 3 GB of memory); a FIFO named .sig was passed over and
    the artefact sent unsigned."""
    artefact = tmp_path / "model.onnx"
    artefact.write_bytes(tiny_build.artefact.read_bytes())
    sig = tmp_path / "model.onnx.sig"
    with open(sig, "wb") as stream:
        stream.truncate(200 * 1024 ** 2)  # sparse: no disk used
    device = tmp_path / "device"
    tracemalloc.start()
    try:
        with pytest.raises(ArtefactError, match="model.onnx.sig: not a valid adtk signature file .larger than 64 KB"):
            flash(artefact, [str(device)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 ** 2, peak
    sig.unlink()
    os.mkfifo(sig)
    with pytest.raises(ArtefactError, match="model.onnx.sig: cannot read the signature file .not a regular file"):
        flash(artefact, [str(device)])
    assert not device.exists()


def test_an_artefact_swapped_for_a_fifo_after_its_check_fails_that_flash_instead_of_hanging(tiny_build, tmp_path,
                                                                                            monkeypatch):
    import adtk.runtime.flash as flash_module

    artefact = tmp_path / "model.onnx"
    artefact.write_bytes(tiny_build.artefact.read_bytes())

    def verify_then_swap(path):
        verified = verify_file(path)
        path.unlink()
        os.mkfifo(path)  # the writer of the source folder swaps the file once it is checked
        return verified

    monkeypatch.setattr(flash_module, "verify_file", verify_then_swap)
    results = []
    worker = threading.Thread(target=lambda: results.extend(flash(artefact, [str(tmp_path / "device")])), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked in open(): give it a writer so the thread ends, then fail
        os.close(os.open(artefact, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("flash blocked opening a FIFO")
    [result] = results
    assert not result.ok and "not a regular file" in result.message
    assert [p.name for p in (tmp_path / "device").iterdir()] == []


def test_a_destination_that_is_a_file_or_a_previous_that_is_a_folder_fails_clearly_and_leaves_nothing(
        tiny_build, tmp_path):
    artefact = tmp_path / "model.onnx"
    artefact.write_bytes(tiny_build.artefact.read_bytes())
    not_a_folder = tmp_path / "device-file"
    not_a_folder.write_text("x")
    [result] = flash(artefact, [str(not_a_folder)])
    assert not result.ok and "exists and is not a folder" in result.message, result.message
    device = tmp_path / "device"
    (device / "model.previous.onnx").mkdir(parents=True)
    (device / "model.onnx").write_bytes(b"the working model")
    [result] = flash(artefact, [str(device)])
    assert not result.ok
    assert sorted(p.name for p in device.iterdir()) == ["model.onnx", "model.previous.onnx"]  # no temporary left
    assert (device / "model.onnx").read_bytes() == b"the working model"
