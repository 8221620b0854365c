"""Issue-17 helper: where an artefact's frame time goes, node by node, in onnxruntime's own profiler.

For each frame size, runs the artefact `--runs` times with SessionOptions.enable_profiling and sums each node's
kernel time (the profiler's "Node" events) by node and by op type; prints the share of the frame each takes.
Proportions, not absolute times, are the point (they survive a loaded machine better than wall time does).

    .venv/bin/python bench/frame_profile.py A.onnx --sizes 256x256,2048x2448 --threads 1 --top 15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        height, _, width = item.partition("x")
        sizes.append((int(height), int(width)))
    return sizes


def profile(model_bytes: bytes, frame: np.ndarray, runs: int, threads: int, level: str) -> dict:
    """-> {"by_node": {name: (op, total us)}, "by_op": {op: total us}, "runs": runs} over `runs` calls after 3
    unprofiled warm-up calls (the profiler records from session creation, so warm-ups are dropped by run index)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: frame[None]}
        for _ in range(3 + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(model_runs) < 3 + runs:
        raise SystemExit(f"profiler recorded {len(model_runs)} runs, expected {3 + runs}")
    start = model_runs[3]["ts"]
    run_us = sum(e["dur"] for e in model_runs[3:]) / runs
    by_node, by_op = defaultdict(float), defaultdict(float)
    ops = {}
    for event in events:
        if event.get("cat") != "Node" or event["ts"] < start or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        op = event.get("args", {}).get("op_name", "?")
        if op in ("If", "Loop", "Scan"):  # its body's nodes are recorded too: counting both would count twice
            continue
        by_node[name] += event["dur"] / runs
        by_op[op] += event["dur"] / runs
        ops[name] = op
    return {"run_us": run_us, "by_node": {n: (ops[n], t) for n, t in by_node.items()}, "by_op": dict(by_op)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artefact", type=Path)
    parser.add_argument("--sizes", default="256x256,1024x1280,1080x1920,2048x2448,1250x500", help="HxW,...")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--level", default="ORT_ENABLE_ALL", help="onnxruntime GraphOptimizationLevel name")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--raw-onnx", action="store_true", help="the file is a plain .onnx, not an adtk artefact")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from frame_latency import camera_frame

    if args.raw_onnx:
        model_bytes = args.artefact.read_bytes()
    else:
        from adtk.runtime.artefact import read_artefact

        model_bytes = read_artefact(args.artefact).model_bytes
    image = Path(os.environ.get("ADTK_PROFILE_IMAGE", ""))
    for height, width in parse_sizes(args.sizes):
        if image.is_file():
            frame = camera_frame(image, height, width)
        else:
            frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        result = profile(model_bytes, frame, args.runs, args.threads, args.level)
        total = sum(result["by_op"].values())
        print(f"\n== {height} x {width}: run {result['run_us'] / 1000:.2f} ms, kernels {total / 1000:.2f} ms "
              f"(load avg {os.getloadavg()[0]:.1f})")
        for op, us in sorted(result["by_op"].items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  op   {op:<28} {us / 1000:8.3f} ms  {100 * us / total:5.1f}%")
        for name, (op, us) in sorted(result["by_node"].items(), key=lambda kv: -kv[1][1])[: args.top]:
            print(f"  node {name[:60]:<60} {op:<16} {us / 1000:8.3f} ms  {100 * us / total:5.1f}%")


if __name__ == "__main__":
    main()
