"""Issue 13 item 5: how many synthetic-defect validation frames does `--method auto` need to rank its candidates?

Validates every candidate the search may fit (within the target's frame budget, stage B for all architectures,
no time budget) on the search's seeded 120-image subsample, and scores each fitted head on three sets:
  narrow: 48 held-out good images, each also with one synthetic defect (the search's validation until 2026-12-03),
  wide:   every held-out good image, each also with three synthetic defects (seeds 100-102),
  test:   the data set's real test split (read by this bench only, never by the search).
Prints, per set, each candidate's AUROC with the paired-bootstrap SE of its difference to the set's best, the
Spearman rank correlation with the test AUROC, and the test AUROC of the set's pick.

    .venv/bin/python bench/validation_width.py --data DIR --out /tmp/width_mt     # writes DIR.json / .npz
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def collect(data: Path, out: Path, target: str, seed: int) -> None:
    from adtk.toolkit import recipe_search as rs
    from adtk.toolkit.build import BuildConfig
    from adtk.toolkit.data import index_dataset, iter_images
    from adtk.toolkit.validation import load_good_images, synthetic_validation

    log = lambda m: print(m, flush=True)  # noqa: E731
    config = BuildConfig(data=data, out=Path("/dev/null"), method="auto", target=target, seed=seed)
    space = replace(rs.SEARCH_SPACE, refine_top=99)
    (index, fit, calib, subsample, validation, rows, costs, _, _, _, components) = rs.prepare_search(config, log,
                                                                                                  None, space)
    narrow = synthetic_validation(load_good_images(rs._subset(calib, 48, seed), False), seed=seed)
    goods = load_good_images(calib, False)
    frames, labels = list(goods), [0] * len(goods)
    for extra_seed in (100, 101, 102):
        defects = synthetic_validation(goods, seed=extra_seed, min_images=1)
        frames += [f for f, label in zip(defects.frames, defects.labels) if label == 1]
        labels += [1] * len(goods)
    test_frames, test_labels = [], []
    for sample, image in iter_images(list(index.test), skip_bad=False):
        test_frames.append(image)
        test_labels.append(sample.label)
    # the search's own validation set is scored too ("validation"); standardised ensembles use its goods
    sets = {"validation": (validation.frames, validation.labels),
            "narrow": (narrow.frames, narrow.labels), "wide": (frames, np.asarray(labels)),
            "test": (test_frames, np.asarray(test_labels))}
    scores = {}

    class ScoreKeeper(rs.Validator):  # the search's validator, keeping each candidate's image scores per set
        def validate(self, row):
            super().validate(row)
            for name, values in self.candidate_scores(row).items():
                scores[f"{row.architecture.label()} {row.recipe.label()}|{name}"] = values

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        validator = ScoreKeeper(config, components, subsample, sets, costs, Path(workdir), log)
        rs.plan_and_validate(config, rows, validator, space, len(fit), len(calib), started, True, log, None)
        validator.features.clear()
    np.savez(out.with_suffix(".npz"), **scores, **{f"labels|{k}": np.asarray(v[1]) for k, v in sets.items()})
    out.with_suffix(".json").write_text(json.dumps(
        [dict(r.as_dict(), name=f"{r.architecture.label()} {r.recipe.label()}") for r in rows
         if r.validation_auroc is not None], indent=1))


def report(out: Path, boots: int = 300) -> str:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    rows = json.loads(out.with_suffix(".json").read_text())
    arrays = np.load(out.with_suffix(".npz"))
    names = [r["name"] for r in rows]
    test = np.array([r["test_auroc"] for r in rows])
    rng = np.random.default_rng(0)
    lines = []
    for set_name in [s for s in ("narrow", "wide", "validation") if f"labels|{s}" in arrays]:
        labels = arrays[f"labels|{set_name}"]
        scores = np.stack([arrays[f"{n}|{set_name}"] for n in names])
        auroc = np.array([roc_auc_score(labels, s) for s in scores])
        pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        draws = []
        for _ in range(boots):  # resample goods and defects separately, the same draw for every candidate
            pick = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
            draws.append([roc_auc_score(labels[pick], s[pick]) for s in scores])
        draws = np.asarray(draws)
        best = int(np.argmax(auroc))
        se = (draws[:, best:best + 1] - draws).std(axis=0)
        rho = spearmanr(auroc, test)[0]
        lines += [f"{set_name}: {int((labels == 0).sum())} goods, {int((labels == 1).sum())} synthetic defects; "
                  f"Spearman vs test {rho:.3f} over {len(names)} candidates; pick {names[best]} (test "
                  f"{test[best]:.4f}; test's best {test.max():.4f}); median SE of a difference to the pick "
                  f"{np.median(se[np.arange(len(se)) != best]):.4f}"]
        lines += [f"  {auroc[i]:.4f} (SE {se[i]:.4f})  test {test[i]:.4f}  {names[i]}" for i in np.argsort(-auroc)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="results stem: OUT.json, OUT.npz")
    parser.add_argument("--target", default="x86_cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        collect(args.data, args.out, args.target, args.seed)
    print(report(args.out))


if __name__ == "__main__":
    main()
