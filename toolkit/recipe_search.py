"""`adtk build --method auto`: choose the recipe (method, backbone, stages, input size, bank size) from good images.

    result = search_and_build(config)        # config.method == "auto"; the rest of BuildConfig as for any build

  1. split train/good exactly as the build will (same seed): the held-out calibration goods become the
     validation set, each also shown with a synthetic defect (toolkit/validation.py). The test split is never
     read. Too few goods for a validation split -> a DataError saying how many are needed.
  2. cost every architecture (backbone, stages, input size) with the compiler's cost model on an export with an
     almost empty head (toolkit/sizing.py probe_model); the head's cost is scaled to each candidate's bank rows.
     No candidate within the target's frame budget -> a TargetError before any feature is extracted.
  3. per architecture: extract the features of a seeded subsample of the fit images and of the validation frames
     once, then fit every method x bank size on the shared features and score the validation frames with the
     fitted head (the module the artefact exports). Validation AUROC = image AUROC on synthetic defects.
  4. the best validation AUROC among the candidates predicted to fit the budget (ties: the faster) is built by
     the ordinary build (`toolkit.build.build`, all fit images, the usual sizing and precision gate); the table
     of candidates goes next to the artefact (ARTEFACT.candidates.md / .json) and into the manifest.

The candidate space is data (SEARCH_SPACE): architectures and method/bank settings that exist in adtk today.
Bank sizes are rows per training image, so a stride-4 stage set gets the same bank size as a stride-8 one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from adtk.runtime.errors import ConfigError, DataError, TargetError

DEFAULT_TARGET = "x86_cpu"  # costed against when no --target is given (reported, not enforced)


@dataclass(frozen=True)
class Architecture:
    """What the features depend on: shared by every candidate with the same backbone, stages and size."""

    backbone: str
    stages: tuple[str, ...] | None  # None = the backbone's default stages
    image_size_px: int

    def label(self) -> str:
        stages = ",".join(self.stages) if self.stages else "default"
        return f"{self.backbone}[{stages}]@{self.image_size_px}"


@dataclass(frozen=True)
class Recipe:
    method: str
    bank_rows_per_image: float  # coreset size as rows per training image (ratio = this / patches per image)
    params: tuple = ()  # other method parameters, as (key, value) pairs


@dataclass(frozen=True)
class SearchSpace:
    architectures: tuple[Architecture, ...]
    recipes: tuple[Recipe, ...]
    fit_images: int = 120  # seeded subsample the candidates are fitted on (the final build uses all)
    validation_images: int = 48  # held-out goods at most (each also with a synthetic defect)


SEARCH_SPACE = SearchSpace(
    architectures=(
        Architecture("tf_efficientnet_lite0", None, 256),  # the default build's
        Architecture("tf_efficientnet_lite0", None, 320),  # finer input
        Architecture("tf_efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"), 256),  # + a stride-4 stage
        Architecture("mobilenetv2_100", None, 256),  # the other backbone with real weights offline
    ),
    # LDKNN's fit grows faster with the bank than PatchCore's (densities over the bank's neighbours): its larger
    # bank is left out to keep the search near its 10-minute budget on 2 cores.
    recipes=(Recipe("patchcore", 10.0), Recipe("patchcore", 40.0), Recipe("ldknn", 10.0)),
)


@dataclass
class CandidateRow:
    architecture: Architecture
    recipe: Recipe
    coreset_ratio: float
    predicted_ms: float
    predicted_mb: float
    bank_rows: int  # predicted for the final build (all fit images)
    fits: bool
    validation_auroc: float | None = None
    fit_s: float | None = None
    extra: dict = field(default_factory=dict)  # other scored sets (benches), name -> image AUROC

    def as_dict(self) -> dict:
        return {"backbone": self.architecture.backbone, "stages": list(self.architecture.stages or ()) or "default",
                "image_size_px": self.architecture.image_size_px, "method": self.recipe.method,
                "params": dict(self.recipe.params), "coreset_ratio": round(self.coreset_ratio, 6),
                "bank_rows": self.bank_rows, "predicted_ms": round(self.predicted_ms, 2),
                "predicted_mb": round(self.predicted_mb, 1), "fits_budget": self.fits,
                "validation_auroc": None if self.validation_auroc is None else round(self.validation_auroc, 4),
                "fit_s": None if self.fit_s is None else round(self.fit_s, 1), **self.extra}


def required_training_images(calib_fraction: float, needed: int) -> int:
    """Smallest train/good count whose calibration split holds `needed` images (build.split_training_set)."""
    for count in range(needed, 100_000):
        if min(count - 1, max(1, int(round(calib_fraction * count)))) >= needed:
            return count
    raise ConfigError(f"--calib-fraction {calib_fraction} is too small to hold out {needed} validation images")


def _components(config, architecture: Architecture):
    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.preprocess import FramePreprocess

    backbone = create_backbone(architecture.backbone, stages=architecture.stages, weights=config.weights,
                               random_weights=config.random_weights, seed=config.seed)
    return backbone, FramePreprocess(architecture.image_size_px, backbone.mean, backbone.std)


def _method(recipe: Recipe, coreset_ratio: float, seed: int):
    from adtk.toolkit.methods.registry import create_method

    return create_method(recipe.method, coreset_ratio=coreset_ratio, seed=seed, **dict(recipe.params))


@torch.no_grad()
def cost_candidates(config, space: SearchSpace, target, precision: str, num_fit_images: int, log) -> list[CandidateRow]:
    """Every candidate's predicted latency/memory for the final build, from one probe export per architecture."""
    from adtk.export.cost_model import estimate_cost
    from adtk.toolkit.sizing import probe_model

    rows = []
    for architecture in space.architectures:
        tic = time.perf_counter()
        backbone, preprocess = _components(config, architecture)
        probe_recipe = space.recipes[0]
        probe_method = _method(probe_recipe, 0.1, config.seed)
        embedding = probe_method.embedding(tuple(backbone.channels)).eval()
        probe = probe_model(preprocess, backbone, embedding, probe_method, config.blur_sigma)
        estimate = estimate_cost(probe, target, precision)
        grid = embedding(backbone(preprocess(torch.zeros((1, *preprocess.image_size_px, 3), dtype=torch.uint8))))
        patches = int(grid.shape[-2] * grid.shape[-1])
        probe_rows = max(1, int(0.1 * 2 * patches))  # probe_model fits 2 frames at ratio 0.1
        rest_ms = estimate.latency_ms - estimate.head_latency_ms
        for recipe in space.recipes:
            ratio = min(1.0, recipe.bank_rows_per_image / patches)
            bank_rows = int(ratio * patches * num_fit_images)
            # The bank search (GEMM + min over rows) is linear in the rows: scale the probe's head time.
            predicted_ms = rest_ms + estimate.head_latency_ms * bank_rows / probe_rows
            bank_mb = bank_rows * grid.shape[1] * 4 / 2**20
            predicted_mb = estimate.memory_mb + bank_mb
            fits = predicted_ms <= estimate.budget_ms and predicted_mb <= estimate.memory_budget_mb
            rows.append(CandidateRow(architecture, recipe, ratio, predicted_ms, predicted_mb, bank_rows, fits))
        log(f"auto: costed {architecture.label()} on {target.name} ({precision}): {rest_ms:.1f} ms without the "
            f"head ({time.perf_counter() - tic:.0f} s)")
    return rows


