"""`adtk build`: fit a method on a data folder and compile it into one artefact.

    index -> split train/good into fit and calibration images (seeded)
          -> features of the fit images through preprocess + backbone + the method's embedding
          -> method.fit -> head -> scoring graph -> calibrate on held-out images -> manifest -> .onnx
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adtk.export.compose import EnsembleGraph, ScoringGraph
from adtk.export.compiler import CompileOptions, compile_model
from adtk.export.formats import check_output_path, export_model, write_artefact
from adtk.export.targets import load_target
from adtk.runtime.manifest import build_manifest
from adtk.runtime.errors import ConfigError, DataError, TargetError
from adtk.toolkit.backbones import create_backbone
from adtk.toolkit.build_config import config_to_dict, validate_build_config
from adtk.toolkit.calibration import Calibration, calibrate
from adtk.toolkit.ensemble import backbone_choices, geometry_stride, member_statistics
from adtk.toolkit.data import DatasetIndex, Sample, index_dataset, iter_images, training_list_sha256
from adtk.toolkit.geometry import Geometry, make_smoother, make_tiling, median_aspect_hw, parse_size, parse_tile, \
    resolve_geometry
from adtk.toolkit.labelled_defects import defects_manifest_entry, extract_labelled_features, labelled_defect_samples
from adtk.toolkit.memory import release_large_blocks_promptly, skip_gpu_kernel_compiler_without_gpu
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.postprocess import ScoreNormaliser
from adtk.toolkit.preprocess import FramePreprocess
from adtk.toolkit.refinement import manifest_entry, parse_refine, refine_training_set, write_training_list
from adtk.toolkit.sizing import (MAX_SIZING_ROUNDS, compile_check_data, plan_for_target, probe_model,
                                 refuse_unfit_architecture, resolve_precision)


@dataclass
class BuildConfig:
    data: Path
    out: Path
    method: str = "patchcore"
    method_params: dict[str, Any] = field(default_factory=dict)
    backbone: str = "tf_efficientnet_lite0"
    stages: tuple[str, ...] | None = None
    weights: Path | None = None
    random_weights: bool = False
    # --size: N, (H, W), "HxW", "auto" or "auto:PIXELS" (toolkit/geometry.py: parse_size, resolve_geometry)
    image_size_px: int | tuple[int, int] | str = 256
    tile: str | None = None  # --tile "SIZE[:OVERLAP]": score overlapping tiles inside the graph (geometry.py)
    calib_fraction: float = 0.1
    max_train_images: int | None = None
    seed: int = 0
    skip_bad: bool = False
    # Backbone batch while extracting features. 4, not more: the early MBConv expansions at 128 x 128 are
    # ~25 MB per image, so 16 images at once lifted the build's peak RSS by ~200 MB for no speed gain on CPU.
    batch_size: int = 4
    blur_sigma: float = 4.0
    target: str | None = None  # a targets/*.yaml name or path: size, check and record for that device
    precision: str = "auto"  # fp32 | fp16 | int8 | auto (the target's default; fp32 without a target)
    max_auroc_drop: float = 0.01  # refuse a precision that loses more image AUROC than this against fp32
    check_images: int = 200  # held-out images the precision check scores (seeded subset)
    refine: str | None = None  # "sroc:R", "sroc:R:DETECTOR" or "paire": drop suspected defects before the fit
    # Further backbones, each "NAME" or "NAME:STAGE,STAGE": an ensemble of (backbone, stages) members scored by the
    # same method, standardised on held-out good images and averaged in one artefact (toolkit/ensemble.py).
    ensemble: tuple[str, ...] = ()
    records: dict[str, Any] = field(default_factory=dict)  # facts recorded under the manifest's "training" (e.g. how
    # --method auto chose this recipe: toolkit/recipe_search.py)
    defects_from_test: tuple[str, ...] = ()  # test/<type> folders whose images (and masks) methods may learn from
    # index_dataset's layout options: anomalib Folder (normal_dir, abnormal_dir, mask_dir, normal_test_dir) or
    # VisA's category (toolkit/data_layouts.py); empty for MVTec, MVTec LOCO and plain folders (found by content)
    data_layout: dict[str, str] = field(default_factory=dict)


@dataclass
class BuildResult:
    artefact: Path
    manifest: dict
    graph: ScoringGraph  # the torch reference of the artefact
    fit_samples: list[Sample]
    calibration_samples: list[Sample]
    timings_s: dict[str, float]
    method: object = None  # the AnomalyMethod instance that was fitted (benches read its reports)


def split_training_set(samples, calib_fraction: float, max_train_images: int | None, seed: int):
    """Seeded split of the good training images into (fit, calibration); optional size cap first."""
    samples = list(samples)
    rng = np.random.default_rng(seed)
    if max_train_images is not None:
        if max_train_images < 2:
            raise ConfigError("--max-train-images must be at least 2")
        if len(samples) > max_train_images:
            keep = np.sort(rng.choice(len(samples), max_train_images, replace=False))
            samples = [samples[i] for i in keep]
    if not 0.0 <= calib_fraction < 1.0:
        raise ConfigError(f"--calib-fraction must be in [0, 1), got {calib_fraction}")
    if len(samples) < 2:
        raise DataError(f"need at least 2 training images (1 to fit, 1 to calibrate), found {len(samples)}")
    num_calib = min(len(samples) - 1, max(1, int(round(calib_fraction * len(samples)))))
    order = rng.permutation(len(samples))
    calib = sorted(order[:num_calib])
    fit = sorted(order[num_calib:])
    return [samples[i] for i in fit], [samples[i] for i in calib]


class FeatureExtractorPipeline:
    """uint8 frames -> method features, with exactly the modules the scoring graph will contain."""

    def __init__(self, preprocess, backbone, embedding, batch_size: int, tiling=None):
        self.preprocess, self.backbone, self.embedding = preprocess, backbone, embedding
        self.tiling = tiling  # None, or geometry.Tiling: each image gives its tiles' features, in order
        self.batch_size = batch_size

    def inputs(self, frames: torch.Tensor) -> torch.Tensor:
        images = self.preprocess(frames)
        return self.tiling(images) if self.tiling is not None else images

    def features(self, samples, skip_bad: bool, progress=None, on_warning=None):
        """-> (float32 [N * T, ...] features (T tiles per image, 1 without tiling), the samples that decoded)."""
        samples = list(samples)
        used = []
        # Written into one array sized on the first batch: a list of chunks and a final concatenate would
        # hold the features twice at the end, the build's memory peak.
        out: np.ndarray | None = None
        filled = 0
        for batch, batch_samples in self.feature_batches(samples, skip_bad, progress, on_warning):
            if out is None:
                rows_per_image = len(batch) // len(batch_samples)
                out = np.empty((len(samples) * rows_per_image,) + batch.shape[1:], dtype=batch.dtype)
            out[filled:filled + len(batch)] = batch
            filled += len(batch)
            used.extend(batch_samples)
        if out is None:
            raise DataError("no training image could be read")
        return out[:filled], used

    @torch.no_grad()
    def feature_batches(self, samples, skip_bad: bool, progress=None, on_warning=None):
        """Yield (float32 features [b, ...], the b samples that decoded) per backbone batch, lazily: a consumer
        that uses each batch before asking for the next (a streaming fit) never holds them all."""
        pending, used = [], []
        for sample, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
            pending.append(self.inputs(torch.from_numpy(image)[None]))
            used.append(sample)
            if len(pending) == self.batch_size:
                yield self.embedding(self.backbone(torch.cat(pending))).numpy(), used
                pending, used = [], []
            if progress is not None:
                progress(1)
        if pending:
            yield self.embedding(self.backbone(torch.cat(pending))).numpy(), used


def fit_streaming(method, pipeline: FeatureExtractorPipeline, samples, skip_bad: bool, progress=None,
                  on_warning=None):
    """method.fit_stream on the features of `samples`, extracted a backbone batch at a time as the fit asks for
    them -> (state, the samples that decoded). Peak memory: one batch and the method's state, not N images."""
    samples, used = list(samples), []

    def batches():
        for features, batch_samples in pipeline.feature_batches(samples, skip_bad, progress, on_warning):
            used.extend(batch_samples)
            yield features

    return method.fit_stream(batches(), len(samples)), used


