"""Issue 13 item 7: labelled defects where users would use them, on defect types SEEN in training.

Per split seed, every defect type's labelled images (magnetic-tile's test/<type> with masks) are split at
random in two halves: semlp and labeled_patchcore fit on the good training images plus the first half of
every type (image + mask); all methods, good-only PatchCore included, are scored on the SAME test set:
test/good + the second half of every type. Image and pixel AUROC overall and image AUROC per type (test/good
vs that type's held-back half). Compare bench/results/known_anomalies.md, where the scored type is never seen.

Same pipeline as bench/known_anomalies.py (cached stage maps from bench/feature_cache.py, each method's
embedding, fit, exported head in torch, shared map smoothing); fits once per method and seed.

    nice -n 15 .venv/bin/python bench/labelled_defects_seen.py --cache /tmp/adtk_mt_lite0_256 --seeds 0 1 2

Writes bench/results/labelled_defects_seen.{json,md}.
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
from known_anomalies import metrics_of  # noqa: E402
from pollution_table import embed, score  # noqa: E402
from adtk.toolkit.methods.base import FitInputs  # noqa: E402

COLUMNS = ("semlp", "labeled_patchcore", "patchcore")


def seen_type_split(defects: list, seed: int) -> tuple[list, list]:
    """Each defect type's images split at random (seeded) into a fit half and a test half (the odd one tests)."""
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for kind in sorted({s.defect_type for s in defects}):
        mine = [s for s in defects if s.defect_type == kind]
        order = rng.permutation(len(mine))
        half = len(mine) // 2
        fit += [mine[i] for i in order[:half]]
        test += [mine[i] for i in order[half:]]
    return fit, test


def run(cache: Path, coreset_ratio: float, max_train_images: int, seed: int, log, names=COLUMNS) -> dict:
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.evaluation.metrics import image_auroc
    from adtk.toolkit.labelled_defects import LabelledFeatures, patch_masks
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.postprocess import AnomalyMapSmoother

    meta, stages, all_masks, index, train_row, test_row = feature_cache.load_indexed(cache)
    smoother = AnomalyMapSmoother((meta["image_size_px"],) * 2, sigma=4.0)
    fit_samples, _ = split_training_set(index.train, 0.1, max_train_images, seed)
    good_rows = [train_row[str(s.path)] for s in fit_samples]
    fit_defects, test_defects = seen_type_split([s for s in index.test if s.label == 1], seed)
    evaluation = [s for s in index.test if s.label == 0] + test_defects
    defect_rows = np.array([test_row[str(s.path)] for s in fit_defects])
    eval_rows = np.array([test_row[str(s.path)] for s in evaluation])
    labels = np.array([s.label for s in evaluation])
    types = np.array([s.defect_type or "good" for s in evaluation])
    masks = all_masks[eval_rows]
    methods = {"semlp": create_method("semlp"),
               "labeled_patchcore": create_method("labeled_patchcore", coreset_ratio=coreset_ratio, seed=seed),
               "patchcore": create_method("patchcore", coreset_ratio=coreset_ratio, seed=seed)}
    methods = {name: method for name, method in methods.items() if name in names}
    features = {}
    for name in ("semlp", "patchcore"):  # semlp and labeled_patchcore share anomalib's (nearest) embedding
        if name in methods or (name == "semlp" and "labeled_patchcore" in methods):
            embedder = create_method(name)
            features[name] = (embed(embedder, meta["channels"], [m[good_rows] for m in stages["train"]]),
                              embed(embedder, meta["channels"], stages["test"]))
    features["labeled_patchcore"] = features.get("semlp")
    grid = next(f for f in features.values() if f is not None)[0].shape[-2:]
    row = {"seed": seed, "num_fit_good": len(good_rows), "num_fit_defects": len(fit_defects),
           "num_test": len(evaluation), "num_test_defective": int(labels.sum())}
    for name, method in methods.items():
        tic = time.perf_counter()
        train, test = features[name]
        if method.uses_labelled_defects:
            defects = LabelledFeatures(test[defect_rows], patch_masks(all_masks[defect_rows], grid))
            state = method.fit(FitInputs(train, defects=defects))
            row["num_defective_patches"] = defects.num_defective_patches
        else:
            state = method.fit(FitInputs(train, tuple(meta["channels"])))
        metrics = metrics_of(method, state, test[eval_rows], labels, masks, smoother)
        scores, _ = score(method, state, test[eval_rows], smoother, batch=4)
        per_type = {kind: float(image_auroc(scores[(types == "good") | (types == kind)],
                                            labels[(types == "good") | (types == kind)]))
                    for kind in sorted(set(types) - {"good"})}
        row[name] = {**metrics, "per_type_image_auroc": per_type, "seconds": round(time.perf_counter() - tic, 1)}
        log(f"seed {seed} {name}: {json.dumps(row[name])}")
    return row


def table(rows: list[dict]) -> str:
    def cell(values):
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1) if len(values) > 1 else 0:.1f}"

    present = [c for c in COLUMNS if c in rows[0]]
    kinds = sorted(rows[0][present[0]]["per_type_image_auroc"])
    lines = ["| method | image AUROC | pixel AUROC | " + " | ".join(f"{k} (image)" for k in kinds) + " |",
             "|---|---|---|" + "---|" * len(kinds)]
    for name in present:
        per = " | ".join(cell([r[name]["per_type_image_auroc"][k] for r in rows]) for k in kinds)
        lines.append(f"| {name} | {cell([r[name]['image_auroc'] for r in rows])} | "
                     f"{cell([r[name]['pixel_auroc'] for r in rows])} | {per} |")
    lines.append("\nPaired per seed (image AUROC, method - patchcore): " + "; ".join(
        f"{name}: " + ", ".join(f"{100 * (r[name]['image_auroc'] - r['patchcore']['image_auroc']):+.1f}" for r in rows)
        for name in COLUMNS[:2] if name in rows[0] and "patchcore" in rows[0]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--methods", nargs="+", default=list(COLUMNS), choices=COLUMNS)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "labelled_defects_seen")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, rows = time.perf_counter(), []
    for seed in args.seeds:
        rows.append(run(args.cache, args.coreset_ratio, args.max_train_images, seed, lambda m: print(m, flush=True),
                        args.methods))
        header = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                  "shared with other jobs (timings not meaningful)",
                  "args": {k: str(v) for k, v in vars(args).items()}, "elapsed_s": round(time.perf_counter() - started)}
        args.out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
        r0 = rows[0]
        args.out.with_suffix(".md").write_text(
            "# Labelled defects on SEEN types, magnetic-tile (bench/labelled_defects_seen.py)\n\n"
            f"`nice -n 15 .venv/bin/python bench/labelled_defects_seen.py --cache {args.cache} --seeds "
            f"{' '.join(map(str, args.seeds))}` ({header['date']}; tf_efficientnet_lite0 real weights, 256 px; "
            f"{r0['num_fit_good']} good fit images ({args.max_train_images} before the 10% calibration hold-out); "
            f"{r0['num_fit_defects']} labelled defect images (half of each type, random per seed) for semlp / "
            f"labeled_patchcore; test = test/good + the other half: {r0['num_test']} images "
            f"({r0['num_test_defective']} defective), the same for every method; coreset {args.coreset_ratio}; "
            f"seeds {[r['seed'] for r in rows]}; mean ± sd (ddof 1) over seeds, in %; {header['elapsed_s']} s on a "
            "shared machine)\n\n" + table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
