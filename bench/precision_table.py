"""fp32 / fp16 / INT8 artefacts side by side: size, onnxruntime CPU latency, image AUROC (issue 7).

    nice -n 15 .venv/bin/python bench/precision_table.py --data ../shared/data/magnetic-tile \
        --max-train-images 200 --coreset-ratio 0.01

For each method (patchcore, and reb when it is registered): one fp32 build (real tf_efficientnet_lite0
weights, 256 px), then the compiler's precision passes on that same fp32 model:
    fp16        head matrices stored fp16, distances in fp32 (export/passes/fp16.py)
    int8        backbone QDQ U8S8, calibrated on 64 good training images (onnxruntime CPU flavour)
    int8-trt    backbone QDQ symmetric INT8 (the flavour TensorRT consumes), scored here on the CPU
Latency: onnxruntime CPU, batch 1, one 256x256 frame, median of `--repeats` runs, the artefacts
interleaved run by run so machine load affects them alike. AUROC: `adtk eval` (evaluate_artefact) on the
whole test split. Results go to bench/results/precision_table.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from adtk.runtime.errors import TargetError

REPO = Path(__file__).resolve().parents[1]
NOTES: list[str] = []  # compiler refusals, reported in the table's notes


def build_variants(method: str, args, out_dir: Path) -> dict[str, Path]:
    from adtk.export.compiler import CompileOptions, compile_model
    from adtk.export.formats import write_artefact
    from adtk.export.passes.graph import load_unsealed, read_manifest
    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.sizing import compile_check_data

    index = index_dataset(args.data)
    import inspect

    from adtk.toolkit.methods.registry import method_class

    accepts = inspect.signature(method_class(method).__init__).parameters
    params = {"coreset_ratio": args.coreset_ratio} if "coreset_ratio" in accepts else {}
    config = BuildConfig(data=args.data, out=out_dir / f"{method}_fp32.onnx", method=method, method_params=params,
                         image_size_px=args.size, max_train_images=args.max_train_images, precision="fp32")
    tic = time.perf_counter()
    result = build(config, log=print, index=index)
    print(f"{method}: fp32 build {time.perf_counter() - tic:.0f} s; fit {result.manifest['method']['fit']}")
    fp32 = load_unsealed(result.artefact.read_bytes())
    data = compile_check_data(index, result.fit_samples, result.calibration_samples, args.check_images, 0, False)
    paths = {"fp32": result.artefact}
    for name, precision, symmetric_target in (("fp16", "fp16", None), ("int8", "int8", None),
                                              ("int8-trt", "int8", "orin_nano_8gb")):
        from adtk.export.targets import load_target

        target = load_target(symmetric_target) if symmetric_target else None
        tic = time.perf_counter()
        try:
            model, manifest, _ = compile_model(fp32, read_manifest(fp32), CompileOptions(precision, target, 1.0),
                                               data, log=lambda m, n=name: print(f"  {n}: {m}"))
        except TargetError as exc:  # e.g. the cost model refuses the bank for the Jetson target: say so, go on
            NOTES.append(f"{method} {name}: refused by the compiler: {exc}")
            print(NOTES[-1])
            continue
        paths[name] = write_artefact(model, manifest, out_dir / f"{method}_{name}.onnx")
        print(f"  {name}: compiled in {time.perf_counter() - tic:.0f} s")
    return paths


def interleaved_latency_ms(paths: dict[str, Path], repeats: int, size: int) -> dict[str, float]:
    from adtk.runtime.detector import Detector

    detectors = {name: Detector.load(path, backend="cpu") for name, path in paths.items()}
    frame = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for detector in detectors.values():  # warm-up: session initialisation and first-run allocations
        for _ in range(3):
            detector.predict(frame)
    times = {name: [] for name in detectors}
    for _ in range(repeats):
        for name, detector in detectors.items():
            tic = time.perf_counter()
            detector.predict(frame)
            times[name].append((time.perf_counter() - tic) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "magnetic-tile")
    parser.add_argument("--methods", default="patchcore,reb")
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--check-images", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adtk-precision-table"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "precision_table")
    args = parser.parse_args()

    from adtk.toolkit.evaluate import evaluate_artefact
    from adtk.toolkit.methods.registry import list_methods

    rows, notes = [], NOTES
    for method in args.methods.split(","):
        if method not in list_methods():
            notes.append(f"{method}: not registered in this checkout (adtk build --method {method} does not exist); skipped")
            print(notes[-1])
            continue
        paths = build_variants(method, args, args.work)
        latency = interleaved_latency_ms(paths, args.repeats, args.size)
        for name, path in paths.items():
            metrics = evaluate_artefact(path, args.data, backend="cpu")
            rows.append({"method": method, "precision": name, "bytes": path.stat().st_size,
                         "cpu_latency_ms_median": round(latency[name], 2),
                         "image_auroc": round(metrics["image_auroc"], 4),
                         "pixel_auroc": round(metrics.get("pixel_auroc", float("nan")), 4)})
            print(rows[-1])
    result = {"command": "bench/precision_table.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
              "rows": rows, "notes": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = ["| method | precision | size MB | CPU latency ms (median) | vs fp32 | image AUROC | pixel AUROC |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["method"] == row["method"] and r["precision"] == "fp32")
        lines.append(f"| {row['method']} | {row['precision']} | {row['bytes'] / 1e6:.2f} | {row['cpu_latency_ms_median']:.2f} | "
                     f"{base['cpu_latency_ms_median'] / row['cpu_latency_ms_median']:.2f}x | {row['image_auroc']:.4f} | "
                     f"{row['pixel_auroc']:.4f} |")
    lines += ["", *notes]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
