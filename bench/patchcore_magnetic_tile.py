"""Issue 2 acceptance bench: PatchCore on magnetic-tile, real tf_efficientnet_lite0 weights, 256 px.

Prints (and appends to bench/results/patchcore_magnetic_tile.md): fit time by phase, peak RSS of the
build, memory bank rows x dims, artefact size, onnxruntime CPU latency per frame (batch 1, median and
p99 of 50 after 10 warm-up runs), and image AUROC / pixel AUROC / AU-PRO / F1 from `adtk eval`'s code.

    .venv/bin/python bench/patchcore_magnetic_tile.py --coreset-ratio 0.1
    .venv/bin/python bench/patchcore_magnetic_tile.py --coreset-ratio 0.01 --max-train-images 200

Absolute times depend on the machine and its load; compare configurations from the same run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "magnetic-tile").resolve()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def latency_ms(model: Path, frame: np.ndarray, runs: int = 50, warmup: int = 10) -> tuple[float, float]:
    from adtk.runtime.detector import Detector

    detector = Detector.load(model, backend="cpu")
    batch = frame[None]
    for _ in range(warmup):
        detector.predict(batch)
    times = []
    for _ in range(runs):
        tic = time.perf_counter()
        detector.predict(batch)
        times.append((time.perf_counter() - tic) * 1000.0)
    return float(np.median(times)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--num-neighbors", type=int, default=9)
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="artefact path (default: a temp folder)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results")
    args = parser.parse_args()

    from adtk.runtime.images import read_image
    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluate import evaluate_artefact

    out = args.out or Path(tempfile.mkdtemp()) / "patchcore.onnx"
    config = BuildConfig(data=args.data, out=out, method="patchcore",
                         method_params={"coreset_ratio": args.coreset_ratio, "num_neighbors": args.num_neighbors},
                         backbone="tf_efficientnet_lite0", image_size_px=args.size,
                         max_train_images=args.max_train_images, seed=args.seed)
    rss_before = peak_rss_mb()
    tic = time.perf_counter()
    result = build(config, log=lambda message: print(message, flush=True))
    build_s = time.perf_counter() - tic
    rss_build = peak_rss_mb()
    fit = result.manifest["method"]["fit"]
    index = index_dataset(args.data)
    frame = read_image(index.test[0].path)
    median_ms, p99_ms = latency_ms(out, frame)
    tic = time.perf_counter()
    metrics = evaluate_artefact(out, args.data)
    eval_s = time.perf_counter() - tic

    row = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "coreset_ratio": args.coreset_ratio, "num_neighbors": args.num_neighbors,
        "fit_images": len(result.fit_samples), "calibration_images": len(result.calibration_samples),
        "bank": f"{fit['memory_bank_rows']} x {fit['memory_bank_dims']}",
        "timings_s": {k: round(v, 1) for k, v in result.timings_s.items()}, "build_s": round(build_s, 1),
        "peak_rss_mb_build": round(rss_build, 0), "rss_mb_before_build": round(rss_before, 0),
        "artefact_mb": round(out.stat().st_size / 1e6, 2),
        "latency_ms_median": round(median_ms, 2), "latency_ms_p99": round(p99_ms, 2),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
           if k in ("image_auroc", "pixel_auroc", "au_pro", "f1", "precision", "recall")},
        "eval_s": round(eval_s, 1),
    }
    print(json.dumps(row, indent=2))
    if not args.no_record:
        results = REPO / "bench" / "results" / "patchcore_magnetic_tile.md"
        with results.open("a") as stream:
            stream.write(f"\n```json\n{json.dumps(row, indent=2)}\n```\n")
        print(f"appended to {results}")


if __name__ == "__main__":
    main()
