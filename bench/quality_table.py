"""Issue-13 quality table: anomalib 2.7 and adtk recipes side by side, in one run, on a data set's full test split.

Rows (`--rows`, default all):
  anomalib_patchcore_200   anomalib PatchCore, 1% coreset, 200 seeded training images (vs_anomalib's setting)
  adtk_patchcore_200       adtk PatchCore on the SAME 200 images, same backbone/weights/size/ratio
  anomalib_padim           anomalib PaDiM, all training images, 100 channels
  adtk_default             `adtk build` with no options (PatchCore, 10% coreset, all images)
  adtk_auto                `adtk build --method auto --target x86_cpu`
  adtk_best                `adtk build --method ldknn` (the best hand recipe of the issue-5 ablation)

Every row is scored on ALL test images with the same metric code (toolkit/evaluation/metrics.py): image AUROC,
pixel AUROC, AU-PRO (FPR <= 0.3). Build time and peak RSS are the build process's (wait4, bench/measure.py).
Latency: onnxruntime CPU, batch 1, one camera-size frame (`--frame 1280x1024`, a test image upscaled), calls
interleaved across all rows so machine noise hits all alike. adtk's artefact takes the uint8 frame (its graph
resizes); anomalib's model takes a 256 x 256 float tensor, so its time includes the caller's resize (torch
bilinear, antialias, as its pre-processor does) of the same frame.

    .venv/bin/python bench/quality_table.py [--rows adtk_auto,anomalib_patchcore_200,...] [--data DIR]

Writes bench/results/quality_table.md and .json (the record says the load average: this machine was shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import interleaved_times_ms, run_measured  # noqa: E402
from vs_anomalib import (BACKBONE, DEFAULT_DATA, REPO, SIZE, STAGES, ensure_anomalib_venv, export_weights,  # noqa: E402
                         link_dataset, ort_session)

ADTK = str(Path(sys.executable).with_name("adtk"))
ROWS = {
    "anomalib_patchcore_200": dict(tool="anomalib", train_images=200,
                                   args=["--method", "patchcore", "--coreset-ratio", "0.01", "--num-neighbors", "9"]),
    "adtk_patchcore_200": dict(tool="adtk", train_images=200,
                               args=["--method", "patchcore", "--coreset-ratio", "0.01", "--num-neighbors", "9",
                                     "--backbone", BACKBONE, "--stages", ",".join(STAGES), "--size", str(SIZE)]),
    "anomalib_padim": dict(tool="anomalib", train_images=None, args=["--method", "padim", "--n-features", "100"]),
    "adtk_default": dict(tool="adtk", train_images=None, args=[]),
    "adtk_auto": dict(tool="adtk", train_images=None, args=["--method", "auto", "--target", "x86_cpu"]),
    "adtk_best": dict(tool="adtk", train_images=None, args=["--method", "ldknn"]),
}
KEYS = ("image_auroc", "pixel_auroc", "au_pro")


def camera_frame(path: Path, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR))


def timed_calls(calls: dict, runs: int = 30, warmup: int = 5) -> dict:
    times = interleaved_times_ms(calls, runs, warmup)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))} for name, t in times.items()}


def latency(rows: dict, frame: np.ndarray) -> dict:
    import torch
    import torch.nn.functional as F

    from adtk.runtime.artefact import read_artefact

    calls = {}
    for name, row in rows.items():
        if row["tool"] == "adtk":
            session = ort_session(read_artefact(row["artefact"]).model_bytes)
            feed = {session.get_inputs()[0].name: frame[None]}
            calls[name] = (lambda s=session, f=feed: s.run(None, f))
        else:
            session = ort_session(row["artefact"])
            input_name = session.get_inputs()[0].name

            def anomalib_call(s=session, n=input_name):
                resized = F.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0,
                                        size=(SIZE, SIZE), mode="bilinear", antialias=True).numpy()
                return s.run(None, {n: resized})
            calls[name] = anomalib_call
    return timed_calls(calls)


def test_labels_and_masks(data_dir: Path, test_paths: list[str], size_hw) -> tuple[np.ndarray, np.ndarray]:
    """Labels and masks of the test images in `test_paths` order, masks resized as adtk's evaluation does."""
    from adtk.toolkit.data import index_dataset, read_mask
    from adtk.toolkit.evaluate import resize_mask
    from PIL import Image

    samples = list(index_dataset(data_dir).test)
    if [str(s.path) for s in samples] != test_paths:
        raise SystemExit("test order differs between the two tools")
    masks = []
    for sample in samples:
        width, height = Image.open(sample.path).size
        masks.append(resize_mask(read_mask(sample.mask_path, (height, width)), tuple(size_hw))
                     if sample.mask_path is not None else np.zeros(tuple(size_hw), dtype=bool))
    return np.asarray([s.label for s in samples]), np.stack(masks)


