"""Issue-17 / issue-13 bench: a sizing probe exported with static shapes against the same graph exported for frames
of any size (as every artefact is), side by side in one run: export seconds and the cost model's estimates.

The recipe search (`adtk build --method auto`) exports one probe per architecture it costs, and `--target` builds
export one before the fit (toolkit/sizing.py probe_model); the probe is only costed, never run on frames, so since
session 11 it is exported static (toolkit/sizing.py probe_frame_hw). Real ImageNet weights where
they exist offline (efficientnet-lite0, mobilenetv2); each probe's head is fitted on two noise frames, as the build
does.

    .venv/bin/python bench/probe_export.py
"""

from __future__ import annotations

import time

import torch

ARCHITECTURES = [  # (backbone, stages, model size H x W, method): the search's shapes, a fine stage, a tall frame
    ("tf_efficientnet_lite0", None, (256, 256), "patchcore"),
    ("mobilenetv2_100", None, (384, 384), "ldknn"),
    ("tf_efficientnet_lite0", ("blocks.1", "blocks.2"), (256, 640), "patchcore"),
]
TARGETS = [("x86_cpu", "fp32"), ("orin_nano_8gb", "fp16")]


def main() -> None:
    from adtk.export.cost_model import estimate_cost
    from adtk.export.formats import export_model
    from adtk.export.targets import load_target
    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.preprocess import FramePreprocess
    from adtk.toolkit.sizing import probe_frame_hw, probe_graph

    print("| architecture | size | method | export s dynamic / static | "
          + " | ".join(f"{t} {p} ms dynamic / static (diff)" for t, p in TARGETS) + " |")
    print("|---|---|---|---|" + "---|" * len(TARGETS))
    warmed = False
    for name, stages, size, method_name in ARCHITECTURES:
        backbone = create_backbone(name, stages=stages)
        preprocess = FramePreprocess(size, backbone.mean, backbone.std)
        method = create_method(method_name)
        embedding = method.embedding(tuple(backbone.channels)).eval()
        graph = probe_graph(preprocess, backbone, embedding, method, blur_sigma=4.0)
        manifest = {"input": preprocess.contract()}
        if not warmed:  # a process's first export also imports and sets up the exporter (~3 s): not counted
            export_model(graph, manifest, size, static_frame_hw=probe_frame_hw(preprocess))
            warmed = True
        seconds, models = {}, {}
        for dynamic in (True, False):
            tic = time.perf_counter()
            models[dynamic] = export_model(graph, manifest, size,
                                           static_frame_hw=None if dynamic else probe_frame_hw(preprocess))
            seconds[dynamic] = time.perf_counter() - tic
        cells = []
        for target_name, precision in TARGETS:
            target = load_target(target_name)
            est = {d: estimate_cost(models[d], target, precision).latency_ms for d in (True, False)}
            cells.append(f"{est[True]:.2f} / {est[False]:.2f} ({100 * (est[False] / est[True] - 1):+.1f}%)")
        print(f"| {name}{'' if stages is None else ':' + ','.join(stages)} | {size[0]}x{size[1]} | {method_name} | "
              f"{seconds[True]:.1f} / {seconds[False]:.1f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
