"""Issue-13: does validation AUROC on synthetic defects rank `--method auto`'s candidates as the real test split does?

Runs the search's own steps (toolkit/recipe_search.py: split, synthetic-defect validation on held-out goods,
probe costs, shared features, every candidate fitted on the same seeded subsample) and scores every fitted
head on the data set's real test split too (image AUROC). The search itself never sees the test split; this
bench reads it only to report the Spearman rank correlation between the two columns.

    .venv/bin/python bench/recipe_rank.py [--data DIR] [--max-train-images N] [--test-images N]

Writes bench/results/recipe_rank.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "magnetic-tile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None, help="seeded subset of the test split (default all)")
    parser.add_argument("--target", default="x86_cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "recipe_rank.md")
    parser.add_argument("--cache", type=Path, default=None,
                        help="bench/feature_cache.py folder: rank bank sizes and methods of its one architecture "
                             "on its cached train/test stage maps instead of the whole search space")
    args = parser.parse_args()
    if args.cache is not None:
        return cached_ranking(args)

    from scipy.stats import spearmanr

    from adtk.toolkit.build import BuildConfig
    from adtk.toolkit.data import index_dataset, iter_images
    from adtk.toolkit.recipe_search import SEARCH_SPACE, format_table, search

    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    index = index_dataset(args.data)
    config = BuildConfig(data=args.data, out=Path("/dev/null"), method="auto", target=args.target,
                         max_train_images=args.max_train_images, seed=args.seed)
    test = list(index.test)
    if args.test_images and args.test_images < len(test):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(test), args.test_images, replace=False))
        test = [test[i] for i in keep]
    frames, labels = [], []
    for sample, image in iter_images(test, skip_bad=False):
        frames.append(image)
        labels.append(sample.label)
    # no time budget: every candidate the search could try is validated (and scored on the test split here)
    found = search(config, lambda m: print(m, flush=True), index, SEARCH_SPACE,
                   extra_sets={"test": (frames, np.asarray(labels))}, time_budget_s=None)
    rows, target, validation = found["rows"], found["target"], found["validation"]
    scored = [r for r in rows if r.validation_auroc is not None]
    val = np.array([r.validation_auroc for r in scored])
    real = np.array([r.extra["test_auroc"] for r in scored])
    rho, p_value = spearmanr(val, real)
    pick, best_real = found["chosen"], scored[int(np.argmax(real))]

    def name(row):
        return f"{row.architecture.label()} {row.recipe.label()}"

    text = "\n".join([
        f"# Recipe search: synthetic-defect validation vs real test AUROC ({date.today()})", "",
        f"Data: {args.data}; {len(found['fit_samples'])} fit images ({found['subsample']} per candidate, seeded "
        f"subsample), validation: {validation.description}; test: {len(test)} real test images (read by this bench "
        f"only). Every candidate the search would try is validated (no time budget); stage B (other recipes) for the "
        f"best {SEARCH_SPACE.refine_top} architectures of stage A, as in the search. Machine shared, not quiet "
        f"(load average {load_start} at start, {' '.join(f'{x:.1f}' for x in os.getloadavg())} at end); "
        f"{time.perf_counter() - started:.0f} s: timings not comparable.", "",
        f"Command: `python bench/recipe_rank.py {' '.join(sys.argv[1:])}`", "",
        f"**Spearman rank correlation, validation vs test image AUROC, over {len(scored)} candidates: "
        f"rho = {rho:.3f} (p = {p_value:.3g}).** The search's pick (within {target.name}'s "
        f"{target.frame_budget_ms:.1f} ms budget): {name(pick)}, test {pick.extra['test_auroc']:.4f}; the test's best "
        f"candidate: {name(best_real)}, {best_real.extra['test_auroc']:.4f}"
        f"{'' if best_real.fits else ' (over the frame budget)'}. Test AUROC here is of heads fitted on the "
        f"{found['subsample']}-image subsample, not of the final build on all images.", "",
        format_table(rows, pick, target.frame_budget_ms, target.name), ""])
    args.record.write_text(text)
    args.record.with_suffix(".json").write_text(json.dumps(
        {"spearman_rho": rho, "p_value": p_value, "chosen": pick.as_dict(), "rows": [r.as_dict() for r in rows]},
        indent=1, default=str))
    print(text)


CACHED_RECIPES = (("patchcore", 2.0), ("patchcore", 5.0), ("patchcore", 10.0), ("patchcore", 20.0),
                  ("ldknn", 5.0), ("ldknn", 10.0))


@torch.no_grad()
def _embed(embedding, stage_maps, rows, batch: int = 32) -> np.ndarray:
    out = []
    for start in range(0, len(rows), batch):
        picked = rows[start:start + batch]
        out.append(embedding([torch.from_numpy(np.asarray(m[picked])) for m in stage_maps]).numpy())
    return np.concatenate(out)


def cached_ranking(args) -> None:
    """One architecture (the cache's), more bank sizes and both methods: the same split, subsample and synthetic
    validation as the search (toolkit/recipe_search.py), train/test features from the cached stage maps."""
    from scipy.stats import spearmanr

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from feature_cache import load

    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.build import FeatureExtractorPipeline, split_training_set
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluation.metrics import image_auroc
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.methods.registry import create_method
    from adtk.toolkit.preprocess import FramePreprocess
    from adtk.toolkit.recipe_search import (SEARCH_SPACE, _frame_features, _image_scores, _subset,
                                           validation_goods)
    from adtk.toolkit.validation import load_good_images, synthetic_validation

    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    meta, stages, _ = load(args.cache)
    index = index_dataset(args.data)
    fit, calib = split_training_set(index.train, 0.1, args.max_train_images, args.seed)
    row_of = {entry["path"]: i for i, entry in enumerate(meta["splits"]["train"])}
    fit_subsample = _subset(fit, SEARCH_SPACE.fit_images, args.seed)
    subsample = [row_of[str(s.path)] for s in fit_subsample]
    goods = load_good_images(validation_goods(calib, fit, fit_subsample, SEARCH_SPACE.validation_images, args.seed),
                             skip_bad=False)
    validation = synthetic_validation(goods, seed=args.seed,
                                      defects_per_image=SEARCH_SPACE.defects_per_validation_image)
    backbone = create_backbone(meta["backbone"], stages=tuple(meta["stages"]))
    preprocess = FramePreprocess(meta["image_size_px"], backbone.mean, backbone.std)
    embedding = create_method("patchcore").embedding(tuple(backbone.channels)).eval()
    fit_features = _embed(embedding, stages["train"], subsample)
    test_features = _embed(embedding, stages["test"], list(range(len(meta["splits"]["test"]))))
    test_labels = np.asarray([entry["label"] for entry in meta["splits"]["test"]])
    val_features = _frame_features(FeatureExtractorPipeline(preprocess, backbone, embedding, 4), validation.frames)
    patches = fit_features.shape[-2] * fit_features.shape[-1]
    results = []
    for method_name, rows_per_image in CACHED_RECIPES:
        tic = time.perf_counter()
        method = create_method(method_name, coreset_ratio=rows_per_image / patches, seed=args.seed)
        method.embedding(tuple(backbone.channels))
        head = method.head(method.fit(FitInputs(fit_features))).eval()
        val = image_auroc(_image_scores(head, val_features), validation.labels)
        test = image_auroc(_image_scores(head, test_features), test_labels)
        results.append({"method": method_name, "bank_rows_per_image": rows_per_image, "validation_auroc": val,
                        "test_auroc": test, "fit_s": time.perf_counter() - tic})
        print(json.dumps(results[-1]), flush=True)
    rho, p_value = spearmanr([r["validation_auroc"] for r in results], [r["test_auroc"] for r in results])
    pick = max(results, key=lambda r: r["validation_auroc"])
    best = max(results, key=lambda r: r["test_auroc"])
    lines = [f"# Recipe ranking on cached features: synthetic-defect validation vs real test AUROC ({date.today()})", "",
             f"Architecture: {meta['backbone']} {meta['stages']} @ {meta['image_size_px']} px (cache {args.cache}); "
             f"{len(subsample)} fit images (seeded subsample of the {len(fit)}-image fit split, as the search); "
             f"validation: {validation.description}; test: all {len(test_labels)} real test images (read by this "
             f"bench only). Machine shared, not quiet (load average {load_start} at start, "
             f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at end); {time.perf_counter() - started:.0f} s.", "",
             f"Command: `python bench/recipe_rank.py {' '.join(sys.argv[1:])}`", "",
             f"**Spearman rank correlation over {len(results)} recipes: rho = {rho:.3f} (p = {p_value:.3g}).** "
             f"Validation's pick: {pick['method']} {pick['bank_rows_per_image']:g} rows/img (test "
             f"{pick['test_auroc']:.4f}); test's best: {best['method']} {best['bank_rows_per_image']:g} rows/img "
             f"({best['test_auroc']:.4f}).", "",
             "| method | bank rows/img | validation AUROC | test AUROC | fit s |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['bank_rows_per_image']:g} | {r['validation_auroc']:.4f} | {r['test_auroc']:.4f} | "
              f"{r['fit_s']:.0f} |" for r in results]
    args.record.write_text("\n".join(lines) + "\n")
    args.record.with_suffix(".json").write_text(json.dumps({"spearman_rho": rho, "p_value": p_value,
                                                            "rows": results}, indent=1))
    print(args.record.read_text())


if __name__ == "__main__":
    main()
