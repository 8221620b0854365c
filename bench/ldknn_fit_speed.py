"""Issue-17 bench: LDKNN's fit (REB's scoring method) exact vs fast, on the cached magnetic-tile features --
where the fit's time goes (coreset, densities) and what the fast path costs in accuracy.

Arms: coreset sampler (`exact`: the paper's one greedy over all patches, `grouped:ROWS`: PatchCore's default
greedy within groups of images) x density search (`exact`: faiss flat over the full pre-coreset bank, `ivfP`:
toolkit/search.py's IVF-Flat with P lists probed). Each arm's LDKNN scores every test image exactly as LDKNNHead
does (nearest bank row by squared distance, minus alpha x that row's density; 3x3/3 pooled image score, smoothed
map): image AUROC, pixel AUROC and AU-PRO on the 583 test images, beside density recall and relative error against
the exact densities of the same coreset. One process, phases timed one after another: compare ratios only on a
quiet machine.

    .venv/bin/python bench/ldknn_fit_speed.py --cache /tmp/adtk_mt_lite0_256 --workdir /tmp/ldknn_fit_speed
    .venv/bin/python bench/ldknn_fit_speed.py --cache /tmp/adtk_mt_lite0_256 --fit-images 40 --no-record  # a check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coreset_speed import cached_fit_and_test  # noqa: E402
from feature_cache import DEFAULT_DATA  # noqa: E402
from measure import append_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def coreset(spec: str, ratio: float, seed: int):
    from adtk.toolkit.coreset import ApproximateGreedyCoreset

    name, _, group = spec.partition(":")
    if name not in ("exact", "grouped"):
        raise SystemExit(f"unknown sampler {spec!r}: exact or grouped:ROWS")
    return ApproximateGreedyCoreset(ratio, seed=seed, group_rows=int(group or 32768) if name == "grouped" else None)


def nearest_rows(bank: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (squared distance to the nearest bank row [T, h, w], its index [T, h, w]): faiss flat, exact."""
    from adtk.toolkit.search import nearest_neighbours

    num, dims, height, width = test.shape
    sq, index = np.empty((num, height * width), np.float32), np.empty((num, height * width), np.int64)
    for start in range(0, num, 32):
        queries = test[start:start + 32].transpose(0, 2, 3, 1).reshape(-1, dims)
        found_sq, found = nearest_neighbours(bank, queries, 1)
        sq[start:start + 32], index[start:start + 32] = found_sq.reshape(-1, height * width), found.reshape(
            -1, height * width)
    return np.maximum(sq, 0).reshape(num, height, width), index.reshape(num, height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--samplers", default="exact,grouped:32768")
    parser.add_argument("--densities", default="exact,ivf16,ivf32", help="exact and/or ivfP (P lists probed)")
    parser.add_argument("--num-neighbors", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-images", type=int, default=None, help="only the first N fit images (a quick check)")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps each sampler's selection for reruns")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "ldknn_fit_speed.md")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from adtk.toolkit.evaluation.metrics import au_pro, image_auroc, pixel_auroc
    from adtk.toolkit.methods.ldknn import local_densities, pool_image_score

    log = lambda message: print(message, flush=True)  # noqa: E731
    fit, test, labels, masks, smoother = cached_fit_and_test(args.cache, args.fit_images, args.seed)
    patches = np.ascontiguousarray(fit.transpose(0, 2, 3, 1).reshape(-1, fit.shape[1]))
    log(f"fit {fit.shape} -> {patches.shape[0]} patches, test {test.shape}")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)

    rows = []
    for spec in args.samplers.split(","):
        saved = args.workdir / f"select_{spec.replace(':', '_')}_{len(fit)}_{args.seed}.npy" if args.workdir else None
        tic = time.perf_counter()
        if saved is not None and saved.exists():
            selected, select_s = np.load(saved), float("nan")
        else:
            selected = coreset(spec, args.coreset_ratio, args.seed).select(patches)
            select_s = time.perf_counter() - tic
            if saved is not None:
                np.save(saved, selected)
        log(f"{spec}: {len(selected)} rows in {select_s:.1f} s")
        bank = np.ascontiguousarray(patches[selected])
        tic = time.perf_counter()
        test_sq, test_row = nearest_rows(bank, test)
        log(f"{spec}: test nearest rows in {time.perf_counter() - tic:.1f} s")
        reference = None
        for density in args.densities.split(","):
            approximate = density.startswith("ivf")
            nprobe = int(density[3:]) if approximate else None
            load_before = os.getloadavg()[0]
            tic = time.perf_counter()
            densities = local_densities(patches, selected, args.num_neighbors, "squared", approximate=approximate,
                                        nprobe=nprobe)
            density_s = time.perf_counter() - tic
            if density == "exact":
                reference = densities
            patch_scores = torch.from_numpy(test_sq - args.alpha * densities[test_row])
            with torch.inference_mode():
                image_scores = pool_image_score(patch_scores, "pooled").numpy()
                maps = smoother(patch_scores).numpy()
            row = {"sampler": spec, "densities": density, "select_s": round(select_s, 1),
                   "density_s": round(density_s, 1), "bank_rows": int(len(selected)),
                   "load_avg_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                   "image_auroc": round(image_auroc(image_scores, labels), 4),
                   "pixel_auroc": round(pixel_auroc(maps, masks), 4), "au_pro": round(au_pro(maps, masks), 4)}
            if reference is not None:
                # densities are means of the K smallest distances: a missed neighbour only raises one
                row["density_rel_error_mean"] = round(float(np.mean(densities / np.maximum(reference, 1e-12) - 1)), 5)
                row["density_exact_share"] = round(float(np.mean(np.isclose(densities, reference, rtol=1e-5))), 4)
            log(json.dumps(row))
            rows.append(row)

    exact = next((r for r in rows if r["sampler"] == "exact" and r["densities"] == "exact"), None)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {stamp}: {args.data.name} features ({args.cache}), {len(fit)} fit images, K={args.num_neighbors}, "
             f"alpha={args.alpha}, seed {args.seed}", "",
             f"`{' '.join([Path(sys.executable).name] + sys.argv)}` -- {platform.machine()}, {os.cpu_count()} cores, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}; load average shown per row.", "",
             "| coreset | densities | coreset s | densities s | densities equal to exact | mean density excess | "
             "image AUROC | pixel AUROC | AU-PRO | vs exact/exact (points) | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = ("-" if exact is None else
                 f"{100 * (r['image_auroc'] - exact['image_auroc']):+.2f} / "
                 f"{100 * (r['pixel_auroc'] - exact['pixel_auroc']):+.2f} / {100 * (r['au_pro'] - exact['au_pro']):+.2f}")
        lines.append(f"| {r['sampler']} | {r['densities']} | {r['select_s']} | {r['density_s']} | "
                     f"{r.get('density_exact_share', '-')} | {r.get('density_rel_error_mean', '-')} | "
                     f"{r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['au_pro']:.4f} | {delta} | "
                     f"{r['load_avg_before_after'][0]}-{r['load_avg_before_after'][1]} |")
    log("\n".join(lines))
    if not args.no_record:
        append_record(args.record, "LDKNN fit: exact vs fast (bench/ldknn_fit_speed.py)", lines + [""])


if __name__ == "__main__":
    main()
