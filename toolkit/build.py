"""`adtk build`: fit a method on a data folder and compile it into one artefact, as a recipe of four steps.

    build(config)
      1. prepare_inputs     config -> BuildInputs: the method (built once, config errors first), the seeded
                            fit/calibration split, labelled defects, the target and precision, the input geometry
                            (--size, --tile: toolkit/geometry.py); several backbones go to build_ensemble instead
      2. extract_features   -> ExtractedFeatures: the method prepares the backbone (REB fine-tunes it), the fit
                            images go through preprocess + backbone + the method's embedding (the very modules
                            the artefact contains); a streaming method fits here; --refine drops images
      3. fit_for_target     -> FittedModel: fit -> head -> scoring graph -> fp32 ONNX -> calibrate on the
                            held-out images scored by that model (onnxruntime) -> manifest; with --target,
                            the cost model may ask to lower a sizing knob, and the same features are fitted
                            again by the method with that knob changed
      4. compile_and_write  -> the artefact: precision passes and target checks (export/compiler.py), sealed and
                            written atomically, with the refinement's image list beside it

Each step is a function of the previous steps' typed results; BuildSteps carries what all of them share
(logging, progress bars, timings).
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adtk.export.compose import EnsembleGraph, ScoringGraph
from adtk.export.compiler import CompileOptions, compile_model
from adtk.export.formats import check_output_path, export_model, replace_initializers, write_artefact
from adtk.export.passes.chunk_bank import CPU_CACHE_CHUNK_ELEMENTS, chunk_bank_reductions
from adtk.export.passes.graph import set_manifest
from adtk.export.targets import Target, load_target
from adtk.runtime.artefact import INPUT_NAME
from adtk.runtime.errors import ConfigError, DataError, TargetError
from adtk.runtime.manifest import build_manifest
from adtk.toolkit.backbones import create_backbone
from adtk.toolkit.build_config import BuildConfig, config_to_dict, validate_build_config  # noqa: F401 (re-exported)
from adtk.toolkit.calibration import Calibration, calibrate
from adtk.toolkit.data import DatasetIndex, Sample, index_dataset, iter_images, prefetched, training_list_sha256
from adtk.toolkit.ensemble import backbone_choices, geometry_stride, member_statistics
from adtk.toolkit.geometry import (Geometry, make_tiling, median_image_shape, parse_size, parse_tile,
                                   plain_auto_short_side, resolve_geometry)
from adtk.toolkit.labelled_defects import (LabelledFeatures, defects_manifest_entry, extract_labelled_features,
                                           labelled_defect_samples)
from adtk.toolkit.memory import (keep_arrays_off_huge_pages, release_large_blocks_promptly,
                                 skip_gpu_kernel_compiler_without_gpu)
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.postprocess import ScoreNormaliser
from adtk.toolkit.preprocess import FramePreprocess
from adtk.toolkit.refinement import (RefinementResult, RefineSpec, manifest_entry, parse_refine,
                                     refine_training_set, write_training_list)
from adtk.toolkit.scoring import backbone_inputs, scoring_graph
from adtk.toolkit.sizing import (MAX_SIZING_ROUNDS, compile_check_data, plan_for_target, probe_model,
                                 refuse_unfit_architecture, resolve_precision)
from adtk.toolkit.trunk_runner import TrunkRunner


@dataclass
class BuildResult:
    artefact: Path
    manifest: dict
    graph: ScoringGraph  # the torch reference of the artefact
    fit_samples: list[Sample]
    calibration_samples: list[Sample]
    timings_s: dict[str, float]
    method: object = None  # the AnomalyMethod instance that was fitted (benches read its reports)


@dataclass
class BuildInputs:
    """Step 1's result: everything chosen before any image is read."""

    method: AnomalyMethod
    index: DatasetIndex
    fit_samples: list[Sample]
    calibration_samples: list[Sample]
    defect_samples: list[Sample]  # labelled defects, for methods that learn from them (else empty)
    refine_spec: RefineSpec | None
    target: Target | None
    precision: str  # resolved: fp32 | fp16 | int8
    geometry: Geometry  # the input geometry: model size and tiles (toolkit/geometry.py)
    backbone_choices: list  # ensemble.BackboneChoice per (backbone, stages); more than one = an ensemble


