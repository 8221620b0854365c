"""Issue 3 acceptance bench: detectors on a polluted magnetic-tile training set (seed-000 protocol).

For each method x seed x pollution rate in {0, 10, 20}%, fit on the polluted training set and report
image AUROC, pixel AUROC and AU-PRO (FPR <= 0.3) on the seed's reduced test set; at 10% and 20% also
fit after `--refine sroc:R` with R = the rate (the method refining itself) and after
`sroc:R:mahalanobis`, and report the refiners' recall of the injected defects (= precision = F1 at
R = rate, spec A4). Mean +- std over the seeds. Protocol: toolkit/research/pollution.py ("sroc").

CPU economy: the frozen backbone's stage maps come from bench/feature_cache.py (extracted once with the
build's own preprocess + backbone); each method's embedding, fit, exported head (torch) and map
post-processing (AnomalyMapSmoother, sigma 4) run on them here, i.e. the artefact's pipeline minus the
backbone. tests/toolkit/methods/test_classic_methods_real.py checks one build per method through the
real artefact path (onnxruntime parity on magnetic-tile images).

    nice -n 15 .venv/bin/python bench/feature_cache.py --out /tmp/adtk_mt_lite0_256
    nice -n 15 .venv/bin/python bench/pollution_table.py --cache /tmp/adtk_mt_lite0_256

Writes the table to stdout and to bench/results/pollution_table.md (the last run).
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

METHOD_PARAMS = {
    "knn": {}, "mahalanobis": {}, "padim": {}, "paire": {},
    # 0.25% coreset (~1950 of 779k patches): the 10% default is hours of CPU on this 2-core machine
    # (recorded in the table's header).
    "patchcore": {"coreset_ratio": 0.0025},
}


@torch.no_grad()
def embed(method, channels, stage_maps: list[np.ndarray], batch: int = 32) -> np.ndarray:
    embedding = method.embedding(tuple(channels)).eval()
    out = [embedding([torch.from_numpy(np.asarray(m[i:i + batch])) for m in stage_maps]).numpy()
           for i in range(0, len(stage_maps[0]), batch)]
    return np.concatenate(out)


@torch.no_grad()
def score(method, state, features: np.ndarray, smoother, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    head = method.head(state).eval()
    scores, maps = [], []
    for i in range(0, len(features), batch):
        patch_scores, image_score = head(torch.from_numpy(features[i:i + batch]))
        scores.append(image_score.double().numpy())
        maps.append(smoother(patch_scores).numpy())
    return np.concatenate(scores), np.concatenate(maps)


def evaluate(method, state, test_features, labels, masks, smoother, batch: int = 32) -> dict:
    """batch: test images per head call; a large memory bank needs a small one (the head's distance matrix is
    batch x h x w x bank rows floats: 32 images x 1024 patches x 70k rows would be 9 GB)."""
    from adtk.toolkit.evaluation.metrics import evaluate_predictions

    scores, maps = score(method, state, test_features, smoother, batch)
    metrics = evaluate_predictions(scores, labels, maps=maps, masks=masks)
    return {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "au_pro")}


def run(cache: Path, methods: list[str], seeds: list[int], rates: list[float], log, on_row=None,
        maha_refiner: bool = False, done: frozenset = frozenset()) -> list[dict]:
    """Every (method, seed, rate, refine) row; keys in `done` are skipped (resuming a run)."""
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.research.pollution import pollute, refinement_quality
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.postprocess import AnomalyMapSmoother
    from adtk.toolkit.refinement import RefineSpec, refine

    meta, stages, all_masks = feature_cache.load(cache)
    index = index_dataset(meta["data"])
    train_row = {str(s.path): i for i, s in enumerate(index.train)}
    test_row = {str(s.path): i for i, s in enumerate(index.test)}
    smoother = AnomalyMapSmoother((meta["image_size_px"],) * 2, sigma=4.0)
    maha = create_method("mahalanobis")
    maha_train = embed(maha, meta["channels"], stages["train"]) if maha_refiner else None
    rows = []
    for name in methods:
        method = create_method(name, **METHOD_PARAMS[name])
        train_features = embed(method, meta["channels"], stages["train"])
        test_features_all = embed(method, meta["channels"], stages["test"])
        log(f"{name}: features train {train_features.shape} test {test_features_all.shape}")
        for seed in seeds:
            for rate in rates:
                split = pollute(index.train, index.test, rate, "sroc", seed)
                rows_train = np.array([train_row[str(s.path)] if s.label == 0 else -1 for s in split.train])
                rows_test = np.array([test_row[str(s.path)] for s in split.test])
                # injected defects are test images: their features come from the test cache
                injected_rows = np.array([test_row[str(s.path)] for s in split.injected], dtype=np.int64)
                good = rows_train[rows_train >= 0]
                features = np.concatenate([train_features[good], test_features_all[injected_rows]])
                maha_features = None
                if maha_refiner and rate > 0:
                    maha_features = np.concatenate([maha_train[good], embed(maha, meta["channels"],
                                                    [m[injected_rows] for m in stages["test"]])])
                paths = [str(s.path) for s in split.train if s.label == 0] + [str(s.path) for s in split.injected]
                labels = np.array([s.label for s in split.test])
                masks = all_masks[rows_test]
                test_features = test_features_all[rows_test]
                variants = [("none", None, None)]
                if rate > 0:
                    variants.append(("sroc", RefineSpec("sroc", rate), None))
                    if maha_refiner and name != "mahalanobis":  # Mahalanobis refining itself is the row above
                        variants.append(("sroc+maha", RefineSpec("sroc", rate, "mahalanobis"), maha_features))
                for variant, spec, refiner_features in variants:
                    if (name, seed, rate, variant) in done:
                        continue
                    tic = time.perf_counter()
                    kept, quality = np.arange(len(features)), None
                    if spec is not None:
                        detector = create_method(spec.detector or name, **({} if spec.detector else METHOD_PARAMS[name]))
                        detector_features = refiner_features if spec.detector else features
                        result = refine(spec, detector, detector_features, tuple(meta["channels"]))
                        kept = result.kept
                        quality = refinement_quality([paths[i] for i in result.dropped],
                                                     [str(s.path) for s in split.injected])
                    fit_method = create_method(name, **METHOD_PARAMS[name])
                    state = fit_method.fit(FitInputs(np.ascontiguousarray(features[kept]), tuple(meta["channels"])))
                    metrics = evaluate(fit_method, state, test_features, labels, masks, smoother)
                    row = {"method": name, "seed": seed, "rate": rate, "refine": variant, **metrics,
                           "refiner_recall": quality["recall"] if quality else None,
                           "refiner_precision": quality["precision"] if quality else None,
                           "num_fit": int(len(kept)), "num_test": int(len(labels)),
                           "num_test_defective": int(labels.sum()), "seconds": round(time.perf_counter() - tic, 1)}
                    rows.append(row)
                    log(json.dumps(row))
                    if on_row is not None:
                        on_row(row)
    return rows


def check_artefact_path(cache: Path, methods: list[str], log, num_train: int = 60, num_test: int = 40) -> list[dict]:
    """For each method: a real `adtk build` artefact (onnxruntime, real images) against this bench's path
    (cached stage maps -> embedding -> fit -> head -> smoother) fitted on the same images: the raw image
    scores and raw maps of the same test images must agree (the bench measures what the artefact does)."""
    import tempfile

    from adtk.runtime.detector import Detector
    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.data import DatasetIndex, index_dataset, read_image
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.postprocess import AnomalyMapSmoother

    meta, stages, _ = feature_cache.load(cache)
    index = index_dataset(meta["data"])
    train_row = {str(s.path): i for i, s in enumerate(index.train)}
    rng = np.random.default_rng(0)
    test_rows = np.sort(rng.choice(len(index.test), num_test, replace=False))
    subset = DatasetIndex(index.root, index.layout, train=index.train[:num_train], test=(), defects=())
    smoother = AnomalyMapSmoother((meta["image_size_px"],) * 2, sigma=4.0)
    checks = []
    for name in methods:
        with tempfile.TemporaryDirectory() as folder:
            config = BuildConfig(data=index.root, out=Path(folder) / f"{name}.onnx", method=name,
                                 method_params=METHOD_PARAMS[name], backbone=meta["backbone"],
                                 image_size_px=meta["image_size_px"], calib_fraction=0.1, seed=0)
            result = build(config, log=lambda m: None, index=subset)
            detector = Detector.load(result.artefact, backend="cpu")
            predictions = [detector.predict(read_image(index.test[i].path)[None]) for i in test_rows]
        method = create_method(name, **METHOD_PARAMS[name])
        fit_rows = [train_row[str(s.path)] for s in result.fit_samples]
        train = embed(method, meta["channels"], [m[fit_rows] for m in stages["train"]])
        test = embed(method, meta["channels"], [m[test_rows] for m in stages["test"]])
        bench_scores, bench_maps = score(method, method.fit(FitInputs(train, tuple(meta["channels"]))), test, smoother)
        artefact_scores = np.array([float(p.raw_score[0]) for p in predictions])
        artefact_maps = np.stack([p.raw_anomaly_map[0] for p in predictions])
        check = {"method": name, "fit_images": len(fit_rows), "test_images": num_test,
                 "max_rel_score_diff": float(np.max(np.abs(bench_scores - artefact_scores) / np.abs(artefact_scores))),
                 "max_rel_map_diff": float(np.abs(bench_maps - artefact_maps).max() / np.abs(artefact_maps).max())}
        log(json.dumps(check))
        checks.append(check)
    return checks


def table(rows: list[dict]) -> str:
    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"

    lines = ["| method | pollution | refine | image AUROC | pixel AUROC | AU-PRO | refiner recall | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["method"], r["rate"], r["refine"]) for r in rows},
                  key=lambda k: (k[0], k[1], ["none", "sroc", "sroc+maha"].index(k[2])))
    for method, rate, variant in keys:
        group = [r for r in rows if (r["method"], r["rate"], r["refine"]) == (method, rate, variant)]
        refine_label = {"none": "-", "sroc": f"sroc:{rate:g}", "sroc+maha": f"sroc:{rate:g}:mahalanobis"}[variant]
        lines.append(f"| {method} | {rate:.0%} | {refine_label} | {cell([r['image_auroc'] for r in group])} | "
                     f"{cell([r['pixel_auroc'] for r in group])} | {cell([r['au_pro'] for r in group])} | "
                     f"{cell([r['refiner_recall'] for r in group])} | {len(group)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="folder written by bench/feature_cache.py")
    parser.add_argument("--methods", default="knn,mahalanobis,padim,paire,patchcore")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rates", default="0,0.1,0.2")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "pollution_table.md")
    parser.add_argument("--rows", type=Path, default=None,
                        help="append every row to this JSON-lines file as it is computed")
    parser.add_argument("--maha-refiner", action="store_true",
                        help="also refine with sroc:R:mahalanobis (the SROC paper's Appendix B)")
    parser.add_argument("--check-artefact", action="store_true",
                        help="only compare this bench's path with real artefacts (one build per method)")
    parser.add_argument("--table-from", type=Path, nargs="*", default=None,
                        help="only print/record the table from JSON-lines files of earlier runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.check_artefact:
        checks = check_artefact_path(args.cache, args.methods.split(","), log=print)
        path = args.record.with_name("pollution_table_artefact_check.md")
        path.write_text(f"# bench path vs real artefact (bench/pollution_table.py --check-artefact), {date.today()}\n\n"
                        "```json\n" + "\n".join(json.dumps(c) for c in checks) + "\n```\n")
        return
    if args.table_from:
        rows = [json.loads(line) for path in args.table_from for line in path.read_text().splitlines() if line]
    else:
        done = frozenset()
        if args.rows is not None and args.rows.exists():  # resume: rows already computed are kept
            earlier = [json.loads(line) for line in args.rows.read_text().splitlines() if line]
            done = frozenset((r["method"], r["seed"], r["rate"], r["refine"]) for r in earlier)

        def on_row(row):
            if args.rows is not None:
                with args.rows.open("a") as stream:
                    stream.write(json.dumps(row) + "\n")

        rows = run(args.cache, args.methods.split(","), [int(s) for s in args.seeds.split(",")],
                   [float(r) for r in args.rates.split(",")], log=lambda m: print(m, file=sys.stderr, flush=True),
                   on_row=on_row, maha_refiner=args.maha_refiner, done=done)
        if args.rows is not None:
            rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line]
    meta = json.loads((args.cache / "meta.json").read_text())
    header = (f"# Pollution table (bench/pollution_table.py), {date.today()}\n\n"
              f"magnetic-tile, {meta['backbone']} {meta['stages']} ({meta['weights_source']}), "
              f"{meta['image_size_px']} px; protocol sroc_disjoint (pollution pool 20% of N removed from test, "
              f"stratified by defect type); seeds {sorted({r['seed'] for r in rows})}; mean ± std over seeds, in %. "
              f"Method params: {json.dumps(METHOD_PARAMS)}. Refiner recall = injected defects dropped / injected "
              f"(= precision at R = rate). {platform.machine()}, torch {torch.__version__}, "
              + (f"{time.perf_counter() - started:.0f} s" if not args.table_from else
                 f"rows from {', '.join(p.name for p in args.table_from)}") + ".\n\n")
    text = header + table(rows) + "\n"
    print(text)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(text + "\n<details><summary>rows</summary>\n\n```json\n" +
                           "\n".join(json.dumps(r) for r in rows) + "\n```\n</details>\n")


if __name__ == "__main__":
    main()