def _subset(samples, limit: int, seed: int):
    samples = list(samples)
    if len(samples) <= limit:
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    return [samples[i] for i in keep]


@torch.no_grad()
def _image_scores(head, features: np.ndarray, batch: int = 16) -> np.ndarray:
    out = [head(torch.from_numpy(features[i:i + batch])).image_score.numpy() for i in range(0, len(features), batch)]
    return np.concatenate(out).astype(np.float64)


def validate_candidates(config, rows: list[CandidateRow], fit_samples, validation, log,
                        extra_sets: dict | None = None, space: SearchSpace = SEARCH_SPACE) -> None:
    """Fit every candidate in `rows` on a shared subsample's features and fill in its validation AUROC.
    extra_sets: name -> (frames, labels), scored with the same heads (benches compare rankings on them)."""
    from adtk.toolkit.build import FeatureExtractorPipeline
    from adtk.toolkit.methods.base import FitInputs
    from adtk.toolkit.evaluation.metrics import image_auroc

    subsample = _subset(fit_samples, space.fit_images, config.seed)
    by_architecture: dict[Architecture, list[CandidateRow]] = {}
    for row in rows:
        by_architecture.setdefault(row.architecture, []).append(row)
    for architecture, arch_rows in by_architecture.items():
        tic = time.perf_counter()
        backbone, preprocess = _components(config, architecture)
        # every recipe here uses the patch embedding (the same module for patchcore and ldknn): extract once
        embedding = _method(arch_rows[0].recipe, 0.1, config.seed).embedding(tuple(backbone.channels)).eval()
        pipeline = FeatureExtractorPipeline(preprocess, backbone, embedding, config.batch_size)
        fit_features, _ = pipeline.features(subsample, config.skip_bad)
        sets = {"validation": (validation.frames, validation.labels), **(extra_sets or {})}
        set_features = {name: _frame_features(pipeline, frames) for name, (frames, _) in sets.items()}
        log(f"auto: features of {architecture.label()}: {len(fit_features)} fit images, "
            f"{sum(len(f) for f in set_features.values())} scored frames ({time.perf_counter() - tic:.0f} s)")
        for row in arch_rows:
            tic = time.perf_counter()
            method = _method(row.recipe, row.coreset_ratio, config.seed)
            head = method.head(method.fit(FitInputs(fit_features, tuple(backbone.channels)))).eval()
            for name, (_, labels) in sets.items():
                value = image_auroc(_image_scores(head, set_features[name]), labels)
                if name == "validation":
                    row.validation_auroc = value
                else:
                    row.extra[f"{name}_auroc"] = round(value, 4)
            row.fit_s = time.perf_counter() - tic
            log(f"auto:   {row.recipe.method} bank {row.recipe.bank_rows_per_image:g} rows/image: validation AUROC "
                f"{row.validation_auroc:.4f}, predicted {row.predicted_ms:.1f} ms ({row.fit_s:.0f} s)")
        del fit_features, set_features