@torch.no_grad()
def raw_image_scores(graph: ScoringGraph, samples, skip_bad: bool, on_warning=None):
    """-> (raw image scores [N], per-image raw map maxima [N], minima [N]) through the torch reference."""
    scores, map_max, map_min = [], [], []
    for _, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
        raw_score, raw_map = graph.raw_scores(torch.from_numpy(image)[None])
        scores.append(float(raw_score[0]))
        map_max.append(float(raw_map.max()))
        map_min.append(float(raw_map.min()))
    return np.asarray(scores), np.asarray(map_max), np.asarray(map_min)


def make_manifest(config: BuildConfig, method, backbone, preprocess, calibration: Calibration, fit_samples,
                  calibration_samples, fit_report: dict, timings_s: dict, training_records: dict | None = None,
                  geometry: Geometry | None = None) -> dict:
    """The artefact's manifest (its schema and builder: runtime/manifest.py). training_records: how the training
    list was chosen (refinement, labelled defects), recorded under "training"."""
    return build_manifest(
        method={"name": method.name, "params": method.params(), "fit": fit_report},
        backbone={"name": backbone.name, "stages": list(backbone.stages), "channels": list(backbone.channels),
                  "strides": list(backbone.strides), "weights_source": backbone.weights_source,
                  "weights_sha256": backbone.weights_sha256},
        input_contract={**preprocess.contract(), "size_requested": str(config.image_size_px),
                        "tile_requested": config.tile,
                        "tiling": geometry.tiles.as_dict() if geometry is not None and geometry.tiles else None},
        calibration=calibration.as_dict(),
        training={"num_fit_images": len(fit_samples), "num_calibration_images": len(calibration_samples),
                  "list_sha256": training_list_sha256(fit_samples),
                  "calibration_list_sha256": training_list_sha256(calibration_samples),
                  "seed": config.seed, "max_train_images": config.max_train_images, **(training_records or {})},
        blur_sigma=config.blur_sigma, toolchain={"torch": torch.__version__}, timings_s=timings_s,
    ) | {"build_config": config_to_dict(config)}  # every option, so `adtk inspect --config` can re-run the build


