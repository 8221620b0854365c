"""Issue 13 item 6: refiners on a polluted training set (sroc protocol), from cached stage maps.

For each seed: the sroc-polluted training set (toolkit/evaluation/pollution.py); each refiner NAME:MODE scores
the training images, MODE "in" = in-sample (as SROC), "cvK" = K-fold cross-fitted, "auto" = exactly what
`adtk build --refine auto` does with NAME refining (toolkit/refinement.refine: for a Gaussian NAME the rank sum of
its in-sample scores and per-position LOF, NAME's count; cross-fitted NAME alone otherwise), "auto1" = what
`--refine auto:NAME` does (NAME's scores alone: the plain auto before the rank sum);
reported: the recall of the injected defects among the top R = rate scores, what `--refine auto`'s
contamination estimate (toolkit/refinement/contamination.py) drops and finds; then each FINAL method is fitted
on the images auto kept and scored on the sroc test set (image / pixel AUROC, AU-PRO).

    nice -n 5 .venv/bin/python bench/refine_auto.py CACHE SEEDS RATE REFINERS FINALS
    nice -n 5 .venv/bin/python bench/refine_auto.py /tmp/adtk_mt_lite0_256 0 0.1 padim:cv2,patchcore:cv2 padim
    nice -n 10 .venv/bin/python bench/refine_auto.py /tmp/adtk_mt_lite0_256 0,1,2 0.1 padim:auto padim
    nice -n 10 .venv/bin/python bench/refine_auto.py /tmp/adtk_mt_lite0_256 0 0.1 padim:auto,padim:oracle padim,patchcore@0.1
    nice -n 10 .venv/bin/python bench/refine_auto.py /tmp/adtk_mt_lite0_256 0,1,2 0.1 padim:auto,padim:auto1 patchcore@0.1

A FINAL NAME@C fits NAME with coreset_ratio C (default PARAMS below otherwise); refiner mode "oracle" drops exactly
the injected defects (the ceiling of a perfect refiner).

Rows are appended to $REFINE_AUTO_OUT/refine_auto_rows_<cache name>.jsonl (default /tmp/refine_auto; the
scores saved beside them).
"""
import json, os, resource, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import feature_cache  # noqa: E402
from pollution_table import embed, evaluate  # noqa: E402
from adtk.toolkit.research.pollution import pollute, refinement_quality
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.postprocess import AnomalyMapSmoother
from adtk.toolkit.refinement.refine import RefineSpec, head_image_scores, refine
from adtk.toolkit.refinement.contamination import crossfit_scores, estimate_contamination
from adtk.toolkit.methods.base import FitInputs  # noqa: E402

