"""Hand an existing artefact to the serving stacks people already run: a Triton model repository entry and a
DeepStream nvinfer variant. Both read the input and output names, types and shapes from the ONNX graph
itself, so they follow whatever the artefact declares (pred_mask included) and know no method.

    export_triton(artefact, repo_dir, name=None, max_batch_size=8)  -> repo_dir/<name>/{config.pbtxt, 1/model.onnx}
    export_deepstream(artefact, out_dir)  -> out_dir/{<stem>_deepstream.onnx, config_infer_adtk.txt, labels.txt}

Each writes into a hidden temporary folder and renames it into place: a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from adtk.runtime.artefact import INPUT_NAME, read_artefact
from adtk.runtime.errors import ArtefactError, ConfigError

# ONNX TensorProto element type name -> Triton model-config DataType (model_config.proto)
TRITON_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BOOL": "TYPE_BOOL",
                "UINT8": "TYPE_UINT8", "INT8": "TYPE_INT8", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64"}
DEEPSTREAM_INPUT = "input"  # nvinfer feeds the network's input by position; a plain name for its logs


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: str  # ONNX TensorProto type name: FLOAT, BOOL, UINT8, ...
    dims: tuple[int, ...]  # -1 for a symbolic dimension (batch, height, width)


def tensor_specs(values) -> list[TensorSpec]:
    """graph.input / graph.output ValueInfoProtos -> TensorSpecs."""
    import onnx

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, onnx.TensorProto.DataType.Name(tensor.elem_type), dims))
    return specs


def _load_verified_model(artefact_path: str | Path):
    """-> (verified artefact, onnx ModelProto): integrity checked before anything is read from it."""
    import onnx

    artefact = read_artefact(artefact_path)
    return artefact, onnx.load_from_string(artefact.model_bytes)


def _write_folder_atomically(target: Path, fill) -> Path:
    """fill(temporary folder) writes the files; the folder is then renamed to `target` (which must not exist)."""
    if target.exists():
        raise ConfigError(f"{target}: already exists; remove it or choose another name")
    temporary = target.with_name(f".{target.name}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        fill(temporary)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


# ---- Triton ---------------------------------------------------------------------------------------


def _triton_tensor(spec: TensorSpec, batched: bool) -> str:
    if spec.elem_type not in TRITON_TYPES:
        raise ArtefactError(f"tensor {spec.name!r}: ONNX type {spec.elem_type} has no Triton equivalent")
    dims = spec.dims[1:] if batched else spec.dims
    fields = [f'name: "{spec.name}"', f"data_type: {TRITON_TYPES[spec.elem_type]}"]
    if dims:
        fields.append(f"dims: [ {', '.join(map(str, dims))} ]")
    else:
        # a [B] output: Triton needs at least one dim per batch item, so [1] reshaped to a scalar
        # (model_configuration.md, "Reshape")
        fields += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
    return "  {\n    " + "\n    ".join(fields) + "\n  }"


def triton_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int,
                  max_queue_delay_us: int = 2000) -> str:
    """config.pbtxt text for the onnxruntime backend: batch axis implied (max_batch_size > 0), dynamic batching.

    Triton batches only requests whose [H, W] agree (the input's height and width are variable), so a fleet
    of cameras with one resolution batches fully."""
    for spec in inputs + outputs:
        if not spec.dims or spec.dims[0] != -1:
            raise ArtefactError(f"tensor {spec.name!r} has dims {list(spec.dims)}: expected a leading batch axis")
    return "\n".join([
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_triton_tensor(s, True) for s in inputs) + "\n]",
        "output [\n" + ",\n".join(_triton_tensor(s, True) for s in outputs) + "\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}",
        "",
    ])


def export_triton(artefact_path: str | Path, repo_dir: str | Path, name: str | None = None,
                  max_batch_size: int = 8) -> Path:
    """Write repo_dir/<name>/config.pbtxt and repo_dir/<name>/1/model.onnx (the verified artefact's bytes)."""
    artefact_path = Path(artefact_path)
    name = name or artefact_path.stem
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name {name!r}: a Triton model name is one plain folder name")
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size {max_batch_size}: must be at least 1")
    artefact, model = _load_verified_model(artefact_path)
    config = triton_config(name, tensor_specs(model.graph.input), tensor_specs(model.graph.output), max_batch_size)

    def fill(folder: Path) -> None:
        (folder / "1").mkdir()
        (folder / "1" / "model.onnx").write_bytes(artefact.model_bytes)
        (folder / "config.pbtxt").write_text(config)

    repo_dir = Path(repo_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    return _write_folder_atomically(repo_dir / name, fill)


# ---- DeepStream -----------------------------------------------------------------------------------


def deepstream_model(model, size_hw: tuple[int, int]):
    """The artefact's graph with a float32 [B, 3, S_h, S_w] RGB input of pixel values 0..255 (what nvinfer
    feeds with net-scale-factor=1, offsets=0) in place of the uint8 [B, H, W, 3] one, and bool outputs as
    float32 0/1 (nvinfer's tensor meta has no bool type). The pixels are rounded and clipped to 0..255 and
    cast to uint8 NHWC, then the unchanged graph runs: at the model size its own resize is the identity,
    so results equal the uint8 artefact's on a frame of that size."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    original = {v.name: v for v in graph.input}
    if INPUT_NAME not in original:
        raise ArtefactError(f"the artefact has no {INPUT_NAME!r} input")
    height, width = size_hw
    graph.input.remove(original[INPUT_NAME])
    graph.input.insert(0, helper.make_tensor_value_info(DEEPSTREAM_INPUT, TensorProto.FLOAT, ["batch", 3, height, width]))
    graph.initializer.extend([numpy_helper.from_array(np.array(value, dtype=np.float32), name)
                              for name, value in (("deepstream_pixel_min", 0.0), ("deepstream_pixel_max", 255.0))])
    prologue = [
        helper.make_node("Round", [DEEPSTREAM_INPUT], ["deepstream_rounded"]),
        helper.make_node("Clip", ["deepstream_rounded", "deepstream_pixel_min", "deepstream_pixel_max"],
                         ["deepstream_clipped"]),
        helper.make_node("Cast", ["deepstream_clipped"], ["deepstream_uint8"], to=TensorProto.UINT8),
        helper.make_node("Transpose", ["deepstream_uint8"], [INPUT_NAME], perm=[0, 2, 3, 1]),
    ]
    epilogue = []
    for output in graph.output:
        tensor = output.type.tensor_type
        if tensor.elem_type == TensorProto.BOOL:
            inner = f"{output.name}__bool"
            for node in graph.node:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            epilogue.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT))
            kept_info = [v for v in graph.value_info if v.name != output.name]
            del graph.value_info[:]
            graph.value_info.extend(kept_info)
            tensor.elem_type = TensorProto.FLOAT
    nodes = prologue + list(graph.node) + epilogue
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def nvinfer_config(onnx_name: str, size_hw: tuple[int, int], outputs: list[TensorSpec], batch_size: int = 1) -> str:
    """config-file for Gst-nvinfer: the frame arrives as RGB float 0..255 at the model size; no built-in
    parser (network-type=100), every output attached to the frame as tensor meta for the app to read."""
    height, width = size_hw
    return "\n".join([
        "# Gst-nvinfer config for an adtk artefact (generated by `adtk export --deepstream`).",
        "# nvinfer scales each frame to the model size and hands RGB pixel values 0..255 as float NCHW;",
        "# the graph normalises them itself. Outputs (float32): " + ", ".join(
            f"{s.name} {list(s.dims[1:])}" for s in outputs),
        "# pred_score > 0.5 = anomalous; read them from NvDsInferTensorMeta (output-tensor-meta=1).",
        "[property]",
        "gpu-id=0",
        f"onnx-file={onnx_name}",
        f"batch-size={batch_size}",
        "network-mode=0",  # fp32: the artefact's calibration holds for fp32; build fp16 with adtk's own gate
        f"infer-dims=3;{height};{width}",
        "net-scale-factor=1.0",
        "offsets=0;0;0",
        "model-color-format=0",
        "maintain-aspect-ratio=0",
        "scaling-filter=1",  # bilinear, as adtk's own resize
        "network-type=100",
        "output-tensor-meta=1",
        "output-blob-names=" + ";".join(s.name for s in outputs),
        "process-mode=1",
        "gie-unique-id=1",
        "",
    ])


def export_deepstream(artefact_path: str | Path, out_dir: str | Path, batch_size: int = 1) -> Path:
    """Write out_dir/<stem>_deepstream.onnx and out_dir/config_infer_adtk.txt; -> out_dir."""
    from adtk.export.passes.graph import set_manifest

    artefact_path = Path(artefact_path)
    artefact, model = _load_verified_model(artefact_path)
    size_hw = tuple(int(v) for v in artefact.manifest["input"]["model_size_px"])
    model = deepstream_model(model, size_hw)
    manifest = {**artefact.manifest, "deepstream_variant": {
        "source_sha256": artefact.sha256, "input": f"{DEEPSTREAM_INPUT}: float32 [B, 3, {size_hw[0]}, {size_hw[1]}] "
        "RGB 0..255", "bool_outputs": "float32 0/1"}}
    set_manifest(model, manifest)  # and no integrity record: that described the uint8 artefact, not this variant
    onnx_name = f"{artefact_path.stem}_deepstream.onnx"
    config = nvinfer_config(onnx_name, size_hw, tensor_specs(model.graph.output), batch_size)

    def fill(folder: Path) -> None:
        (folder / onnx_name).write_bytes(model.SerializeToString())
        (folder / "config_infer_adtk.txt").write_text(config)

    return _write_folder_atomically(Path(out_dir), fill)
