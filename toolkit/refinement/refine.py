"""SROC and PaIRE refinement behind one spec string (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adtk.runtime.errors import ConfigError
from adtk.toolkit.methods.base import FitInputs
from adtk.toolkit.methods.registry import canonical_name, create_method, method_class
from adtk.toolkit.refinement.contamination import DEFAULT_FOLDS, crossfit_scores, estimate_contamination
from adtk.toolkit.refinement.rank_sum import RankSumRefiner

SCORE_BATCH = 32
# plain `--refine auto`: the Gaussian's in-sample scores and per-position LOF, rank-summed (rank_sum.py); a named
# detector (auto:padim) scores alone
AUTO_COMBINATION = RankSumRefiner()


@dataclass(frozen=True)
class RefineSpec:
    strategy: str  # "sroc", "paire" or "auto"
    ratio: float | None = None  # SROC's refinement ratio r (fraction of the training images dropped)
    detector: str | None = None  # SROC's / auto's refining detector; None = the build's own method

    def __str__(self) -> str:
        if self.strategy == "paire":
            return "paire"
        if self.strategy == "auto":
            return "auto" + (f":{self.detector}" if self.detector else "")
        return f"sroc:{self.ratio:g}" + (f":{self.detector}" if self.detector else "")


def parse_refine(text: str) -> RefineSpec:
    """'sroc:0.2', 'sroc:0.2:mahalanobis', 'paire', 'auto' or 'auto:padim' -> RefineSpec (ConfigError with the
    accepted forms)."""
    forms = ("expected sroc:R (0 <= R < 1), sroc:R:DETECTOR (e.g. sroc:0.2:mahalanobis), paire, auto or "
             "auto:DETECTOR (e.g. auto:padim)")
    parts = [p.strip() for p in str(text).split(":")]
    if parts == ["paire"]:
        return RefineSpec("paire")
    if parts[0] == "auto":
        if len(parts) > 2:
            raise ConfigError(f"--refine {text!r}: {forms}")
        return RefineSpec("auto", detector=method_class(parts[1]).name if len(parts) == 2 else None)
    if parts[0] != "sroc" or len(parts) not in (2, 3):
        raise ConfigError(f"--refine {text!r}: {forms}")
    try:
        ratio = float(parts[1])
    except ValueError:
        raise ConfigError(f"--refine {text!r}: the ratio {parts[1]!r} is not a number; {forms}") from None
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"--refine {text!r}: the ratio must be in [0, 1) (a fraction, 0.2 = 20%); {forms}")
    detector = None
    if len(parts) == 3:
        detector = method_class(parts[2]).name  # unknown names fail here, with suggestions
    return RefineSpec("sroc", ratio, detector)


@dataclass(frozen=True)
class RefinementResult:
    spec: RefineSpec
    detector: str  # the method that refined
    detector_params: dict
    kept: np.ndarray  # int64, indices into the candidate training images, ascending
    dropped: np.ndarray  # int64, ascending
    scores: np.ndarray  # float64 [N]: the refiner's image scores (higher = more anomalous; plain auto: rank sum)
    details: dict  # strategy-specific facts (PaIRE's rounds)

    @property
    def dropped_fraction(self) -> float:
        """The share of the candidate images dropped; calibration sets aside this share of the held-out images,
        drawn from the same pool (toolkit/calibration.py)."""
        total = len(self.kept) + len(self.dropped)
        return len(self.dropped) / total if total else 0.0


@torch.no_grad()
def head_image_scores(method, state, features: np.ndarray) -> np.ndarray:
    """Image scores of `features` [N, ...] through method.head(state), in batches (float64 out)."""
    head = method.head(state).eval()
    scores = [head(torch.from_numpy(np.ascontiguousarray(features[i:i + SCORE_BATCH], dtype=np.float32)))[1]
              for i in range(0, len(features), SCORE_BATCH)]
    return torch.cat(scores).double().numpy()


def refine(spec: RefineSpec, detector, features: np.ndarray, channels: tuple[int, ...] | None = None, log=None,
           seed: int = 0) -> RefinementResult:
    """Fit `detector` (a method whose embedding(channels) produced `features`) and choose the images to keep: the
    clean subset its fit found (a trimming method, for the paire strategy), all but the outliers of in-sample
    (Gaussian refiners) or cross-fitted (the others) scores (auto), or all but the top-scoring (sroc). Plain auto
    (no detector in the spec) with a Gaussian drops the Gaussian's estimated count, taken from the top of the
    rank sum of its scores and per-position LOF scores (AUTO_COMBINATION, rank_sum.py)."""
    num_images = len(features)
    details: dict = {}

    def fit(rows: np.ndarray):
        return detector.fit(FitInputs(rows, None if channels is None else tuple(channels)))

    def finish(kept: np.ndarray, scores: np.ndarray) -> RefinementResult:
        dropped = np.setdiff1d(np.arange(num_images), kept).astype(np.int64)
        if log is not None:
            combined = f" + {details['scorers'][1]} ({details['combination']})" if "combination" in details else ""
            log(f"refine {spec}: {detector.name}{combined} dropped {len(dropped)} of {num_images} training images")
        return RefinementResult(spec, detector.name, detector.params(), kept, dropped, scores, details)

    if spec.strategy == "auto":  # contamination.py: honest scores, outliers of their distribution dropped
        if detector.refines_in_sample:  # a Gaussian: in-sample ~ leave-one-out, and fitted on every image
            scores = head_image_scores(detector, fit(features), features)
            details["scoring"] = "in-sample"
            if spec.detector is None:  # plain auto: rank sum with the LOF discriminator (rank_sum.py)
                estimate = estimate_contamination(scores)  # the Gaussian's count ...
                scores = AUTO_COMBINATION.combine(scores, features)  # ... of the combined ranking's first
                kept = np.sort(np.argsort(-scores, kind="stable")[len(estimate.dropped):]).astype(np.int64)
                details.update(estimate.as_dict(), score_threshold=None, **AUTO_COMBINATION.record(detector.name))
                return finish(kept, scores)
        else:  # a memory bank would find each image's own patches: each image scored by a fit without it
            scores = crossfit_scores(features, lambda rows, held: head_image_scores(detector, fit(rows), held),
                                     folds=DEFAULT_FOLDS, seed=seed)
            details.update(scoring="cross-fitted", folds=DEFAULT_FOLDS)
        estimate = estimate_contamination(scores)
        kept = np.setdiff1d(np.arange(num_images), estimate.dropped).astype(np.int64)
        details.update(estimate.as_dict())
    elif spec.strategy == "paire":
        state = fit(features)
        scores = head_image_scores(detector, state, features)
        kept = detector.clean_subset(state)
        if kept is None:
            raise ConfigError(f"--refine {spec}: {detector.name} does not find a clean subset of its training set")
        details.update(detector.clean_subset_record(state))
    else:
        scores = head_image_scores(detector, fit(features), features)
        num_dropped = int(round(spec.ratio * num_images))  # spec P-A3: round(), as the pollution count
        num_dropped = min(num_dropped, num_images - 2)  # a detector needs images to fit
        order = np.argsort(-scores, kind="stable")
        kept = np.sort(order[num_dropped:]).astype(np.int64)
    return finish(kept, scores)


# `--refine auto` without a detector, for a build whose method is not a Gaussian: PaDiM refines. Its in-sample
# scores are honest (no cross-fit halving the data) and it ranks magnetic-tile's injected defects higher than a
# cross-fitted memory bank does (10% pollution, seed 0: recall at R 0.71 vs PatchCore's 0.43,
# bench/results/refine_auto.md); the build's own method is still fitted on what PaDiM kept.
AUTO_REFINER = "padim"


def refiner_for(spec: RefineSpec, method):
    """The detector that refines: the one the spec names; else for auto a Gaussian (the build's method if it is
    one, AUTO_REFINER otherwise); else (sroc) the build's own method, same parameters."""
    if spec.strategy == "paire":
        name = "paire"
    elif spec.detector:
        name = spec.detector
    elif spec.strategy == "auto" and not method.refines_in_sample:
        name = AUTO_REFINER
    else:
        name = method.name
    if canonical_name(name) == method.name:
        return create_method(method.name, **method.params())
    return create_method(name)


