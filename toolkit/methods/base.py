"""The small interface every method implements (anomalib's split of fitting and exported head).

    method = create_method("patchcore", coreset_ratio=0.1)       # one phase: ready to use once built
    embedding = method.embedding(backbone.channels)              # nn.Module: stage maps -> features (pure)
    state = method.fit(FitInputs(features, backbone.channels))   # numpy/faiss allowed; returns a frozen State
    head = method.head(state)                                    # nn.Module, buffers only: what gets exported

`features` is what `embedding` produced for the training images, stacked as a float32 numpy array:
[N, D, h, w] for patch methods. `embedding` sets nothing on the method: whatever the fit needs about the
embedding (a seeded channel subset, the channels per stage) it derives from `FitInputs.channels`, so the calls
may come in any order and a method object can be fitted again (the build's sizing rounds refit it).
The head's forward takes the embedding's output and returns HeadOutput(patch_scores [B, h, w],
image_score [B]); it holds no faiss/numpy and no branch on training.

A method class registers itself with @register_method(name) (below); the decorator also records the
keyword arguments each instance was constructed with, which `params()` returns for the manifest.

A method whose fit can consume the features a few images at a time says so with fits_streaming(); the build
then extracts and fits batch by batch (fit_stream) and never holds all the features (bounded memory).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class SizingKnob:
    """A constructor parameter the compiler may lower to fit a device's frame budget (declared as data, so
    the compiler never needs to know the method): the head's cost grows as value ** cost_exponent."""

    param: str  # constructor keyword, e.g. "coreset_ratio"
    minimum: float  # never go below this
    cost_exponent: float = 1.0  # 1 = linear (bank rows), 2 = quadratic (e.g. covariance channels)
    integer: bool = False


@dataclasses.dataclass(frozen=True)
class FitInputs:
    """Everything a method's fit may use; each method reads the fields it needs."""

    features: np.ndarray  # float32 [N, D, h, w]: the method's embedding of the fit images
    channels: tuple[int, ...] | None = None  # the backbone's stage channels the embedding was built for (the
    # methods whose embedding depends on them, Mahalanobis and PaDiM, need them; the others ignore them)
    defects: Any = None  # LabelledFeatures (toolkit/labelled_defects.py) for methods with uses_labelled_defects
    progress: Callable[..., None] | None = None  # progress(done, total, note=None)
    log: Callable[[str], None] | None = None  # one line per notable step (e.g. PaIRE's trimming rounds)


@dataclasses.dataclass(frozen=True)
class PreparedBackbone:
    """What prepare_backbone returns: the backbone to extract features with and to export, and facts about
    how it was prepared, merged into the manifest's method.fit record (e.g. {"finetune": {...}})."""

    backbone: nn.Module
    report: dict[str, Any] = dataclasses.field(default_factory=dict)


class HeadOutput(NamedTuple):
    patch_scores: torch.Tensor  # [B, h, w], higher = more anomalous
    image_score: torch.Tensor  # [B]


