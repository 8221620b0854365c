"""Detector: load one verified adtk artefact and score frames. numpy + onnxruntime only.

    detector = Detector.load("model.onnx")
    prediction = detector.predict(frames)    # uint8 [B, H, W, 3] RGB, one [H, W, 3] frame, or image paths
                                             # (grey, grey + alpha and RGBA: 1, 2 or 4 channels, converted)
    prediction.pred_score   # [B] float32 in [0, 1]; 0.5 is the calibrated threshold
    prediction.pred_label   # [B] bool, True = anomalous
    prediction.anomaly_map  # [B, H, W] float32 in [0, 1] at the model size H x W (manifest["input"]["model_size_px"])
    prediction.pred_mask    # [B, H, W] bool, True where anomaly_map > 0.5 (the map threshold)
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np

from adtk.runtime.artefact import INPUT_NAME, VerifiedArtefact, read_artefact
from adtk.runtime.errors import ArtefactError, BackendError, DataError
from adtk.runtime.pixels import check_frame_pixels, check_frame_side, to_rgb_frame


@dataclass(frozen=True)
class Prediction:
    pred_score: np.ndarray  # [B] float32, 0..1, 0.5 = threshold
    pred_label: np.ndarray  # [B] bool
    anomaly_map: np.ndarray  # [B, H, W] float32, 0..1
    pred_mask: np.ndarray  # [B, H, W] bool, True where anomaly_map > 0.5 (raw map above the map threshold)
    raw_score: np.ndarray  # [B] float32, the method's own score scale
    raw_anomaly_map: np.ndarray  # [B, H, W] float32


def create_backend(artefact: VerifiedArtefact, backend: str, engine_path=None, memory_arena: bool = True,
                   **options):
    """backend: "auto" (the best present: TensorRT, then onnxruntime's TensorRT / CUDA / CPU providers),
    "tensorrt" (a TensorRT engine: `engine_path`, else built at load), "onnxruntime", or an onnxruntime
    provider alias ("cpu", "cuda", "ort-tensorrt")."""
    from adtk.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from adtk.runtime.backends.tensorrt import TensorRTBackend, tensorrt_available

    if backend == "tensorrt" or (backend == "auto" and (engine_path is not None or tensorrt_available())):
        return TensorRTBackend(artefact, engine_path=engine_path)
    if backend in ("auto", "onnxruntime"):
        return OnnxRuntimeBackend(artefact.model_bytes, provider="auto", memory_arena=memory_arena, **options)
    if backend in ("cpu", "cuda", "ort-tensorrt"):
        return OnnxRuntimeBackend(artefact.model_bytes, provider=backend.replace("ort-", ""),
                                  memory_arena=memory_arena, **options)
    raise BackendError(f"unknown backend {backend!r} (known: auto, tensorrt, onnxruntime, cpu, cuda, ort-tensorrt)")


def read_verified(path: str | Path, public_key: str | Path | None = None) -> VerifiedArtefact:
    """Read and verify an artefact file (integrity record, manifest, contract) and, when a public key is given or
    $ADTK_PUBLIC_KEY names one, its ed25519 signature `<file>.sig` against the bytes read. Nothing of the file
    has reached a backend yet."""
    from adtk.runtime.signing import configured_public_key, verify_signature

    artefact = read_artefact(path)
    key = configured_public_key(public_key)
    if key is not None:
        verify_signature(artefact.model_bytes, path, key)
    return artefact


ENCODED = (bytes, bytearray, memoryview)


def _is_pillow_image(image) -> bool:
    """A Pillow image, known without importing Pillow (the runtime imports it only for encoded images)."""
    return type(image).__module__.startswith("PIL.") and hasattr(image, "getbands")


def as_frame(image, source: str = "frame", max_pixels: int | None = None) -> np.ndarray:
    """One image (array, path, an encoded file's bytes or a Pillow image) -> uint8 [H, W, 3] RGB, within the pixel
    budget.

    Paths and bytes go through the one decoder (adtk.runtime.images.decode_image), Pillow images through its mode
    conversion (a palette image is not its indices, CMYK not RGBA), arrays through the same final conversion
    (adtk.runtime.pixels.to_rgb_frame: grey repeated, alpha composited over black)."""
    if isinstance(image, (str, PathLike)):
        from adtk.runtime.images import read_image  # Pillow is imported only when paths are given

        frame = read_image(image, max_pixels=max_pixels)
    elif isinstance(image, ENCODED):
        from adtk.runtime.images import decode_image

        frame = decode_image(bytes(image), source, max_pixels=max_pixels)
    elif _is_pillow_image(image):
        from adtk.runtime.images import pillow_image_to_rgb

        check_frame_pixels(image.width, image.height, source, max_pixels)
        frame = pillow_image_to_rgb(image, source, max_pixels=max_pixels)
    else:
        frame = to_rgb_frame(np.asarray(image), source)
        check_frame_pixels(frame.shape[1], frame.shape[0], source, max_pixels)
    check_frame_side(frame.shape[1], frame.shape[0], source)
    return frame


class Detector:
    def __init__(self, artefact: VerifiedArtefact, backend, max_pixels: int | None = None):
        self.artefact = artefact
        self.manifest = artefact.manifest
        self.backend = backend
        self.max_pixels = max_pixels  # per frame; None = adtk.runtime.pixels.default_max_pixels()

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", public_key: str | Path | None = None,
             max_pixels: int | None = None, **backend_options) -> "Detector":
        """Verify the file (`read_verified`: integrity record, manifest, contract; its ed25519 signature
        `<file>.sig` when a public key is given or $ADTK_PUBLIC_KEY names one), then open it with a backend.

        Only the verified bytes reach the backend: the file is read once, so a file replaced after the
        check cannot be the one that runs.
        """
        artefact = read_verified(path, public_key)
        return cls(artefact, create_backend(artefact, backend, **backend_options), max_pixels=max_pixels)

    @property
    def threshold(self) -> float:
        return float(self.manifest["calibration"]["threshold"])

    @property
    def model_size_px(self) -> tuple[int, int]:
        height, width = self.manifest["input"]["model_size_px"]
        return int(height), int(width)

    def predict(self, frames) -> Prediction:
        """frames: uint8 [B, H, W, 3] RGB, one [H, W, 3] frame, or a sequence of paths/arrays (an encoded file's
        bytes and Pillow images are taken too, converted as a decoded file is)."""
        batches = self._as_batches(frames)
        parts = [self._checked(self.backend.run({INPUT_NAME: batch}), len(batch)) for batch in batches]
        merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        # artefacts built before pred_mask was an output: the same rule on the normalised map
        pred_mask = merged["pred_mask"] if "pred_mask" in merged else merged["anomaly_map"] > 0.5
        return Prediction(
            pred_score=merged["pred_score"], pred_label=merged["pred_label"].astype(bool),
            anomaly_map=merged["anomaly_map"], pred_mask=pred_mask.astype(bool), raw_score=merged["raw_score"],
            raw_anomaly_map=merged["raw_anomaly_map"],
        )

    def _checked(self, outputs: dict, batch: int) -> dict:
        """The backend's outputs if they keep the artefact contract (runtime/manifest.py OUTPUTS_DESCRIPTION) for
        `batch` frames; else ArtefactError naming the output. A re-sealed graph may give outputs of the right names
        but another shape or type: a [B, 2] or an empty pred_score failed deep inside numpy (an internal error), a
        NaN or 7.0 pred_score was printed as a score (NaN is not even JSON), a float pred_label was cast to True."""
        height, width = self.model_size_px
        problems = []
        for name, shape, kinds in (("pred_score", (batch,), "f"), ("raw_score", (batch,), "f"),
                                   ("pred_label", (batch,), "bui"), ("anomaly_map", (batch, height, width), "f"),
                                   ("raw_anomaly_map", (batch, height, width), "f"),
                                   ("pred_mask", (batch, height, width), "bui")):
            value = outputs.get(name)
            if value is None and name == "pred_mask":
                continue  # an artefact from before pred_mask (predict derives it)
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype.kind not in kinds:
                got = f"{value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
                expected = "float" if kinds == "f" else "bool or integer"
                problems.append(f"{name} is {got}, expected {expected} {list(shape)}")
        if not problems:
            scores = outputs["pred_score"]
            if not (np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))):
                problems.append(f"pred_score {np.round(scores[:4], 6).tolist()} is not within 0..1")
            elif not np.all(np.isfinite(outputs["raw_score"])):
                problems.append(f"raw_score {outputs['raw_score'][:4].tolist()} is not finite")
        if problems:
            raise ArtefactError(f"the artefact's graph breaks the output contract ({'; '.join(problems[:3])}): it is "
                                "not an adtk build or it was edited after the build. Do not use it; copy it again "
                                "from the build machine")
        return outputs

    def _as_batches(self, frames) -> list[np.ndarray]:
        """Group frames into uint8 [B, H, W, 3] batches of equal size, keeping the input order."""
        if isinstance(frames, np.ndarray) and frames.ndim == 4:
            if frames.shape[0] == 0:
                raise DataError("frames: an empty batch [0, H, W, 3]; give at least one frame")
            check_frame_side(frames.shape[2], frames.shape[1], "frames")
            check_frame_pixels(frames.shape[2], frames.shape[1], "frames", self.max_pixels)
            # the conversion of one frame (as_frame), on the whole batch: grey, grey + alpha and RGBA batches are
            # taken as their frames are one by one, and anything else refused the same way
            return [to_rgb_frame(frames, "frames", batch=True)]
        if isinstance(frames, (np.ndarray, str, PathLike, *ENCODED)) or _is_pillow_image(frames):
            frames = [frames]
        if not isinstance(frames, Sequence):
            raise DataError(f"frames: expected uint8 [B, H, W, 3] RGB, one [H, W, 3] frame, or a sequence of frames, "
                            f"image paths, encoded image bytes or Pillow images; got {type(frames).__name__}")
        if len(frames) == 0:
            raise DataError("no frames given")
        decoded = [as_frame(f, str(f) if isinstance(f, (str, PathLike)) else f"frame {i}", self.max_pixels)
                   for i, f in enumerate(frames)]
        batches, current = [], [decoded[0]]
        for frame in decoded[1:]:
            if frame.shape == current[-1].shape:
                current.append(frame)
            else:
                batches.append(np.stack(current))
                current = [frame]
        batches.append(np.stack(current))
        return batches
