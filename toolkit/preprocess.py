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
    (whole contiguous rows: a cheap Gather), and only they are cast. The width is then resized in place, in the
    frame's own channels-last layout: [B, 2 S_h, W, C] read as an NCHW tensor whose "height" is the frame's
    width and whose "width" is its C channels, resized to (S_w, C) (the size-C axis keeps its size: bilinear
    at scale 1 reads each channel alone, weight 0 on its neighbour). The two row taps are then blended with
    torch's weights (bilinear_taps), and only the small [B, S_h, S_w, C] result is transposed to NCHW: the
    earlier form transposed the 2 S_h gathered uint8 rows, which onnxruntime's Transpose does slowly (at
    2448 x 2048 the preprocessing took ~19 ms against ~3 ms now, bench/preprocess_latency.py, machine loaded).
    Gathering the columns too would be per-pixel 3-byte copies, which onnxruntime's Gather does slowly.
    """
    rows_a, rows_b, row_weight = bilinear_taps(frames.shape[1], size_hw[0])
    height, width = size_hw
    rows = frames.index_select(1, torch.cat([rows_a, rows_b])).to(torch.float32)  # [B, 2 S_h, W, C]
    rows = F.interpolate(rows, size=(width, rows.shape[-1]), mode=RESIZE_MODE, align_corners=RESIZE_ALIGN_CORNERS,
                         antialias=RESIZE_ANTIALIAS)  # [B, 2 S_h, S_w, C]
    top, bottom = rows[:, :height], rows[:, height:]
    return (top + (bottom - top) * row_weight.view(1, -1, 1, 1)).permute(0, 3, 1, 2)


# Frames with up to this many times the model's rows are resized whole; taller ones through the gathered rows.
# Measured in onnxruntime, one thread, 256 x 256 model (min of 25 calls, machine loaded): whole / gathered =
# 0.19 / 0.39 ms at 256 x 256, 0.89 / 1.73 ms at 512 x 512, 3.1 / 2.2 ms at 1024 x 1280, 51 / 3.2 ms at 2048 x 2448.
SMALL_FRAME_ROWS = 2


class FramePreprocess(nn.Module):
    """uint8 RGB frames [B, H, W, 3] (any H, W) -> normalised float32 [B, 3, S_h, S_w] at the model size.

    Resize: bilinear, half-pixel, no antialias, computed one of two ways with the same values (F.interpolate's):
    on the whole frame for frames up to SMALL_FRAME_ROWS x the model's rows, on the gathered row taps
    (resize_bilinear_nhwc) for taller ones, whichever onnxruntime runs faster at that size. The exported graph
    holds both and picks per frame (an ONNX If on the frame's height).
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
        small = frames.shape[1] <= SMALL_FRAME_ROWS * self.image_size_px[0]
        # exporting for frames of any size: the choice is made per frame, in the graph (an ONNX If); with static
        # shapes (export_onnx_bytes(static_frame_hw=...)) `small` is a plain bool and the one branch is traced
        if torch.compiler.is_compiling() and not isinstance(small, bool):
            x = torch.cond(small, self.resize_whole, self.resize_gathered, (frames,))
        else:
            x = self.resize_whole(frames) if small else self.resize_gathered(frames)
        return x * self.scale + self.offset

    def branches(self) -> tuple[int, nn.Module, nn.Module]:
        """(rows, small, large): frames of up to `rows` rows take `small`, taller ones `large`, each a module
        frames -> normalised images computing what forward does for them; for an exporter that records one path
        per trace and makes the choice an ONNX If itself (export/split_export.py)."""
        return (SMALL_FRAME_ROWS * self.image_size_px[0], _ResizeBranch(self, self.resize_whole),
                _ResizeBranch(self, self.resize_gathered))

    def resize_whole(self, frames: torch.Tensor) -> torch.Tensor:
        """The reference resize itself, on the whole frame: the cheaper one for frames of up to
        SMALL_FRAME_ROWS x the model's rows (no gathered copy of the rows, no blend)."""
        return F.interpolate(frames.permute(0, 3, 1, 2).to(torch.float32), size=self.image_size_px, mode=RESIZE_MODE,
                             align_corners=RESIZE_ALIGN_CORNERS, antialias=RESIZE_ANTIALIAS)

    def resize_gathered(self, frames: torch.Tensor) -> torch.Tensor:
        """resize_bilinear_nhwc: exact at every frame size (export/passes/frame_branch.py keeps only this one
        where a target's parser takes no If), the cheaper one for large frames."""
        return resize_bilinear_nhwc(frames, self.image_size_px)

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


class _ResizeBranch(nn.Module):
    """One of FramePreprocess's two resizes followed by its normalisation (FramePreprocess.branches)."""

    def __init__(self, preprocess: FramePreprocess, resize):
        super().__init__()
        self.preprocess = preprocess
        self.resize = resize

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.resize(frames) * self.preprocess.scale + self.preprocess.offset
