"""A backend runs verified model bytes: `input_spec` plus `run(inputs) -> outputs` (Polygraphy-style).

The base class checks inputs against the spec, then calls the subclass's `_run`.
"""

from __future__ import annotations

import numpy as np

from adtk.runtime.errors import BackendError


class Backend:
    name = "base"
    # input name -> (dtype, rank, fixed trailing dims or None per axis)
    input_spec: dict[str, tuple[np.dtype, tuple[int | None, ...]]] = {}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, (dtype, dims) in self.input_spec.items():
            if name not in inputs:
                raise BackendError(f"{self.name}: missing input {name!r}")
            array = inputs[name]
            if array.dtype != dtype or array.ndim != len(dims) or any(
                    d is not None and d != s for d, s in zip(dims, array.shape)):
                raise BackendError(f"{self.name}: input {name!r} must be {np.dtype(dtype).name} with shape "
                                   f"{['*' if d is None else d for d in dims]}, got {array.dtype.name} {list(array.shape)}")
        return self._run(inputs)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