@torch.no_grad()
def head_grid_hw(pipeline: FeatureExtractorPipeline, head) -> tuple[int, int]:
    """The head's patch-score grid (h, w) of one backbone input (frame or tile), from one blank frame at the model
    size: the smoother's matrices are sized by it before export (toolkit/postprocess.py)."""
    frame = torch.zeros((1, *pipeline.preprocess.image_size_px, 3), dtype=torch.uint8)
    patch_scores = head(pipeline.embedding(pipeline.backbone(pipeline.inputs(frame)))).patch_scores
    return int(patch_scores.shape[-2]), int(patch_scores.shape[-1])


def calibrate_graph(graph, calib_samples, defect_samples, skip_bad: bool, warn) -> Calibration:
    """Threshold and normalisation constants from held-out images, set into the graph's normalisers."""
    good_scores, good_map_max, good_map_min = raw_image_scores(graph, calib_samples, skip_bad, warn)
    defect_scores = raw_image_scores(graph, defect_samples, skip_bad, warn)[0] if defect_samples else None
    calibration = calibrate(good_scores, defect_scores, good_map_max=good_map_max, good_map_min=good_map_min)
    graph.normaliser = ScoreNormaliser(calibration.threshold, calibration.score_min, calibration.score_max)
    graph.map_normaliser = ScoreNormaliser(calibration.map_threshold, calibration.map_min, calibration.map_max)
    return calibration


