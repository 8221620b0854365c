"""The ONNX artefact: trace the scoring graph (export_model), then seal and write it (write_artefact).

ONNX is the one artefact format; a TensorRT engine is built from a sealed artefact on the device
(export/tensorrt.py). A format table returns when a second format is written here (STYLE.md's pattern).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import torch

from adtk.runtime.artefact import INPUT_NAME, MANIFEST_KEY, MAX_ARTEFACT_BYTES, OUTPUT_NAMES, seal, verify_bytes
from adtk.runtime.errors import ArtefactError, ConfigError

DEFAULT_OPSET = 18


def example_frames(image_size_px: tuple[int, int]) -> torch.Tensor:
    """A uint8 frame batch for tracing; deliberately not the model size, so the resize is traced."""
    height, width = image_size_px
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, height + 37, width + 21, 3), dtype=torch.uint8, generator=generator)


def export_onnx_bytes(graph: torch.nn.Module, image_size_px: tuple[int, int], opset: int = DEFAULT_OPSET,
                      static_frame_hw: tuple[int, int] | None = None) -> bytes:
    """Trace the scoring graph to ONNX and return the serialised model: dynamic batch, height and width (an
    artefact), or with static_frame_hw every shape static, for one frame of that size (a model that is only
    costed, never run on camera frames: toolkit/sizing.py probe_model, which says why its frame has the size it
    has).

    A graph that can be cut after its preprocess (ScoringGraph.model_size_part) is exported in two parts and
    merged (export/split_export.py says why: a default build exported in ~2.5 s instead of ~5.7 s); any other module,
    or a part the TorchScript tracer cannot record, is exported whole by torch.export."""
    graph = graph.eval()
    if hasattr(graph, "model_size_part"):
        try:
            return export_in_two_parts(graph, image_size_px, opset, static_frame_hw)
        except Exception:  # noqa: BLE001 - any tracer or merge failure: torch.export does the same job, slower
            pass
    return torch_export_bytes(graph, image_size_px, opset, static_frame_hw, list(OUTPUT_NAMES))


def torch_export_bytes(module: torch.nn.Module, image_size_px: tuple[int, int], opset: int,
                       static_frame_hw: tuple[int, int] | None, output_names: list[str]) -> bytes:
    """torch.export's ONNX model of a module taking uint8 frames: dynamic batch, height and width, or with
    static_frame_hw every shape static.

    Why the static form exists: torch.export reasons symbolically about every dynamic dim through the whole
    graph, most of an export's time (a Lite0 graph with a 70k-row bank: ~7 s dynamic, ~3 s static, 2 x86 cores)."""
    kwargs = {}
    if static_frame_hw is None:
        batch = torch.export.Dim("batch", min=1, max=1024)
        height = torch.export.Dim("height", min=16, max=8192)
        width = torch.export.Dim("width", min=16, max=8192)
        kwargs["dynamic_shapes"] = {"frames": {0: batch, 1: height, 2: width}}
    program = torch.onnx.export(
        module.eval(),
        (traced_frames(image_size_px, static_frame_hw),),
        input_names=[INPUT_NAME],
        output_names=output_names,
        opset_version=opset,
        dynamo=True,
        external_data=False,
        optimize=True,
        verbose=False,
        **kwargs,
    )
    buffer = io.BytesIO()
    program.save(buffer, external_data=False)
    return buffer.getvalue()


def traced_frames(image_size_px: tuple[int, int], static_frame_hw: tuple[int, int] | None) -> torch.Tensor:
    """The frames an export traces: example_frames, or one frame of the static size."""
    if static_frame_hw is None:
        return example_frames(image_size_px)
    return torch.zeros((1, *static_frame_hw, 3), dtype=torch.uint8)


def export_in_two_parts(graph: torch.nn.Module, image_size_px: tuple[int, int], opset: int,
                        static_frame_hw: tuple[int, int] | None) -> bytes:
    """The preprocess (frames of any size) and the rest (model-size images, batch dynamic unless
    static_frame_hw), each by the TorchScript tracer, merged into one model (export/split_export.py)."""
    from adtk.export.split_export import (merge_front_and_part, trace_front, trace_model_size_part,
                                          with_constant_padding)

    frames = traced_frames(image_size_px, static_frame_hw)
    front = trace_front(graph.preprocess, frames, opset, dynamic=static_frame_hw is None)
    with torch.no_grad():
        images = graph.preprocess(frames)
        backbone = with_constant_padding(graph.backbone, graph.backbone_inputs_from_images(images))
    part = trace_model_size_part(graph.model_size_part(backbone), images, list(OUTPUT_NAMES), opset,
                                 dynamic_batch=static_frame_hw is None)
    return merge_front_and_part(front, part).SerializeToString()


