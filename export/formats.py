"""The ONNX artefact: trace the scoring graph (export_model), then seal and write it (write_artefact).

ONNX is the one artefact format; a TensorRT engine is built from a sealed artefact on the device
(export/tensorrt.py). A format table returns when a second format is written here (STYLE.md's pattern).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from adtk.runtime.artefact import INPUT_NAME, MANIFEST_KEY, MAX_ARTEFACT_BYTES, OUTPUT_NAMES, seal, verify_bytes
from adtk.runtime.errors import ArtefactError

DEFAULT_OPSET = 18


def example_frames(image_size_px: tuple[int, int]) -> torch.Tensor:
    """A uint8 frame batch for tracing; deliberately not the model size, so the resize is traced."""
    height, width = image_size_px
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, height + 37, width + 21, 3), dtype=torch.uint8, generator=generator)


def export_onnx_bytes(graph: torch.nn.Module, image_size_px: tuple[int, int], opset: int = DEFAULT_OPSET) -> bytes:
    """Trace the scoring graph to ONNX (dynamic batch, height and width) and return the serialised model."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=16, max=8192)
    width = torch.export.Dim("width", min=16, max=8192)
    program = torch.onnx.export(
        graph.eval(),
        (example_frames(image_size_px),),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"frames": {0: batch, 1: height, 2: width}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
        optimize=True,
        verbose=False,
    )
    buffer = io.BytesIO()
    program.save(buffer, external_data=False)
    return buffer.getvalue()


def export_model(graph: torch.nn.Module, manifest: dict, image_size_px: tuple[int, int], opset: int = DEFAULT_OPSET):
    """Export the scoring graph to an onnx ModelProto carrying the manifest (not sealed yet: passes may follow)."""
    import onnx  # imported here: only the compiler needs it

    model = onnx.load_from_string(export_onnx_bytes(graph, image_size_px, opset))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = MANIFEST_KEY, json.dumps(manifest, sort_keys=True)
    model.producer_name = "adtk"
    return model


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
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(out_path.name + ".partial")
    temporary.write_bytes(data)
    temporary.replace(out_path)  # atomic: a reader never sees a half-written artefact
    return out_path
