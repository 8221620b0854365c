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

    .venv/bin/python bench/frame_latency.py --vs-workdir /tmp/vs        # a bench/vs_anomalib.py work folder
    .venv/bin/python bench/frame_latency.py --adtk fp32=A.onnx --adtk int8=B.onnx --anomalib M.onnx --image X.jpg

Throughput: batch 1 / 4 / 8 at 256 x 256 and 1280 x 1024; anomalib's exported model takes one frame, so its
batch of B is B calls (each with its resize). Ratios are printed against issue 17's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
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
    return {name: {"median_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
                   "min_ms": round(float(np.min(t)), 3)}
            for name, t in times.items()}


def from_vs_workdir(workdir: Path) -> tuple[dict[str, Path], Path | None, Path]:
    """A bench/vs_anomalib.py work folder (patchcore, 0% pollution) -> (adtk artefacts by name, anomalib's
    model.onnx, the first test image): the same fit, weights and settings as vs_anomalib.md."""
    adtk = {"fp32": workdir / "adtk_patchcore_p0.onnx"}
    for precision in ("int8", "fp16"):
        if (workdir / f"adtk_patchcore_p0_{precision}.onnx").is_file():
            adtk[precision] = workdir / f"adtk_patchcore_p0_{precision}.onnx"
    report = workdir / "anomalib_patchcore_p0" / "report.json"
    anomalib = Path(json.loads(report.read_text())["onnx"]) if report.is_file() else None
    image = Path(json.loads((workdir / "test_patchcore_p0.json").read_text())[0])
    missing = [str(p) for p in [*adtk.values(), image] if not p.is_file()]
    if missing:
        raise SystemExit(f"--vs-workdir {workdir}: missing {', '.join(missing)} (run bench/vs_anomalib.py "
                         "--pairs patchcore --pollution 0 --workdir there first)")
    return adtk, anomalib, image


# Issue 17's latency targets: adtk / (anomalib + its caller's resize), per precision.
TARGETS = {"fp32": 0.30, "int8": 0.20}


