"""The frame-size If (FramePreprocess) inlined as its else branch: same values at every frame size, no If left,
and the result converts to an older opset (the rewrites do not reach into subgraphs)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from adtk.export.formats import export_onnx_bytes  # noqa: E402
from adtk.export.passes.frame_branch import inline_else_branches  # noqa: E402
from adtk.export.passes.opset import downgrade_opset  # noqa: E402
from adtk.toolkit.preprocess import FramePreprocess  # noqa: E402


def run(model, frames):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"frames": frames})[0]


def test_inlined_branch_scores_every_frame_size_like_the_if():
    model = onnx.load_from_string(export_onnx_bytes(FramePreprocess((32, 48), (0.5,) * 3, (0.25,) * 3).eval(),
                                                    (32, 48)))
    assert [n.op_type for n in model.graph.node].count("If") == 1
    inlined, replaced = inline_else_branches(model)
    assert replaced == 1 and "If" not in {n.op_type for n in inlined.graph.node}
    onnx.checker.check_model(inlined)
    rng = np.random.default_rng(0)
    for height, width in [(32, 48), (64, 20), (65, 48), (200, 333), (16, 16)]:  # both sides of 2 x 32 rows
        frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        np.testing.assert_allclose(run(inlined, frames), run(model, frames), atol=1e-4, rtol=0)
    older, _ = downgrade_opset(inlined, 17)
    frames = rng.integers(0, 256, (1, 40, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(run(older, frames), run(model, frames), atol=1e-4, rtol=0)


def test_a_graph_without_if_is_unchanged():
    model = onnx.load_from_string(export_onnx_bytes(FramePreprocess((32, 48), (0.5,) * 3, (0.25,) * 3).eval(),
                                                    (32, 48)))
    inlined, _ = inline_else_branches(model)
    again, replaced = inline_else_branches(inlined)
    assert replaced == 0 and [n.name for n in again.graph.node] == [n.name for n in inlined.graph.node]