def run_row(name: str, spec: dict, index, workdir: Path, anomalib_python, weights: Path, seed: int, log) -> dict:
    from adtk.toolkit.evaluate import evaluate_artefact
    from adtk.toolkit.evaluation.metrics import evaluate_predictions

    train = list(index.train)
    if spec["train_images"] is not None and spec["train_images"] < len(train):
        keep = np.sort(np.random.default_rng(seed).choice(len(train), spec["train_images"], replace=False))
        train = [train[i] for i in keep]
    data_dir = workdir / f"data_{len(train)}"
    if not data_dir.exists():
        link_dataset(data_dir, train, index.test)
    log(f"[{name}] {spec['tool']} on {len(train)} training images")
    if spec["tool"] == "adtk":
        artefact = workdir / f"{name}.onnx"
        proc = run_measured([ADTK, "build", "--data", str(data_dir), "-o", str(artefact), "--seed", str(seed),
                             *spec["args"]], workdir / f"{name}.log")
        metrics = evaluate_artefact(artefact, data_dir)
        from adtk.runtime.artefact import read_artefact
        manifest = read_artefact(artefact).manifest
        extra = {"method": manifest["method"]["name"], "params": manifest["method"]["params"],
                 "backbone": f"{manifest['backbone']['name']} {manifest['backbone']['stages']}",
                 "model_size_px": manifest["input"]["model_size_px"], "precision": manifest["target"]["precision"],
                 "bytes": artefact.stat().st_size,
                 "recipe_search": manifest["training"].get("recipe_search", {}).get("chosen")}
        row = {"tool": "adtk", "artefact": str(artefact), **extra}
    else:
        out = workdir / name
        test_list = workdir / f"test_{name}.json"
        from adtk.toolkit.data import index_dataset
        test_paths = [str(s.path) for s in index_dataset(data_dir).test]
        test_list.write_text(json.dumps(test_paths))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = run_measured([str(anomalib_python), str(REPO / "bench" / "anomalib_worker.py"), "--data", str(data_dir),
                             "--test-list", str(test_list), "--weights", str(weights), "--out", str(out),
                             "--layers", ",".join(STAGES), "--size", str(SIZE), *spec["args"]],
                            workdir / f"{name}.log", env=env)
        report = json.loads((out / "report.json").read_text())
        # the same test order and masks as adtk's evaluation: score anomalib's raw outputs with adtk's metrics
        labels, masks = test_labels_and_masks(data_dir, test_paths, np.load(out / "maps.npy").shape[-2:])
        metrics = evaluate_predictions(np.load(out / "scores.npy"), labels, maps=np.load(out / "maps.npy"), masks=masks)
        row = {"tool": "anomalib", "artefact": report["onnx"], "bytes": sum(report["onnx_files"].values()),
               "method": spec["args"][1]}
    row.update({"train_images": len(train), "test_images": len(index.test), "build_s": proc["wall_s"],
                "peak_rss_mb": proc["peak_rss_mb"], "load_average_at_end": proc["load_average_at_end"],
                **{k: metrics[k] for k in KEYS}})
    log(f"[{name}] " + json.dumps({k: row[k] for k in (*KEYS, "build_s", "peak_rss_mb")}))
    return row