def export_model(graph: torch.nn.Module, manifest: dict, image_size_px: tuple[int, int], opset: int = DEFAULT_OPSET,
                 static_frame_hw: tuple[int, int] | None = None):
    """Export the scoring graph to an onnx ModelProto carrying the manifest (not sealed yet: passes may follow);
    static_frame_hw: every shape static, for a model that is only costed (export_onnx_bytes)."""
    import onnx  # imported here: only the compiler needs it

    model = onnx.load_from_string(export_onnx_bytes(graph, image_size_px, opset, static_frame_hw))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = MANIFEST_KEY, json.dumps(manifest, sort_keys=True)
    model.producer_name = "adtk"
    return model


def replace_initializers(model, exported: dict, new: dict) -> bool:
    """Set initializers of an exported model to new values in place: exported = {name: the value it was exported
    with}, new = {name: its new value}. torch's exporter names a buffer's initializer by its path in the module
    (e.g. "normaliser.threshold"), so constants fixed after the export (the build's calibration) can be written
    in without tracing the graph again. -> False, with nothing changed, unless every name is an initializer that
    still holds exactly its exported value (an optimiser that folded or merged one would have changed that):
    the caller then exports again."""
    import numpy as np
    from onnx import numpy_helper

    found = {init.name: init for init in model.graph.initializer if init.name in exported}
    if set(found) != set(exported) or any(not np.array_equal(numpy_helper.to_array(found[name]), value)
                                          for name, value in exported.items()):
        return False
    for name, init in found.items():
        init.CopyFrom(numpy_helper.from_array(np.asarray(new[name], dtype=exported[name].dtype), name))
    return True


def write_artefact(model, manifest: dict, out_path: str | Path) -> Path:
    """Embed the final manifest, check, seal with the integrity record, verify, write atomically."""
    import onnx

    from adtk.export.passes.graph import set_manifest

    set_manifest(model, manifest)
    onnx.checker.check_model(model)
    data = seal(model.SerializeToString())
    if len(data) > MAX_ARTEFACT_BYTES:
        raise ArtefactError(f"the artefact would be {len(data) / 1e9:.2f} GB, over the 2 GB single-file limit; "
                            "use a smaller coreset ratio or fewer channels")
    verify_bytes(data, "freshly built artefact")  # the runtime's own check, before anything is written
    out_path = check_output_path(out_path)
    temporary = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())  # a full disk shows here, not later on the device
        temporary.replace(out_path)  # atomic: a reader never sees a half-written artefact
    except OSError as exc:
        raise ArtefactError(f"{out_path}: cannot write the artefact ({exc.strerror or exc}); nothing was written "
                            "there. Free some space or choose another -o/--out.") from None
    finally:
        temporary.unlink(missing_ok=True)
    return out_path


def check_output_path(out_path: str | Path, option: str = "-o/--out", create_folder: bool = True) -> Path:
    """Refuse an output path that cannot be written BEFORE any work: a folder, a file under a file, a
    read-only or missing-permission place. The one set of these refusals (validate_build_config asks here too,
    with create_folder=False: options are checked without writing anything). With create_folder, a missing
    parent folder is created; nothing else is left behind."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ConfigError(f"{option} {out_path}: is a folder; give the artefact's file name, e.g. "
                          f"{out_path / 'model.onnx'}")
    folder = out_path.parent if str(out_path.parent) else Path(".")
    if not folder.is_dir() and not create_folder:
        raise ConfigError(f"{option} {out_path}: folder {folder} does not exist; create it first")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out_path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        reason = "is not writable" if isinstance(exc, PermissionError) else f"cannot be written ({exc.strerror or exc})"
        raise ConfigError(f"{option} {out_path}: folder {folder} {reason}; choose a writable folder") from None
    if out_path.exists() and not os.access(out_path, os.W_OK):
        raise ConfigError(f"{option} {out_path}: exists and is not writable")
    return out_path