@dataclass
class ExtractedFeatures:
    """Step 2's result: the modules of the scoring graph up to the head, and the fit images' features."""

    preprocess: FramePreprocess
    backbone: torch.nn.Module
    embedding: torch.nn.Module
    tiling: torch.nn.Module | None  # geometry.Tiling, or None: the frame is the backbone's one input
    backbone_report: dict  # how the method prepared the backbone (e.g. REB's fine-tuning), for the manifest
    fit_samples: list[Sample]  # the images fitted on: decoded, and kept by --refine
    candidate_samples: list[Sample]  # the decoded images before --refine (its list is written beside the artefact)
    features: np.ndarray | None  # float32 [N, D, h, w]; None when a streaming fit consumed them
    streamed_state: Any = None  # the state of a streaming fit (fitted during the extraction)
    defects: LabelledFeatures | None = None
    refinement: RefinementResult | None = None
    pipeline: "FeatureExtractorPipeline | None" = None  # the extraction's modules (backbone + embedding runner)


@dataclass
class FittedModel:
    """Step 3's result: the fitted method's scoring graph, calibrated, as a manifest and an fp32 ONNX model."""

    method: AnomalyMethod  # the method as finally fitted (a sizing round may have lowered a knob)
    graph: ScoringGraph
    manifest: dict
    fp32_model: Any  # onnx ModelProto, not sealed yet
    precision: str  # the target's plan may move to int8


class BuildSteps:
    """What every step shares: the log, progress bars, and the timings recorded in the manifest."""

    def __init__(self, log=print, progress_factory=None):
        self.log, self.progress_factory = log, progress_factory
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()

    def warn(self, message: str) -> None:
        self.log(f"warning: {message}")

    @contextmanager
    def timed(self, name: str):
        tic = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - tic

    def bar(self, total: int, label: str):
        """A progress bar over `total` items (a context manager with .update(n))."""
        return self.progress_factory(total, label) if self.progress_factory else _NullBar()

    def step_progress(self, label: str) -> "StepProgress":
        """A progress(done, total, note) callback for a method's fit or fine-tuning."""
        return StepProgress(self.progress_factory, label)


def build(config: BuildConfig, log=print, progress_factory=None, index: DatasetIndex | None = None) -> BuildResult:
    """Fit and compile. `progress_factory(total, label)` returns a context manager with .update(n)."""
    validate_build_config(config)  # every option, before any image is read
    release_large_blocks_promptly()  # the build's peak RSS (toolkit/memory.py)
    keep_arrays_off_huge_pages()  # first touches of new memory on a VM (toolkit/memory.py)
    skip_gpu_kernel_compiler_without_gpu()
    steps = BuildSteps(log, progress_factory)
    inputs = prepare_inputs(config, index, steps)
    if len(inputs.backbone_choices) > 1:  # an ensemble of backbones: its own recipe (toolkit/ensemble.py)
        return build_ensemble(config, inputs.backbone_choices, inputs.geometry, inputs.index, inputs.fit_samples,
                              inputs.calibration_samples, log, progress_factory, inputs.method)
    extracted = extract_features(config, inputs, steps)
    fitted = fit_for_target(config, inputs, extracted, steps)
    artefact, manifest = compile_and_write(config, inputs, extracted, fitted, steps)
    return BuildResult(artefact, manifest, fitted.graph, extracted.fit_samples, inputs.calibration_samples,
                       steps.timings, fitted.method)


def prepare_inputs(config: BuildConfig, index: DatasetIndex | None, steps: BuildSteps) -> BuildInputs:
    """Step 1: the method, the seeded split and the labelled defects; every config error before any image is read."""
    method = create_method(config.method, **config.method_params)
    check_output_path(config.out)  # an unwritable -o is found now, not after the whole fit
    choices = check_geometry_request(config, method)
    refine_spec = parse_refine(config.refine) if config.refine else None
    target = load_target(config.target) if config.target else None
    precision = resolve_precision(config.precision, target)
    index = index or index_dataset(config.data, **config.data_layout)
    for warning in index.warnings:  # allowed oddities (defect images without masks, ignored folders): said once
        steps.warn(warning)
    fit_samples, calibration_samples = split_training_set(index.train, config.calib_fraction,
                                                          config.max_train_images, config.seed)
    # labelled defects (seed 003) are chosen before any image is read, so a wrong type fails fast
    defect_samples = []
    if method.uses_labelled_defects:
        defect_samples = labelled_defect_samples(index, config.defects_from_test, steps.warn)
    elif config.defects_from_test:
        steps.warn(f"--defects-from-test is ignored: {method.name} does not learn from labelled defects")
    geometry, finer = build_geometry(config, geometry_stride(choices), index.train, steps.log)
    method = bank_rows_as_at_256(config, method, finer, steps.log)
    return BuildInputs(method, index, fit_samples, calibration_samples, defect_samples, refine_spec, target,
                       precision, geometry, choices)