class AnomalyMethod:
    """Base class of every method; @register_method records the constructor arguments params() returns."""

    name: str = ""  # set by @register_method
    # True for methods that learn from labelled defect images (seed 003): the build then fills
    # FitInputs.defects with LabelledFeatures (toolkit/labelled_defects.py).
    uses_labelled_defects: bool = False
    # True where scoring the fit images with the model fitted on them ranks them (nearly) as a leave-one-out fit
    # would: a Gaussian fitted on n images gives each of them an in-sample Mahalanobis distance that is a monotone
    # function of its leave-one-out distance (exactly so without shrinkage), the same function at every grid
    # position. `--refine auto` then scores such a refiner in-sample, on all the images, rather than
    # cross-fitted on half of them (refinement/contamination.py). A memory bank holds the image's own patches, so
    # in-sample scoring hides its defects: False there.
    refines_in_sample: bool = False
    # Where the artefact's image score comes from when the build does not say (BuildConfig.image_score_from):
    # "head" = this method head's own image score, "map_max" = the smoothed anomaly map's maximum
    # (runtime/manifest.py IMAGE_SCORE_SOURCES). A method changes it only on measured evidence (bench/results).
    default_image_score_from: str = "head"
    log: Callable[[str], None] | None = None  # the build's log, for decisions a method makes while it prepares
    _constructor_args: dict[str, Any]  # set by the wrapper register_method puts around __init__

    def params(self) -> dict[str, Any]:
        """The constructor keyword arguments (defaults filled in), as recorded in the artefact manifest."""
        return dict(getattr(self, "_constructor_args", {}))

    def with_params(self, **changes) -> "AnomalyMethod":
        """A new instance of this method with some constructor arguments changed (e.g. a sizing knob lowered).
        A method keeps nothing but its arguments between fits, so this is all a refit needs."""
        return type(self)(**{**self.params(), **changes})

    def clean_subset(self, state) -> np.ndarray | None:
        """Indices of the fit images this method's fit judged clean (a trimming method, e.g. PaIRE), or None:
        `adtk build --refine paire` keeps exactly these images."""
        return None

    def clean_subset_record(self, state) -> dict[str, Any]:
        """How clean_subset was found, for the manifest's refinement record (e.g. per-round counts)."""
        return {}

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def prepare_backbone(self, backbone: nn.Module, preprocess: nn.Module, images: Iterable[np.ndarray],
                         make_backbone: Callable[..., nn.Module], progress=None) -> PreparedBackbone:
        """Change the backbone before any feature is extracted (e.g. REB's fine-tuning); default: unchanged.

        images: the fit images, uint8 [H, W, 3] (lazy: nothing is read unless iterated).
        make_backbone(stages=..., trainable=...): a new backbone with the build's weights, e.g. deeper.
        progress(done, total, note). The returned backbone is what the scoring graph (and the artefact)
        contains; a method that changes weights updates its weights_source / weights_sha256, and says what it
        did in the returned report (recorded beside the fit report in the manifest).
        """
        return PreparedBackbone(backbone)

    def fit(self, inputs: FitInputs):
        """-> the method's frozen State, from inputs.features (and whichever other inputs it uses)."""
        raise NotImplementedError

    def fits_streaming(self) -> bool:
        """True if fit_stream is implemented for this configuration (e.g. patchcore with sampler=online)."""
        return False

    def fit_stream(self, batches: Iterator[np.ndarray], num_images: int, progress=None):
        """Like fit, from feature batches [b, D, h, w] (b = a few images) consumed once, in order; num_images
        is the expected total (for progress; images that fail to decode may make it smaller)."""
        raise NotImplementedError(f"{self.name} does not fit from a stream of feature batches")

    def head(self, state) -> nn.Module:
        raise NotImplementedError

    def sizing_knobs(self) -> tuple[SizingKnob, ...]:
        """Parameters `adtk build --target` may lower when the head does not fit the frame budget; default none."""
        return ()

    def fit_report(self, state) -> dict[str, Any]:
        """Facts about the fitted state worth recording (e.g. memory bank rows x dims)."""
        return {}


_METHODS: dict[str, type] = {}  # canonical name -> class; read through methods/registry.py


def registered_classes() -> dict[str, type]:
    """The registered method classes by canonical name (the registry reads them; nothing else should)."""
    return _METHODS


def canonical_name(name: str) -> str:
    """Hyphens and underscores are the same name; case does not matter."""
    return name.strip().lower().replace("-", "_")


def register_method(name: str):
    """Class decorator: make a method available to create_method() and the CLI (methods/registry.py), and
    record the keyword arguments every instance is constructed with (its params() for the manifest)."""
    key = canonical_name(name)

    def decorator(cls):
        if key in _METHODS:
            raise ValueError(f"method {key!r} is registered twice ({_METHODS[key].__module__} and {cls.__module__})")
        original_init = cls.__init__
        signature = inspect.signature(original_init)
        keywords = [name for name, p in signature.parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]  # not self

        @functools.wraps(original_init)
        def init_recording_arguments(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            original_init(self, *args, **kwargs)
            # set after the body: a registered subclass's wrapper finishes last, so its own arguments win
            self._constructor_args = {name: bound.arguments[name] for name in keywords}

        cls.__init__ = init_recording_arguments
        cls.name = key
        _METHODS[key] = cls
        return cls

    return decorator


def state_arrays(state) -> dict[str, np.ndarray]:
    """The numpy arrays of a frozen State dataclass, by field name (for tests and summaries)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if isinstance(getattr(state, f.name), np.ndarray)}
