"""FramePreprocess resizes only the rows a bilinear resize reads; the values must stay F.interpolate's."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adtk.toolkit.preprocess import FramePreprocess, resize_bilinear_nhwc

SIZES = [(256, 256), (300, 217), (1024, 1280), (37, 500), (1, 3), (1250, 500)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("size_hw", [(256, 256), (64, 96)])
def test_resize_equals_whole_frame_interpolate(height, width, size_hw):
    frames = torch.from_numpy(np.random.default_rng(height * width).integers(0, 256, (2, height, width, 3),
                                                                              dtype=np.uint8))
    expected = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=size_hw, mode="bilinear",
                             align_corners=False, antialias=False)
    got = resize_bilinear_nhwc(frames, size_hw)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-3, rtol=0), float((got - expected).abs().max())


def test_exported_preprocess_matches_torch_at_any_frame_size():
    onnxruntime = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from adtk.export.formats import export_onnx_bytes

    preprocess = FramePreprocess((64, 96), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    model_bytes = export_onnx_bytes(preprocess, (64, 96))
    # the frame-size choice is in the graph: one If (whole-frame resize up to 2 x 64 rows, gathered rows above)
    assert [n.op_type for n in onnx.load_from_string(model_bytes).graph.node].count("If") == 1
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for height, width in [(64, 96), (480, 640), (50, 31), (128, 96), (129, 96)]:
        frames = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        (got,) = session.run(None, {"frames": frames})
        expected = preprocess(torch.from_numpy(frames)).numpy()
        assert got.shape == (1, 3, 64, 96)
        # onnxruntime's Resize rounds differently from torch's in the last bits (the whole-frame Resize did too)
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("height,width", [(256, 256), (300, 217), (37, 500), (1250, 500)])
def test_whole_and_gathered_resizes_agree(height, width):
    """The two ways FramePreprocess resizes (picked by frame height) give F.interpolate's values either way."""
    preprocess = FramePreprocess((64, 96), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    frames = torch.from_numpy(np.random.default_rng(width).integers(0, 256, (1, height, width, 3), dtype=np.uint8))
    whole, gathered = preprocess.resize_whole(frames), preprocess.resize_gathered(frames)
    assert torch.allclose(whole, gathered, atol=1e-3, rtol=0), float((whole - gathered).abs().max())