def extract_features(config: BuildConfig, inputs: BuildInputs, steps: BuildSteps) -> ExtractedFeatures:
    """Step 2: backbone (prepared by the method), then the fit images' features (+ labelled defects, --refine)."""
    method = inputs.method
    make_backbone = functools.partial(create_backbone, config.backbone, weights=config.weights,
                                      random_weights=config.random_weights, seed=config.seed)
    backbone = make_backbone(stages=config.stages)
    preprocess = FramePreprocess(inputs.geometry.model_hw, backbone.mean, backbone.std)
    tiling = make_tiling(inputs.geometry)
    if inputs.target is not None:  # refuse an architecture that cannot fit before any image is read or fitted
        probe = probe_model(preprocess, backbone, method.embedding(tuple(backbone.channels)).eval(),
                            method.with_params(), config.blur_sigma,  # a copy: the probe's fit leaves no trace
                            geometry=inputs.geometry, tiling=tiling,
                            image_score_from=image_score_source(config, method))
        refuse_unfit_architecture(probe, inputs.target, inputs.precision, config.precision == "auto")
    with steps.timed("prepare_backbone"), steps.step_progress("finetune") as progress:
        # methods that change the backbone (REB's fine-tuning) do it here, before any feature is extracted
        fit_images = (image for _, image in iter_images(inputs.fit_samples, config.skip_bad, steps.warn))
        method.log = steps.log  # a method that changes the backbone says what it decided (REB: fine-tune kept or not)
        prepared = method.prepare_backbone(backbone, preprocess, fit_images, make_backbone, progress=progress)
    backbone = prepared.backbone
    embedding = method.embedding(tuple(backbone.channels)).eval()
    # Extractions of >= MIN_IMAGES_FOR_ONNX images run through onnxruntime's trunk (toolkit/trunk_runner.py, ~3x
    # faster than eager): the fitted state then holds features ~1e-6 (relative) away from torch's, harmless to a head
    # that is continuous in its inputs (labeled_patchcore's re-weighting was not, at ties of the nearest bank row:
    # see its WeightedBankDistance)
    pipeline = FeatureExtractorPipeline(preprocess, backbone, embedding, config.batch_size, tiling, warn=steps.warn)
    steps.log(f"{method.name}: {len(inputs.fit_samples)} images to fit, {len(inputs.calibration_samples)} held out "
              f"to calibrate; backbone {backbone.name} {list(backbone.stages)} ({backbone.weights_source})")

    # A method that fits from a stream (patchcore sampler=online) is fed batch by batch, so the fit features are
    # never all held; --refine and --target fit again on the same features, so with those they are held.
    streaming = method.fits_streaming() and not method.uses_labelled_defects
    if streaming and (inputs.refine_spec is not None or inputs.target is not None):
        steps.log(f"{method.name}: --refine/--target refit on the same features, so they are held in memory "
                  "(no streaming fit)")
        streaming = False
    features = streamed_state = defects = None
    with steps.timed("features_and_fit" if streaming else "features"):
        with steps.bar(len(inputs.fit_samples), "stream fit" if streaming else "features") as bar:
            if streaming:  # the fit runs here, interleaved with the extraction
                streamed_state, fit_samples = fit_streaming(method, pipeline, inputs.fit_samples, config.skip_bad,
                                                            bar.update, steps.warn)
            else:
                features, fit_samples = pipeline.features(inputs.fit_samples, config.skip_bad, bar.update,
                                                          steps.warn)
        if method.uses_labelled_defects:  # seed 003: labelled defects with patch masks (toolkit/labelled_defects.py)
            defects = extract_labelled_features(pipeline, inputs.defect_samples, config.skip_bad, steps.warn)
            steps.log(f"{method.name}: {len(inputs.defect_samples)} labelled defect images, "
                      f"{defects.num_defective_patches} defective patches")

    extracted = ExtractedFeatures(preprocess, backbone, embedding, tiling, prepared.report, fit_samples,
                                  fit_samples, features, streamed_state, defects, pipeline=pipeline)
    if inputs.refine_spec is not None:  # toolkit/refinement: fit a detector, score the fit images, drop some
        with steps.timed("refine"):
            candidates = extracted.candidate_samples

            def refiner_features(other_embedding):  # one more backbone pass, only for a different refiner
                other = FeatureExtractorPipeline(preprocess, backbone, other_embedding, config.batch_size, tiling)
                return other.features(candidates, config.skip_bad)[0]

            extracted.features, extracted.fit_samples, extracted.refinement = refine_training_set(
                inputs.refine_spec, method, tuple(backbone.channels), features, candidates, refiner_features,
                steps.log)
    return extracted


