"""Issue 4 acceptance bench: the leave-one-defect-type-out table (`adtk research known-anomalies`,
toolkit/research/known_anomalies.py) for semlp, labeled-patchcore and patchcore on magnetic-tile.

For every defect type T: the methods that learn from defects fit on the good training images plus the
first half (by file name) of every other type's test images with their masks; all methods are scored
on test/good + all of T. Image and pixel AUROC. The splits are the protocol's own
(leave_one_type_out_splits); the backbone's stage maps come from bench/feature_cache.py (masks at the
model size, nearest-resized, then area-averaged onto the 32x32 grid); embedding, fit, exported head
(torch) and map smoothing run here (bench/pollution_table.py's helpers). CPU economy, same outputs:
patchcore does not see defects, so it is fitted once; labeled-patchcore's good bank is fitted once
and combined with each type's defect bank (LabeledPatchCore.with_defect_bank). paper_compat scores the
same states with the released code's inverted s1/(s0+s1) (spec B.4.5).

    nice -n 15 .venv/bin/python bench/known_anomalies.py --cache /tmp/adtk_mt_lite0_256

Writes bench/results/known_anomalies.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import feature_cache  # noqa: E402
from pollution_table import embed, score  # noqa: E402

COLUMNS = ("semlp", "labeled_patchcore", "labeled_patchcore (paper_compat)", "patchcore")


def metrics_of(method, state, features, labels, masks, smoother) -> dict:
    from adtk.toolkit.evaluation.metrics import evaluate_predictions

    scores, maps = score(method, state, features, smoother, batch=4)
    result = evaluate_predictions(scores, labels, maps=maps, masks=masks)
    return {"image_auroc": float(result["image_auroc"]), "pixel_auroc": float(result["pixel_auroc"])}


def run(cache: Path, coreset_ratio: float, max_train_images: int, seed: int, log, on_row) -> None:
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.research.known_anomalies import leave_one_type_out_splits
    from adtk.toolkit.labelled_defects import LabelledFeatures, patch_masks
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.postprocess import AnomalyMapSmoother

    meta, stages, all_masks = feature_cache.load(cache)
    index = index_dataset(meta["data"])
    train_row = {str(s.path): i for i, s in enumerate(index.train)}
    test_row = {str(s.path): i for i, s in enumerate(index.test)}
    smoother = AnomalyMapSmoother((meta["image_size_px"],) * 2, sigma=4.0)
    fit_samples, _ = split_training_set(index.train, 0.1, max_train_images, seed)
    good_rows = [train_row[str(s.path)] for s in fit_samples]
    splits = leave_one_type_out_splits(index)
    methods = {"semlp": create_method("semlp"),
               "labeled_patchcore": create_method("labeled_patchcore", coreset_ratio=coreset_ratio, seed=seed),
               "labeled_patchcore (paper_compat)": create_method("labeled_patchcore", coreset_ratio=coreset_ratio,
                                                                 paper_compat=True, seed=seed),
               "patchcore": create_method("patchcore", coreset_ratio=coreset_ratio, seed=seed)}
    features = {}  # per embedding: (good train features, all test features)
    for name in ("semlp", "patchcore"):  # semlp and labeled_patchcore share anomalib's (nearest) embedding
        train = embed(methods[name], meta["channels"], [m[good_rows] for m in stages["train"]])
        features[name] = (train, embed(methods[name], meta["channels"], stages["test"]))
    features["labeled_patchcore"] = features["labeled_patchcore (paper_compat)"] = features["semlp"]
    grid = features["semlp"][0].shape[-2:]
    tic = time.perf_counter()
    patchcore_state = methods["patchcore"].fit(FitInputs(features["patchcore"][0], tuple(meta["channels"])))
    good_bank, good_neighbours = methods["labeled_patchcore"].good_bank(features["labeled_patchcore"][0])
    log(f"good banks fitted in {time.perf_counter() - tic:.0f} s: patchcore "
        f"{patchcore_state.memory_bank.shape}, labeled {good_bank.shape}")
    for held_out, (train_defects, evaluation) in splits.items():
        defect_rows = np.array([test_row[str(s.path)] for s in train_defects])
        eval_rows = np.array([test_row[str(s.path)] for s in evaluation])
        labels = np.array([s.label for s in evaluation])
        masks = all_masks[eval_rows]
        row = {"held_out": held_out, "num_train_defects": len(train_defects), "num_test": len(evaluation),
               "num_test_defective": int(labels.sum())}
        for name, method in methods.items():
            tic = time.perf_counter()
            train, test = features[name]
            defects = LabelledFeatures(test[defect_rows], patch_masks(all_masks[defect_rows], grid))
            if name == "patchcore":
                state = patchcore_state
            elif name.startswith("labeled_patchcore"):
                state = method.with_defect_bank(good_bank, good_neighbours, defects)
            else:
                state = method.fit(FitInputs(train, tuple(meta["channels"]), defects=defects))
            row[name] = {**metrics_of(method, state, test[eval_rows], labels, masks, smoother),
                         "fit": method.fit_report(state), "seconds": round(time.perf_counter() - tic, 1)}
            row["num_defective_patches"] = defects.num_defective_patches
        log(json.dumps(row))
        on_row(row)


def table(rows: list[dict], key: str) -> str:
    lines = ["| held-out type | train defects (patches) | test (defective) | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = " | ".join(f"{100 * row[c][key]:.1f}" for c in COLUMNS)
        lines.append(f"| {row['held_out']} | {row['num_train_defects']} ({row['num_defective_patches']}) | "
                     f"{row['num_test']} ({row['num_test_defective']}) | {cells} |")
    means = " | ".join(f"**{100 * np.mean([r[c][key] for r in rows]):.1f}**" for c in COLUMNS)
    lines.append(f"| mean | | | {means} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "known_anomalies")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    started = time.perf_counter()

    def save(row):
        rows.append(row)
        header = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                  "args": {k: str(v) for k, v in vars(args).items()}, "elapsed_s": round(time.perf_counter() - started)}
        args.out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(
            f"# Known anomalies, leave one defect type out, magnetic-tile\n\n"
            f"`nice -n 15 .venv/bin/python bench/known_anomalies.py --cache {args.cache} --seed {args.seed}` "
            f"({header['date']}; tf_efficientnet_lite0 real weights, 256 px, 32x32 grid; {args.max_train_images} "
            f"training images before the 10% calibration hold-out; coreset {args.coreset_ratio}; semlp 152->32->1, "
            f"Adam 1e-4, batch 8, 1 epoch, seed 42; {header['elapsed_s']} s)\n\n"
            f"## Image AUROC (%)\n\n{table(rows, 'image_auroc')}\n\n## Pixel AUROC (%)\n\n{table(rows, 'pixel_auroc')}\n")

    run(args.cache, args.coreset_ratio, args.max_train_images, args.seed, lambda m: print(m, flush=True), save)
    print(table(rows, "image_auroc"))


if __name__ == "__main__":
    main()
