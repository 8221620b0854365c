"""`adtk build --method auto`: choose the recipe (method, backbone(s), stages, input geometry, tiling, bank size)
from good images.

    result = search_and_build(config)        # config.method == "auto"; the rest of BuildConfig as for any build

  1. split train/good exactly as the build will (same seed): the held-out calibration goods, and fit images
     outside the candidates' seeded subsample, become the validation set, each also shown with synthetic
     defects of several kinds (toolkit/validation.py). The test split is never
     read. Too few goods for a validation split -> a DataError saying how many are needed, before anything else.
  2. resolve every architecture's input geometry from the training images' headers (toolkit/geometry.py: square,
     plain `auto` as the default build resolves it, `auto` at a pixel budget, tiles) and cost it with the
     compiler's cost model on an export with an almost empty head (toolkit/sizing.py probe_model, one per
     backbone member and geometry); the head's cost is scaled to each candidate's bank rows. Candidates over
     the target's frame budget are never fitted; none within it -> a TargetError before any feature is
     extracted. Tiled architectures are only tried on large or elongated frames (LARGE_FRAME_*): on near-square
     frames a tile grid is the whole frame again.
  3. plan within the time budget (SearchSpace.time_budget_s, the whole build's): a candidate is tried only when
     its predicted validation time plus its predicted final build (all fit images) still fit in what is left;
     the rest are listed as skipped, with the reason. Stage A validates every architecture with the first recipe
     (or, where that is over the frame budget, the largest of SearchSpace.smaller_banks that fits); stage B gives
     the other recipes (bank sizes, methods) to the best `refine_top` architectures that have one within budget.
  4. features are extracted once per (backbone, stages, geometry) for a seeded subsample of the fit images and for
     the validation frames, and kept on disk (memory-mapped) while the search runs: single-backbone candidates
     and the ensembles they belong to share them. An ensemble's validation score is the mean of its members'
     scores, each standardised on the validation's good frames (what toolkit/ensemble.py does with held-out goods).
  5. the best validation AUROC among the candidates tried (ties: the faster) is built by the ordinary build
     (`toolkit.build.build`, all fit images, the usual sizing and precision gate); the table of candidates goes
     next to the artefact (ARTEFACT.candidates.md / .json) and into the manifest (`adtk inspect` shows it).

The candidate space is data (SEARCH_SPACE). Bank sizes are rows per training image (per tile row set: rows per
image count all its tiles), so a stride-4 stage set gets the same bank size as a stride-8 one.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from adtk.runtime.errors import ConfigError, DataError, TargetError

DEFAULT_TARGET = "x86_cpu"  # costed against when no --target is given (reported, not enforced)
# Tiling is tried only when the training frames are elongated (long / short side >= this) or large (median pixels
# >= this many times a tile's): a near-square frame of about the model's size is one tile, the untiled candidate.
LARGE_FRAME_ASPECT = 1.5
LARGE_FRAME_PIXELS_PER_TILE = 4.0
# Time planning: extraction costs more than the costing pass's forward (decoding, resizing, python); the final
# build adds calibration, export and the compiler's checks on top of its features and fit.
EXTRACTION_OVERHEAD = 1.5
FINAL_BUILD_FIXED_S = 60.0
# s per (fit rows x bank rows) before any fit was timed: the highest rate the samplers now measure here (120
# magnetic-tile images, quiet: patchcore 7e-9, ldknn 1.4e-8, a stride-4 patchcore 1.7e-8). The former 2.5e-7 was
# the exact greedy's at load ~20: it predicted the first candidate's final build at ~1,300 s in a 190-s search
INITIAL_FIT_RATE = 2e-8


@dataclass(frozen=True)
class Architecture:
    """What the features depend on (backbone members, stages, input geometry): shared by every recipe."""

    backbone: str
    stages: tuple[str, ...] | None  # None = the backbone's default stages
    image_size_px: int | str  # as BuildConfig.image_size_px: 256 (square), "auto:PIXELS" (aspect kept) or "auto"
    tile: str | None = None  # as BuildConfig.tile ("SIZE[:OVERLAP]"); tried on large or elongated frames only
    ensemble: tuple[str, ...] = ()  # further members "NAME[:STAGES]" (BuildConfig.ensemble)

    def members(self):
        from adtk.toolkit.ensemble import backbone_choices

        return backbone_choices(self.backbone, self.stages, self.ensemble)

    def label(self) -> str:
        stages = ",".join(self.stages) if self.stages else "default"
        names = "+".join([f"{self.backbone}[{stages}]", *self.ensemble])
        return f"{names}@{self.image_size_px}" + (f" tile {self.tile}" if self.tile else "")


@dataclass(frozen=True)
class Recipe:
    method: str
    bank_rows_per_image: float  # coreset size as rows per training image (ratio = this / patches per image)
    params: tuple = ()  # other method parameters, as (key, value) pairs

    def label(self) -> str:
        return f"{self.method} {self.bank_rows_per_image:g} rows/img"


@dataclass(frozen=True)
class SearchSpace:
    architectures: tuple[Architecture, ...]  # in priority order: when time runs short, the later ones are skipped
    recipes: tuple[Recipe, ...]  # the first is stage A's (every architecture); the rest go to the best ones
    # Stage A's fallbacks, largest bank first: an architecture whose first recipe is over the frame budget is
    # validated with the first of these that fits (the head's cost is linear in the bank rows), so a finer stage,
    # a larger input or an ensemble is compared at the bank the target can afford instead of never being fitted.
    smaller_banks: tuple[Recipe, ...] = ()
    fit_images: int = 120  # seeded subsample the candidates are fitted on (the final build uses all)
    # At most this many good images no candidate is fitted on (validation_goods), each also with this many
    # synthetic defects. The candidates' AUROCs differ by a point or two: on magnetic-tile, 48 goods with one
    # defect each ranked 11 candidates against the real test at Spearman 0.21 (paired bootstrap SE of a difference
    # ~2.3 points), all 76 held-out goods with three defects each at 0.66 (SE ~1.3), for 4x the validation frames
    # (bench/results/validation_width.md).
    validation_images: int = 96
    defects_per_validation_image: int = 3
    time_budget_s: float = 600.0  # the whole `--method auto` build, search and final build
    refine_top: int = 2  # architectures that get stage B's recipes

    @property
    def all_recipes(self) -> tuple[Recipe, ...]:
        return self.recipes + tuple(r for r in self.smaller_banks if r not in self.recipes)


FINE = ("blocks.1", "blocks.2", "blocks.4")  # + the stride-4 stage: thin and small defects
# Priority order = what a short time budget drops last. The stride-4 stage set (FINE) goes last: on every set
# measured (magnetic-tile and two tall self-made sets, bench/results/validation_width.md) its candidates were
# 5-10 test points below the best, while the 384^2-pixel aspect-kept input was the best or near it on the tall
# sets, and a larger validation set now costs each architecture more of the 10-minute budget.
SEARCH_SPACE = SearchSpace(
    architectures=(
        # the default build's input, first: elongated frames at their own resolution without --target (1248 x 496
        # for 500 x 1250 frames), at a 256-px short side with one (geometry.plain_auto_short_side); near-square
        # frames squashed into the 256-px square
        Architecture("tf_efficientnet_lite0", None, "auto"),
        Architecture("tf_efficientnet_lite0", None, 256),  # the square: the same as the first on near-square frames
        Architecture("tf_efficientnet_lite0", None, "auto:65536"),  # the frames' aspect kept, same pixels
        Architecture("tf_efficientnet_lite0", None, "auto:102400"),  # finer input (320^2 pixels)
        Architecture("tf_efficientnet_lite0", None, "auto:147456"),  # 384^2 pixels
        Architecture("tf_efficientnet_lite0", None, "auto", tile="256"),  # one row/column of tiles, short side 256
        Architecture("tf_efficientnet_lite0", None, 256, ensemble=("mobilenetv2_100",)),
        Architecture("mobilenetv2_100", None, 256),  # the other backbone with real weights offline
        Architecture("tf_efficientnet_lite0", FINE, 256),
        Architecture("tf_efficientnet_lite0", FINE, "auto:65536"),
        Architecture("tf_efficientnet_lite0", FINE, "auto", tile="256"),
    ),
    # LDKNN's fit grows faster with the bank than PatchCore's (densities over the bank's neighbours): its larger
    # bank is left out to keep the search near its 10-minute budget on 2 cores.
    recipes=(Recipe("patchcore", 10.0), Recipe("patchcore", 40.0), Recipe("ldknn", 10.0)),
    # On ~700 training images the stride-4 stage, 320^2 / 384^2 input and the ensemble are over x86_cpu's 33 ms at
    # 10 rows/img (the bank GEMM over 2-4x the query patches). bench/results/quality_levers.md: the ensemble at 5
    # rows/img is level with the default at 10 on magnetic-tile and above it on a tall set, and validation ranks
    # the smaller banks as the test does; the banks the search may fall back to are these.
    smaller_banks=(Recipe("patchcore", 5.0), Recipe("patchcore", 2.0)),
)


@dataclass
class CandidateRow:
    architecture: Architecture
    recipe: Recipe
    coreset_ratio: float
    predicted_ms: float
    predicted_mb: float
    bank_rows: int  # predicted for the final build (all fit images), per member
    fits: bool
    geometry: object = None  # toolkit.geometry.Geometry
    status: str = "not tried"  # validated | over the frame budget | skipped: ... | not tried
    validation_auroc: float | None = None
    fit_s: float | None = None
    extra: dict = field(default_factory=dict)  # other scored sets (benches), name -> image AUROC

    def as_dict(self) -> dict:
        geometry = self.geometry.as_dict() if self.geometry is not None else {}
        return {"backbone": self.architecture.backbone, "stages": list(self.architecture.stages or ()) or "default",
                "ensemble": list(self.architecture.ensemble), "image_size_px": self.architecture.image_size_px,
                "tile": self.architecture.tile, "model_size_px": geometry.get("model_size_px"),
                "tiles": (geometry["tiling"] or {}).get("grid") if geometry else None,
                "method": self.recipe.method, "bank_rows_per_image": self.recipe.bank_rows_per_image,
                "params": dict(self.recipe.params), "coreset_ratio": round(self.coreset_ratio, 6),
                "bank_rows": self.bank_rows, "predicted_ms": round(self.predicted_ms, 2),
                "predicted_mb": round(self.predicted_mb, 1), "fits_budget": self.fits, "status": self.status,
                "validation_auroc": None if self.validation_auroc is None else round(self.validation_auroc, 4),
                "fit_s": None if self.fit_s is None else round(self.fit_s, 1), **self.extra}


@dataclass(frozen=True)
class FeatureKey:
    """One backbone member at one geometry: what a set of extracted features depends on."""

    member: object  # ensemble.BackboneChoice
    geometry: object  # geometry.Geometry


@dataclass
class KeyCost:
    rest_ms: float  # everything but the head
    head_ms: float  # the probe head's
    probe_rows: int
    memory_mb: float
    patches_per_image: int  # grid cells x tiles
    dim: int
    seconds_per_frame: float  # one frame through preprocess, tiling, backbone and embedding here, now
    budget_ms: float
    memory_budget_mb: float


def required_training_images(calib_fraction: float, needed: int) -> int:
    """Smallest train/good count whose calibration split holds `needed` images (build.split_training_set)."""
    for count in range(needed, 100_000):
        if min(count - 1, max(1, int(round(calib_fraction * count)))) >= needed:
            return count
    raise ConfigError(f"--calib-fraction {calib_fraction} is too small to hold out {needed} validation images")


def _method(recipe: Recipe, coreset_ratio: float, seed: int):
    from adtk.toolkit.methods.registry import create_method

    return create_method(recipe.method, coreset_ratio=coreset_ratio, seed=seed, **dict(recipe.params))


class _Components:
    """Backbones loaded once per member, preprocess and tiling per geometry."""

    def __init__(self, config):
        self.config = config
        self.backbones = {}

    def backbone(self, member):
        from adtk.toolkit.backbones import create_backbone

        if member not in self.backbones:
            self.backbones[member] = create_backbone(member.name, stages=member.stages, weights=self.config.weights,
                                                     random_weights=self.config.random_weights, seed=self.config.seed)
        return self.backbones[member]

    def pipeline(self, key: FeatureKey, recipe: Recipe):
        from adtk.toolkit.build import FeatureExtractorPipeline
        from adtk.toolkit.geometry import make_tiling
        from adtk.toolkit.preprocess import FramePreprocess

        backbone = self.backbone(key.member)
        preprocess = FramePreprocess(key.geometry.model_hw, backbone.mean, backbone.std)
        # every recipe here uses the patch embedding (the same module for patchcore and ldknn): extract once
        embedding = _method(recipe, 0.1, self.config.seed).embedding(tuple(backbone.channels)).eval()
        return FeatureExtractorPipeline(preprocess, backbone, embedding, self.config.batch_size,
                                        make_tiling(key.geometry))


def resolve_architectures(space: SearchSpace, training_samples, log, frame_budget_binds: bool = False
                          ) -> list[tuple[Architecture, object, str]]:
    """-> [(architecture, geometry or None, note)]: each architecture's geometry from the images' headers, as the
    final build will resolve it (plain `auto` at the frames' own resolution unless a frame budget binds); an
    architecture that does not apply to these frames (a tile grid of one tile, a geometry equal to an earlier
    one's) gets None and says why."""
    from adtk.toolkit.ensemble import geometry_stride
    from adtk.toolkit.geometry import median_image_shape, parse_tile, plain_auto_short_side, resolve_geometry

    shape = median_image_shape(training_samples)
    aspect, pixels = shape.aspect_hw, shape.pixels
    native_short_side = plain_auto_short_side(shape, frame_budget_binds)
    elongation = max(aspect, 1.0 / aspect)
    out, seen = [], {}
    for architecture in space.architectures:
        members = architecture.members()
        try:
            geometry = resolve_geometry(architecture.image_size_px, architecture.tile, geometry_stride(members),
                                        aspect, native_short_side)
        except ConfigError as error:
            out.append((architecture, None, f"not applicable: {error}"))
            continue
        if architecture.tile is not None:
            tile_px = parse_tile(architecture.tile).size_px
            large = elongation >= LARGE_FRAME_ASPECT or pixels >= LARGE_FRAME_PIXELS_PER_TILE * tile_px ** 2
            if not large or geometry.tiles.num_tiles < 2:
                out.append((architecture, None, f"not tried: frames are neither elongated (height/width {aspect:.2f})"
                                                f" nor large (median {pixels / 1e3:.0f} kpx) for tiles of {tile_px} px"))
                continue
        identity = (tuple(members), geometry)
        if identity in seen:
            out.append((architecture, None, f"same as {seen[identity].label()} on these frames"))
            continue
        seen[identity] = architecture
        out.append((architecture, geometry, ""))
    log(f"auto: training frames' median height/width {aspect:.3f}, median {pixels / 1e3:.0f} kpx; "
        f"{sum(g is not None for _, g, _ in out)} of {len(out)} architectures apply")
    return out


@torch.no_grad()
def cost_key(components: _Components, key: FeatureKey, recipe: Recipe, target, precision: str) -> KeyCost:
    from adtk.export.cost_model import estimate_cost
    from adtk.toolkit.scoring import backbone_inputs
    from adtk.toolkit.sizing import probe_model

    pipeline = components.pipeline(key, recipe)
    probe_method = _method(recipe, 0.1, components.config.seed)
    probe = probe_model(pipeline.preprocess, pipeline.backbone, pipeline.embedding, probe_method,
                        components.config.blur_sigma, geometry=key.geometry, tiling=pipeline.tiling,
                        image_score_from=components.config.image_score_from)
    estimate = estimate_cost(probe, target, precision)
    frames = torch.zeros((2, *pipeline.preprocess.image_size_px, 3), dtype=torch.uint8)
    tic = time.perf_counter()
    grid = pipeline.embedding(pipeline.backbone(backbone_inputs(pipeline.preprocess, pipeline.tiling, frames)))
    seconds_per_frame = (time.perf_counter() - tic) / 2
    tiles = key.geometry.tiles.num_tiles if key.geometry.tiles else 1
    patches = int(grid.shape[-2] * grid.shape[-1]) * tiles
    return KeyCost(estimate.latency_ms - estimate.head_latency_ms, estimate.head_latency_ms,
                   max(1, int(0.1 * 2 * patches)),  # probe_model fits 2 frames at ratio 0.1
                   estimate.memory_mb, patches, int(grid.shape[1]), seconds_per_frame, estimate.budget_ms,
                   estimate.memory_budget_mb)


def cost_candidates(config, space: SearchSpace, target, precision: str, num_fit_images: int, log,
                    resolved, components: _Components):
    """Every candidate's predicted latency/memory for the final build -> (rows, {FeatureKey: KeyCost})."""
    rows, costs = [], {}
    for architecture, geometry, note in resolved:
        if geometry is None:
            for recipe in space.all_recipes:
                rows.append(CandidateRow(architecture, recipe, 0.0, float("nan"), float("nan"), 0, False,
                                         status=note))
            continue
        tic = time.perf_counter()
        keys = [FeatureKey(member, geometry) for member in architecture.members()]
        for key in keys:
            if key not in costs:
                costs[key] = cost_key(components, key, space.recipes[0], target, precision)
        first = costs[keys[0]]
        for recipe in space.all_recipes:
            ratio = min(1.0, recipe.bank_rows_per_image / first.patches_per_image)
            predicted_ms, predicted_mb, bank_rows = 0.0, 0.0, 0
            for key in keys:
                cost = costs[key]
                bank_rows = int(ratio * cost.patches_per_image * num_fit_images)
                # The bank search (GEMM + min over rows) is linear in the rows: scale the probe's head time.
                predicted_ms += cost.rest_ms + cost.head_ms * bank_rows / cost.probe_rows
                predicted_mb += cost.memory_mb + bank_rows * cost.dim * 4 / 2**20
            fits = predicted_ms <= first.budget_ms and predicted_mb <= first.memory_budget_mb
            rows.append(CandidateRow(architecture, recipe, ratio, predicted_ms, predicted_mb, bank_rows, fits,
                                     geometry, status="not tried" if fits else "over the frame budget"))
        log(f"auto: costed {architecture.label()} -> {geometry.model_hw[0]}x{geometry.model_hw[1]} px"
            + (f", {geometry.tiles.num_tiles} tiles" if geometry.tiles else "")
            + f" on {target.name} ({precision}): {sum(costs[k].rest_ms for k in keys):.1f} ms without the head "
            f"({time.perf_counter() - tic:.0f} s)")
    return rows, costs


def _subset(samples, limit: int, seed: int):
    samples = list(samples)
    if len(samples) <= limit:
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    return [samples[i] for i in keep]


@torch.no_grad()
def _image_scores(head, features: np.ndarray, tiles: int = 1, batch: int = 16) -> np.ndarray:
    """Image scores of frames whose features are `tiles` consecutive rows each: the maximum over a frame's tiles,
    as the artefact's geometry.Tiling.frame_scores."""
    out = [head(torch.from_numpy(np.array(features[i:i + batch]))).image_score.numpy()  # a copy: maps are read-only
           for i in range(0, len(features), batch)]
    return np.concatenate(out).astype(np.float64).reshape(-1, tiles).max(axis=1)


@torch.no_grad()
def _map_max_scores(graph, features: np.ndarray, tiles: int = 1, batch: int = 16) -> np.ndarray:
    """Image scores as an artefact with image_score_from="map_max" computes them (ScoringGraph's head, smoother,
    stitching and maximum) from frames' features, `tiles` consecutive rows per frame."""
    rows = batch * tiles
    out = [graph.raw_scores_from_features(torch.from_numpy(np.array(features[i:i + rows])))[0].numpy()
           for i in range(0, len(features), rows)]
    return np.concatenate(out).astype(np.float64)


@torch.no_grad()
def _frame_feature_batches(pipeline, frames, batch: int = 4):
    for i in range(0, len(frames), batch):
        # frames differ in size: each is resized (and tiled) inside the pipeline, one at a time, then batched
        tensors = [pipeline.inputs(torch.from_numpy(np.ascontiguousarray(f))[None]) for f in frames[i:i + batch]]
        yield pipeline.embedding(pipeline.backbone(torch.cat(tensors))).numpy()


def _frame_features(pipeline, frames, batch: int = 4) -> np.ndarray:
    return np.concatenate(list(_frame_feature_batches(pipeline, frames, batch)))


@dataclass(frozen=True)
class FeatureFile:
    """Features kept on disk between uses: mapped only while a candidate reads them. Maps held open for the whole
    search keep every page they have read in the process's resident set: `--method auto` on magnetic-tile peaked
    at 6.5 GB RSS so, 3.0 GB with maps per use (bench/results/quality_table.md)."""

    path: Path
    shape: tuple[int, ...]

    def map(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=self.shape)


def _write_batches(path: Path, batches) -> FeatureFile:
    """Concatenate float32 feature batches into a raw file without holding them all."""
    shape, rows = None, 0
    with open(path, "wb") as handle:
        for chunk in batches:
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            handle.write(chunk.tobytes())
            rows, shape = rows + len(chunk), chunk.shape[1:]
    if shape is None:
        raise DataError("no image could be read for the recipe search")
    return FeatureFile(path, (rows, *shape))


def standardised_mean(member_scores: list[np.ndarray], good: np.ndarray, reference: list[np.ndarray]) -> np.ndarray:
    """An ensemble's scores: the mean over members of (score - mean) / std, the constants from each member's
    `reference` scores on good frames (`good` selects them), as the artefact standardises on held-out goods."""
    out = []
    for scores, ref in zip(member_scores, reference):
        goods = ref[good]
        out.append((scores - goods.mean()) / max(float(goods.std()), 1e-12))
    return np.mean(out, axis=0)


class Validator:
    """Features per FeatureKey (extracted once, kept memory-mapped on disk), heads per (key, recipe), their scores
    on the validation frames (and benches' extra sets); the time model the planner asks."""

    def __init__(self, config, components: _Components, fit_subsample, sets: dict, costs: dict, workdir: Path,
                 log):
        self.config, self.components, self.subsample, self.sets = config, components, fit_subsample, sets
        self.costs, self.workdir, self.log = costs, workdir, log
        self.features: dict[FeatureKey, dict] = {}
        self.scores: dict[tuple, dict] = {}  # (key, recipe) -> {set name: image scores}
        self.fit_seconds: dict[tuple, float] = {}
        self.fit_rate: dict[str, float] = {}  # method -> s per (fit rows x bank rows), measured

    def frames(self) -> int:
        return len(self.subsample) + sum(len(frames) for frames, _ in self.sets.values())

    def predicted_fit_s(self, key: FeatureKey, recipe: Recipe, num_images: int) -> float:
        cost = self.costs[key]
        rows = cost.patches_per_image * num_images
        bank = min(1.0, recipe.bank_rows_per_image / cost.patches_per_image) * rows
        return self.fit_rate.get(recipe.method, max(self.fit_rate.values(), default=INITIAL_FIT_RATE)) * rows * bank

    def predicted_s(self, keys, recipe: Recipe) -> float:
        """Seconds still needed to validate a candidate of these member keys with `recipe`."""
        total = 0.0
        for key in keys:
            if key not in self.features:
                total += self.costs[key].seconds_per_frame * self.frames() * EXTRACTION_OVERHEAD
            if (key, recipe) not in self.scores:
                total += self.predicted_fit_s(key, recipe, len(self.subsample))
        return total

    def predicted_final_build_s(self, keys, recipe: Recipe, num_fit: int, num_calibration: int) -> float:
        total = FINAL_BUILD_FIXED_S
        for key in keys:
            total += self.costs[key].seconds_per_frame * (num_fit + num_calibration) * EXTRACTION_OVERHEAD
            total += self.predicted_fit_s(key, recipe, num_fit)
        return total

    def _extract(self, key: FeatureKey, recipe: Recipe) -> None:
        tic = time.perf_counter()
        pipeline = self.components.pipeline(key, recipe)
        folder = self.workdir / f"key{len(self.features)}"
        folder.mkdir()
        # on disk, not in memory: every key's features are kept for stage B, and a test set's (benches) at a fine
        # stage is gigabytes
        batches = {"fit": (b for b, _ in pipeline.feature_batches(self.subsample, self.config.skip_bad))}
        batches.update({name: _frame_feature_batches(pipeline, frames) for name, (frames, _) in self.sets.items()})
        self.features[key] = {name: _write_batches(folder / f"{name}.f32", chunks) for name, chunks in batches.items()}
        tiles = key.geometry.tiles.num_tiles if key.geometry.tiles else 1
        self.log(f"auto: features of {key.member} at {key.geometry.model_hw[0]}x{key.geometry.model_hw[1]}"
                 + (f" ({tiles} tiles)" if tiles > 1 else "") + f": {len(self.subsample)} fit images, "
                 f"{sum(len(f) for f, _ in self.sets.values())} scored frames ({time.perf_counter() - tic:.0f} s)")

    def member_scores(self, key: FeatureKey, recipe: Recipe) -> dict:
        from adtk.toolkit.methods.base import FitInputs

        if (key, recipe) in self.scores:
            return self.scores[(key, recipe)]
        if key not in self.features:
            self._extract(key, recipe)
        features = {name: file.map() for name, file in self.features[key].items()}  # unmapped on return
        cost = self.costs[key]
        ratio = min(1.0, recipe.bank_rows_per_image / cost.patches_per_image)
        tic = time.perf_counter()
        backbone = self.components.backbone(key.member)
        method = _method(recipe, ratio, self.config.seed)
        head = method.head(method.fit(FitInputs(np.array(features["fit"]), tuple(backbone.channels)))).eval()
        fit_s = time.perf_counter() - tic
        rows = len(features["fit"]) * (cost.patches_per_image // (key.geometry.tiles.num_tiles
                                                                  if key.geometry.tiles else 1))
        self.fit_rate[recipe.method] = fit_s / max(1.0, rows * ratio * rows)
        tiles = key.geometry.tiles.num_tiles if key.geometry.tiles else 1
        from adtk.toolkit.build import image_score_source

        if image_score_source(self.config, method) == "map_max":
            # validate the score the artefact will output: the smoothed (stitched) map's maximum, not the head's
            from adtk.toolkit.scoring import scoring_graph

            pipeline = self.components.pipeline(key, recipe)
            graph = scoring_graph(pipeline.preprocess, pipeline.backbone, pipeline.embedding, head, key.geometry,
                                  self.config.blur_sigma, pipeline.tiling, "map_max")
            self.scores[(key, recipe)] = {name: _map_max_scores(graph, features[name], tiles) for name in self.sets}
        else:
            self.scores[(key, recipe)] = {name: _image_scores(head, features[name], tiles) for name in self.sets}
        self.fit_seconds[(key, recipe)] = fit_s
        return self.scores[(key, recipe)]

    def candidate_scores(self, row: CandidateRow) -> dict:
        """-> {set name: the candidate's image scores}: its one member's, or an ensemble's members' standardised
        on the validation's good frames, whichever set is scored (member heads are fitted once, then cached)."""
        members = [self.member_scores(FeatureKey(member, row.geometry), row.recipe)
                   for member in row.architecture.members()]
        if len(members) == 1:
            return dict(members[0])
        good = self.sets["validation"][1] == 0
        return {name: standardised_mean([m[name] for m in members], good, [m["validation"] for m in members])
                for name in self.sets}

    def validate(self, row: CandidateRow) -> None:
        from adtk.toolkit.evaluation.metrics import image_auroc

        keys = [FeatureKey(member, row.geometry) for member in row.architecture.members()]
        tic = time.perf_counter()
        scored = self.candidate_scores(row)
        for name, (_, labels) in self.sets.items():
            value = image_auroc(scored[name], labels)
            if name == "validation":
                row.validation_auroc = value
            else:
                row.extra[f"{name}_auroc"] = round(value, 4)
        row.fit_s = sum(self.fit_seconds[(key, row.recipe)] for key in keys)
        row.status = "validated"
        self.log(f"auto:   {row.architecture.label()} {row.recipe.label()}: validation AUROC "
                 f"{row.validation_auroc:.4f}" + "".join(f", {k} {v}" for k, v in row.extra.items())
                 + f", predicted {row.predicted_ms:.1f} ms ({time.perf_counter() - tic:.0f} s)")


def plan_and_validate(config, rows: list[CandidateRow], validator: Validator, space: SearchSpace,
                      num_fit: int, num_calibration: int, started: float, enforce_budget: bool, log,
                      time_budget_s: float | None) -> list[str]:
    """Stage A (first recipe, every architecture in priority order), then stage B (the other recipes for the best
    `refine_top` architectures), each candidate only when its validation and its final build still fit in the
    time budget (None: no budget, a bench). -> notes on what was skipped."""
    eligible = [r for r in rows if r.geometry is not None and (r.fits or not enforce_budget)]
    notes = []

    def attempt(row: CandidateRow, always: bool = False) -> None:
        keys = [FeatureKey(member, row.geometry) for member in row.architecture.members()]
        need = validator.predicted_s(keys, row.recipe)
        final = validator.predicted_final_build_s(keys, row.recipe, num_fit, num_calibration)
        left = None if time_budget_s is None else time_budget_s - (time.perf_counter() - started)
        if left is not None and need + final > left and not always:
            row.status = f"skipped: time budget (needs ~{need:.0f} s + ~{final:.0f} s final build, {max(left, 0):.0f} s left)"
            notes.append(f"{row.architecture.label()} {row.recipe.label()}")
            return
        if left is not None and need + final > left:
            log(f"auto: WARNING even the first candidate is predicted over the time budget (~{need + final:.0f} s, "
                f"{max(left, 0):.0f} s left): validating it anyway, the search must build something")
        validator.validate(row)

    stage_a = stage_a_rows(eligible, space)
    for number, row in enumerate(stage_a):
        attempt(row, always=number == 0)
    # Stage B goes to the best architectures that have a stage-B recipe left to try: one whose other recipes are all
    # over the frame budget (a larger input at its smallest bank) would otherwise take a slot and try nothing.
    refinable = {r.architecture for r in eligible if r not in stage_a and r.recipe in space.recipes[1:]}
    ranked = sorted((r for r in stage_a if r.validation_auroc is not None and r.architecture in refinable),
                    key=lambda r: -r.validation_auroc)
    best_architectures = [r.architecture for r in ranked[:space.refine_top]]
    for row in eligible:
        if row in stage_a:
            continue
        if row.recipe not in space.recipes[1:]:  # a smaller bank of an architecture whose first recipe fits
            row.status = "not tried: a larger bank of this architecture fits the frame budget"
        elif row.architecture in best_architectures:
            attempt(row)
        else:
            row.status = "not tried: stage B is for the best architectures of stage A"
    if notes:
        log(f"auto: skipped {len(notes)} candidates to stay within the {time_budget_s:.0f} s time budget: "
            + "; ".join(notes))
    return notes


def stage_a_rows(eligible: list[CandidateRow], space: SearchSpace) -> list[CandidateRow]:
    """Each architecture once, in priority order: with the first recipe, or else the largest of the smaller banks
    that is eligible (within the frame budget)."""
    out = []
    for architecture in dict.fromkeys(r.architecture for r in eligible):
        by_recipe = {r.recipe: r for r in eligible if r.architecture == architecture}
        for recipe in (space.recipes[0], *space.smaller_banks):
            if recipe in by_recipe:
                out.append(by_recipe[recipe])
                break
    return out


def choose(rows: list[CandidateRow], enforce_budget: bool) -> CandidateRow:
    eligible = [r for r in rows if r.validation_auroc is not None and (r.fits or not enforce_budget)]
    if not eligible:
        raise TargetError("no candidate was validated within the budget")
    return max(eligible, key=lambda r: (round(r.validation_auroc, 3), -r.predicted_ms))


def format_table(rows: list[CandidateRow], chosen: CandidateRow | None, budget_ms: float, target_name: str) -> str:
    extra_keys = sorted({k for r in rows for k in r.extra})
    head = ("| | architecture | model size | method | bank rows/img | coreset | validation AUROC | "
            + "".join(f"{k} | " for k in extra_keys)
            + f"predicted ms ({target_name}, budget {budget_ms:.1f}) | predicted MB | bank rows | fit s | status |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: (r.validation_auroc is None, -(r.validation_auroc or 0))):
        mark = "**chosen**" if r is chosen else ""
        val = "-" if r.validation_auroc is None else f"{r.validation_auroc:.4f}"
        size = "-"
        if r.geometry is not None:
            size = f"{r.geometry.model_hw[0]}x{r.geometry.model_hw[1]}"
            if r.geometry.tiles:
                size += f" ({r.geometry.tiles.num_tiles} tiles)"
        ms = "-" if r.geometry is None else f"{r.predicted_ms:.1f}"
        mb = "-" if r.geometry is None else f"{r.predicted_mb:.0f}"
        fit_s = "-" if r.fit_s is None else f"{r.fit_s:.0f}"
        lines.append(f"| {mark} | {r.architecture.label()} | {size} | {r.recipe.method} | "
                     f"{r.recipe.bank_rows_per_image:g} | {r.coreset_ratio:.4f} | {val} | "
                     + "".join(f"{r.extra.get(k, '-')} | " for k in extra_keys)
                     + f"{ms} | {mb} | {r.bank_rows} | {fit_s} | {r.status} |")
    return "\n".join(lines)


def prepare_search(config, log, index=None, space: SearchSpace = SEARCH_SPACE):
    """Steps 1-2: split, geometry, costs, validation set (no feature extracted yet).
    -> (index, fit samples, calibration samples, the candidates' fit subsample, validation, rows, costs, target,
        precision, enforce_budget, components)"""
    from adtk.export.targets import load_target
    from adtk.toolkit.build import split_training_set
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.sizing import resolve_precision
    from adtk.toolkit.validation import MIN_VALIDATION_IMAGES, load_good_images, synthetic_validation

    index = index or index_dataset(config.data, **config.data_layout)
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
    components = _Components(config)
    resolved = resolve_architectures(space, index.train, log, frame_budget_binds=enforce_budget)
    rows, costs = cost_candidates(config, space, target, precision, len(fit_samples), log, resolved, components)
    if precision != "fp32":  # toolkit/build.py builds an ensemble in fp32 without --target (its sizing is single-graph)
        for row in rows:
            if row.architecture.ensemble and row.fits:
                row.fits, row.status = False, f"not buildable: an ensemble is built in fp32 only, {target.name} uses {precision}"
    if enforce_budget and not any(r.fits for r in rows):
        costed = [r for r in rows if r.geometry is not None] or rows
        fastest = min(costed, key=lambda r: r.predicted_ms)
        raise TargetError(f"{target.name}: no --method auto candidate fits the {target.frame_budget_ms:.1f} ms frame "
                          f"budget (the fastest, {fastest.architecture.label()} {fastest.recipe.method}, is predicted "
                          f"at {fastest.predicted_ms:.1f} ms, {fastest.predicted_mb:.0f} MB); nothing was extracted "
                          "or fitted. Use a faster target or build a method by hand")
    subsample = _subset(fit_samples, space.fit_images, config.seed)
    goods = load_good_images(validation_goods(calib_samples, fit_samples, subsample, space.validation_images,
                                              config.seed), config.skip_bad)
    validation = synthetic_validation(goods, seed=config.seed, source="good images no candidate is fitted on",
                                      defects_per_image=space.defects_per_validation_image)
    return (index, fit_samples, calib_samples, subsample, validation, rows, costs, target, precision,
            enforce_budget, components)


def validation_goods(calib_samples, fit_samples, subsample, limit: int, seed: int) -> list:
    """The validation's good images, at most `limit`: the held-out calibration goods, then fit images outside the
    candidates' subsample (no candidate is fitted on them either; only the final build is). On small sets the
    calibration split alone is a handful of images (20 of 200): too few goods to rank candidates a point apart."""
    fitted = {sample.path for sample in subsample}
    unused = [sample for sample in fit_samples if sample.path not in fitted]
    calib = _subset(calib_samples, limit, seed)
    return calib + _subset(unused, max(0, limit - len(calib)), seed + 1)


def search(config, log, index=None, space: SearchSpace = SEARCH_SPACE, extra_sets: dict | None = None,
           time_budget_s: float | None = None, started: float | None = None):
    """Steps 1-4 without the final build -> dict with rows, chosen, validation, notes, ... (benches call this with
    extra_sets: name -> (frames, labels), scored with the same heads, and time_budget_s None)."""
    started = time.perf_counter() if started is None else started
    (index, fit_samples, calib_samples, subsample, validation, rows, costs, target, precision, enforce_budget,
     components) = prepare_search(config, log, index, space)
    sets = {"validation": (validation.frames, validation.labels), **(extra_sets or {})}
    log(f"auto: validating up to {sum(r.geometry is not None and (r.fits or not enforce_budget) for r in rows)} "
        f"candidates on {validation.description}")
    with tempfile.TemporaryDirectory(prefix="adtk_auto_") as workdir:
        validator = Validator(config, components, subsample, sets, costs, Path(workdir), log)
        notes = plan_and_validate(config, rows, validator, space, len(fit_samples), len(calib_samples), started,
                                  enforce_budget, log, time_budget_s)
        validator.features.clear()  # the feature files go with the folder
    chosen = choose(rows, enforce_budget)
    return {"rows": rows, "chosen": chosen, "validation": validation, "target": target, "precision": precision,
            "enforce_budget": enforce_budget, "skipped": notes, "index": index, "fit_samples": fit_samples,
            "subsample": len(subsample)}


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def search_and_build(config, log=print, progress_factory=None, index=None, space: SearchSpace = SEARCH_SPACE):
    """--method auto: search, then the ordinary build of the chosen candidate; writes the candidate table."""
    from adtk.export.formats import check_output_path
    from adtk.toolkit.build import build

    started = time.perf_counter()
    if config.method_params:
        raise ConfigError("--method auto chooses the method's parameters itself; drop --param/--coreset-ratio")
    if config.ensemble or config.tile or str(config.image_size_px) not in ("auto", "256") or config.stages:
        raise ConfigError("--method auto chooses the backbone(s), stages, --size and --tile itself; drop them")
    check_output_path(config.out)  # an unwritable -o is found now, not after the search
    found = search(config, log, index, space, time_budget_s=space.time_budget_s, started=started)
    rows, chosen, validation, target = found["rows"], found["chosen"], found["validation"], found["target"]
    table = format_table(rows, chosen, target.frame_budget_ms, target.name)
    log(table)
    search_s = time.perf_counter() - started
    record = {"chosen": chosen.as_dict(), "validation": validation.description,
              "candidates": [r.as_dict() for r in rows], "costed_on": target.name,
              "budget_enforced": found["enforce_budget"], "search_s": round(search_s, 1),
              "time_budget_s": space.time_budget_s, "skipped_for_time": found["skipped"],
              "fit_images_per_candidate": found["subsample"]}
    architecture = chosen.architecture
    final = replace(config, method=chosen.recipe.method,
                    method_params={"coreset_ratio": chosen.coreset_ratio, **dict(chosen.recipe.params)},
                    backbone=architecture.backbone, stages=architecture.stages,
                    image_size_px=architecture.image_size_px, tile=architecture.tile,
                    ensemble=architecture.ensemble, records={**config.records, "recipe_search": record})
    if architecture.ensemble and config.target:
        # an ensemble build has no --target sizing (toolkit/build.py); the search's cost model checked the budget,
        # and prepare_search only let an ensemble through where the target's precision is fp32
        record["target_note"] = (f"ensemble built without --target sizing: the search's cost model predicted "
                                 f"{chosen.predicted_ms:.1f} ms on {target.name} (budget {target.frame_budget_ms:.1f})")
        log(f"auto: {record['target_note']}")
        final = replace(final, target=None, precision="fp32")
    log(f"auto: building {architecture.label()} {chosen.recipe.method} coreset_ratio {chosen.coreset_ratio:.4f} "
        f"(search took {search_s:.0f} s)")
    result = build(final, log=log, progress_factory=progress_factory, index=found["index"])
    out = Path(result.artefact)
    write_text_atomically(out.with_name(out.name + ".candidates.md"),
                          f"# adtk build --method auto: candidates\n\n{validation.description}\n\n{table}\n")
    write_text_atomically(out.with_name(out.name + ".candidates.json"), json.dumps(record, indent=1) + "\n")
    return result