def refine_training_set(spec: RefineSpec, method, channels: tuple[int, ...], features: np.ndarray, samples: list,
                        extract: Callable, log=None):
    """-> (kept features, kept samples, RefinementResult). `features` came from method's embedding;
    `extract(embedding)` computes the same samples' features through another embedding (one more
    backbone pass, only when the refiner is a different method)."""
    detector = refiner_for(spec, method)
    embedding = detector.embedding(channels).eval()
    same = detector.name == method.name and detector.params() == method.params()
    refiner_features = features if same else extract(embedding)
    result = refine(spec, detector, refiner_features, channels, log=log)
    return features[result.kept], [samples[i] for i in result.kept], result


def training_list_path(artefact: Path) -> Path:
    return Path(str(artefact) + ".training.json")


def manifest_entry(result: RefinementResult, candidates: list, artefact: Path) -> dict:
    dropped = sorted(str(candidates[i].path) for i in result.dropped)
    return {"spec": str(result.spec), "strategy": result.spec.strategy, "ratio": result.spec.ratio,
            "detector": result.detector, "detector_params": result.detector_params,
            "num_candidates": len(candidates), "num_kept": int(len(result.kept)),
            "num_dropped": int(len(result.dropped)),
            "dropped_sha256": hashlib.sha256("\n".join(dropped).encode()).hexdigest(),
            "list_file": training_list_path(artefact).name, **result.details}


def write_training_list(result: RefinementResult, candidates: list, artefact: Path) -> Path:
    """Write <artefact>.training.json: every candidate training image, kept or dropped, with its score."""
    kept = set(result.kept.tolist())
    rows = [{"path": str(s.path), "kept": i in kept, "score": float(result.scores[i])} for i, s in enumerate(candidates)]
    document = {"refinement": str(result.spec), "detector": result.detector,
                "kept": [r["path"] for r in rows if r["kept"]], "dropped": [r["path"] for r in rows if not r["kept"]],
                "images": rows}
    path = training_list_path(artefact)
    path.write_text(json.dumps(document, indent=1))
    return path