def fit_for_target(config: BuildConfig, inputs: BuildInputs, extracted: ExtractedFeatures,
                   steps: BuildSteps) -> FittedModel:
    """Step 3: fit, compose, calibrate, describe and export in fp32; with --target, lower a sizing knob and fit the
    same features again until the cost model predicts the artefact fits (toolkit/sizing.py)."""
    method, precision = inputs.method, inputs.precision
    for _ in range(MAX_SIZING_ROUNDS):
        if extracted.streamed_state is not None:  # fitted during the extraction; no sizing round (no --target)
            state = extracted.streamed_state
        else:
            with steps.timed("fit"), steps.step_progress("fit") as progress:
                state = method.fit(FitInputs(extracted.features, tuple(extracted.backbone.channels),
                                             defects=extracted.defects, progress=progress, log=steps.log))
        graph = scoring_graph(extracted.preprocess, extracted.backbone, extracted.embedding, method.head(state),
                              inputs.geometry, config.blur_sigma, extracted.tiling,
                              image_score_source(config, method))
        steps.timings["total_before_export"] = time.perf_counter() - steps.started
        records = training_records(config, inputs, extracted)  # reads the labelled defects: before they are freed
        if inputs.target is None:  # no sizing round will refit: free the features before the export's peak
            extracted.features = extracted.defects = None
        fp32_model, calibration = export_and_calibrate(graph, inputs.geometry.model_hw, inputs.calibration_samples,
                                                       inputs.index.defects, config.skip_bad, steps,
                                                       extracted.refinement.dropped_fraction
                                                       if extracted.refinement is not None else 0.0)
        steps.log(f"threshold {calibration.threshold:.4f} on the image score from {graph.image_score_from} "
                  f"({calibration.method})")
        manifest = make_manifest(config, method, extracted.backbone, extracted.preprocess, calibration,
                                 extracted.fit_samples, inputs.calibration_samples,
                                 {**method.fit_report(state), **extracted.backbone_report}, steps.timings,
                                 records, inputs.geometry)
        set_manifest(fp32_model, manifest)
        if inputs.target is None:
            return FittedModel(method, graph, manifest, fp32_model, precision)
        # --target: size the head from the cost model; a knob change refits on the same features
        plan = plan_for_target(fp32_model, inputs.target, precision, method, config.precision == "auto")
        steps.log(f"sizing for {inputs.target.name}: {plan.message}")
        precision = plan.precision
        if plan.fits:
            extracted.features = extracted.defects = None  # no more refits: free them before the compile's peak
            return FittedModel(method, graph, manifest, fp32_model, precision)
        # sizing knobs size the head (bank rows), never the embedding, so the features stay valid
        method = method.with_params(**plan.params)
    raise TargetError(f"{inputs.target.name}: no fit after {MAX_SIZING_ROUNDS} sizing rounds; lower the knobs by hand")


def compile_and_write(config: BuildConfig, inputs: BuildInputs, extracted: ExtractedFeatures, fitted: FittedModel,
                      steps: BuildSteps) -> tuple[Path, dict]:
    """Step 4: precision passes and target checks on the fp32 model, then seal and write (and the image list)."""
    with steps.timed("compile"):
        check_data = None
        if fitted.precision != "fp32":
            check_data = compile_check_data(inputs.index, extracted.fit_samples, inputs.calibration_samples,
                                            config.check_images, config.seed, config.skip_bad, steps.warn)
        options = CompileOptions(fitted.precision, inputs.target, config.max_auroc_drop)
        with steps.bar(1, "compile") as bar:
            model, manifest, _ = compile_model(fitted.fp32_model, fitted.manifest, options, check_data, steps.log)
            bar.update(1)
        artefact = write_artefact(model, manifest, config.out)
        if extracted.refinement is not None:
            write_training_list(extracted.refinement, extracted.candidate_samples, artefact)
    return artefact, manifest