def check_geometry_request(config: BuildConfig, method) -> list:
    """--size / --tile / --backbone errors that need no data, before the data set is even indexed -> the backbone
    choices (ensemble.BackboneChoice, the first is --backbone/--stages)."""
    choices = backbone_choices(config.backbone, config.stages, config.ensemble)
    if len(choices) > 1:
        for flag, given in (("--refine", config.refine), ("--target", config.target),
                            ("labelled defects", method.uses_labelled_defects), ("--weights", config.weights)):
            if given:
                raise ConfigError(f"an ensemble of backbones does not support {flag} yet; build one backbone with "
                                  f"{flag}, or the ensemble without it (then `adtk compile --target` for a device)")
    parse_size(config.image_size_px)
    if parse_tile(config.tile) is None:
        return choices
    if parse_tile(config.tile) is None:
        return
    if config.refine:
        raise ConfigError("--refine with --tile is not supported: refinement drops whole training images, but a "
                          "tiled fit sees tiles; refine without --tile, or tile without --refine")
    if method.uses_labelled_defects:
        raise ConfigError(f"--tile is not supported for {method.name}: its labelled-defect masks are not cut into "
                          "tiles; use --size HxW instead")
    return choices


def build_geometry(config: BuildConfig, stride: int, training_samples, log) -> Geometry:
    """The input geometry (toolkit/geometry.py), checked before any feature is extracted; stride: what every side
    must be a multiple of (the deepest tapped stride, or the LCM over an ensemble's members)."""
    spec = parse_size(config.image_size_px)
    needs_aspect = spec.is_auto or parse_tile(config.tile) is not None
    aspect = median_aspect_hw(training_samples) if needs_aspect else None
    geometry = resolve_geometry(spec, config.tile, stride, aspect)
    if needs_aspect:
        tiles = geometry.tiles
        log(f"input geometry: training images' median height/width {aspect:.3f} -> model size "
            f"{geometry.model_hw[0]}x{geometry.model_hw[1]} px"
            + (f", {len(tiles.row_starts)}x{len(tiles.col_starts)} tiles of {tiles.tile_px} px" if tiles else ""))
    return geometry


