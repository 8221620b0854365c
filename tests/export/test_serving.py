"""Triton and DeepStream hand-offs of a built artefact: configs parsed by their own schemas, outputs run."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from adtk.runtime.errors import ArtefactError, ConfigError


def parse_triton_config(text: str):
    """config.pbtxt through Triton's own ModelConfig protobuf (tritonclient), strictly: unknown fields fail."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] carries Triton's model-config schema")
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_entry_parses_with_tritons_schema_and_matches_what_the_model_outputs(tiny_build, tmp_path):
    from adtk.toolkit.cli.main import cli

    result = CliRunner().invoke(cli, ["export", str(tiny_build.artefact), "--triton", str(tmp_path / "repo"),
                                      "--name", "tile_inspector", "--max-batch-size", "4"])
    assert result.exit_code == 0, result.output
    entry = tmp_path / "repo" / "tile_inspector"
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt"]
    assert (entry / "1" / "model.onnx").read_bytes() == tiny_build.artefact.read_bytes()
    config = parse_triton_config((entry / "config.pbtxt").read_text())
    types = config.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
    assert config.name == "tile_inspector" and config.backend == "onnxruntime" and config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    (frames,) = config.input
    assert frames.name == "frames" and types.values_by_number[frames.data_type].name == "TYPE_UINT8"
    assert list(frames.dims) == [-1, -1, 3]
    # every output the model really produces is declared, with its type and per-item shape
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    produced = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"frames": batch})))
    declared = {o.name: o for o in config.output}
    assert list(declared) == list(produced)
    assert list(declared)[:4] == ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    triton_dtype = {"TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_}
    for name, value in produced.items():
        output = declared[name]
        assert value.dtype == triton_dtype[types.values_by_number[output.data_type].name], name
        per_item = list(output.reshape.shape) if output.HasField("reshape") else list(output.dims)
        assert [3, *per_item] == list(value.shape), name


def test_triton_export_refuses_an_existing_entry_and_a_damaged_artefact_writing_nothing(tiny_build, tmp_path):
    from adtk.export.serving import export_triton

    export_triton(tiny_build.artefact, tmp_path / "repo", name="m")
    with pytest.raises(ConfigError, match="already exists"):
        export_triton(tiny_build.artefact, tmp_path / "repo", name="m")
    damaged = tmp_path / "damaged.onnx"
    data = bytearray(tiny_build.artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="integrity"):
        export_triton(damaged, tmp_path / "repo")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]


def test_deepstream_variant_runs_in_onnxruntime_and_matches_the_uint8_artefact(tiny_build, tmp_path):
    from adtk.runtime.detector import Detector
    from adtk.toolkit.cli.main import cli

    result = CliRunner().invoke(cli, ["export", str(tiny_build.artefact), "--deepstream", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    detector = Detector.load(tiny_build.artefact, backend="cpu")
    size_h, size_w = detector.model_size_px
    session = ort.InferenceSession(str(tmp_path / "ds" / "model_deepstream.onnx"), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.type == "tensor(float)" and model_input.shape[1:] == [3, size_h, size_w]
    frames = np.random.default_rng(1).integers(0, 256, (2, size_h, size_w, 3), dtype=np.uint8)
    frames[0, 10:30, 10:30] = 255  # a bright patch, so some pred_mask pixels are set
    nchw = frames.transpose(0, 3, 1, 2).astype(np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {model_input.name: nchw})))
    reference = detector.predict(frames)
    np.testing.assert_allclose(outputs["pred_score"], reference.pred_score, atol=1e-6)
    np.testing.assert_allclose(outputs["anomaly_map"], reference.anomaly_map, atol=1e-6)
    assert outputs["pred_mask"].dtype == np.float32
    assert np.array_equal(outputs["pred_mask"] > 0.5, reference.pred_mask)
    assert np.array_equal(outputs["pred_label"] > 0.5, reference.pred_label)
    import json

    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "ds" / "model_deepstream.onnx")).metadata_props}
    assert "adtk.sha256" not in props  # not an adtk artefact: the runtime would refuse it, by design
    assert json.loads(props["adtk.manifest"])["deepstream_variant"]["source_sha256"] == detector.artefact.sha256
    config = (tmp_path / "ds" / "config_infer_adtk.txt").read_text()
    properties = dict(line.split("=", 1) for line in config.splitlines() if "=" in line and not line.startswith("#"))
    assert properties["onnx-file"] == "model_deepstream.onnx"
    assert properties["infer-dims"] == f"3;{size_h};{size_w}"
    assert properties["network-type"] == "100" and properties["output-tensor-meta"] == "1"
    assert properties["output-blob-names"].split(";") == list(outputs)


def test_export_without_a_target_is_a_usage_error(tiny_build):
    from adtk.toolkit.cli.main import cli

    result = CliRunner().invoke(cli, ["export", str(tiny_build.artefact)])
    assert result.exit_code == 2 and "--triton" in result.output