# Normaliser constants the graph is exported with before calibration (export_and_calibrate): not 0 / 1, which an
# optimiser may fold away (x - 0, x * 1), and unlike each other, so that no two initializers are merged.
PROVISIONAL_NORMALISERS = {"normaliser": (0.3125, 0.0, 2.75), "map_normaliser": (0.4375, 0.0, 3.25)}


def normaliser_constants(graph) -> dict:
    """The graph's two normalisers' buffers, by the names the exporter gives their initializers."""
    return {name: buffer.detach().numpy().copy() for name, buffer in graph.named_buffers()
            if name.split(".")[0] in PROVISIONAL_NORMALISERS}


def export_and_calibrate(graph: ScoringGraph, model_hw, calib_samples, defect_samples, skip_bad: bool,
                         steps: BuildSteps, set_aside_fraction: float = 0.0):
    """Export the scoring graph to fp32 ONNX, score the held-out images with that model in onnxruntime (the
    runtime's own CPU backend), calibrate on those scores, and write the constants into the graph's normalisers
    and the model's -> (fp32 ModelProto without its manifest, Calibration).

    Why in this order: the calibration's scores are then exactly the raw scores and maps the artefact outputs,
    and onnxruntime's bank search (one GEMM and a ReduceMin) ran ~2x faster than torch's eager one on this 2-core
    x86 machine (at a 70k-row bank, 1,024 patches: the bulk of the calibration's time). The normalisers are the
    graph's last ops and do not change the raw outputs, so the graph is exported once with provisional constants
    (PROVISIONAL_NORMALISERS) and the calibrated ones replace them (export.formats.replace_initializers); should an
    exporter version fold them into other nodes, the graph is exported again with the calibrated constants."""
    from adtk.runtime.backends.onnxruntime import OnnxRuntimeBackend

    for name, constants in PROVISIONAL_NORMALISERS.items():
        setattr(graph, name, ScoreNormaliser(*constants))
    provisional = normaliser_constants(graph)
    with steps.timed("export"), steps.bar(1, "export") as bar:  # one step: torch's exporter reports no progress
        fp32_model = export_model(graph, {}, model_hw)
        bar.update(1)
    with steps.timed("calibrate"):
        # scored with the bank search in cache-sized chunks, as a CPU artefact runs it (the compiler splits it
        # the same way): the same scores, less time (bench/bank_chunks.py)
        scoring_model, _ = chunk_bank_reductions(fp32_model, CPU_CACHE_CHUNK_ELEMENTS)
        # the CPU share torch was given (OMP_NUM_THREADS, torch.set_num_threads), as the trunk runner does
        backend = OnnxRuntimeBackend(scoring_model.SerializeToString(), provider="cpu",
                                     intra_op_threads=torch.get_num_threads())
        del scoring_model
        good_scores, good_map_max, good_map_min = artefact_raw_scores(backend, calib_samples, skip_bad, steps.warn)
        defect_scores = (artefact_raw_scores(backend, defect_samples, skip_bad, steps.warn)[0]
                         if defect_samples else None)
        del backend
        calibration = calibrate(good_scores, defect_scores, good_map_max=good_map_max, good_map_min=good_map_min,
                                set_aside_fraction=set_aside_fraction)
        set_calibration(graph, calibration)
        replaced = replace_initializers(fp32_model, provisional, normaliser_constants(graph))
    if not replaced:
        steps.log("export: the normaliser constants were folded into other nodes; exporting again with the "
                  "calibrated ones")
        with steps.timed("export_again"):
            fp32_model = export_model(graph, {}, model_hw)
    return fp32_model, calibration


def artefact_raw_scores(backend, samples, skip_bad: bool, on_warning=None):
    """-> (raw image scores [N], per-image raw map maxima [N], minima [N]) from an exported scoring graph run by a
    runtime backend, one frame at a time (frames of any size)."""
    scores, map_max, map_min = [], [], []
    for _, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
        outputs = backend.run({INPUT_NAME: np.ascontiguousarray(image[None])})
        scores.append(float(outputs["raw_score"][0]))
        map_max.append(float(outputs["raw_anomaly_map"].max()))
        map_min.append(float(outputs["raw_anomaly_map"].min()))
    return np.asarray(scores), np.asarray(map_max), np.asarray(map_min)