def ratio_cell(ours: float, theirs: float, target: float | None) -> str:
    value = ours / theirs
    verdict = "" if target is None else (" met" if value <= target else f" (target {target:.2f})")
    return f"{value:.2f}x{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs-workdir", type=Path,
                        help="a bench/vs_anomalib.py work folder: takes its adtk artefacts (fp32, and int8/fp16 "
                             "where present), anomalib's model and the first test image from it")
    parser.add_argument("--adtk", action="append", default=[], help="NAME=artefact.onnx (repeatable)")
    parser.add_argument("--anomalib", type=Path, help="anomalib's exported model.onnx")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in CAMERA_SIZES), help="HxW,...")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--throughput-sizes", default="256x256,1024x1280",
                        help="frame sizes (HxW,...) for the batch throughput table")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "frame_latency.md")
    args = parser.parse_args()

    artefacts, anomalib_model, image = {}, args.anomalib, args.image
    if args.vs_workdir is not None:
        artefacts, found_anomalib, found_image = from_vs_workdir(args.vs_workdir)
        anomalib_model, image = anomalib_model or found_anomalib, image or found_image
    for item in args.adtk:
        name, _, path = item.partition("=")
        if not name or not path:
            raise SystemExit(f"--adtk {item!r}: expected NAME=artefact.onnx")
        artefacts[name] = Path(path)
    if not artefacts or image is None:
        raise SystemExit("give --vs-workdir, or --adtk NAME=artefact.onnx (repeatable) and --image")
    for path in [*artefacts.values(), image] + ([anomalib_model] if anomalib_model else []):
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file")
    sizes = [tuple(int(v) for v in item.split("x")) for item in args.sizes.split(",")]
    throughput_sizes = [tuple(int(v) for v in item.split("x")) for item in args.throughput_sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    import torch

    from adtk.runtime.artefact import read_artefact

    torch.set_num_threads(os.cpu_count() or 1)  # the caller's resize (torchvision) as anomalib's users run it
    adtk = {name: ort_session(read_artefact(path).model_bytes) for name, path in artefacts.items()}
    theirs = ort_session(str(anomalib_model)) if anomalib_model else None
    log = lambda message: print(message, flush=True)  # noqa: E731
    started = time.perf_counter()

    latency = []
    for height, width in sizes:
        frame = camera_frame(image, height, width)
        calls = {f"adtk {n}": (lambda s=s, f=frame: s.run(None, {"frames": f[None]})) for n, s in adtk.items()}
        if theirs is not None:
            for how in ("tv", "pil"):
                run = anomalib_caller(theirs, how)
                calls[f"anomalib+{how}"] = (lambda run=run, f=frame: run(f))
        load = os.getloadavg()[0]
        row = {"frame_hw": [height, width], "load_avg": round(load, 1), **interleaved(calls, args.runs, args.warmup)}
        log(json.dumps(row))
        latency.append(row)

    throughput = []
    for height, width in throughput_sizes:
        frame = camera_frame(image, height, width)
        for batch in batches:
            frames = np.ascontiguousarray(np.repeat(frame[None], batch, axis=0))
            calls = {f"adtk {n}": (lambda s=s, f=frames: s.run(None, {"frames": f})) for n, s in adtk.items()}
            if theirs is not None:  # its exported model takes one frame: a batch is that many calls
                run = anomalib_caller(theirs, "tv")
                calls["anomalib+tv"] = (lambda run=run, f=frames: [run(one) for one in f])
            load = os.getloadavg()[0]
            timing = interleaved(calls, max(10, args.runs // batch), max(2, args.warmup // batch))
            row = {"frame_hw": [height, width], "batch": batch, "load_avg": round(load, 1),
                   **{n: {**t, "frames_per_s": round(1000.0 * batch / t["median_ms"], 1)} for n, t in timing.items()}}
            log(json.dumps(row))
            throughput.append(row)
    elapsed = time.perf_counter() - started

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ours = [f"adtk {n}" for n in adtk]
    others = [n for n in ("anomalib+tv", "anomalib+pil") if theirs is not None]
    import onnxruntime

    command = " ".join(["python"] + [a if not a.startswith("/") else a.replace(str(REPO) + "/", "") for a in sys.argv])
    lines = [f"## {stamp}", "", f"`{command}`", "",
             f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {onnxruntime.__version__} CPU, default "
             f"threads, spinning off. Artefacts: " + ", ".join(f"{n} = {Path(p).name}" for n, p in artefacts.items())
             + (f"; anomalib = {anomalib_model.name}" if anomalib_model else "; anomalib not given (no ratios)")
             + f". Median (p99) ms of {args.runs} interleaved calls per variant; load average per row "
             f"(a load above ~0.5 on this 2-core machine means the timings are not a quiet-machine result). "
             f"Bench time {elapsed:.0f} s.", "",
             "Ratio = adtk / (anomalib + its caller's resize: tv = the inferencer's pre_process then torchvision's "
             "antialiased resize, as anomalib's PreProcessor; pil = a PIL bilinear resize of the uint8 frame first). "
             f"Targets (issue 17): {', '.join(f'{k} <= {v:.2f}x' for k, v in TARGETS.items())} against anomalib+tv.",
             "", "| " + " | ".join(["frame H x W", "load avg", *ours, *others,
                                    *(f"{a} / anomalib+tv (/ +pil)" for a in ours if others)]) + " |",
             "|---|---|" + "---|" * (len(ours) + len(others)) + ("---|" * len(ours) if others else "")]
    for r in latency:
        cells = [f"{r[n]['median_ms']:.2f} ({r[n]['p99_ms']:.2f})" for n in ours + others]
        if others:
            for a in ours:
                target = TARGETS.get(a.split()[1])
                cells.append(f"{ratio_cell(r[a]['median_ms'], r['anomalib+tv']['median_ms'], target)} "
                             f"({r[a]['median_ms'] / r['anomalib+pil']['median_ms']:.2f}x)")
        lines.append(f"| {r['frame_hw'][0]} x {r['frame_hw'][1]} | {r['load_avg']} | " + " | ".join(cells) + " |")
    names = ours + (["anomalib+tv"] if others else [])
    lines += ["", "Throughput: one session, a batch of B frames per call (several cameras sharing the device); "
              "anomalib's exported model takes one frame, so its batch is B calls, each with its resize. "
              "Frames per second (ms per batch):", "",
              "| frame H x W | batch | load avg | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for r in throughput:
        lines.append(f"| {r['frame_hw'][0]} x {r['frame_hw'][1]} | {r['batch']} | {r['load_avg']} | " + " | ".join(
            f"{r[n]['frames_per_s']:.1f} ({r[n]['median_ms']:.1f})" for n in names) + " |")
    lines.append("")
    append_record(args.record, "Frame latency at camera sizes and batch throughput (bench/frame_latency.py)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
