"""export.formats.replace_initializers: constants fixed after an export (the build's calibration) written into the
exported model, or refused when the exported model no longer holds them as exported."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adtk.export.formats import replace_initializers


def scaled_model(scale: float, offset: float):
    """y = (x - offset) * scale, the two constants as initializers named like a module's buffers."""
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "norm.offset"], ["shifted"]),
         helper.make_node("Mul", ["shifted", "norm.scale"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(offset, np.float32), "norm.offset"),
         numpy_helper.from_array(np.array(scale, np.float32), "norm.scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.asarray(x, np.float32)})[0]


def test_the_new_constants_are_what_the_model_computes_with():
    model = scaled_model(scale=2.75, offset=0.3125)
    exported = {"norm.offset": np.array(0.3125, np.float32), "norm.scale": np.array(2.75, np.float32)}
    assert replace_initializers(model, exported, {"norm.offset": 1.5, "norm.scale": 0.25})
    np.testing.assert_array_equal(run(model, [1.5, 5.5]), [0.0, 1.0])
    assert {init.name: init.data_type for init in model.graph.initializer} == {
        "norm.offset": TensorProto.FLOAT, "norm.scale": TensorProto.FLOAT}


@pytest.mark.parametrize("exported", [
    {"norm.offset": np.array(0.5, np.float32), "norm.scale": np.array(2.75, np.float32)},  # not the exported value
    {"norm.offset": np.array(0.3125, np.float32), "norm.gone": np.array(2.75, np.float32)},  # folded away
])
def test_a_constant_not_held_as_exported_changes_nothing(exported):
    model = scaled_model(scale=2.75, offset=0.3125)
    before = model.SerializeToString()
    assert not replace_initializers(model, exported, {name: 1.0 for name in exported})
    assert model.SerializeToString() == before