def build(config: BuildConfig, log=print, progress_factory=None, index: DatasetIndex | None = None) -> BuildResult:
    """Fit and compile. `progress_factory(total, label)` returns a context manager with .update(n)."""
    validate_build_config(config)  # every option, before any image is read
    timings: dict[str, float] = {}
    started = time.perf_counter()
    release_large_blocks_promptly()  # the build's peak RSS (toolkit/memory.py)
    skip_gpu_kernel_compiler_without_gpu()
    method = create_method(config.method, **config.method_params)  # config errors before any data is read
    check_output_path(config.out)  # an unwritable -o is found now, not after the whole fit
    choices = check_geometry_request(config, method)
    refine_spec = parse_refine(config.refine) if config.refine else None
    index = index or index_dataset(config.data, **config.data_layout)
    fit_samples, calib_samples = split_training_set(index.train, config.calib_fraction,
                                                    config.max_train_images, config.seed)
    warn = (lambda message: log(f"warning: {message}"))
    # labelled defects (seed 003) are chosen before any image is read, so a wrong type fails fast
    defect_samples = labelled_defect_samples(index, config.defects_from_test, warn) if method.uses_labelled_defects else []
    if config.defects_from_test and not method.uses_labelled_defects:
        warn(f"--defects-from-test is ignored: {method.name} does not learn from labelled defects")
    geometry = build_geometry(config, geometry_stride(choices), index.train, log)
    if len(choices) > 1:
        return build_ensemble(config, choices, geometry, index, fit_samples, calib_samples, log, progress_factory)
    backbone = create_backbone(config.backbone, stages=config.stages, weights=config.weights,
                               random_weights=config.random_weights, seed=config.seed)
    preprocess = FramePreprocess(geometry.model_hw, backbone.mean, backbone.std)
    tiling = make_tiling(geometry)
    target = load_target(config.target) if config.target else None
    precision = resolve_precision(config.precision, target)
    if target is not None:  # refuse an architecture that cannot fit before any image is read or fitted
        probe_method = create_method(config.method, **config.method_params)
        probe = probe_model(preprocess, backbone, probe_method.embedding(tuple(backbone.channels)).eval(),
                            probe_method, config.blur_sigma, geometry=geometry, tiling=tiling)
        refuse_unfit_architecture(probe, target, precision, config.precision == "auto")
    tic = time.perf_counter()
    method.log = log  # a method that changes the backbone says what it decided (REB: fine-tune kept or not)
    with StepProgress(progress_factory, "finetune") as prepare_progress:
        # methods that change the backbone (REB's fine-tuning) do it here, before any feature is extracted
        backbone = method.prepare_backbone(
            backbone, preprocess, (image for _, image in iter_images(fit_samples, config.skip_bad, warn)),
            functools.partial(create_backbone, config.backbone, weights=config.weights,
                              random_weights=config.random_weights, seed=config.seed),
            progress=prepare_progress)
    timings["prepare_backbone"] = time.perf_counter() - tic
    embedding = method.embedding(tuple(backbone.channels)).eval()
    pipeline = FeatureExtractorPipeline(preprocess, backbone, embedding, config.batch_size, tiling)
    log(f"{method.name}: {len(fit_samples)} images to fit, {len(calib_samples)} held out to calibrate; "
        f"backbone {backbone.name} {list(backbone.stages)} ({backbone.weights_source})")

    tic = time.perf_counter()
    # A method that fits from a stream (patchcore sampler=online) is fed batch by batch, so the fit features are
    # never all held; --refine and --target fit again on the same features, so with those they are held.
    streaming = method.fits_streaming() and not method.uses_labelled_defects
    if streaming and (refine_spec is not None or config.target):
        log(f"{method.name}: --refine/--target refit on the same features, so they are held in memory "
            "(no streaming fit)")
        streaming = False
    streamed_state = None
    with _progress(progress_factory, len(fit_samples), "stream fit" if streaming else "features") as bar:
        if streaming:  # the fit runs here, interleaved with the extraction
            features = None
            streamed_state, fit_samples = fit_streaming(method, pipeline, fit_samples, config.skip_bad,
                                                        bar.update, warn)
        else:
            features, fit_samples = pipeline.features(fit_samples, config.skip_bad, bar.update, warn)
    fit_inputs = {}
    if method.uses_labelled_defects:  # seed 003: labelled defects with patch masks (toolkit/labelled_defects.py)
        fit_inputs["defects"] = extract_labelled_features(pipeline, defect_samples, config.skip_bad, warn)
        log(f"{method.name}: {len(defect_samples)} labelled defect images, "
            f"{fit_inputs['defects'].num_defective_patches} defective patches")
    timings["features_and_fit" if streaming else "features"] = time.perf_counter() - tic

    refinement, candidates = None, fit_samples
    if refine_spec is not None:  # toolkit/refinement: fit a detector, score the fit images, drop some
        tic = time.perf_counter()
        features, fit_samples, refinement = refine_training_set(
            refine_spec, method, tuple(backbone.channels), features, candidates,
            lambda other: FeatureExtractorPipeline(preprocess, backbone, other, config.batch_size).features(
                candidates, config.skip_bad)[0], log)
        timings["refine"] = time.perf_counter() - tic

    for sizing_round in range(MAX_SIZING_ROUNDS):
        tic = time.perf_counter()
        if streamed_state is not None:  # fitted during the extraction; no sizing round (no --target)
            state = streamed_state
        else:
            with StepProgress(progress_factory, "fit") as fit_progress:
                state = method.fit(features, progress=fit_progress, **fit_inputs)
            timings["fit"] = time.perf_counter() - tic

        head = method.head(state)
        smoother = make_smoother(geometry, config.blur_sigma, head_grid_hw(pipeline, head))
        graph = ScoringGraph(preprocess, backbone, embedding, head, smoother, ScoreNormaliser(), tiling=tiling).eval()

        tic = time.perf_counter()
        calibration = calibrate_graph(graph, calib_samples, index.defects, config.skip_bad, warn)
        timings["calibrate"] = time.perf_counter() - tic
        log(f"threshold {calibration.threshold:.4f} ({calibration.method})")

        timings["total_before_export"] = time.perf_counter() - started
        training_records = dict(config.records)
        if refinement is not None:
            training_records["refinement"] = manifest_entry(refinement, candidates, config.out)
        if "defects" in fit_inputs:
            training_records["labelled_defects"] = defects_manifest_entry(defect_samples, fit_inputs["defects"])
        manifest = make_manifest(config, method, backbone, preprocess, calibration, fit_samples, calib_samples,
                                 method.fit_report(state), timings, training_records, geometry)
        if target is None:
            features = fit_inputs = None  # no sizing round will refit: free them before the export's peak
        tic = time.perf_counter()
        with _progress(progress_factory, 1, "export") as bar:  # one step: torch's exporter reports no progress
            fp32_model = export_model(graph, manifest, preprocess.image_size_px)
            bar.update(1)
        timings["export"] = time.perf_counter() - tic
        if target is None:
            break
        # --target: size the head from the cost model; a knob change refits on the same features (export/...)
        plan = plan_for_target(fp32_model, target, precision, method, config.precision == "auto")
        log(f"sizing for {target.name}: {plan.message}")
        precision = plan.precision
        if plan.fits:
            break
        method = create_method(config.method, **{**method.params(), **plan.params})
        # Sizing knobs size the head (bank rows), never the embedding: the features stay valid, but the
        # new instance still needs its embedding set up (e.g. a seeded channel subset) before fit.
        method.embedding(tuple(backbone.channels))
    else:
        raise TargetError(f"{target.name}: no fit after {MAX_SIZING_ROUNDS} sizing rounds; lower the knobs by hand")
    del features

    tic = time.perf_counter()
    data = None
    if precision != "fp32":
        data = compile_check_data(index, fit_samples, calib_samples, config.check_images, config.seed,
                                  config.skip_bad, warn)
    with _progress(progress_factory, 1, "compile") as bar:
        model, manifest, _ = compile_model(fp32_model, manifest,
                                           CompileOptions(precision, target, config.max_auroc_drop), data, log)
        bar.update(1)
    artefact = write_artefact(model, manifest, config.out)
    if refinement is not None:
        write_training_list(refinement, candidates, artefact)
    timings["compile"] = time.perf_counter() - tic
    return BuildResult(artefact, manifest, graph, fit_samples, calib_samples, timings, method)


