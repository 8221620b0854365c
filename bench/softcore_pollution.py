"""Issue 4 acceptance bench: SoftCore vs PatchCore on magnetic-tile with 10% of the training images replaced
by defective test images, under seed 002's two protocols (spec softcore_semlp_labeled_patchcore.md A.7):

* no overlap: the injected defects are not scored -> toolkit/evaluation/pollution.py "sroc" (its draw is
  stratified by type and removes a 20% pool from the test set, not just the injected images);
* overlap: the injected defects stay in the test set -> pollution.py "paire" (uniform draw, test unchanged).
Both protocols *swap* good training images for defects (N stays fixed) where seed 002 *adds* them
(N -> 1.1 N); the share of defects in the training set is 10% / 9.1% respectively.

Image and pixel AUROC per (method, protocol, seed). The frozen backbone's stage maps come from
bench/feature_cache.py; the embedding, fit, exported head (torch) and map smoothing (sigma 4) run here:
the artefact's pipeline minus the backbone (bench/pollution_table.py's helpers). The training set is the
build's seeded split (--max-train-images, 10% held out to calibrate, as `adtk build`).

    nice -n 15 .venv/bin/python bench/feature_cache.py --out /tmp/adtk_mt_lite0_256
    nice -n 15 .venv/bin/python bench/softcore_pollution.py --cache /tmp/adtk_mt_lite0_256 --seeds 0

Writes bench/results/softcore_pollution.{json,md}.
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

PROTOCOL_NAMES = {"sroc": "no overlap", "paire": "overlap"}


def evaluate(method, state, features, labels, masks, smoother) -> dict:
    from adtk.toolkit.evaluation.metrics import evaluate_predictions

    # batch 4: the head's [B, 1024, M] distance matrix stays ~0.3 GB at a 20k-row bank
    scores, maps = score(method, state, features, smoother, batch=4)
    metrics = evaluate_predictions(scores, labels, maps=maps, masks=masks)
    return {k: metrics[k] for k in ("image_auroc", "pixel_auroc")}


def run(cache: Path, methods: list[str], protocols: list[str], seeds: list[int], rate: float, params: dict,
        max_train_images: int, log, on_row) -> None:
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluation.pollution import pollute
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.postprocess import AnomalyMapSmoother

    meta, stages, all_masks = feature_cache.load(cache)
    index = index_dataset(meta["data"])
    train_row = {str(s.path): i for i, s in enumerate(index.train)}
    test_row = {str(s.path): i for i, s in enumerate(index.test)}
    smoother = AnomalyMapSmoother((meta["image_size_px"],) * 2, sigma=4.0)
    # softcore and patchcore share the official PatchCore embedding: embed the test set once
    reference = create_method("patchcore")
    test_all = embed(reference, meta["channels"], stages["test"])
    for seed in seeds:
        fit_samples, _ = split_training_set(index.train, 0.1, max_train_images, seed)
        for protocol in protocols:
            split = pollute(fit_samples, index.test, rate, protocol, seed)
            good = [train_row[str(s.path)] for s in split.train if s.label == 0]
            injected = [test_row[str(s.path)] for s in split.train if s.label == 1]
            features = np.concatenate([embed(reference, meta["channels"], [m[good] for m in stages["train"]]),
                                       test_all[injected]])
            rows_test = np.array([test_row[str(s.path)] for s in split.test])
            labels = np.array([s.label for s in split.test])
            for name in methods:
                tic = time.perf_counter()
                method = create_method(name, **params[name])
                state = method.fit(features)
                fit_s = time.perf_counter() - tic
                metrics = evaluate(method, state, test_all[rows_test], labels, all_masks[rows_test], smoother)
                row = {"method": name, "params": params[name], "protocol": PROTOCOL_NAMES[protocol],
                       "pollution_protocol": split.protocol, "seed": seed, "rate": rate,
                       "num_fit": len(split.train), "num_injected": len(injected),
                       "num_test": len(labels), "num_test_defective": int(labels.sum()),
                       "injected_in_test": len({s.path for s in split.injected} & {s.path for s in split.test}),
                       **{k: metrics[k] for k in ("image_auroc", "pixel_auroc")},
                       "fit_report": method.fit_report(state), "fit_s": round(fit_s, 1),
                       "seconds": round(time.perf_counter() - tic, 1)}
                log(json.dumps(row))
                on_row(row)


def table(rows: list[dict]) -> str:
    def cell(values):
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if len(values) > 1 else f"{100 * values[0]:.1f}"

    lines = ["| protocol | method | image AUROC | pixel AUROC | seeds | fit images (injected) | test images (defective) |",
             "|---|---|---|---|---|---|---|"]
    for protocol in ("no overlap", "overlap"):
        for method in sorted({r["method"] for r in rows}):
            group = [r for r in rows if r["protocol"] == protocol and r["method"] == method]
            if group:
                lines.append(f"| {protocol} | {method} | {cell([r['image_auroc'] for r in group])} | "
                             f"{cell([r['pixel_auroc'] for r in group])} | {len(group)} | {group[0]['num_fit']} "
                             f"({group[0]['num_injected']}) | {group[0]['num_test']} ({group[0]['num_test_defective']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="softcore,patchcore")
    parser.add_argument("--protocols", default="sroc,paire")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "softcore_pollution")
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = {"softcore": {"coreset_ratio": args.coreset_ratio},  # lof, k 6, tau 0.15, squared distance
              "patchcore": {"coreset_ratio": args.coreset_ratio}}
    rows: list[dict] = []
    started = time.perf_counter()

    def save(row):
        rows.append(row)
        header = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                  "cache": str(args.cache), "args": {k: str(v) for k, v in vars(args).items()},
                  "elapsed_s": round(time.perf_counter() - started, 1)}
        args.out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(
            f"# SoftCore vs PatchCore, magnetic-tile, {100 * args.rate:.0f}% pollution\n\n"
            f"`nice -n 15 .venv/bin/python bench/softcore_pollution.py --cache {args.cache} --seeds {args.seeds}`"
            f" ({header['date']}; tf_efficientnet_lite0 real weights, 256 px; {args.max_train_images} training images "
            f"before the 10% calibration hold-out; coreset {args.coreset_ratio}; "
            f"{header['elapsed_s']:.0f} s)\n\n{table(rows)}\n")

    run(args.cache, args.methods.split(","), args.protocols.split(","), [int(s) for s in args.seeds.split(",")],
        args.rate, params, args.max_train_images, lambda m: print(m, flush=True), save)
    print(table(rows))


if __name__ == "__main__":
    main()
