"""Issue 13 items 1-3: input geometry on tall frames with thin cracks, side by side in one run.

For each data set and each recipe (default 256 x 256 squash, --size auto, --tile 256, and any extra recipes given)
this builds PatchCore with `adtk build` (a child process: wall time and peak RSS from wait4), scores the test split
with `adtk eval`'s code (image AUROC, pixel AUROC, AU-PRO at the model size: masks resized there), and times
onnxruntime CPU latency per frame at the data set's own frame size, interleaved across the artefacts (round
robin, so load changes hit every recipe alike). Writes bench/results/geometry.md (appends) and a JSON row file.

    python bench/make_tall_set.py --source magnetic-tile --out /tmp/geometry/tall-mt
    python bench/make_tall_set.py --source gravel --out /tmp/geometry/tall-gravel
    python bench/geometry_table.py --data /tmp/geometry/tall-mt --data /tmp/geometry/tall-gravel \\
        --data ../shared/data/magnetic-tile --max-train-images 200

The machine may be shared: the load average is recorded with every build and timing; compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import REPO, run_measured  # noqa: E402

RECIPES = {
    "default 256x256": [],
    "--size auto": ["--size", "auto"],
    "--tile 256": ["--tile", "256"],
}


def camera_frame(data: Path) -> np.ndarray:
    """A real test frame at its own size (the size the camera gives), RGB uint8."""
    from adtk.toolkit.data import index_dataset, read_image

    return read_image(index_dataset(data).test[0].path)


def interleaved_latency_ms(models: dict[str, Path], frame: np.ndarray, rounds: int) -> dict[str, dict]:
    from adtk.runtime.detector import Detector

    detectors = {name: Detector.load(path, backend="cpu") for name, path in models.items()}
    batch = frame[None]
    for detector in detectors.values():  # warm-up
        for _ in range(3):
            detector.predict(batch)
    times = {name: [] for name in detectors}
    for _ in range(rounds):
        for name, detector in detectors.items():
            tic = time.perf_counter()
            detector.predict(batch)
            times[name].append((time.perf_counter() - tic) * 1000.0)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "load_average": load}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/geometry/bench"))
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=ARGS",
                        help="an extra recipe, e.g. 'tile+fine=--tile 256 --stages blocks.1,blocks.2,blocks.4'")
    parser.add_argument("--only", action="append", default=[], help="run only these recipe names")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "geometry.md")
    args = parser.parse_args()
    recipes = dict(RECIPES)
    for text in args.recipe:
        name, _, extra = text.partition("=")
        recipes[name] = shlex.split(extra)
    if args.only:
        recipes = {k: v for k, v in recipes.items() if k in args.only}
    from adtk.toolkit.evaluate import evaluate_artefact

    adtk = str(Path(sys.executable).with_name("adtk"))
    rows = []
    for data in args.data:
        data = data.resolve()
        models = {}
        for name, extra in recipes.items():
            slug = "".join(c if c.isalnum() else "_" for c in f"{data.name}_{name}").strip("_")
            out = args.work / f"{slug}.onnx"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [adtk, "build", "--method", "patchcore", "--data", str(data), "-o", str(out), "--coreset-ratio",
                   str(args.coreset_ratio), "--max-train-images", str(args.max_train_images), *extra]
            if out.exists():
                out.unlink()
            measured = run_measured(cmd, args.work / f"{slug}.build.log")
            metrics = evaluate_artefact(out, data, backend="cpu")
            from adtk.runtime.artefact import read_artefact

            manifest = read_artefact(out).manifest
            tiling = manifest["input"].get("tiling")
            rows.append({"data": str(data), "recipe": name, "command": " ".join(
                ["adtk"] + [shlex.quote(c) for c in cmd[1:]]), "model_size_px": manifest["input"]["model_size_px"],
                "tiles": tiling["grid"] if tiling else None, "image_auroc": metrics["image_auroc"],
                "pixel_auroc": metrics["pixel_auroc"], "au_pro": metrics["au_pro"], "build_s": measured["wall_s"],
                "build_peak_rss_mb": measured["peak_rss_mb"], "build_load_average": measured["load_average_at_end"],
                "size_mb": out.stat().st_size / 1e6})
            models[name] = out
            print(json.dumps(rows[-1]), flush=True)
        frame = camera_frame(data)
        latency = interleaved_latency_ms(models, frame, args.rounds)
        for row in rows:
            if row["data"] == str(data):
                row.update(frame_hw=list(frame.shape[:2]), **{f"latency_{k}": v for k, v in latency[row["recipe"]].items()})
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n## Run {stamp} (machine shared with other sessions: not quiet; load average recorded per row)\n",
             f"`{' '.join(shlex.quote(a) for a in ['python', 'bench/geometry_table.py', *sys.argv[1:]])}`\n",
             "| data | recipe | model size (HxW) | tiles | image AUROC | pixel AUROC | AU-PRO | ms/frame (median, "
             "frame size) | build s | build peak RSS MB | load avg (build / timing) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {Path(row['data']).name} | {row['recipe']} | {row['model_size_px'][0]}x{row['model_size_px'][1]} | "
            f"{'x'.join(map(str, row['tiles'])) if row['tiles'] else '-'} | {row['image_auroc']:.3f} | "
            f"{row['pixel_auroc']:.3f} | {row['au_pro']:.3f} | {row['latency_median_ms']:.1f} "
            f"({row['frame_hw'][0]}x{row['frame_hw'][1]}) | {row['build_s']:.0f} | {row['build_peak_rss_mb']:.0f} | "
            f"{row['build_load_average'].split()[0]} / {row['latency_load_average'].split()[0]} |")
    lines.append("\nCommands (each row):\n")
    lines += [f"- {row['recipe']} on {Path(row['data']).name}: `{row['command']}`" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.results.exists():
        args.results.write_text("# Input geometry: squash vs aspect-kept size vs in-graph tiles (issue 13, items "
                                "1-3)\n\nWritten by bench/geometry_table.py; data from bench/make_tall_set.py.\n")
    with args.results.open("a") as f:
        f.write(text)
    rows_path = args.results.with_suffix(".jsonl")
    with rows_path.open("a") as f:
        for row in rows:
            f.write(json.dumps({**row, "run": stamp}) + "\n")


if __name__ == "__main__":
    main()
