"""Issue-17 bench: PatchCore's bank self-kNN (bank_neighbours, k = num_neighbors + 1) exact vs faiss IVF-Flat, on
the default coreset of the cached magnetic-tile features -- neighbour recall and what the re-weighted image score
loses in AUROC (PatchCore re-weights only the image score: the map, hence pixel AUROC, does not use the
neighbours; the bench reports pixel AUROC anyway, from the same nearest-row map, as a check that it is unchanged).

    .venv/bin/python bench/bank_neighbours_ivf.py --cache /tmp/adtk_mt_lite0_256 --nlist 1024 --nprobe 8,16,32

Timings are printed per variant (exact and each nprobe) from one process: compare ratios only on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coreset_speed import embed, make_sampler  # noqa: E402
from feature_cache import DEFAULT_DATA, load  # noqa: E402


def own_first(found: np.ndarray, k: int) -> np.ndarray:
    """As toolkit/search.py bank_neighbours: each row itself first, then its k - 1 nearest others."""
    own = np.arange(len(found))[:, None]
    order = np.argsort(found == own, axis=1, kind="stable")
    return np.concatenate([own, np.take_along_axis(found, order, axis=1)[:, :k - 1]], axis=1)


def ivf_neighbours(bank: np.ndarray, k: int, nlist: int, nprobe: int, seed: int = 0) -> np.ndarray:
    import faiss

    quantizer = faiss.IndexFlatL2(bank.shape[1])
    index = faiss.IndexIVFFlat(quantizer, bank.shape[1], nlist)
    index.cp.seed = seed
    index.train(bank)
    index.add(bank)
    index.nprobe = nprobe
    _, found = index.search(bank, k + 1)
    return own_first(found.astype(np.int64), k)


def nearest_rows(bank: np.ndarray, test: np.ndarray):
    """-> (nearest-row patch scores [T, h*w], the nearest row of each image's highest patch [T]): faiss, exact."""
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    num, dims, height, width = test.shape
    patches, top_rows = np.empty((num, height * width), np.float32), np.empty(num, np.int64)
    for start in range(0, num, 8):
        queries = np.ascontiguousarray(test[start:start + 8].transpose(0, 2, 3, 1).reshape(-1, dims))
        sq, nearest = index.search(queries, 1)
        chunk = np.sqrt(np.maximum(sq[:, 0], 0)).reshape(-1, height * width)
        patches[start:start + len(chunk)] = chunk
        top_rows[start:start + len(chunk)] = nearest[:, 0].reshape(-1, height * width)[np.arange(len(chunk)),
                                                                                        chunk.argmax(1)]
    return patches, top_rows


def reweighted_image_scores(bank, neighbours, test, patches, top_rows) -> np.ndarray:
    """PatchCoreHead's image score: max patch score * (1 - softmax(distances to its nearest row's neighbours)[0])."""
    num, dims = test.shape[:2]
    flat = test.reshape(num, dims, -1)
    scores = np.empty(num)
    for i in range(num):
        query = flat[i, :, patches[i].argmax()]
        support = np.linalg.norm(query[None] - bank[neighbours[top_rows[i]]], axis=1).astype(np.float64)
        weight = 1.0 - np.exp(support[0] - support.max()) / np.exp(support - support.max()).sum()
        scores[i] = weight * patches[i].max()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sampler", default="grouped:32768")
    parser.add_argument("--num-neighbors", type=int, default=9)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", default="8,16,32")
    parser.add_argument("--fit-images", type=int, default=None)
    args = parser.parse_args()

    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.evaluation.metrics import image_auroc, pixel_auroc
    from adtk.toolkit.features import PatchEmbedding
    from adtk.toolkit.postprocess import AnomalyMapSmoother
    from adtk.toolkit.search import bank_neighbours

    meta, stages, masks = load(args.cache)
    embedding = PatchEmbedding(meta["channels"]).eval()
    fit_rows, _ = split_training_set(range(len(meta["splits"]["train"])), 0.1, None, 0)
    fit = embed(stages["train"], np.asarray(fit_rows[:args.fit_images]), embedding)
    test = embed(stages["test"], np.arange(len(meta["splits"]["test"])), embedding)
    labels = np.array([int(s["label"]) for s in meta["splits"]["test"]])
    method = make_sampler(args.sampler, 0.1, 0)
    bank = np.ascontiguousarray(fit.transpose(0, 2, 3, 1).reshape(-1, fit.shape[1])[method.coreset.select(fit)])
    print(f"bank {bank.shape} ({args.sampler}), test {test.shape}", flush=True)
    tic = time.perf_counter()
    exact = bank_neighbours(bank, args.num_neighbors)
    variants = [("exact", exact, time.perf_counter() - tic)]
    for nprobe in (int(n) for n in args.nprobe.split(",")):
        nlist = max(1, min(args.nlist, len(bank) // 39))  # faiss wants >= 39 training rows per list
        tic = time.perf_counter()
        found = ivf_neighbours(bank, args.num_neighbors, nlist, nprobe)
        variants.append((f"ivf{nlist}/nprobe{nprobe}", found, time.perf_counter() - tic))
    print("| neighbours | seconds | neighbour recall | image AUROC (re-weighted) | pixel AUROC |\n|---|---|---|---|---|")
    size = meta["image_size_px"]
    smoother = AnomalyMapSmoother((size, size), sigma=4.0, grid_hw=fit.shape[2:]).eval()
    patches, top_rows = nearest_rows(bank, test)  # the same for every variant: only the neighbours differ
    with torch.inference_mode():
        maps = smoother(torch.from_numpy(patches.reshape(len(test), *fit.shape[2:]))).numpy()
    pixel = pixel_auroc(maps, masks)  # the map does not use the neighbours: one figure for all variants
    for name, found, seconds in variants:
        recall = np.mean(np.sort(found[:, 1:], axis=1)[:, :, None] == np.sort(exact[:, 1:], axis=1)[:, None, :],
                         axis=(1, 2)).mean() * (found.shape[1] - 1)
        scores = reweighted_image_scores(bank, found, test, patches, top_rows)
        print(f"| {name} | {seconds:.1f} | {recall:.4f} | {image_auroc(scores, labels):.4f} | {pixel:.4f} |",
              flush=True)

if __name__ == "__main__":
    main()