def set_calibration(graph, calibration: Calibration) -> None:
    """The calibration's constants into the graph's normalisers (image score, anomaly map)."""
    graph.normaliser = ScoreNormaliser(calibration.threshold, calibration.score_min, calibration.score_max)
    graph.map_normaliser = ScoreNormaliser(calibration.map_threshold, calibration.map_min, calibration.map_max)


def calibrate_graph(graph, calib_samples, defect_samples, skip_bad: bool, warn, pipeline=None) -> Calibration:
    """Threshold and normalisation constants from held-out images scored by the torch reference, set into the
    graph's normalisers (an ensemble's calibration; a single graph's build calibrates on its exported model,
    export_and_calibrate). pipeline: a FeatureExtractorPipeline of the graph's own modules, whose trunk runner then
    extracts the held-out images' features (raw_image_scores)."""
    good_scores, good_map_max, good_map_min = raw_image_scores(graph, calib_samples, skip_bad, warn, pipeline)
    defect_scores = raw_image_scores(graph, defect_samples, skip_bad, warn, pipeline)[0] if defect_samples else None
    calibration = calibrate(good_scores, defect_scores, good_map_max=good_map_max, good_map_min=good_map_min)
    set_calibration(graph, calibration)
    return calibration


def image_score_source(config: BuildConfig, method) -> str:
    """Where the artefact's image score comes from: --image-score-from, else the method's default."""
    return config.image_score_from or method.default_image_score_from


def training_records(config: BuildConfig, inputs: BuildInputs, extracted: ExtractedFeatures) -> dict:
    """How the training list was chosen, for the manifest's "training" section."""
    records = dict(config.records)  # facts the caller adds (e.g. how --method auto chose this recipe)
    if extracted.refinement is not None:
        records["refinement"] = manifest_entry(extracted.refinement, extracted.candidate_samples, config.out)
    if extracted.defects is not None:
        records["labelled_defects"] = defects_manifest_entry(inputs.defect_samples, extracted.defects)
    return records


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
    """uint8 frames -> method features, with exactly the modules the scoring graph will contain.

    use_onnx (toolkit/trunk_runner.py's TrunkRunner): None (the default, and the build's) = torch eager until one
    extraction (a features / feature_batches call) has >= MIN_IMAGES_FOR_ONNX images; from then on, that one and
    every later one run backbone + embedding through onnxruntime (exported once, checked against torch on the first
    batch, torch again if they disagree). So a build of few images stays on torch throughout, and in a build whose
    fit has few images but whose labelled defects are many, the defects and calibration go through onnxruntime.
    True = onnxruntime from the first batch; False = torch eager only."""

    def __init__(self, preprocess, backbone, embedding, batch_size: int, tiling=None, use_onnx: bool | None = None,
                 warn=None):
        self.preprocess, self.backbone, self.embedding = preprocess, backbone, embedding
        self.tiling = tiling  # None, or geometry.Tiling: each image gives its tiles' features, in order
        self.batch_size = batch_size
        self.trunk = TrunkRunner(backbone, embedding, use_onnx, warn)

    def inputs(self, frames: torch.Tensor) -> torch.Tensor:
        return backbone_inputs(self.preprocess, self.tiling, frames)

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
        samples = list(samples)
        self.trunk.expect(len(samples))
        for inputs, used in prefetched(self.input_batches(samples, skip_bad, progress, on_warning)):
            yield self.trunk(inputs), used

    @torch.no_grad()
    def input_batches(self, samples, skip_bad: bool, progress=None, on_warning=None):
        """Yield (the backbone's inputs [b, ...], the b samples that decoded) per backbone batch."""
        pending, used = [], []
        for sample, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
            pending.append(self.inputs(torch.from_numpy(image)[None]))
            used.append(sample)
            if len(pending) == self.batch_size:
                yield torch.cat(pending), used
                pending, used = [], []
            if progress is not None:
                progress(1)
        if pending:
            yield torch.cat(pending), used


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
def raw_image_scores(graph: ScoringGraph, samples, skip_bad: bool, on_warning=None, pipeline=None):
    """-> (raw image scores [N], per-image raw map maxima [N], minima [N]) through the torch reference.

    With `pipeline` (the graph's own modules, untiled graphs only) the features come from its trunk runner (batched,
    onnxruntime for many images, checked against torch) and graph.raw_scores_from_features scores them per image."""
    scores, map_max, map_min = [], [], []
    if pipeline is not None and graph.tiling is None and pipeline.embedding is graph.embedding:
        for features, _ in pipeline.feature_batches(samples, skip_bad, on_warning=on_warning):
            for one in torch.from_numpy(features).split(1):  # one frame at a time: the head's search is per frame
                image_score, raw_map = graph.raw_scores_from_features(one)
                scores.append(float(image_score[0]))
                map_max.append(float(raw_map.max()))
                map_min.append(float(raw_map.min()))
        return np.asarray(scores), np.asarray(map_max), np.asarray(map_min)
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
        blur_sigma=config.blur_sigma, image_score_from=image_score_source(config, method),
        toolchain={"torch": torch.__version__}, timings_s=timings_s,
    ) | {"build_config": config_to_dict(config)}  # every option, so `adtk inspect --config` can re-run the build


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
    if config.refine:
        raise ConfigError("--refine with --tile is not supported: refinement drops whole training images, but a "
                          "tiled fit sees tiles; refine without --tile, or tile without --refine")
    if method.uses_labelled_defects:
        raise ConfigError(f"--tile is not supported for {method.name}: its labelled-defect masks are not cut into "
                          "tiles; use --size HxW instead")
    return choices


