"""INT8 vs fp32 on one fit: the weights' bit width that decides whether onnxruntime's CPU kernels saturate.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/int8_regression.py --data ../shared/data/magnetic-tile \
        --max-train-images 100 --coreset-ratio 0.01

One fp32 build (real tf_efficientnet_lite0 weights), then the INT8 pass on that same model in both flavours
(onnxruntime U8S8; TensorRT's symmetric one, scored here in onnxruntime CPU as the build's precision gate does),
each with 8-bit weights (the pass before 2026-12-03) and 7-bit weights (reduce_range, the pass now), calibrated
on the same 64 good training images. Every artefact is evaluated with `adtk eval`'s evaluate_artefact on the
whole test split (image and pixel AUROC; machine load does not change them). The CPU's VNNI flags are recorded:
8-bit weights saturate only without VNNI (export/passes/int8.py, "U8S8 saturation").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cpu_flags() -> list[str]:
    try:
        words = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({w for w in words if w.startswith(("avx512", "avx_vnni", "avx2", "amx"))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "magnetic-tile")
    parser.add_argument("--max-train-images", type=int, default=100)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--fp32", type=Path, help="reuse this fp32 artefact (built with the options above)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adtk-int8-regression"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_regression.json")
    args = parser.parse_args()

    from adtk.export.formats import write_artefact
    from adtk.export.passes.graph import load_unsealed, read_manifest
    from adtk.export.passes.int8 import quantize_backbone_int8
    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.data import index_dataset, iter_images
    from adtk.toolkit.evaluate import evaluate_artefact

    args.work.mkdir(parents=True, exist_ok=True)
    index = index_dataset(args.data)
    config = BuildConfig(data=args.data, out=args.work / "fp32.onnx", method="patchcore",
                         method_params={"coreset_ratio": args.coreset_ratio},
                         max_train_images=args.max_train_images, precision="fp32")
    if args.fp32 is None:
        result = build(config, log=print, index=index)
        fp32_path, fit_samples = result.artefact, list(result.fit_samples)
    else:  # the fit images are not recorded in an artefact: calibrate on the same seeded subset a build fits on
        from adtk.toolkit.build import split_training_set

        fp32_path = args.fp32
        fit_samples, _ = split_training_set(index.train, config.calib_fraction, args.max_train_images, config.seed)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(fit_samples), min(64, len(fit_samples)), replace=False))
    calibration = [image for _, image in iter_images([fit_samples[i] for i in chosen])]
    fp32 = load_unsealed(fp32_path.read_bytes())
    manifest = read_manifest(fp32)
    paths = {"fp32": fp32_path}
    for flavour, symmetric in (("int8 onnxruntime", False), ("int8 tensorrt flavour", True)):
        for bits, reduce_range in (("8-bit weights (before)", False), ("7-bit weights (now)", True)):
            name = f"{flavour}, {bits}"
            model = quantize_backbone_int8(fp32, calibration, symmetric=symmetric, reduce_range=reduce_range)
            paths[name] = write_artefact(model, manifest, args.work / f"{flavour.replace(' ', '_')}_{int(reduce_range)}.onnx")
    rows = []
    for name, path in paths.items():
        tic = time.perf_counter()
        metrics = evaluate_artefact(path, args.data, backend="cpu")
        rows.append({"artefact": name, "image_auroc": round(metrics["image_auroc"], 4),
                     "pixel_auroc": round(metrics.get("pixel_auroc", float("nan")), 4),
                     "test_images": len(index.test)})
        print(rows[-1], f"({time.perf_counter() - tic:.0f} s)")
    record = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpu_flags": cpu_flags(),
              "settings": {"max_train_images": args.max_train_images, "coreset_ratio": args.coreset_ratio,
                           "calibration_images": len(calibration), "backbone": "tf_efficientnet_lite0"},
              "rows": rows}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
