"""The small interface every method implements (anomalib's split of fitting and exported head).

    method = create_method("patchcore", coreset_ratio=0.1)
    embedding = method.embedding(backbone.channels)        # nn.Module: stage maps -> features
    state = method.fit(features)                           # numpy/faiss allowed; returns a frozen State
    head = method.head(state)                              # nn.Module, buffers only: what gets exported

`features` is what `embedding` produced for the training images, stacked as a float32 numpy array:
[N, D, h, w] for patch methods. The head's forward takes the embedding's output and returns
HeadOutput(patch_scores [B, h, w], image_score [B]); it holds no faiss/numpy and no branch on training.

A method whose fit can consume the features a few images at a time says so with fits_streaming(); the build
then extracts and fits batch by batch (fit_stream) and never holds all the features (bounded memory).
"""

from __future__ import annotations

import dataclasses
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


class HeadOutput(NamedTuple):
    patch_scores: torch.Tensor  # [B, h, w], higher = more anomalous
    image_score: torch.Tensor  # [B]


class AnomalyMethod:
    """Base class: holds the constructor parameters so they can be recorded in the manifest."""

    name: str = ""  # set by @register_method
    # True for methods that learn from labelled defect images (seed 003): the build then calls
    # fit(features, progress, defects=LabelledFeatures(...)) (toolkit/labelled_defects.py).
    uses_labelled_defects: bool = False
    log: Callable[[str], None] | None = None  # the build's log, for decisions a method makes while it prepares


    def params(self) -> dict[str, Any]:
        """The constructor keyword arguments, as recorded in the artefact manifest."""
        return dict(self._params)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def prepare_backbone(self, backbone: nn.Module, preprocess: nn.Module, images: Iterable[np.ndarray],
                         make_backbone: Callable[..., nn.Module], progress=None) -> nn.Module:
        """Change the backbone before any feature is extracted (e.g. REB's fine-tuning); default: unchanged.

        images: the fit images, uint8 [H, W, 3] (lazy: nothing is read unless iterated).
        make_backbone(stages=..., trainable=...): a new backbone with the build's weights, e.g. deeper.
        progress(done, total, note). The returned module is what the scoring graph (and the artefact)
        contains; a method that changes weights updates its weights_source / weights_sha256.
        """
        return backbone

    def fit(self, features: np.ndarray, progress=None):
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


def state_arrays(state) -> dict[str, np.ndarray]:
    """The numpy arrays of a frozen State dataclass, by field name (for tests and summaries)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if isinstance(getattr(state, f.name), np.ndarray)}