def build_geometry(config: BuildConfig, stride: int, training_samples, log) -> tuple[Geometry, float]:
    """The input geometry (toolkit/geometry.py), checked before any feature is extracted; stride: what every side
    must be a multiple of (the deepest tapped stride, or the LCM over an ensemble's members). -> (geometry, how
    many times the pixels of the 256-px short side plain auto gives for the images' own resolution: 1 otherwise)."""
    spec = parse_size(config.image_size_px)
    needs_aspect = spec.is_auto or parse_tile(config.tile) is not None
    shape = median_image_shape(training_samples) if needs_aspect else None
    aspect = shape.aspect_hw if shape is not None else None
    # Plain auto keeps elongated frames at their own resolution (up to geometry.MAX_AUTO_SHORT_SIDE_PX) when no frame
    # budget binds the build (`--method auto --target` weighs finer inputs against banks on validation).
    native_short_side = plain_auto_short_side(shape, frame_budget_binds=config.target is not None)
    geometry = resolve_geometry(spec, config.tile, stride, aspect, native_short_side)
    at_256 = resolve_geometry(spec, config.tile, stride, aspect) if native_short_side is not None else geometry
    finer = (geometry.model_hw[0] * geometry.model_hw[1]) / (at_256.model_hw[0] * at_256.model_hw[1])
    if needs_aspect:
        tiles = geometry.tiles
        log(f"input geometry: training images' median height/width {aspect:.3f}, short side {shape.short_side_px:.0f} "
            f"px -> model size {geometry.model_hw[0]}x{geometry.model_hw[1]} px"
            + (f", {len(tiles.row_starts)}x{len(tiles.col_starts)} tiles of {tiles.tile_px} px" if tiles else "")
            + (f" (the images' own resolution: {finer:.2f}x the pixels of the 256-px short side)" if finer > 1 else ""))
    return geometry, finer


def bank_rows_as_at_256(config: BuildConfig, method: AnomalyMethod, finer: float, log) -> AnomalyMethod:
    """Plain auto at an elongated frame's own resolution (`finer` x the pixels of the 256-px short side): a linear
    sizing knob the user did not set (bank rows per training patch, e.g. coreset_ratio) is divided by `finer`, so
    the bank holds as many rows as at 256 px and a frame's search grows with its own patches only, not with their
    square. Measured with the default PatchCore on two self-made tall sets (bench/results/geometry.md,
    2026-12-04): at 1024 x 400 the same rows as at 640 x 256 (ratio 0.04) scored 0.918 / 0.987 image AUROC against
    0.926 / 0.984 at the full 0.1, at 279 against 676 ms per 1250 x 500 frame (640 x 256: 0.883 / 0.896, 103 ms)."""
    if finer <= 1:
        return method
    changes = {knob.param: method.params()[knob.param] / finer for knob in method.sizing_knobs()
               if knob.cost_exponent == 1.0 and not knob.integer and knob.param not in config.method_params}
    if not changes:
        return method
    log("bank: " + ", ".join(f"{param} {method.params()[param]:.4g} -> {value:.4g}" for param, value in changes.items())
        + " (as many rows as at the 256-px short side; give it to choose)")
    return method.with_params(**changes)


