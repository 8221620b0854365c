"""The small interface every method implements (anomalib's split of fitting and exported head).

    method = create_method("patchcore", coreset_ratio=0.1)
    embedding = method.embedding(backbone.channels)        # nn.Module: stage maps -> features
    state = method.fit(features)                           # numpy/faiss allowed; returns a frozen State
    head = method.head(state)                              # nn.Module, buffers only: what gets exported

`features` is what `embedding` produced for the training images, stacked as a float32 numpy array:
[N, D, h, w] for patch methods. The head's forward takes the embedding's output and returns
HeadOutput(patch_scores [B, h, w], image_score [B]); it holds no faiss/numpy and no branch on training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn


class HeadOutput(NamedTuple):
    patch_scores: torch.Tensor  # [B, h, w], higher = more anomalous
    image_score: torch.Tensor  # [B]


class AnomalyMethod:
    """Base class: holds the constructor parameters so they can be recorded in the manifest."""

    name: str = ""  # set by @register_method

    def params(self) -> dict[str, Any]:
        """The constructor keyword arguments, as recorded in the artefact manifest."""
        return dict(self._params)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def fit(self, features: np.ndarray, progress=None):
        raise NotImplementedError

    def head(self, state) -> nn.Module:
        raise NotImplementedError

    def fit_report(self, state) -> dict[str, Any]:
        """Facts about the fitted state worth recording (e.g. memory bank rows x dims)."""
        return {}


def state_arrays(state) -> dict[str, np.ndarray]:
    """The numpy arrays of a frozen State dataclass, by field name (for tests and summaries)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if isinstance(getattr(state, f.name), np.ndarray)}
