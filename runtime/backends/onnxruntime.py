"""onnxruntime backend: CPU everywhere, CUDA / TensorRT execution providers where installed."""

from __future__ import annotations

import numpy as np

from adtk.runtime.backends.base import Backend
from adtk.runtime.errors import BackendError
from adtk.runtime.extras import require

# Preference order for backend="auto": the fastest provider that this onnxruntime build has.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}


def choose_providers(requested: str, available: list[str]) -> list[str]:
    if requested == "auto":
        chosen = [p for p in PROVIDER_PREFERENCE if p in available]
        return chosen or ["CPUExecutionProvider"]
    provider = PROVIDER_ALIASES.get(requested, requested)
    if provider not in available:
        raise BackendError(f"onnxruntime provider {requested!r} is not available here "
                           f"(available: {', '.join(available)})")
    return [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_bytes: bytes, provider: str = "auto", intra_op_threads: int | None = None,
                 memory_arena: bool = True):
        ort = require("onnxruntime", "scoring with onnxruntime")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The CPU arena keeps the largest blocks it ever handed out: right for fixed-size frames (fast),
        # wrong for a daemon fed frames of any size (its RSS would stay at the largest frame's peak).
        options.enable_cpu_mem_arena = bool(memory_arena)
        # Errors only: at its default (warnings) onnxruntime prints coloured lines to stderr for odd but working
        # graphs (an unused initializer...), which would land in the daemon's log on every load. 3 = ERROR.
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        self.providers = choose_providers(provider, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime could not load the artefact: {exc}") from None
        self.input_spec = {
            i.name: (np.dtype(np.uint8) if i.type == "tensor(uint8)" else np.dtype(np.float32),
                     tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self.session.get_inputs()
        }
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.output_names, inputs)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed to score the frames: {exc}") from None
        return dict(zip(self.output_names, values))
