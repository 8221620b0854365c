"""Issue 13: which architecture, bank size and map-side setting raises detection quality, without the frame budget.

For each architecture (backbone member(s), stages, input geometry; the recipe search's Architecture), PatchCore
heads are fitted at small banks (rows per training image) on a seeded subsample of the fit split, and every head
scores two sets through the artefact's own modules (FramePreprocess, tiling, backbone, PatchEmbedding, PatchCore
head, the shared map smoother):
  validation  the recipe search's synthetic-defect validation (held-out goods, each also with a synthetic defect,
              toolkit/validation.py): what a build may look at
  test        the data set's real test split (read by this bench only)
and reports image AUROC, pixel AUROC and AU-PRO (toolkit/evaluation/metrics.py, as `adtk eval`: maps and masks at
the model size, masks resized with nearest neighbour) for map-side levers that cost no backbone time:
  sigma       the anomaly map's Gaussian blur (0 = bilinear upsampling only; the build's default is 4)
  score       the image score: head (PatchCore's max patch score, re-weighted; the artefact's), patch_max (no
              re-weighting), map_max (maximum of the smoothed map), top0.1% / top1% (mean of the highest 0.1% / 1%
              of the smoothed map's pixels)
An ensemble's members are standardised on the validation's good frames (the recipe search's rule; the build uses
held-out goods): maps per member with their pixel mean/std, head scores with their score mean/std.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/quality_levers.py --data DIR --archs default,fine \
        --train-images 200 --out /tmp/ql_mt.json

Writes the JSON rows to --out and prints a table; bench/results/quality_levers.md collects the runs.
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
SIGMAS = (0.0, 2.0, 4.0, 8.0)
TOP_FRACTIONS = (0.001, 0.01)


def architectures():
    from adtk.toolkit.recipe_search import FINE, Architecture

    lite0 = "tf_efficientnet_lite0"
    return {
        "default": Architecture(lite0, None, 256),
        "fine": Architecture(lite0, FINE, 256),  # + the stride-4 stage
        "auto256": Architecture(lite0, None, "auto:65536"),
        "auto320": Architecture(lite0, None, "auto:102400"),
        "auto384": Architecture(lite0, None, "auto:147456"),
        "ensemble": Architecture(lite0, None, 256, ensemble=("mobilenetv2_100",)),
        "mnv2": Architecture("mobilenetv2_100", None, 256),
        "tile": Architecture(lite0, None, "auto", tile="256"),
        "fine_auto256": Architecture(lite0, FINE, "auto:65536"),
    }


class Member:
    """One backbone member at one geometry: its pipeline, heads per bank size and the scores of every set."""

    def __init__(self, choice, geometry, seed: int, embed_dim: int | None = None):
        from adtk.toolkit.backbones import create_backbone
        from adtk.toolkit.build import FeatureExtractorPipeline
        from adtk.toolkit.geometry import make_tiling
        from adtk.toolkit.methods.registry import create_method
        from adtk.toolkit.preprocess import FramePreprocess

        self.choice, self.geometry, self.seed = choice, geometry, seed
        backbone = create_backbone(choice.name, stages=choice.stages)
        self.embed_dim = embed_dim  # PatchCore's embed_dim: fewer dims, a cheaper bank search per row
        embedding = create_method("patchcore", embed_dim=embed_dim).embedding(tuple(backbone.channels)).eval()
        self.tiling = make_tiling(geometry)
        self.tiles = geometry.tiles.num_tiles if geometry.tiles else 1
        preprocess = FramePreprocess(geometry.model_hw, backbone.mean, backbone.std)
        # torch eager: no trunk export per member (the build's onnxruntime trunk is checked against torch anyway)
        self.pipeline = FeatureExtractorPipeline(preprocess, backbone, embedding, 8, self.tiling, use_onnx=False)
        self.heads: dict[float, torch.nn.Module] = {}
        self.scores: dict[tuple[float, str], tuple[np.ndarray, np.ndarray]] = {}  # (rows, set) -> (patches, image)
        self.patches_per_image = 0

    def fit(self, samples, rows_per_image) -> float:
        from adtk.toolkit.methods.base import FitInputs
        from adtk.toolkit.methods.registry import create_method

        tic = time.perf_counter()
        features, _ = self.pipeline.features(samples, skip_bad=False)
        self.patches_per_image = features.shape[-2] * features.shape[-1] * self.tiles
        for rows in rows_per_image:
            method = create_method("patchcore", coreset_ratio=min(1.0, rows / self.patches_per_image), seed=self.seed,
                                   embed_dim=self.embed_dim)
            self.heads[rows] = method.head(method.fit(FitInputs(features))).eval()
        return time.perf_counter() - tic

    @torch.no_grad()
    def score(self, name: str, frames, batch: int = 8) -> None:
        """frames: iterable of uint8 [H, W, 3] (any sizes) -> per bank: patch scores [N * T, h, w], image scores [N]."""
        patches = {rows: [] for rows in self.heads}
        images = {rows: [] for rows in self.heads}

        def flush(pending):
            features = self.pipeline.embedding(self.pipeline.backbone(torch.cat(pending)))
            for rows, head in self.heads.items():
                out = head(features)
                patches[rows].append(out.patch_scores.numpy())
                images[rows].append(out.image_score.reshape(-1, self.tiles).max(dim=1).values.numpy())

        pending = []
        for frame in frames:
            pending.append(self.pipeline.inputs(torch.from_numpy(np.ascontiguousarray(frame))[None]))
            if len(pending) == batch:
                flush(pending)
                pending = []
        if pending:
            flush(pending)
        for rows in self.heads:
            self.scores[(rows, name)] = (np.concatenate(patches[rows]), np.concatenate(images[rows]).astype(np.float64))


@torch.no_grad()
def smooth(member: Member, patch_scores: np.ndarray, sigma: float) -> np.ndarray:
    from adtk.toolkit.geometry import make_smoother

    smoother = make_smoother(member.geometry, sigma, patch_scores.shape[-2:])
    step = 16 * member.tiles
    return np.concatenate([smoother(torch.from_numpy(patch_scores[i:i + step])).numpy()
                           for i in range(0, len(patch_scores), step)])


def image_scores_from_maps(maps: np.ndarray) -> dict[str, np.ndarray]:
    flat = maps.reshape(len(maps), -1)
    out = {"map_max": flat.max(axis=1).astype(np.float64)}
    for fraction in TOP_FRACTIONS:
        k = max(1, int(round(fraction * flat.shape[1])))
        out[f"top{fraction * 100:g}%"] = np.partition(flat, -k, axis=1)[:, -k:].mean(axis=1).astype(np.float64)
    return out


def evaluate(members: list[Member], rows: float, sigma: float, sets: dict, labels: dict, masks: dict) -> dict:
    """-> {set: {"pixel_auroc", "au_pro", "image": {score name: AUROC}}} for one bank size and sigma."""
    from adtk.toolkit.evaluation.metrics import evaluate_predictions, image_auroc

    goods = labels["validation"] == 0
    maps, heads, patch_max = {}, {}, {}
    for name in sets:
        member_maps, member_heads, member_patch_max = [], [], []
        for member in members:
            patches, head_scores = member.scores[(rows, name)]
            member_maps.append(smooth(member, patches, sigma))
            member_heads.append(head_scores)
            member_patch_max.append(patches.reshape(len(head_scores), -1).max(axis=1).astype(np.float64))
        maps[name], heads[name], patch_max[name] = member_maps, member_heads, member_patch_max
    if len(members) > 1:  # standardise each member on the validation's good frames, then average
        reference_maps = [m[goods] for m in maps["validation"]]
        stats = [(float(r.mean()), max(float(r.std()), 1e-12)) for r in reference_maps]
        head_stats = [(float(h[goods].mean()), max(float(h[goods].std()), 1e-12)) for h in heads["validation"]]
        pmax_stats = [(float(h[goods].mean()), max(float(h[goods].std()), 1e-12)) for h in patch_max["validation"]]
    out = {}
    for name in sets:
        if len(members) == 1:
            combined, head_score, pmax = maps[name][0], heads[name][0], patch_max[name][0]
        else:
            combined = np.mean([(m - mu) / sd for m, (mu, sd) in zip(maps[name], stats)], axis=0)
            head_score = np.mean([(h - mu) / sd for h, (mu, sd) in zip(heads[name], head_stats)], axis=0)
            pmax = np.mean([(h - mu) / sd for h, (mu, sd) in zip(patch_max[name], pmax_stats)], axis=0)
        metrics = evaluate_predictions(head_score, labels[name], maps=combined.astype(np.float32), masks=masks[name])
        image = {"head": metrics["image_auroc"], "patch_max": image_auroc(pmax, labels[name])}
        image.update({k: image_auroc(v, labels[name]) for k, v in image_scores_from_maps(combined).items()})
        out[name] = {"pixel_auroc": metrics["pixel_auroc"], "au_pro": metrics["au_pro"], "image": image}
    return out


def load_test(index, geometry, limit: int | None, seed: int):
    """-> (samples, labels, masks at the model size); a seeded subset when limit is given."""
    from adtk.toolkit.data import iter_images, read_sample_mask
    from adtk.toolkit.evaluate import resize_mask

    samples = list(index.test)
    if limit and limit < len(samples):
        keep = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
        samples = [samples[i] for i in keep]
    labels, masks = [], []
    for sample, image in iter_images(samples, skip_bad=False):
        labels.append(sample.label)
        mask = (read_sample_mask(sample, image.shape[:2]) if sample.mask_path is not None
                else np.zeros(image.shape[:2], dtype=bool))
        masks.append(resize_mask(mask, geometry.model_hw))
    return samples, np.asarray(labels), np.stack(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--archs", default="default,fine,auto320,auto384,ensemble",
                        help=f"comma-separated names of {', '.join(architectures())}")
    parser.add_argument("--rows", default="2,5,10", help="bank rows per training image (PatchCore coreset)")
    parser.add_argument("--train-images", type=int, default=200, help="seeded subsample of the fit split")
    parser.add_argument("--test-images", type=int, default=None, help="seeded subset of the test split (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-dim", type=int, default=None, help="PatchCore embed_dim (default: all channels)")
    parser.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.data import index_dataset, iter_images
    from adtk.toolkit.ensemble import geometry_stride
    from adtk.toolkit.evaluate import resize_mask
    from adtk.toolkit.geometry import median_aspect_hw, resolve_geometry
    from adtk.toolkit.recipe_search import SEARCH_SPACE, _subset
    from adtk.toolkit.validation import load_good_images, synthetic_validation

    known = architectures()
    names = [n for n in args.archs.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown architectures {unknown}; known: {', '.join(known)}")
    rows_per_image = [float(r) for r in args.rows.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    index = index_dataset(args.data)
    fit, calib = split_training_set(index.train, 0.1, None, args.seed)  # the build's default split
    subsample = _subset(fit, args.train_images, args.seed)
    goods = load_good_images(_subset(calib, SEARCH_SPACE.validation_images, args.seed), skip_bad=False)
    validation = synthetic_validation(goods, seed=args.seed)
    aspect = median_aspect_hw(index.train)
    print(f"{args.data}: {len(subsample)} of {len(fit)} fit images, validation {validation.description}, "
          f"median height/width {aspect:.3f}", flush=True)

    results, members_done = [], {}
    for name in names:
        architecture = known[name]
        choices = architecture.members()
        geometry = resolve_geometry(architecture.image_size_px, architecture.tile, geometry_stride(choices), aspect)
        test_samples, test_labels, test_masks = load_test(index, geometry, args.test_images, args.seed)
        labels = {"validation": validation.labels, "test": test_labels}
        masks = {"validation": np.stack([resize_mask(m, geometry.model_hw) for m in validation.masks]),
                 "test": test_masks}
        members = []
        for choice in choices:
            key = (str(choice), geometry)
            if key not in members_done:
                tic = time.perf_counter()
                member = Member(choice, geometry, args.seed, args.embed_dim)
                fit_s = member.fit(subsample, rows_per_image)
                member.score("validation", validation.frames)
                member.score("test", (image for _, image in iter_images(test_samples, skip_bad=False)))
                print(f"{name}: {choice} at {geometry.as_dict()}: {member.patches_per_image} patches/img, fit "
                      f"{fit_s:.0f} s, all {time.perf_counter() - tic:.0f} s", flush=True)
                members_done[key] = member
            members.append(members_done[key])
        for rows in rows_per_image:
            for sigma in sigmas:
                found = evaluate(members, rows, sigma, {"validation": None, "test": None}, labels, masks)
                row = {"arch": name, "label": architecture.label(), "model_hw": list(geometry.model_hw),
                       "tiles": members[0].tiles, "patches_per_image": members[0].patches_per_image,
                       "rows_per_image": rows, "sigma": sigma, "embed_dim": args.embed_dim, **found}
                results.append(row)
                print(json.dumps(row), flush=True)
    meta = {"data": str(args.data), "date": str(date.today()), "fit_images": len(subsample), "fit_split": len(fit),
            "validation": validation.description, "test_images": int(len(test_labels)),
            "command": "python bench/quality_levers.py " + " ".join(sys.argv[1:]),
            "load_average_start": load_start, "load_average_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "seconds": round(time.perf_counter() - started)}
    args.out.write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    print(json.dumps(meta))


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(paths: list[Path]) -> str:
    """Markdown tables of one or more runs' JSON: architectures x banks at the build's map settings (sigma 4, the
    head's score), then each map-side lever as its mean change against those settings over every architecture and
    bank of a run, on the synthetic validation and on the real test split."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    lines = []
    for run in runs:
        meta = run["meta"]
        lines += [f"### {Path(meta['data']).name}: {meta['fit_images']} fit images (seeded subsample of "
                  f"{meta['fit_split']}), {meta['test_images']} test images; validation: {meta['validation']}", "",
                  f"Command: `{meta['command']}` ({meta['date']}, {meta['seconds']} s, load average "
                  f"{meta['load_average_start']} at start, {meta['load_average_end']} at end: machine loaded, "
                  "timings not comparable)", "",
                  "Sigma 4, image score = the head's (the artefact's settings):", "",
                  "| architecture | model size | tiles | rows/img | val image | val pixel | val AU-PRO | "
                  "test image | test pixel | test AU-PRO |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in run["rows"]:
            if row["sigma"] != 4.0:
                continue
            v, t = row["validation"], row["test"]
            lines.append(f"| {row['arch']} ({row['label']}) | {row['model_hw'][0]}x{row['model_hw'][1]} | "
                         f"{row['tiles']} | {row['rows_per_image']:g} | {_f(v['image']['head'])} | "
                         f"{_f(v['pixel_auroc'])} | {_f(v['au_pro'])} | {_f(t['image']['head'])} | "
                         f"{_f(t['pixel_auroc'])} | {_f(t['au_pro'])} |")
        base = {(r["arch"], r["rows_per_image"]): r for r in run["rows"] if r["sigma"] == 4.0}
        lines += ["", "Map smoothing: mean change against sigma 4 over every architecture and bank (wins / cases):",
                  "", "| sigma | val pixel | val AU-PRO | val image (map_max) | test pixel | test AU-PRO | "
                  "test image (map_max) |", "|---|---|---|---|---|---|---|"]
        for sigma in sorted({r["sigma"] for r in run["rows"]}):
            cells = []
            for name in ("validation", "test"):
                for metric in ("pixel_auroc", "au_pro", "map_max"):
                    deltas = []
                    for r in run["rows"]:
                        if r["sigma"] != sigma:
                            continue
                        b = base[(r["arch"], r["rows_per_image"])][name]
                        get = (lambda x: x["image"]["map_max"]) if metric == "map_max" else (lambda x: x[metric])
                        deltas.append(get(r[name]) - get(b))
                    cells.append(f"{np.mean(deltas) * 100:+.2f} pts ({sum(d > 0 for d in deltas)}/{len(deltas)})")
            lines.append(f"| {sigma:g} | " + " | ".join(cells) + " |")
        scores = list(run["rows"][0]["test"]["image"])
        lines += ["", "Image score: image AUROC change against the head's score at each sigma, mean over every "
                  "architecture and bank (wins / cases; patch_max does not depend on sigma):", "",
                  "| score | sigma | validation | test |", "|---|---|---|---|"]
        for score in scores[1:]:
            for sigma in ([4.0] if score == "patch_max" else sorted({r["sigma"] for r in run["rows"]})):
                cells = []
                for name in ("validation", "test"):
                    deltas = [r[name]["image"][score] - r[name]["image"]["head"] for r in run["rows"]
                              if r["sigma"] == sigma]
                    cells.append(f"{np.mean(deltas) * 100:+.2f} pts ({sum(d > 0 for d in deltas)}/{len(deltas)})")
                lines.append(f"| {score} | {sigma:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--report":
        print(report([Path(p) for p in sys.argv[2:]]))
    else:
        main()
