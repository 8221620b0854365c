"""Issue-17 bench: coreset samplers side by side on the same features -- selection time and what it costs in AUROC.

For each sampler (PatchCore's `exact` global greedy, `grouped` at one or more group sizes, `online`), on the
same cached backbone maps of magnetic-tile (bench/feature_cache.py; the build's seeded 90/10 fit split, 10%
coreset by default):
  * selection time, samplers run one after the other in one process, with the load average before and after
    each (the machine may be shared: compare ratios from one run);
  * image and pixel AUROC of the resulting bank on all test images, scored the same way for every sampler:
    patch score = L2 distance to the nearest bank row (faiss IndexFlatL2), image score = max patch score (no
    neighbour re-weighting, which needs a bank-to-bank search per sampler), map = the artefact's upsample +
    Gaussian blur (toolkit/postprocess.py).

    .venv/bin/python bench/coreset_speed.py --cache /tmp/adtk_mt_lite0_256 --samplers exact,grouped:65536,online
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
from feature_cache import DEFAULT_DATA, extract, load  # noqa: E402
from measure import append_record  # noqa: E402
from adtk.toolkit.methods.base import FitInputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def embed(stage_maps: list[np.ndarray], rows: np.ndarray, embedding, step: int = 32) -> np.ndarray:
    out = None
    with torch.inference_mode():
        for start in range(0, len(rows), step):
            pick = rows[start:start + step]
            chunk = embedding([torch.from_numpy(np.asarray(m[pick], dtype=np.float32)) for m in stage_maps]).numpy()
            if out is None:
                out = np.empty((len(rows),) + chunk.shape[1:], np.float32)
            out[start:start + len(pick)] = chunk
    return out


def cached_fit_and_test(cache: Path, fit_images: int | None, seed: int):
    """The feature cache's fit images (the build's seeded split, the first `fit_images` of them) and all test images,
    embedded as PatchCore embeds them -> (fit [N, D, h, w], test [T, D, h, w], labels [T], masks, smoother)."""
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.features import PatchEmbedding
    from adtk.toolkit.postprocess import AnomalyMapSmoother

    meta, stages, masks = load(cache)
    embedding = PatchEmbedding(meta["channels"]).eval()
    fit_rows, _ = split_training_set(range(len(meta["splits"]["train"])), 0.1, None, seed)  # as the build
    fit = embed(stages["train"], np.asarray(fit_rows[:fit_images]), embedding)
    test = embed(stages["test"], np.arange(len(meta["splits"]["test"])), embedding)
    labels = np.array([int(s["label"]) for s in meta["splits"]["test"]])
    size = meta["image_size_px"]
    smoother = AnomalyMapSmoother((size, size), sigma=4.0, grid_hw=fit.shape[2:]).eval()
    return fit, test, labels, masks, smoother


def score(bank: np.ndarray, test: np.ndarray, smoother) -> tuple[np.ndarray, np.ndarray]:
    """-> image scores [T], maps [T, S, S]: nearest-row L2 distance per patch (faiss), max, smoothed map."""
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    num, dims, height, width = test.shape
    patch = np.empty((num, height * width), np.float32)
    for start in range(0, num, 16):
        queries = np.ascontiguousarray(test[start:start + 16].transpose(0, 2, 3, 1).reshape(-1, dims))
        patch[start:start + 16] = np.sqrt(np.maximum(index.search(queries, 1)[0][:, 0], 0)).reshape(-1, height * width)
    with torch.inference_mode():
        maps = smoother(torch.from_numpy(patch.reshape(num, height, width))).numpy()
    return patch.max(1), maps


def make_sampler(spec: str, ratio: float, seed: int):
    from adtk.toolkit.methods.patchcore import PatchCore

    name, _, group = spec.partition(":")
    params = dict(coreset_ratio=ratio, num_neighbors=1, seed=seed, sampler=name)
    if group:
        params["group_rows"] = int(group)
    return PatchCore(**params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="bench/feature_cache.py folder (made if missing)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--samplers", default="exact,grouped:65536,online")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-images", type=int, default=None, help="only the first N fit images (a quick check)")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "results" / "coreset_speed.md")
    args = parser.parse_args()

    from adtk.toolkit.evaluation.metrics import image_auroc, pixel_auroc

    if not (args.cache / "meta.json").exists():
        extract(args.data, args.cache, "tf_efficientnet_lite0", 256)
    fit, test, labels, masks, smoother = cached_fit_and_test(args.cache, args.fit_images, args.seed)
    log = lambda message: print(message, flush=True)  # noqa: E731
    log(f"fit {fit.shape}, test {test.shape}")

    rows = []
    for spec in args.samplers.split(","):
        method = make_sampler(spec, args.coreset_ratio, args.seed)
        load_before = os.getloadavg()[0]
        tic = time.perf_counter()
        if method.sampler == "online":
            bank = method.fit(FitInputs(fit)).memory_bank
        else:
            bank = np.ascontiguousarray(fit.transpose(0, 2, 3, 1).reshape(-1, fit.shape[1])[method.coreset.select(fit)])
        seconds = time.perf_counter() - tic
        load_after = os.getloadavg()[0]
        image_scores, maps = score(bank, test, smoother)
        row = {"sampler": spec, "select_s": round(seconds, 1), "bank_rows": int(bank.shape[0]),
               "load_avg_before_after": [round(load_before, 1), round(load_after, 1)],
               "image_auroc": round(image_auroc(image_scores, labels), 4),
               "pixel_auroc": round(pixel_auroc(maps, masks), 4)}
        log(json.dumps(row))
        rows.append(row)

    base = next((r for r in rows if r["sampler"] == "exact"), rows[0])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {stamp}: {len(fit)} fit images ({fit.shape[0] * fit.shape[2] * fit.shape[3]} patches), "
             f"{args.coreset_ratio:.0%} coreset, {len(test)} test images", "",
             f"`{' '.join([Path(sys.executable).name] + sys.argv)}` -- {platform.machine()}, {os.cpu_count()} cores, "
             "machine SHARED with other jobs (not quiet): samplers ran one after another in one process; compare "
             "the ratios, with the load averages beside them.", "",
             f"| sampler | selection s | vs {base['sampler']} | bank rows | load avg before/after | image AUROC | "
             "pixel AUROC | image / pixel AUROC vs " + base["sampler"] + " (points) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['select_s']} | {r['select_s'] / base['select_s']:.3f}x | {r['bank_rows']} "
                     f"| {r['load_avg_before_after'][0]} / {r['load_avg_before_after'][1]} | {r['image_auroc']:.4f} "
                     f"| {r['pixel_auroc']:.4f} | {100 * (r['image_auroc'] - base['image_auroc']):+.2f} / "
                     f"{100 * (r['pixel_auroc'] - base['pixel_auroc']):+.2f} |")
    lines += ["", "Scoring: nearest-row L2 (faiss), image score = max patch score (no neighbour re-weighting), "
              "map upsampled and blurred as in the artefact; the same for every sampler.", ""]
    append_record(args.record, "Coreset samplers side by side (bench/coreset_speed.py)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
