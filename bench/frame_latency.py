"""Issue-17 bench: frame latency at camera sizes, adtk artefacts against anomalib's exported PatchCore, and
throughput at batch 1 / 4 / 8 for several cameras sharing one device.

One real test image is resized (PIL, bicubic) to each camera size; that uint8 frame is what a camera delivers.
  * adtk: the artefact's own input, uint8 [B, H, W, 3] at native size (the graph resizes).
  * anomalib: its exported model has a fixed float input [1, 3, 256, 256]; anomalib's inferencers
    (OpenVINOInferencer / TorchInferencer.pre_process) do no resizing: they cast to float32, divide by 255 and
    transpose, and its own data pipeline resizes with torchvision's Resize(antialias=True). The caller's
    resize is therefore timed with the call, two ways: "tv" = the inferencer's pre_process then torchvision
    resize (antialias, as anomalib's PreProcessor), and "pil" = a PIL bilinear resize of the uint8 frame first
    (the cheapest a caller could reasonably do; antialiased too) then pre_process.
Calls are interleaved (one of each variant per round, 10 warm-up rounds, then `--runs`), onnxruntime CPU,
default threads, spinning off in every session (so an idle session does not steal cores). The load average is
recorded: this machine may be shared.

    .venv/bin/python bench/frame_latency.py --adtk fp32=A.onnx --adtk int8=B.onnx --anomalib M.onnx --image X.jpg
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import append_record, interleaved_times_ms  # noqa: E402
from vs_anomalib import ort_session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAMERA_SIZES = ((256, 256), (1024, 1280), (1080, 1920), (2048, 2448), (1250, 500))  # (height, width)
MODEL_SIZE = 256


def camera_frame(image: Path, height: int, width: int) -> np.ndarray:
    from PIL import Image

    with Image.open(image) as img:
        return np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.uint8)


def anomalib_caller(session, how: str):
    """-> f(uint8 frame [H, W, 3]) that prepares the frame as described above and runs anomalib's model."""
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    name = session.get_inputs()[0].name

    def pre_process(image: np.ndarray) -> np.ndarray:  # anomalib 2.7 OpenVINOInferencer.pre_process
        image = image.astype(np.float32)
        if image.max() > 1.0:
            image /= 255.0
        return np.expand_dims(image, 0).transpose(0, 3, 1, 2)

    if how == "tv":
        def run(frame):
            tensor = torch.from_numpy(np.ascontiguousarray(pre_process(frame)))
            resized = TF.resize(tensor, [MODEL_SIZE, MODEL_SIZE], antialias=True).numpy()
            return session.run(None, {name: resized})
    else:
        def run(frame):
            small = np.asarray(Image.fromarray(frame).resize((MODEL_SIZE, MODEL_SIZE), Image.BILINEAR))
            return session.run(None, {name: np.ascontiguousarray(pre_process(small))})
    return run


def interleaved(calls: dict, runs: int, warmup: int = 10) -> dict:
    times = interleaved_times_ms(calls, runs, warmup)
    return {name: {"median_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3)}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adtk", action="append", required=True, help="NAME=artefact.onnx (repeatable)")
    parser.add_argument("--anomalib", type=Path, help="anomalib's exported model.onnx")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "frame_latency.md")
    args = parser.parse_args()

    import torch

    from adtk.runtime.artefact import read_artefact

    torch.set_num_threads(os.cpu_count() or 1)
    adtk = {}
    for item in args.adtk:
        name, _, path = item.partition("=")
        adtk[name] = ort_session(read_artefact(Path(path)).model_bytes)
    theirs = ort_session(str(args.anomalib)) if args.anomalib else None
    log = lambda message: print(message, flush=True)  # noqa: E731

    latency = []
    for height, width in CAMERA_SIZES:
        frame = camera_frame(args.image, height, width)
        calls = {f"adtk {n}": (lambda s=s: s.run(None, {"frames": frame[None]})) for n, s in adtk.items()}
        if theirs is not None:
            for how in ("tv", "pil"):
                run = anomalib_caller(theirs, how)
                calls[f"anomalib+{how}"] = (lambda run=run: run(frame))
        load = os.getloadavg()[0]
        row = {"frame_hw": [height, width], "load_avg": round(load, 1), **interleaved(calls, args.runs)}
        log(json.dumps(row))
        latency.append(row)

    throughput = []
    frame = camera_frame(args.image, MODEL_SIZE, MODEL_SIZE)
    for batch in (int(b) for b in args.batches.split(",")):
        frames = np.repeat(frame[None], batch, axis=0)
        calls = {f"adtk {n}": (lambda s=s: s.run(None, {"frames": frames})) for n, s in adtk.items()}
        load = os.getloadavg()[0]
        timing = interleaved(calls, max(10, args.runs // batch))
        row = {"batch": batch, "load_avg": round(load, 1),
               **{n: {**t, "frames_per_s": round(1000.0 * batch / t["median_ms"], 1)} for n, t in timing.items()}}
        log(json.dumps(row))
        throughput.append(row)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = list(latency[0].keys() - {"frame_hw", "load_avg"})
    names.sort(key=lambda n: (not n.startswith("adtk"), n))
    lines = [f"## {stamp}", "", f"`{' '.join(['.venv/bin/python'] + [a if not a.startswith('/') else Path(a).name for a in sys.argv])}`", "",
             f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime CPU. Machine SHARED with other jobs (not quiet): "
             "calls interleaved round by round so the load hits every variant alike; compare ratios. "
             f"Median (p99) ms of {args.runs} calls per variant.", "",
             "| frame H x W | load avg | " + " | ".join(names) + " | "
             + " | ".join(f"{a} / anomalib+tv (/ +pil)" for a in names if a.startswith("adtk")) + " |",
             "|---|---|" + "---|" * len(names) + "---|" * sum(a.startswith("adtk") for a in names)]
    for r in latency:
        cells = [f"{r[n]['median_ms']:.2f} ({r[n]['p99_ms']:.2f})" for n in names]
        ratios = []
        for a in names:
            if a.startswith("adtk"):
                if "anomalib+tv" in r:
                    ratios.append(f"{r[a]['median_ms'] / r['anomalib+tv']['median_ms']:.2f}x "
                                  f"({r[a]['median_ms'] / r['anomalib+pil']['median_ms']:.2f}x)")
                else:
                    ratios.append("-")
        lines.append(f"| {r['frame_hw'][0]} x {r['frame_hw'][1]} | {r['load_avg']} | " + " | ".join(cells + ratios) + " |")
    lines += ["", f"Throughput, {MODEL_SIZE} x {MODEL_SIZE} frames, one session, a batch of B frames per call "
              "(several cameras sharing the device):", "",
              "| batch | load avg | " + " | ".join(f"{n} ms/call | {n} frames/s" for n in adtk) + " |",
              "|---|---|" + "---|---|" * len(adtk)]
    for r in throughput:
        lines.append(f"| {r['batch']} | {r['load_avg']} | " + " | ".join(
            f"{r['adtk ' + n]['median_ms']:.2f} | {r['adtk ' + n]['frames_per_s']:.1f}" for n in adtk) + " |")
    lines.append("")
    append_record(args.record, "Frame latency at camera sizes and batch throughput (bench/frame_latency.py)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