def main() -> None:
    cache = Path(sys.argv[1]); seeds = [int(x) for x in sys.argv[2].split(",")]; rate = float(sys.argv[3])
    refiners = sys.argv[4].split(","); finals = sys.argv[5].split(",")
    PARAMS = {"patchcore": {"coreset_ratio": 0.0025}, "padim": {}, "paire": {}, "knn": {}, "mahalanobis": {}, "softcore": {"coreset_ratio": 0.0025}, "ldknn": {}}
    def spec_of(text):  # "patchcore@0.1" -> ("patchcore", params with coreset_ratio 0.1)
        name, _, ratio = text.partition("@")
        return name, ({**PARAMS[name], "coreset_ratio": float(ratio)} if ratio else PARAMS[name])
    meta, stages, all_masks, index, train_row, test_row = feature_cache.load_indexed(cache)
    smoother = AnomalyMapSmoother((meta["image_size_px"],) * 2, sigma=4.0)
    feats = {}
    def F(name):
        if name not in feats:
            m = create_method(name, **PARAMS[name])
            feats[name] = (embed(m, meta["channels"], stages["train"]), embed(m, meta["channels"], stages["test"]))
        return feats[name]
    folder = Path(os.environ.get("REFINE_AUTO_OUT", "/tmp/refine_auto")); folder.mkdir(parents=True, exist_ok=True)
    out = open(folder / ("refine_auto_rows_%s.jsonl" % cache.name), "a")
    for seed in seeds:
        split = pollute(index.train, index.test, rate, "sroc", seed)
        good = np.array([train_row[str(s.path)] for s in split.train if s.label == 0])
        inj = np.array([test_row[str(s.path)] for s in split.injected], dtype=np.int64)
        paths = [str(s.path) for s in split.train if s.label == 0] + [str(s.path) for s in split.injected]
        rows_test = np.array([test_row[str(s.path)] for s in split.test])
        labels = np.array([s.label for s in split.test]); masks = all_masks[rows_test]
        for ref in refiners:
            name, mode = ref.split(":")
            tr, te = F(name)
            t = time.perf_counter()  # the refiner's seconds, without the (cached) embedding
            X = np.concatenate([tr[good], te[inj]])
            m = create_method(name, **PARAMS[name]); m.embedding(tuple(meta["channels"]))
            auto = None
            if mode == "oracle":  # a ceiling: exactly the injected defects dropped
                scores = np.r_[np.zeros(len(good)), np.ones(len(inj))]
            elif mode in ("auto", "auto1"):  # the build's own function, with the build's own defaults
                # auto: plain `--refine auto` (a Gaussian NAME: rank sum with per-position LOF, rank_sum.py);
                # auto1: `--refine auto:NAME`, NAME's scores alone (the plain auto before the rank sum)
                auto = refine(RefineSpec("auto", detector=name if mode == "auto1" else None), m, X,
                              tuple(meta["channels"]), seed=0)
                scores = auto.scores
            elif mode == "in":
                scores = head_image_scores(m, m.fit(FitInputs(X, tuple(meta["channels"]))), X)
            else:
                k = int(mode[2:])
                def fs(a, b):
                    mm = create_method(name, **PARAMS[name]); mm.embedding(tuple(meta["channels"]))
                    return head_image_scores(mm, mm.fit(FitInputs(a, tuple(meta["channels"]))), b)
                scores = crossfit_scores(X, fs, folds=k, seed=seed)
            is_inj = np.zeros(len(X), bool); is_inj[len(good):] = True
            order = np.argsort(-scores)
            rec_at_R = is_inj[order[:len(inj)]].mean()
            est = estimate_contamination(scores)
            if mode == "oracle":
                est = type(est)(np.arange(len(good), len(X)), len(inj) / len(X), 1.0, False)
            if auto is not None:  # the bench drops what the build drops
                est = type(est)(auto.dropped, auto.details.get("estimated_contamination", 0.0), 0.0, False)
            hits = is_inj[est.dropped].sum()
            res = {"seed": seed, "rate": rate, "refiner": ref, "recall_at_R": round(float(rec_at_R), 3),
                   "auto_dropped": int(len(est.dropped)), "auto_recall": round(float(hits / max(len(inj), 1)), 3),
                   "s": round(time.perf_counter() - t, 1),
                   "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}  # so far (Linux: KiB)
            res["estimated_contamination"] = round(est.fraction, 4)
            np.save(folder / f"{cache.name}_scores_{ref.replace(':','_')}_s{seed}_r{rate}.npy", scores)
            for fin in finals:
                fname, fparams = spec_of(fin)
                ftr, fte = F(fname)
                Xf = np.concatenate([ftr[good], fte[inj]])
                kept = np.setdiff1d(np.arange(len(Xf)), est.dropped)
                fm = create_method(fname, **fparams); fm.embedding(tuple(meta["channels"]))
                state = fm.fit(FitInputs(np.ascontiguousarray(Xf[kept]), tuple(meta["channels"])))
                met = evaluate(fm, state, fte[rows_test], labels, masks, smoother, batch=32 if fname == "padim" else 2)
                print(f"seed {seed} {ref} -> {fin}: {met}", file=sys.stderr, flush=True)
                res[f"final_{fin}"] = {k: round(v, 4) for k, v in met.items()}
            print(json.dumps(res), flush=True); out.write(json.dumps(res) + "\n"); out.flush()


if __name__ == "__main__":
    main()