def build_ensemble(config: BuildConfig, choices, geometry: Geometry, index: DatasetIndex, fit_samples, calib_samples,
                   log, progress_factory, method) -> BuildResult:
    """One artefact from several (backbone, stages) members (toolkit/ensemble.py): each member is the single-backbone
    build's graph (prepare, features, fit, head, smoother), then standardised on the held-out good images; the
    ensemble is calibrated and compiled like one graph. Members are fitted one after the other, so only one
    member's features are held at a time."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    warn = (lambda message: log(f"warning: {message}"))
    steps = BuildSteps(log, progress_factory)
    members, backbones, methods, states, statistics, reports = [], [], [], [], [], []
    for choice in choices:
        tic = time.perf_counter()
        method = method.with_params()  # one method object per member (each keeps its own fit facts)
        backbone = create_backbone(choice.name, stages=choice.stages, random_weights=config.random_weights,
                                   seed=config.seed)
        preprocess = FramePreprocess(geometry.model_hw, backbone.mean, backbone.std)
        method.log = log  # REB says whether it keeps its fine-tuned weights
        with StepProgress(progress_factory, f"finetune {choice.name}") as prepare_progress:
            prepared = method.prepare_backbone(
                backbone, preprocess, (image for _, image in iter_images(fit_samples, config.skip_bad, warn)),
                functools.partial(create_backbone, choice.name, random_weights=config.random_weights,
                                  seed=config.seed), progress=prepare_progress)
        backbone = prepared.backbone
        reports.append(prepared.report)
        embedding = method.embedding(tuple(backbone.channels)).eval()
        pipeline = FeatureExtractorPipeline(preprocess, backbone, embedding, config.batch_size, make_tiling(geometry))
        log(f"ensemble member {choice.name} {list(backbone.stages)} ({backbone.weights_source})")
        with steps.bar(len(fit_samples), f"features {choice.name}") as bar:
            features, used = pipeline.features(fit_samples, config.skip_bad, bar.update, warn)
        with steps.step_progress(f"fit {choice.name}") as fit_progress:
            state = method.fit(FitInputs(features, tuple(backbone.channels), progress=fit_progress, log=log))
        del features
        member = scoring_graph(preprocess, backbone, embedding, method.head(state), geometry, config.blur_sigma,
                               pipeline.tiling)
        statistics.append(member_statistics(member, calib_samples, config.skip_bad, warn))
        members.append(member), backbones.append(backbone), methods.append(method), states.append(state)
        timings[f"member_{choice.name}"] = time.perf_counter() - tic
    fit_samples = used
    graph = EnsembleGraph(members, *([s[key] for s in statistics] for key in
                                     ("score_mean", "score_std", "map_mean", "map_std")), ScoreNormaliser(),
                          image_score_from=image_score_source(config, method)).eval()
    tic = time.perf_counter()
    calibration = calibrate_graph(graph, calib_samples, index.defects, config.skip_bad, warn)
    timings["calibrate"] = time.perf_counter() - tic
    log(f"threshold {calibration.threshold:.4f} ({calibration.method})")
    timings["total_before_export"] = time.perf_counter() - started
    ensemble_record = {"combine": "mean over members of (raw - mean) / std, constants from the held-out good images",
                       "members": [{"backbone": {"name": b.name, "stages": list(b.stages), "strides": list(b.strides),
                                                 "weights_source": b.weights_source, "weights_sha256": b.weights_sha256},
                                    "fit": {**m.fit_report(st), **report}, "standardisation": stats}
                                   for b, m, st, stats, report in zip(backbones, methods, states, statistics,
                                                                      reports)]}
    manifest = make_manifest(config, methods[0], backbones[0], members[0].preprocess, calibration, fit_samples,
                             calib_samples, {"members": [m["fit"] for m in ensemble_record["members"]]}, timings,
                             training_records=dict(config.records), geometry=geometry)  # e.g. --method auto's search
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
