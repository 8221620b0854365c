"""Issue-5 acceptance: `adtk build --method reb` on all of magnetic-tile with the default preset, timed,
then the artefact against its torch reference on real test images, and its test metrics.

Runs build() in this process (the function `adtk build` calls, with the CLI's defaults) so the torch
reference graph is at hand for the parity check; the wall time covers build() from start to the sealed
artefact. Appends one JSON block to bench/results/reb_full_build.md.

    .venv/bin/python bench/reb_full_build.py            # alone on the machine: the time is the claim
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def parity(result, samples) -> tuple[float, float]:
    """max |pred_score diff| and max |anomaly_map diff| between onnxruntime and the torch reference."""
    from adtk.runtime.detector import Detector
    from adtk.runtime.images import read_image

    detector = Detector.load(result.artefact, backend="cpu")
    score_diff = map_diff = 0.0
    for sample in samples:
        image = read_image(sample.path)
        with torch.no_grad():
            reference = result.graph(torch.from_numpy(image)[None])
        prediction = detector.predict(image[None])
        score_diff = max(score_diff, abs(float(reference.pred_score[0]) - float(prediction.pred_score[0])))
        map_diff = max(map_diff, float(np.abs(prediction.anomaly_map[0] - reference.anomaly_map[0].numpy()).max()))
    return score_diff, map_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "magnetic-tile")
    parser.add_argument("--out", type=Path, default=Path("/tmp/adtk_reb_full/reb.onnx"))
    parser.add_argument("--parity-images", type=int, default=20)
    args = parser.parse_args()

    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluate import evaluate_artefact

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    result = build(BuildConfig(data=args.data, out=args.out, method="reb"), log=lambda m: print(m, flush=True))
    build_s = time.perf_counter() - tic
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    test = list(index_dataset(args.data).test)
    picked = [test[i] for i in np.linspace(0, len(test) - 1, args.parity_images).astype(int)]
    score_diff, map_diff = parity(result, picked)
    metrics = evaluate_artefact(args.out, args.data)
    row = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, 2 cores, no GPU",
        "command": "build(BuildConfig(data=magnetic-tile, method='reb')) = adtk build --method reb defaults",
        "build_s": round(build_s, 1), "timings_s": {k: round(v, 1) for k, v in result.timings_s.items()},
        "fit": result.manifest["method"].get("fit"),
        "fit_images": len(result.fit_samples), "calibration_images": len(result.calibration_samples),
        "peak_rss_mb": round(peak_rss_mb), "artefact_mb": round(args.out.stat().st_size / 1e6, 2),
        "parity_images": len(picked), "parity_max_abs_pred_score": score_diff, "parity_max_abs_anomaly_map": map_diff,
        **{k: round(metrics[k], 4) for k in ("image_auroc", "pixel_auroc", "au_pro")},
    }
    print(json.dumps(row, indent=2))
    with (REPO / "bench" / "results" / "reb_full_build.md").open("a") as stream:
        stream.write(f"\n```json\n{json.dumps(row, indent=2)}\n```\n")


if __name__ == "__main__":
    main()
