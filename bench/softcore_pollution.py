"""Issue 4 acceptance bench: SoftCore vs PatchCore on magnetic-tile with 10% of the training images replaced
by defective test images, under seed 002's two protocols (spec softcore_semlp_labeled_patchcore.md A.7):

* no overlap: the injected defects are not scored -> toolkit/research/pollution.py "sroc" (its draw is
  stratified by type and removes a 20% pool from the test set, not just the injected images);
* overlap: the injected defects stay in the test set -> pollution.py "paire" (uniform draw, test unchanged).
Both protocols *swap* good training images for defects (N stays fixed) where seed 002 *adds* them
(N -> 1.1 N); the share of defects in the training set is 10% / 9.1% respectively.

Image and pixel AUROC per (method, protocol, seed). The frozen backbone's stage maps come from
bench/feature_cache.py; the embedding, fit, exported head (torch) and map smoothing (sigma 4) run here:
the artefact's pipeline minus the backbone (bench/pollution_table.py's helpers). The training set is the
build's seeded split (--max-train-images, 10% held out to calibrate, as `adtk build`).

    nice -n 15 .venv/bin/python bench/feature_cache.py --out /tmp/adtk_mt_lite0_256
    nice -n 15 .venv/bin/python bench/softcore_pollution.py --cache /tmp/adtk_mt_lite0_256 --seeds 0,1,2 \
        --rows bench/results/softcore_pollution_rows.jsonl

--rows appends each finished (protocol, method, seed) row to a JSONL file and skips the rows already in
it, so a run resumes and can be split across processes; the table is then rebuilt from every row in the
file (--table-only rebuilds it without fitting). Writes bench/results/softcore_pollution.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
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
READING_HEADING = "## Reading"  # a hand-written section of the .md, kept when the table is rewritten


def evaluate(method, state, features, labels, masks, smoother) -> dict:
    from adtk.toolkit.evaluation.metrics import evaluate_predictions

    # batch 4: the head's [B, 1024, M] distance matrix stays ~0.3 GB at a 20k-row bank
    scores, maps = score(method, state, features, smoother, batch=4)
    metrics = evaluate_predictions(scores, labels, maps=maps, masks=masks)
    return {k: metrics[k] for k in ("image_auroc", "pixel_auroc")}


def run(cache: Path, methods: list[str], protocols: list[str], seeds: list[int], rate: float, params: dict,
        max_train_images: int, log, on_row, done: frozenset = frozenset()) -> None:
    """Every (protocol, method, seed) row; keys (protocol name, method, seed) in `done` are skipped."""
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.research.pollution import pollute
    from adtk.toolkit.methods.base import FitInputs
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
            todo = [name for name in methods if (PROTOCOL_NAMES[protocol], name, seed) not in done]
            if not todo:
                continue
            split = pollute(fit_samples, index.test, rate, protocol, seed)
            good = [train_row[str(s.path)] for s in split.train if s.label == 0]
            injected = [test_row[str(s.path)] for s in split.train if s.label == 1]
            features = np.concatenate([embed(reference, meta["channels"], [m[good] for m in stages["train"]]),
                                       test_all[injected]])
            rows_test = np.array([test_row[str(s.path)] for s in split.test])
            labels = np.array([s.label for s in split.test])
            for name in todo:
                tic = time.perf_counter()
                method = create_method(name, **params[name])
                state = method.fit(FitInputs(features))
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
    """Mean ± std (population, over seeds) per (protocol, method)."""
    def cell(values):
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if len(values) > 1 else f"{100 * values[0]:.1f}"

    lines = ["| protocol | method | image AUROC | pixel AUROC | seeds | fit images (injected) | test images (defective) |",
             "|---|---|---|---|---|---|---|"]
    for protocol in ("no overlap", "overlap"):
        for method in sorted({r["method"] for r in rows}):
            group = [r for r in rows if r["protocol"] == protocol and r["method"] == method]
            if group:
                seeds = ",".join(str(r["seed"]) for r in group)
                lines.append(f"| {protocol} | {method} | {cell([r['image_auroc'] for r in group])} | "
                             f"{cell([r['pixel_auroc'] for r in group])} | {seeds} | {group[0]['num_fit']} "
                             f"({group[0]['num_injected']}) | {group[0]['num_test']} ({group[0]['num_test_defective']}) |")
    return "\n".join(lines)


def per_seed_table(rows: list[dict]) -> str:
    lines = ["| protocol | method | seed | image AUROC | pixel AUROC | injected also scored | fit s | row s | date |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['protocol']} | {r['method']} | {r['seed']} | {100 * r['image_auroc']:.1f} | "
                     f"{100 * r['pixel_auroc']:.1f} | {r['injected_in_test']} | {r['fit_s']:.0f} | {r['seconds']:.0f} | "
                     f"{r.get('date', '?')} |")
    return "\n".join(lines)


def sorted_rows(rows: list[dict]) -> list[dict]:
    order = {"no overlap": 0, "overlap": 1}
    return sorted(rows, key=lambda r: (order[r["protocol"]], r["method"], r["seed"]))


def read_rows(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_results(out: Path, rows: list[dict], rate: float, max_train_images: int, coreset_ratio: float) -> None:
    rows = sorted_rows(rows)
    commands = sorted({r.get("command", "?") for r in rows})
    machines = sorted({r.get("machine", "?") for r in rows})
    dates = sorted({r.get("date", "?") for r in rows})
    out.with_suffix(".json").write_text(json.dumps({"header": {"dates": dates, "machines": machines,
                                                               "commands": commands}, "rows": rows}, indent=1))
    command_lines = "\n".join(f"    {c}" for c in commands)
    old = out.with_suffix(".md").read_text() if out.with_suffix(".md").exists() else ""
    reading = old[old.index(READING_HEADING):].split("\n## Per seed")[0].split("\n| protocol")[0].strip() + "\n\n" \
        if READING_HEADING in old else ""
    out.with_suffix(".md").write_text(
        f"# SoftCore vs PatchCore, magnetic-tile, {100 * rate:.0f}% pollution\n\n"
        f"tf_efficientnet_lite0 real weights, 256 px; {max_train_images} training images before the 10% "
        f"calibration hold-out; coreset {coreset_ratio} (both methods, method seed 0; the seed column is the "
        f"split/pollution seed); SoftCore LOF k 6, tau 0.15, squared distance. Mean ± std (population) over "
        f"seeds. Dates: {', '.join(dates)}. Machine: {'; '.join(machines)}. The runs shared the 2-core machine "
        f"with other jobs: the seconds are not meaningful as timings.\n\n{reading}"
        f"{table(rows)}\n\n## Per seed\n\n{per_seed_table(rows)}\n\n"
        f"Commands (rows from every command, collected with --rows):\n\n{command_lines}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="softcore,patchcore")
    parser.add_argument("--protocols", default="sroc,paire")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--rows", type=Path, default=None,
                        help="JSONL file: finished rows are appended, rows already there are skipped, and the "
                             "table is built from all of its rows")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from --rows, fit nothing")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "softcore_pollution")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = {"softcore": {"coreset_ratio": args.coreset_ratio},  # lof, k 6, tau 0.15, squared distance
              "patchcore": {"coreset_ratio": args.coreset_ratio}}
    rows: list[dict] = read_rows(args.rows)
    done = frozenset((r["protocol"], r["method"], r["seed"]) for r in rows)
    threads_env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    command = (f"{threads_env} " if threads_env else "") + "nice -n 15 .venv/bin/python bench/" + " ".join(
        [Path(sys.argv[0]).name, *sys.argv[1:]])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    machine = f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"

    def save(row):
        row.update(date=str(date.today()), machine=machine, command=command)
        if args.rows is not None:
            with args.rows.open("a") as f:
                f.write(json.dumps(row) + "\n")
            all_rows = read_rows(args.rows)  # other processes may have added rows too
        else:
            rows.append(row)
            all_rows = rows
        write_results(args.out, all_rows, args.rate, args.max_train_images, args.coreset_ratio)

    if not args.table_only:
        run(args.cache, args.methods.split(","), args.protocols.split(","), [int(s) for s in args.seeds.split(",")],
            args.rate, params, args.max_train_images, lambda m: print(m, flush=True), save, done)
    rows = read_rows(args.rows) if args.rows is not None else rows
    write_results(args.out, rows, args.rate, args.max_train_images, args.coreset_ratio)
    print(table(sorted_rows(rows)))


if __name__ == "__main__":
    main()
