"""TensorRT backend: run an adtk artefact as a TensorRT engine (Jetson, x86 + NVIDIA GPU).

NOT EXECUTED in adtk's CI or on its build machines: TensorRT and a CUDA GPU are absent there, so this file
is written against the documented `tensorrt` 10 Python API (IBuilder / IRuntime, named-tensor I/O,
`execute_async_v3`) and `cuda-python` (cudart) for device memory, both imported lazily; its tests skip
with a reason where `tensorrt` is not importable. The static checks that do run everywhere are in
adtk.export.passes.tensorrt_check.

    engine bytes = build_serialized_engine(onnx_bytes, precision)   # fp16 flag; INT8 from the QDQ graph
    backend = TensorRTBackend(verified_artefact, engine_path=None)  # engine beside the file, else built now

An engine file is used only if its metadata (`<engine>.json`) names the sha256 of the verified artefact
and the engine's own sha256 matches: a stale or altered engine is refused, never silently used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from adtk.runtime.artefact import INPUT_NAME, VerifiedArtefact
from adtk.runtime.backends.base import Backend
from adtk.runtime.errors import ArtefactError, BackendError

MAX_FRAME_PX = (2160, 3840)  # optimisation profile's largest frame (4K UHD); frames are resized in the graph


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("the tensorrt backend needs NVIDIA TensorRT's Python package (`import tensorrt` failed); "
                           "it ships with JetPack on Jetson, and as the `tensorrt` wheel on x86 with CUDA. "
                           "Use backend='onnxruntime' meanwhile") from None
    return trt


def tensorrt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def build_serialized_engine(onnx_bytes: bytes, precision: str, model_size_px: tuple[int, int], max_batch: int = 1,
                            workspace_gb: float = 1.0) -> bytes:
    """Parse the ONNX artefact and build an engine. fp16: FP16 kernels allowed, distances kept fp32 by the
    graph (its Casts); int8: the graph's Q/DQ nodes give explicit INT8 (no calibrator needed)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT's ONNX parser refused the artefact: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantisation: scales come from the Q/DQ nodes
        config.set_flag(trt.BuilderFlag.FP16)  # layers outside the Q/DQ region may use fp16
    profile = builder.create_optimization_profile()
    height, width = model_size_px
    profile.set_shape(INPUT_NAME, (1, 16, 16, 3), (1, height, width, 3), (max_batch, *MAX_FRAME_PX, 3))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


def engine_metadata_path(engine_path: str | Path) -> Path:
    return Path(str(engine_path) + ".json")


def read_engine(engine_path: str | Path, artefact: VerifiedArtefact) -> bytes:
    """Engine bytes, after checking its metadata names this artefact and its sha256 matches."""
    engine_path = Path(engine_path)
    meta_path = engine_metadata_path(engine_path)
    if not meta_path.is_file():
        raise ArtefactError(f"{engine_path}: no metadata {meta_path.name} beside the engine; rebuild it with "
                            "`adtk compile`")
    from adtk.runtime.artefact import MAX_ARTEFACT_BYTES
    from adtk.runtime.regular_files import open_regular, read_small_json

    try:  # regular files of a sane size (a FIFO would block, a huge one fill memory); the metadata one JSON object
        meta = read_small_json(meta_path)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        with open_regular(engine_path) as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_ARTEFACT_BYTES:
                raise ValueError(f"the engine is {size} bytes, over the 2 GB limit")
            data = stream.read(size)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: UnicodeDecodeError and JSONDecodeError too
        raise ArtefactError(f"{engine_path}: the engine or its metadata {meta_path.name} cannot be used ({exc}); "
                            "rebuild it with `adtk compile`") from None
    if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
        raise ArtefactError(f"{engine_path}: engine sha256 does not match its metadata: altered or damaged")
    if meta.get("artefact_sha256") != artefact.file_sha256:
        raise ArtefactError(f"{engine_path}: built from another artefact (sha256 {str(meta.get('artefact_sha256'))[:12]}"
                            f"..., this one {artefact.file_sha256[:12]}...); rebuild it with `adtk compile`")
    return data


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, artefact: VerifiedArtefact, engine_path: str | Path | None = None):
        trt = import_tensorrt()
        from cuda.bindings import runtime as cudart  # cuda-python, lazily: only this backend needs it

        self._trt, self._cudart = trt, cudart
        if engine_path is not None:
            engine_bytes = read_engine(engine_path, artefact)
        else:
            target = artefact.manifest.get("target", {})
            engine_bytes = build_serialized_engine(artefact.model_bytes, target.get("precision", "fp32"),
                                                   tuple(artefact.manifest["input"]["model_size_px"]))
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendError("TensorRT could not deserialise the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.output_names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)
                             if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]
        self.input_spec = {INPUT_NAME: (np.dtype(np.uint8), (None, None, None, 3))}
        _, self.stream = cudart.cudaStreamCreate()

    def _device_copy(self, array: np.ndarray) -> int:
        cudart = self._cudart
        _, pointer = cudart.cudaMalloc(max(array.nbytes, 1))
        cudart.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
        return pointer

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cudart = self._trt, self._cudart
        frames = np.ascontiguousarray(inputs[INPUT_NAME])
        self.context.set_input_shape(INPUT_NAME, frames.shape)
        buffers = [self._device_copy(frames)]
        self.context.set_tensor_address(INPUT_NAME, buffers[0])
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            outputs[name] = np.empty(shape, dtype=dtype)
            _, pointer = cudart.cudaMalloc(max(outputs[name].nbytes, 1))
            buffers.append(pointer)
            self.context.set_tensor_address(name, pointer)
        try:
            if not self.context.execute_async_v3(self.stream):
                raise BackendError("TensorRT failed to run the engine")
            cudart.cudaStreamSynchronize(self.stream)
            for name, pointer in zip(self.output_names, buffers[1:]):
                cudart.cudaMemcpy(outputs[name].ctypes.data, pointer, outputs[name].nbytes,
                                  cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        finally:
            for pointer in buffers:
                cudart.cudaFree(pointer)
        return outputs
