"""The build's feature extraction (backbone + method embedding) run through onnxruntime instead of torch eager.

Why: a build spends most of its feature time in the backbone, and torch's eager CPU kernels are slow for the
depthwise-separable trunks the toolkit uses (BatchNorm as a separate pass after every convolution, TF "same"
padding as a separate Pad): on tf_efficientnet_lite0 at 256 px, batch 4, one thread, onnxruntime (Conv + BN +
Clip fused, NCHWc depthwise kernels) took ~16 ms per image against ~50 ms eager (bench/build_speed.py times
whole builds). The artefact itself runs on onnxruntime, so the fit features now come from the same kind of
kernels that score frames on the device.

The modules are exported once per build at the batch shape the build uses (torch's TorchScript exporter: a
fixed shape exports in ~1-2 s, the dynamic-shape exporter of the artefact takes several times that), and a
smaller last batch is padded to that shape (rows are independent: the trunk is in eval mode). The first batch
runs through both and must agree; if it does not, or the export fails, the extraction says so through `warn` and
stays on torch, so a wrong export never feeds a fit.
Small extractions stay on torch: below `min_images` the export would cost more than it saves.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

# Below this many images the one-off export (~1-2 s) costs more than onnxruntime saves (~30 ms per image).
MIN_IMAGES_FOR_ONNX = 64
# Agreement of the first batch: |onnx - torch| <= ATOL + RTOL * max|torch|. Float32 sums in another order
# differ by ~1e-6 relative; an exporter bug differs by orders of magnitude more.
PARITY_RTOL, PARITY_ATOL = 1e-4, 1e-5


class _Trunk(nn.Module):
    def __init__(self, backbone: nn.Module, embedding: nn.Module):
        super().__init__()
        self.backbone, self.embedding = backbone, embedding

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(images))


class TrunkRunner:
    """images float32 [n, 3, H, W] (the backbone's inputs) -> the embedding's float32 features, as numpy.

    use_onnx: None = onnxruntime when the extraction has >= MIN_IMAGES_FOR_ONNX images (see `expect`), True =
    always, False = torch eager only.
    """

    def __init__(self, backbone: nn.Module, embedding: nn.Module, use_onnx: bool | None = None, warn=None):
        self.trunk = _Trunk(backbone, embedding).eval()
        self.use_onnx, self.warn = use_onnx, warn
        self.wanted = use_onnx is True
        self.session = None
        self.shape: tuple[int, ...] | None = None  # the exported input shape
        self.engine = "torch"  # what ran the last batch: "torch" or "onnxruntime"

    def expect(self, num_images: int) -> None:
        """Decide the engine for an extraction of `num_images` images (before its first batch)."""
        if self.use_onnx is None:
            self.wanted = self.wanted or num_images >= MIN_IMAGES_FOR_ONNX

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if not self.wanted:
            self.engine = "torch"
            return self.trunk(images).numpy()
        if self.session is None:
            return self._compile_and_check(images)
        count = images.shape[0]
        if tuple(images.shape[1:]) != self.shape[1:] or count > self.shape[0]:  # not the exported shape
            self.engine = "torch"
            return self.trunk(images).numpy()
        feed = images.numpy()
        if count < self.shape[0]:  # a smaller last batch: pad with zeros, keep its own rows
            feed = np.concatenate([feed, np.zeros((self.shape[0] - count, *self.shape[1:]), np.float32)])
        self.engine = "onnxruntime"
        return self.session.run(None, {"images": np.ascontiguousarray(feed, dtype=np.float32)})[0][:count]

    def _compile_and_check(self, images: torch.Tensor) -> np.ndarray:
        import onnxruntime as ort  # imported here: a torch-only extraction does not need it

        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice; checked below
                warnings.simplefilter("ignore")
                torch.onnx.export(self.trunk, (images,), buffer, input_names=["images"], output_names=["features"],
                                  opset_version=17, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # the same CPU share torch was given
            options.inter_op_num_threads = 1
            # No spinning: onnxruntime's threads otherwise busy-wait after each batch, on the cores that decode and
            # resize the next batch in torch (the default build's features 7.6 -> 4.9 s: resizing 2.4 -> 0.8 s,
            # the trunk itself 3.8 -> 3.1 s, on 2 cores)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - any exporter or onnxruntime failure: torch does the same job
            return self._stay_on_torch(self.trunk(images).numpy(), f"could not be exported ({type(error).__name__}: "
                                       f"{str(error).splitlines()[0][:200] if str(error) else ''})")
        self.shape = tuple(images.shape)
        expected = self.trunk(images).numpy()
        got = self.session.run(None, {"images": np.ascontiguousarray(images.numpy(), dtype=np.float32)})[0]
        error = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not error <= PARITY_ATOL + PARITY_RTOL * float(np.abs(expected).max()):
            return self._stay_on_torch(expected, f"disagrees with torch's on the first batch (max |diff| {error:.3g})")
        self.engine = "onnxruntime"
        return got

    def _stay_on_torch(self, features: np.ndarray, why: str) -> np.ndarray:
        self.wanted, self.use_onnx, self.session, self.engine = False, False, None, "torch"
        if self.warn is not None:
            self.warn(f"feature extraction: onnxruntime's trunk {why}; extracting with torch instead (slower, "
                      "same modules)")
        return features