@torch.no_grad()
def _frame_features(pipeline, frames, batch: int = 4) -> np.ndarray:
    out = []
    for i in range(0, len(frames), batch):
        # frames differ in size: each is resized inside the preprocess, one at a time, then batched
        tensors = [pipeline.preprocess(torch.from_numpy(np.ascontiguousarray(f))[None]) for f in frames[i:i + batch]]
        out.append(pipeline.embedding(pipeline.backbone(torch.cat(tensors))).numpy())
    return np.concatenate(out)


def choose(rows: list[CandidateRow], enforce_budget: bool) -> CandidateRow:
    eligible = [r for r in rows if r.validation_auroc is not None and (r.fits or not enforce_budget)]
    if not eligible:
        raise TargetError("no candidate was validated within the budget")
    return max(eligible, key=lambda r: (round(r.validation_auroc, 3), -r.predicted_ms))


def format_table(rows: list[CandidateRow], chosen: CandidateRow | None, budget_ms: float, target_name: str) -> str:
    extra_keys = sorted({k for r in rows for k in r.extra})
    head = ("| | architecture | method | bank rows/img | coreset | validation AUROC | "
            + "".join(f"{k} | " for k in extra_keys)
            + f"predicted ms ({target_name}, budget {budget_ms:.1f}) | predicted MB | bank rows | fits |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: -(r.validation_auroc or -1)):
        mark = "**chosen**" if r is chosen else ""
        val = "-" if r.validation_auroc is None else f"{r.validation_auroc:.4f}"
        lines.append(f"| {mark} | {r.architecture.label()} | {r.recipe.method} | {r.recipe.bank_rows_per_image:g} | "
                     f"{r.coreset_ratio:.4f} | {val} | " + "".join(f"{r.extra.get(k, '-')} | " for k in extra_keys)
                     + f"{r.predicted_ms:.1f} | {r.predicted_mb:.0f} | {r.bank_rows} | {'yes' if r.fits else 'no'} |")
    return "\n".join(lines)


def prepare_search(config, log, index=None, space: SearchSpace = SEARCH_SPACE):
    """Steps 1-2: split, validation set, costs. -> (index, fit samples, validation, rows, target, enforce_budget)."""
    from adtk.export.targets import load_target
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.sizing import resolve_precision
    from adtk.toolkit.validation import MIN_VALIDATION_IMAGES, load_good_images, synthetic_validation

    index = index or index_dataset(config.data)
    fit_samples, calib_samples = split_training_set(index.train, config.calib_fraction, config.max_train_images,
                                                    config.seed)
    if len(calib_samples) < MIN_VALIDATION_IMAGES:
        needed = required_training_images(config.calib_fraction, MIN_VALIDATION_IMAGES)
        raise DataError(f"--method auto validates candidates on held-out good images: it needs at least {needed} "
                        f"good training images at --calib-fraction {config.calib_fraction} "
                        f"({MIN_VALIDATION_IMAGES} held out), found {len(index.train)}"
                        + (f" (--max-train-images {config.max_train_images})" if config.max_train_images else ""))
    enforce_budget = config.target is not None
    target = load_target(config.target or DEFAULT_TARGET)
    precision = resolve_precision(config.precision, target)
    rows = cost_candidates(config, space, target, precision, len(fit_samples), log)
    if enforce_budget and not any(r.fits for r in rows):
        fastest = min(rows, key=lambda r: r.predicted_ms)
        raise TargetError(f"{target.name}: no --method auto candidate fits the {target.frame_budget_ms:.1f} ms frame "
                          f"budget (the fastest, {fastest.architecture.label()} {fastest.recipe.method}, is predicted "
                          f"at {fastest.predicted_ms:.1f} ms, {fastest.predicted_mb:.0f} MB); nothing was extracted "
                          "or fitted. Use a faster target or build a method by hand")
    goods = load_good_images(_subset(calib_samples, space.validation_images, config.seed), config.skip_bad)
    validation = synthetic_validation(goods, seed=config.seed)
    return index, fit_samples, validation, rows, target, enforce_budget


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def search_and_build(config, log=print, progress_factory=None, index=None, space: SearchSpace = SEARCH_SPACE):
    """--method auto: search, then the ordinary build of the chosen candidate; writes the candidate table."""
    from adtk.toolkit.build import build

    started = time.perf_counter()
    if config.method_params:
        raise ConfigError("--method auto chooses the method's parameters itself; drop --param/--coreset-ratio")
    index, fit_samples, validation, rows, target, enforce_budget = prepare_search(config, log, index, space)
    log(f"auto: validating {len(rows)} candidates on {validation.description}")
    validate_candidates(config, [r for r in rows if r.fits or not enforce_budget], fit_samples, validation, log,
                        space=space)
    chosen = choose(rows, enforce_budget)
    table = format_table(rows, chosen, target.frame_budget_ms, target.name)
    log(table)
    search_s = time.perf_counter() - started
    record = {"chosen": chosen.as_dict(), "validation": validation.description,
              "candidates": [r.as_dict() for r in rows], "costed_on": target.name,
              "budget_enforced": enforce_budget, "search_s": round(search_s, 1),
              "fit_images_per_candidate": min(space.fit_images, len(fit_samples))}
    final = replace(config, method=chosen.recipe.method,
                    method_params={"coreset_ratio": chosen.coreset_ratio, **dict(chosen.recipe.params)},
                    backbone=chosen.architecture.backbone, stages=chosen.architecture.stages,
                    image_size_px=chosen.architecture.image_size_px,
                    records={**config.records, "recipe_search": record})
    log(f"auto: building {chosen.architecture.label()} {chosen.recipe.method} coreset_ratio {chosen.coreset_ratio:.4f} "
        f"(search took {search_s:.0f} s)")
    result = build(final, log=log, progress_factory=progress_factory, index=index)
    out = Path(result.artefact)
    write_text_atomically(out.with_name(out.name + ".candidates.md"),
                          f"# adtk build --method auto: candidates\n\n{validation.description}\n\n{table}\n")
    write_text_atomically(out.with_name(out.name + ".candidates.json"), json.dumps(record, indent=1) + "\n")
    return result
