"""Issue-17 bench: the bank search in cache-sized chunks (export/passes/chunk_bank.py) against one whole Gemm,
side by side in one run, on the artefact as onnxruntime's CPU backend runs it.

A PatchCore scoring graph (tf_efficientnet_lite0, random weights and a random bank: timing only, as
bench/calibrate_export_speed.py) is exported once per bank size; each variant is the same model with its bank
search split into chunks of at most N distance values (N = 2^k; "whole" = not split). Every variant's outputs
are compared with the whole model's (they must be equal to fp32 rounding), then the variants are timed on the
same frames, calls interleaved round by round, batch 1, on torch's thread count. Prints the median ms per frame
and the ratio to the whole model.

    .venv/bin/python bench/bank_chunks.py                                   # 70,144 and 6,850 rows, 2 frame sizes
    .venv/bin/python bench/bank_chunks.py --bank-rows 70144 --frames 256x256 --runs 20 --record out.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibrate_export_speed import patchcore_graph  # noqa: E402  (the same graph as the export bench)


def variants(model, budgets: list[int]) -> dict:
    from adtk.export.passes.chunk_bank import chunk_bank_reductions

    out = {"whole": model}
    for elements in budgets:
        chunked, report = chunk_bank_reductions(model, elements)
        chunks = report[0]["chunks"] if report else 1
        out[f"2^{int(np.log2(elements))} ({chunks} chunks)"] = chunked
    return out


def time_variants(models: dict, frames: list, runs: int, threads: int) -> dict:
    from adtk.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backends = {name: OnnxRuntimeBackend(m.SerializeToString(), provider="cpu", intra_op_threads=threads)
                for name, m in models.items()}
    reference = [backends["whole"].run({"frames": f}) for f in frames]
    worst = {}
    for name, backend in backends.items():
        diffs = [max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a)
                 for a, b in zip(reference, (backend.run({"frames": f}) for f in frames))]
        worst[name] = max(diffs)
    times = {name: [] for name in backends}
    for _ in range(runs):
        for name, backend in backends.items():  # interleaved: drift on a shared machine hits every variant alike
            for frame in frames:
                tic = time.perf_counter()
                backend.run({"frames": frame})
                times[name].append(time.perf_counter() - tic)
    return {name: (float(np.median(t)) * 1e3, worst[name]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank-rows", type=int, nargs="+", default=[70144, 6850],
                        help="70,144 = the default build on all magnetic-tile images; 6,850 = --method auto's pick")
    parser.add_argument("--size", type=int, default=256, help="model input, px (square)")
    parser.add_argument("--frames", nargs="+", default=["256x256", "1024x1280"], help="camera frames H x W")
    parser.add_argument("--budgets", type=int, nargs="+", default=[19, 20, 21, 22, 23],
                        help="chunk sizes as powers of two of distance values (20 = the CPU default)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--record", help="append the table to this markdown file")
    args = parser.parse_args()

    from adtk.export.formats import export_model

    threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    lines = [f"`python bench/bank_chunks.py {' '.join(sys.argv[1:])}` on {platform.machine()}, {os.cpu_count()} "
             f"cores, {threads} onnxruntime threads, load average at start {os.getloadavg()[0]:.2f}", "",
             "| bank rows | frame H x W | variant | ms/frame (median) | vs whole | max abs output diff |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for rows in args.bank_rows:
        model = export_model(patchcore_graph(args.size, rows), {}, (args.size, args.size))
        models = variants(model, [2 ** k for k in args.budgets])
        for frame_hw in args.frames:
            height, width = (int(v) for v in frame_hw.lower().split("x"))
            frames = [rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8) for _ in range(3)]
            results = time_variants(models, frames, args.runs, threads)
            whole = results["whole"][0]
            for name, (ms, diff) in results.items():
                line = f"| {rows:,} | {height} x {width} | {name} | {ms:.2f} | {ms / whole:.2f}x | {diff:.1e} |"
                lines.append(line)
                print(line, flush=True)
    lines.append(f"\nload average at end {os.getloadavg()[0]:.2f}")
    print(lines[-1])
    if args.record:
        with open(args.record, "a") as out:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
