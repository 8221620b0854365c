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


def bilinear_taps(in_len, out_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source taps of a bilinear, half-pixel, no-antialias resize along one axis of length in_len (an int or a
    traced size) to out_len -> (first index [S], second index [S], weight of the second [S]), as torch's
    upsample_bilinear2d computes them: src = max(0, (dst + 0.5) * in / out - 0.5), taps floor(src) and the next
    one (clamped to the edge), weight src - floor(src)."""
    dst = torch.arange(out_len, dtype=torch.float32)
    src = ((dst + 0.5) * (in_len / out_len) - 0.5).clamp(min=0.0)
    first = src.floor()
    weight = src - first
    first = first.to(torch.int64)
    # The next tap, kept inside the frame. first <= in_len - 1 always, so only first + 1 == in_len needs the
    # step back. Not clamp(max=in_len - 1): in_len is the traced frame size, and an ONNX Clip with a
    # non-constant bound is refused by TensorRT's parser (export/passes/tensorrt_check.py).
    second = first + 1
    second = second - (second >= in_len).to(torch.int64)
    return first, second, weight


def resize_bilinear_nhwc(frames: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, S_h, S_w]: the same values as F.interpolate(bilinear,
    align_corners=False, antialias=False) on the whole float frame, computed on less of it.

    Why: exported as one ONNX Resize, the whole frame is first transposed to NCHW and cast to float; at camera
    sizes (2448 x 2048) that alone cost several times the rest of the graph in onnxruntime. Without antialias
    every output row reads only two source rows, so those 2 x S_h rows are gathered first, still as uint8
    (whole contiguous rows: a cheap Gather), and only they are transposed and cast. The width is then resized
    by the same bilinear Resize (a height scale of 1 is the identity) and the two row taps are blended with
    torch's weights (bilinear_taps). Gathering the columns too would be per-pixel 3-byte copies, which
    onnxruntime's Gather does slowly. Measured in bench/frame_latency.py.
    """
    rows_a, rows_b, row_weight = bilinear_taps(frames.shape[1], size_hw[0])
    height, width = size_hw
    rows = frames.index_select(1, torch.cat([rows_a, rows_b]))  # uint8 [B, 2 S_h, W, C]
    rows = rows.permute(0, 3, 1, 2).to(torch.float32)  # [B, C, 2 S_h, W]
    rows = F.interpolate(rows, size=(2 * height, width), mode=RESIZE_MODE, align_corners=RESIZE_ALIGN_CORNERS,
                         antialias=RESIZE_ANTIALIAS)
    top, bottom = rows[:, :, :height], rows[:, :, height:]
    return top + (bottom - top) * row_weight.view(1, 1, -1, 1)


class FramePreprocess(nn.Module):
    """uint8 RGB frames [B, H, W, 3] (any H, W) -> normalised float32 [B, 3, S_h, S_w] at the model size.

    Resize: resize_bilinear_nhwc (bilinear, half-pixel, no antialias, on the uint8 frame's gathered taps).
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
        x = resize_bilinear_nhwc(frames, self.image_size_px)
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
