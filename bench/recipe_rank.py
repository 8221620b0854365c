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
    args = parser.parse_args()

    from scipy.stats import spearmanr

    from adtk.toolkit.build import BuildConfig
    from adtk.toolkit.data import index_dataset, iter_images
    from adtk.toolkit.recipe_search import SEARCH_SPACE, format_table, prepare_search, validate_candidates

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
    _, fit_samples, validation, rows, target, _ = prepare_search(config, print, index)
    validate_candidates(config, rows, fit_samples, validation, print, extra_sets={"test": (frames, np.asarray(labels))})
    val = np.array([r.validation_auroc for r in rows])
    real = np.array([r.extra["test_auroc"] for r in rows])
    rho, p_value = spearmanr(val, real)
    best_val, best_real = rows[int(np.argmax(val))], rows[int(np.argmax(real))]
    text = "\n".join([
        f"# Recipe search: synthetic-defect validation vs real test AUROC ({date.today()})", "",
        f"Data: {args.data}; {len(fit_samples)} fit images ({min(SEARCH_SPACE.fit_images, len(fit_samples))} per "
        f"candidate, seeded subsample), validation: {validation.description}; test: {len(test)} real test images "
        f"(read by this bench only). Machine shared, not quiet (load average {load_start} at start, "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at end); {time.perf_counter() - started:.0f} s.", "",
        f"Command: `python bench/recipe_rank.py {' '.join(sys.argv[1:])}`", "",
        f"**Spearman rank correlation, validation vs test image AUROC, over {len(rows)} candidates: "
        f"rho = {rho:.3f} (p = {p_value:.3g}).** Validation's pick: {best_val.architecture.label()} "
        f"{best_val.recipe.method} {best_val.recipe.bank_rows_per_image:g} rows/img (test "
        f"{best_val.extra['test_auroc']:.4f}); test's best: {best_real.architecture.label()} {best_real.recipe.method} "
        f"{best_real.recipe.bank_rows_per_image:g} rows/img ({best_real.extra['test_auroc']:.4f}).", "",
        format_table(rows, best_val, target.frame_budget_ms, target.name), ""])
    args.record.write_text(text)
    args.record.with_suffix(".json").write_text(json.dumps(
        {"spearman_rho": rho, "p_value": p_value, "rows": [r.as_dict() for r in rows]}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
