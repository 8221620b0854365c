"""Issue-17 bench: where the default build's export and calibration time goes, side by side in one run.

A PatchCore scoring graph (tf_efficientnet_lite0, random weights: timing only) with a random bank of --bank-rows
rows at --size px is exported the way the build does (export.formats.export_onnx_bytes) and stage by stage:
torch.export capture, decompositions + ONNX translation, onnxscript optimisation; with the frame-size If
(toolkit/preprocess.py) and without it (the gathered-row resize only), so the If's share shows. Then the held-out
scoring both ways for --frames frames: the torch eager head and smoother on precomputed features (the build's
calibration before ffb003a; its trunk ran in onnxruntime) against the whole exported model in onnxruntime (the
runtime's CPU backend, what the build calibrates on now), both on torch's thread count. Prints seconds and ratios.

    .venv/bin/python bench/calibrate_export_speed.py                            # full-data shape: 256 px, 70,144 rows
    .venv/bin/python bench/calibrate_export_speed.py --size 64 --bank-rows 256  # a test suite's tiny build
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch


def patchcore_graph(size: int, rows: int):
    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.geometry import parse_size, resolve_geometry
    from adtk.toolkit.methods.patchcore import PatchCore, PatchCoreHead, PatchCoreState
    from adtk.toolkit.preprocess import FramePreprocess
    from adtk.toolkit.scoring import scoring_graph

    backbone = create_backbone("tf_efficientnet_lite0", random_weights=True, seed=0)
    preprocess = FramePreprocess((size, size), backbone.mean, backbone.std)
    embedding = PatchCore().embedding(tuple(backbone.channels)).eval()
    dims = embedding(backbone(torch.zeros(1, 3, size, size))).shape[1]
    rng = np.random.default_rng(0)
    state = PatchCoreState(rng.standard_normal((rows, dims)).astype(np.float32),
                           np.concatenate([np.arange(rows)[:, None], rng.integers(0, rows, (rows, 8))], axis=1))
    geometry = resolve_geometry(parse_size(f"{size}x{size}"), None, 16, None)
    return scoring_graph(preprocess, backbone, embedding, PatchCoreHead(state), geometry, 4.0)


def export_stages(graph, size: int) -> dict:
    from adtk.export.formats import DEFAULT_OPSET, example_frames
    from adtk.runtime.artefact import OUTPUT_NAMES

    seconds = {}
    tic = time.perf_counter()
    dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("height", min=16, max=8192),
            2: torch.export.Dim("width", min=16, max=8192)}
    program = torch.export.export(graph.eval(), (example_frames((size, size)),), dynamic_shapes={"frames": dims},
                                  strict=False)
    seconds["capture"] = time.perf_counter() - tic
    tic = time.perf_counter()
    onnx_program = torch.onnx.export(program, input_names=["frames"], output_names=list(OUTPUT_NAMES),
                                     opset_version=DEFAULT_OPSET, dynamo=True, external_data=False, optimize=False)
    seconds["decompose_translate"] = time.perf_counter() - tic
    tic = time.perf_counter()
    onnx_program.optimize()
    onnx_program.save(io.BytesIO(), external_data=False)
    seconds["optimize_save"] = time.perf_counter() - tic
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bank-rows", type=int, default=70144)
    parser.add_argument("--frames", type=int, default=8, help="held-out frames scored each way")
    parser.add_argument("--no-export-stages", action="store_true", help="time the build's export call only")
    args = parser.parse_args()
    import adtk.toolkit.preprocess as preprocess_module
    from adtk.export.formats import export_onnx_bytes
    from adtk.runtime.artefact import INPUT_NAME
    from adtk.runtime.backends.onnxruntime import OnnxRuntimeBackend

    graph = patchcore_graph(args.size, args.bank_rows)
    rows = {}
    tic = time.perf_counter()
    model_bytes = export_onnx_bytes(graph, (args.size, args.size))
    rows["export (the build's call)"] = time.perf_counter() - tic
    if not args.no_export_stages:
        rows.update({f"with If: {k}": v for k, v in export_stages(graph, args.size).items()})
        with_if = preprocess_module.FramePreprocess.forward
        preprocess_module.FramePreprocess.forward = lambda self, frames: (self.resize_gathered(frames) * self.scale
                                                                          + self.offset)
        try:
            rows.update({f"no If: {k}": v for k, v in export_stages(graph, args.size).items()})
        finally:
            preprocess_module.FramePreprocess.forward = with_if

    frames = np.random.default_rng(1).integers(0, 256, (args.frames, args.size + 37, args.size + 21, 3), np.uint8)
    with torch.no_grad():  # the old path's trunk ran in onnxruntime (toolkit/trunk_runner.py): only its head is timed
        features = [graph.embedding(graph.backbone(graph.backbone_inputs(torch.from_numpy(f[None])))) for f in frames]
        tic = time.perf_counter()
        eager = [graph.raw_scores_from_features(one)[0] for one in features]
    rows[f"calibration scores, torch eager head + smoother, {args.frames} frames"] = time.perf_counter() - tic
    tic = time.perf_counter()
    backend = OnnxRuntimeBackend(model_bytes, provider="cpu", intra_op_threads=torch.get_num_threads())
    rows["onnxruntime session"] = time.perf_counter() - tic
    tic = time.perf_counter()
    exported = [backend.run({INPUT_NAME: frame[None]})["raw_score"] for frame in frames]
    rows[f"calibration scores, onnxruntime whole graph, {args.frames} frames"] = time.perf_counter() - tic
    worst = max(abs(float(a[0]) - float(b[0])) / max(abs(float(a[0])), 1e-12) for a, b in zip(eager, exported))
    for name, value in rows.items():
        print(f"{name:55s} {value:8.2f} s")
    eager_s = rows[f"calibration scores, torch eager head + smoother, {args.frames} frames"]
    ort_s = rows[f"calibration scores, onnxruntime whole graph, {args.frames} frames"]
    export_if = sum(v for k, v in rows.items() if k.startswith("with If"))
    export_no_if = sum(v for k, v in rows.items() if k.startswith("no If")) or float("nan")
    print(json.dumps({"size": args.size, "bank_rows": args.bank_rows, "frames": args.frames,
                      "onnxruntime_vs_eager_scoring": round(ort_s / eager_s, 3),
                      "export_stages_with_if_vs_without": round(export_if / export_no_if, 3),
                      "raw_score_max_relative_difference": worst,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
