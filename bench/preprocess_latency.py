"""Issue-17 bench: the artefact's frame preprocessing alone in onnxruntime at camera sizes, the current
FramePreprocess (gather the 2 x S rows a bilinear resize reads, as uint8, then transpose/cast/resize) against the
former graph (transpose and cast the whole frame, one Resize), interleaved call by call in one process.
Both are exported with the compiler's exporter; outputs are checked equal to the former torch module.

    .venv/bin/python bench/preprocess_latency.py [--threads 1] [--runs 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from adtk.export.formats import export_onnx_bytes
from adtk.toolkit.preprocess import FramePreprocess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import append_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZES = ((256, 256), (300, 300), (1024, 1280), (1080, 1920), (2048, 2448), (1250, 500))


class FormerFramePreprocess(FramePreprocess):
    """The graph before issue 17: the whole frame transposed to NCHW and cast to float, then one Resize."""

    def forward(self, frames):
        x = frames.permute(0, 3, 1, 2).to(torch.float32)
        x = F.interpolate(x, size=self.image_size_px, mode="bilinear", align_corners=False, antialias=False)
        return x * self.scale + self.offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "preprocess_latency.md")
    args = parser.parse_args()
    settings = (256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    modules = {"former": FormerFramePreprocess(*settings).eval(), "current": FramePreprocess(*settings).eval()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {name: ort.InferenceSession(export_onnx_bytes(m, (256, 256)), options, providers=["CPUExecutionProvider"])
                for name, m in modules.items()}
    rng = np.random.default_rng(0)
    rows = []
    for height, width in SIZES:
        frames = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        expected = modules["former"](torch.from_numpy(frames)).numpy()
        diff = max(float(np.abs(s.run(None, {"frames": frames})[0] - expected).max()) for s in sessions.values())
        times = {name: [] for name in sessions}
        load = os.getloadavg()[0]
        for i in range(10 + args.runs):
            for name, session in sessions.items():
                tic = time.perf_counter()
                session.run(None, {"frames": frames})
                if i >= 10:
                    times[name].append((time.perf_counter() - tic) * 1000)
        row = (height, width, load, {n: (np.median(t), np.min(t)) for n, t in times.items()}, diff)
        print(row, flush=True)
        rows.append(row)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {stamp}", "", f"`.venv/bin/python bench/preprocess_latency.py {' '.join(sys.argv[1:])}`", "",
             f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, intra-op threads "
             f"{args.threads or 'default'}. Machine SHARED and heavily loaded (see load avg): calls interleaved, "
             f"{args.runs} each; the minimum is the least disturbed call, the median shows the load.", "",
             "| frame H x W | load avg | former median (min) ms | current median (min) ms | current / former (min) "
             "| max abs diff vs former torch |", "|---|---|---|---|---|---|"]
    for height, width, load, t, diff in rows:
        lines.append(f"| {height} x {width} | {load:.1f} | {t['former'][0]:.2f} ({t['former'][1]:.2f}) | "
                     f"{t['current'][0]:.2f} ({t['current'][1]:.2f}) | {t['current'][1] / t['former'][1]:.2f}x | {diff:.1e} |")
    append_record(args.record, "Frame preprocessing in onnxruntime, former vs current graph (bench/preprocess_latency.py)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