def build_ensemble(config: BuildConfig, choices, geometry: Geometry, index: DatasetIndex, fit_samples, calib_samples,
                   log, progress_factory) -> BuildResult:
    """One artefact from several (backbone, stages) members (toolkit/ensemble.py): each member is the single-backbone
    build's graph (prepare, features, fit, head, smoother), then standardised on the held-out good images; the
    ensemble is calibrated and compiled like one graph. Members are fitted one after the other, so only one
    member's features are held at a time."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    warn = (lambda message: log(f"warning: {message}"))
    members, backbones, methods, states, statistics = [], [], [], [], []
    for choice in choices:
        tic = time.perf_counter()
        method = create_method(config.method, **config.method_params)
        backbone = create_backbone(choice.name, stages=choice.stages, random_weights=config.random_weights,
                                   seed=config.seed)
        preprocess = FramePreprocess(geometry.model_hw, backbone.mean, backbone.std)
        method.log = log  # REB says whether it keeps its fine-tuned weights
        with StepProgress(progress_factory, f"finetune {choice.name}") as prepare_progress:
            backbone = method.prepare_backbone(
                backbone, preprocess, (image for _, image in iter_images(fit_samples, config.skip_bad, warn)),
                functools.partial(create_backbone, choice.name, random_weights=config.random_weights,
                                  seed=config.seed), progress=prepare_progress)
        embedding = method.embedding(tuple(backbone.channels)).eval()
        pipeline = FeatureExtractorPipeline(preprocess, backbone, embedding, config.batch_size, make_tiling(geometry))
        log(f"ensemble member {choice.name} {list(backbone.stages)} ({backbone.weights_source})")
        with _progress(progress_factory, len(fit_samples), f"features {choice.name}") as bar:
            features, used = pipeline.features(fit_samples, config.skip_bad, bar.update, warn)
        with StepProgress(progress_factory, f"fit {choice.name}") as fit_progress:
            state = method.fit(features, progress=fit_progress)
        del features
        head = method.head(state)
        smoother = make_smoother(geometry, config.blur_sigma, head_grid_hw(pipeline, head))
        member = ScoringGraph(preprocess, backbone, embedding, head, smoother, ScoreNormaliser(),
                              tiling=pipeline.tiling).eval()
        statistics.append(member_statistics(member, calib_samples, config.skip_bad, warn))
        members.append(member), backbones.append(backbone), methods.append(method), states.append(state)
        timings[f"member_{choice.name}"] = time.perf_counter() - tic
    fit_samples = used
    graph = EnsembleGraph(members, *([s[key] for s in statistics] for key in
                                     ("score_mean", "score_std", "map_mean", "map_std")), ScoreNormaliser()).eval()
    tic = time.perf_counter()
    calibration = calibrate_graph(graph, calib_samples, index.defects, config.skip_bad, warn)
    timings["calibrate"] = time.perf_counter() - tic
    log(f"threshold {calibration.threshold:.4f} ({calibration.method})")
    timings["total_before_export"] = time.perf_counter() - started
    ensemble_record = {"combine": "mean over members of (raw - mean) / std, constants from the held-out good images",
                       "members": [{"backbone": {"name": b.name, "stages": list(b.stages), "strides": list(b.strides),
                                                 "weights_source": b.weights_source, "weights_sha256": b.weights_sha256},
                                    "fit": m.fit_report(st), "standardisation": stats}
                                   for b, m, st, stats in zip(backbones, methods, states, statistics)]}
    manifest = make_manifest(config, methods[0], backbones[0], members[0].preprocess, calibration, fit_samples,
                             calib_samples, {"members": [m["fit"] for m in ensemble_record["members"]]}, timings,
                             geometry=geometry)
    manifest["ensemble"] = ensemble_record  # "backbone" above is the first member's, for readers that know one
    tic = time.perf_counter()
    fp32_model = export_model(graph, manifest, geometry.model_hw)
    timings["export"] = time.perf_counter() - tic
    precision = resolve_precision(config.precision, None)
    data = None
    if precision != "fp32":
        data = compile_check_data(index, fit_samples, calib_samples, config.check_images, config.seed,
                                  config.skip_bad, warn)
    model, manifest, _ = compile_model(fp32_model, manifest, CompileOptions(precision, None, config.max_auroc_drop),
                                       data, log)
    artefact = write_artefact(model, manifest, config.out)
    timings["compile"] = time.perf_counter() - tic
    return BuildResult(artefact, manifest, graph, fit_samples, calib_samples, timings)


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _progress(factory, total, label):
    return factory(total, label) if factory else _NullBar()


class StepProgress:
    """A `progress(done, total)` callback for method.fit that opens its bar on the first report."""

    def __init__(self, factory, label: str):
        self.factory, self.label, self.bar, self.done = factory, label, None, 0

    def __call__(self, done: int, total: int, note: str | None = None) -> None:
        if self.factory is None:
            return
        if self.bar is None:
            self.bar = self.factory(total, self.label).__enter__()
        if note is None:
            self.bar.update(done - self.done)
        else:  # shown beside the bar (e.g. the fine-tuning loss)
            self.bar.update(done - self.done, note)
        self.done = done

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
