"""Frame preprocessing shared by fitting and by the compiled artefact.

The same torch module runs when the toolkit extracts training features and inside the exported ONNX
graph, so a user never re-implements resize and normalisation on the device: the mismatch between
training-time and deployment-time preprocessing that anomalib users keep reporting cannot happen here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Interpolation used by every adtk model. Recorded in the artefact's input contract.
# antialias=False on purpose: ONNX Resize with antialias needs opset 18 and TensorRT's parser rejects it,
# and the usual downscale here (~300 px -> 256 px) is mild. Whatever is chosen, fit and artefact share it.
RESIZE_MODE = "bilinear"
RESIZE_ALIGN_CORNERS = False
RESIZE_ANTIALIAS = False


class FramePreprocess(nn.Module):
    """uint8 RGB frames [B, H, W, 3] (any H, W) -> normalised float32 [B, 3, S_h, S_w] at the model size.

    Normalisation is (x / 255 - mean) / std, folded into one multiply-add per channel.
    """

    def __init__(self, image_size_px: int | Sequence[int], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if isinstance(image_size_px, int):
            image_size_px = (image_size_px, image_size_px)
        self.image_size_px = (int(image_size_px[0]), int(image_size_px[1]))
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("offset", -mean_t / std_t)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).to(torch.float32)
        x = F.interpolate(
            x, size=self.image_size_px, mode=RESIZE_MODE, align_corners=RESIZE_ALIGN_CORNERS,
            antialias=RESIZE_ANTIALIAS,
        )
        return x * self.scale + self.offset

    def contract(self) -> dict:
        """The input contract as recorded in the artefact's manifest."""
        return {
            "input": "frames",
            "dtype": "uint8",
            "layout": "NHWC",
            "channels": "RGB",
            "height_width": "any (resized inside the graph)",
            "model_size_px": list(self.image_size_px),
            "resize": {"mode": RESIZE_MODE, "align_corners": RESIZE_ALIGN_CORNERS, "antialias": RESIZE_ANTIALIAS},
            "normalise": {"mean": list(self.mean), "std": list(self.std), "scale": "x / 255"},
        }
