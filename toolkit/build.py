"""`adtk build`: fit a method on a data folder and compile it into one artefact.

    index -> split train/good into fit and calibration images (seeded)
          -> features of the fit images through preprocess + backbone + the method's embedding
          -> method.fit -> head -> scoring graph -> calibrate on held-out images -> manifest -> .onnx
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adtk.export.compose import ScoringGraph
from adtk.export.formats import build_artefact
from adtk.runtime.artefact import INPUT_NAME, OUTPUT_NAMES, SCHEMA_VERSION
from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.backbones import create_backbone
from adtk.toolkit.calibration import Calibration, calibrate
from adtk.toolkit.data import DatasetIndex, Sample, index_dataset, iter_images, training_list_sha256
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.postprocess import AnomalyMapSmoother, ScoreNormaliser
from adtk.toolkit.preprocess import FramePreprocess


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
    image_size_px: int = 256
    calib_fraction: float = 0.1
    max_train_images: int | None = None
    seed: int = 0
    skip_bad: bool = False
    batch_size: int = 16
    blur_sigma: float = 4.0


@dataclass
class BuildResult:
    artefact: Path
    manifest: dict
    graph: ScoringGraph  # the torch reference of the artefact
    fit_samples: list[Sample]
    calibration_samples: list[Sample]
    timings_s: dict[str, float]


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

    def __init__(self, preprocess, backbone, embedding, batch_size: int):
        self.preprocess, self.backbone, self.embedding = preprocess, backbone, embedding
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, samples, skip_bad: bool, progress=None, on_warning=None):
        """-> (float32 [N, ...] features, the samples that decoded)."""
        chunks, pending, used = [], [], []

        def flush():
            if pending:
                chunks.append(self.embedding(self.backbone(torch.cat(pending))).numpy())
                pending.clear()

        for sample, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
            pending.append(self.preprocess(torch.from_numpy(image)[None]))
            used.append(sample)
            if len(pending) == self.batch_size:
                flush()
            if progress is not None:
                progress(1)
        flush()
        return np.concatenate(chunks), used


@torch.no_grad()
def raw_image_scores(graph: ScoringGraph, samples, skip_bad: bool, on_warning=None) -> np.ndarray:
    scores = []
    for _, image in iter_images(samples, skip_bad=skip_bad, on_warning=on_warning):
        raw_score, _ = graph.raw_scores(torch.from_numpy(image)[None])
        scores.append(float(raw_score[0]))
    return np.asarray(scores)


def make_manifest(config: BuildConfig, method, backbone, preprocess, calibration: Calibration, fit_samples,
                  calibration_samples, fit_report: dict, timings_s: dict) -> dict:
    return {
        "format": "adtk-artefact",
        "schema": SCHEMA_VERSION,
        "adtk_version": package_version("adtk"),
        "method": {"name": method.name, "params": method.params(), "fit": fit_report},
        "backbone": {
            "name": backbone.name, "stages": list(backbone.stages), "channels": list(backbone.channels),
            "strides": list(backbone.strides), "weights_source": backbone.weights_source,
            "weights_sha256": backbone.weights_sha256,
        },
        "input": {"name": INPUT_NAME, **preprocess.contract()},
        "outputs": {
            "pred_score": "[B] float32 in [0, 1]; 0.5 is the calibrated threshold",
            "pred_label": "[B] bool; True = anomalous (raw_score >= threshold)",
            "anomaly_map": "[B, S, S] float32 in [0, 1], normalised as pred_score, at the model size",
            "raw_score": "[B] float32, the method's image score before normalisation",
            "raw_anomaly_map": "[B, S, S] float32, before normalisation",
            "order": list(OUTPUT_NAMES),
        },
        "postprocess": {"map_upsample": "bilinear", "blur_sigma": config.blur_sigma,
                        "normalisation": "clip((raw - threshold) / (score_max - score_min) + 0.5, 0, 1)"},
        "calibration": calibration.as_dict(),
        "training": {
            "num_fit_images": len(fit_samples),
            "num_calibration_images": len(calibration_samples),
            "list_sha256": training_list_sha256(fit_samples),
            "calibration_list_sha256": training_list_sha256(calibration_samples),
            "seed": config.seed,
            "max_train_images": config.max_train_images,
        },
        "target": {"name": "generic", "precision": "fp32"},
        "build": {"torch": torch.__version__, "python": platform.python_version(),
                  "timings_s": {k: round(v, 3) for k, v in timings_s.items()}},
    }


def build(config: BuildConfig, log=print, progress_factory=None, index: DatasetIndex | None = None) -> BuildResult:
    """Fit and compile. `progress_factory(total, label)` returns a context manager with .update(n)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    method = create_method(config.method, **config.method_params)  # config errors before any data is read
    index = index or index_dataset(config.data)
    fit_samples, calib_samples = split_training_set(index.train, config.calib_fraction,
                                                    config.max_train_images, config.seed)
    warn = (lambda message: log(f"warning: {message}"))
    backbone = create_backbone(config.backbone, stages=config.stages, weights=config.weights,
                               random_weights=config.random_weights, seed=config.seed)
    preprocess = FramePreprocess(config.image_size_px, backbone.mean, backbone.std)
    embedding = method.embedding(tuple(backbone.channels)).eval()
    pipeline = FeatureExtractorPipeline(preprocess, backbone, embedding, config.batch_size)
    log(f"{method.name}: {len(fit_samples)} images to fit, {len(calib_samples)} held out to calibrate; "
        f"backbone {backbone.name} {list(backbone.stages)} ({backbone.weights_source})")

    tic = time.perf_counter()
    with _progress(progress_factory, len(fit_samples), "features") as bar:
        features, fit_samples = pipeline.features(fit_samples, config.skip_bad, bar.update, warn)
    timings["features"] = time.perf_counter() - tic

    tic = time.perf_counter()
    with StepProgress(progress_factory, "fit") as fit_progress:
        state = method.fit(features, progress=fit_progress)
    timings["fit"] = time.perf_counter() - tic
    del features

    smoother = AnomalyMapSmoother(preprocess.image_size_px, sigma=config.blur_sigma)
    graph = ScoringGraph(preprocess, backbone, embedding, method.head(state), smoother, ScoreNormaliser()).eval()

    tic = time.perf_counter()
    good_scores = raw_image_scores(graph, calib_samples, config.skip_bad, warn)
    defect_scores = raw_image_scores(graph, index.defects, config.skip_bad, warn) if index.defects else None
    calibration = calibrate(good_scores, defect_scores)
    graph.normaliser = ScoreNormaliser(calibration.threshold, calibration.score_min, calibration.score_max)
    timings["calibrate"] = time.perf_counter() - tic
    log(f"threshold {calibration.threshold:.4f} ({calibration.method})")

    timings["total_before_export"] = time.perf_counter() - started
    manifest = make_manifest(config, method, backbone, preprocess, calibration, fit_samples, calib_samples,
                             method.fit_report(state), timings)
    tic = time.perf_counter()
    artefact = build_artefact("onnx", graph, manifest, config.out, preprocess.image_size_px)
    timings["export"] = time.perf_counter() - tic
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

    def __call__(self, done: int, total: int) -> None:
        if self.factory is None:
            return
        if self.bar is None:
            self.bar = self.factory(total, self.label).__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