def render(rows: dict, timing: dict, settings: dict) -> str:
    lines = [f"# Quality table: anomalib 2.7 vs adtk recipes ({settings['date']})", "",
             f"Data: {settings['data']}, all {settings['test_images']} test images. Latency: onnxruntime CPU, batch 1, "
             f"a {settings['frame']} uint8 frame (anomalib: + the caller's resize to {SIZE} x {SIZE}), calls "
             f"interleaved. Machine: {settings['machine']}; **shared, not quiet** (load average "
             f"{settings['load_average_start']} at start, {settings['load_average_end']} at end): times are inflated "
             "and only comparable within this run.", "",
             f"Command: `{settings['command']}`", "",
             "| row | recipe | train imgs | image AUROC | pixel AUROC | AU-PRO | ms/frame (median) | build s | "
             "peak RSS MB | size MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | | | | | |")
            continue
        recipe = row["method"] + (f" {row.get('backbone', '')} {row.get('model_size_px', '')} "
                                  f"{row.get('precision', '')}" if row["tool"] == "adtk" else "")
        lines.append(f"| {name} | {recipe} | {row['train_images']} | {row['image_auroc']:.4f} | {row['pixel_auroc']:.4f} | "
                     f"{row['au_pro']:.4f} | {format(timing[name]['median_ms'], '.1f') if name in timing else 'not timed'} | "
                     f"{row['build_s']:.0f} | {row['peak_rss_mb']:.0f} | {row['bytes'] / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--frame", default="1280x1024", help="camera frame WIDTHxHEIGHT for the latency column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anomalib-venv", type=Path, default=Path.home() / ".cache" / "adtk-bench" / "anomalib-2.7.0")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "quality_table.md")
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument("--no-timing", action="store_true",
                        help="quality columns only (AUROC / AU-PRO are valid on a loaded machine; times are not)")
    timing.add_argument("--timing-only", action="store_true",
                        help="rerun only the latency column: every row must already be finished in --workdir "
                             "(NAME.row.json); build s / peak RSS stay those of the run that built them")
    args = parser.parse_args()
    from adtk.toolkit.data import index_dataset

    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown} (known: {', '.join(ROWS)})")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="quality_table_"))
    workdir.mkdir(parents=True, exist_ok=True)
    index = index_dataset(args.data)
    settings = {"date": str(date.today()), "data": str(args.data), "test_images": len(index.test),
                "frame": args.frame, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "load_average_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                "command": " ".join(["python", "bench/quality_table.py", *sys.argv[1:]])}

    def log(message):
        print(message, flush=True)

    anomalib_python, weights = None, workdir / "lite0_weights.pt"
    if any(ROWS[n]["tool"] == "anomalib" for n in names):
        anomalib_python = ensure_anomalib_venv(args.anomalib_venv, log)
        export_weights(weights)
    rows: dict = {}

    def write_record(timing: dict) -> None:  # after every row: a run cut short still leaves what it measured
        settings["load_average_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(render(rows, timing, settings))
        args.record.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows, "latency": timing},
                                                               indent=1, default=str))

    if args.timing_only:
        missing = [n for n in names if not (workdir / f"{n}.row.json").exists()]
        if args.workdir is None or missing:
            raise SystemExit(f"--timing-only needs every row already built in --workdir; missing: {missing or names}")
    for name in names:
        saved = workdir / f"{name}.row.json"  # a finished row of an earlier run in this workdir is reused
        if saved.exists():
            rows[name] = json.loads(saved.read_text())
            log(f"[{name}] reusing {saved}")
            continue
        try:
            rows[name] = run_row(name, ROWS[name], index, workdir, anomalib_python, weights, args.seed, log)
            saved.write_text(json.dumps(rows[name], default=str))
        except SystemExit as failed:  # one failing row is a result to record, not a reason to lose the others
            rows[name] = {"error": str(failed).splitlines()[0][:200]}
            log(f"[{name}] failed: {failed}")
        write_record({})
    if args.no_timing:
        print(args.record.read_text())
        return
    width, height = (int(v) for v in args.frame.lower().split("x"))
    frame = camera_frame(index.test[0].path, height, width)
    write_record(latency({n: r for n, r in rows.items() if "error" not in r}, frame))
    print(args.record.read_text())


if __name__ == "__main__":
    main()
