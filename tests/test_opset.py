"""Opset upgrades: converted by onnx's version converter, refused naming the op that blocked it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import parse, run_model
from onnx import helper

from onnxopt.opset import OpsetUpgradeError, model_opset, upgrade_opset

OPSET_9 = """
<ir_version: 4, opset_import: ["" : 9]>
agraph (float[N, 4] x) => (float[N, 4] y) {
    r = Relu(x)
    y = Dropout(r)
}
"""


def test_upgrade_keeps_the_outputs() -> None:
    # setup
    model = parse(OPSET_9)
    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)
    # execute
    converted = upgrade_opset(model, 13, "int8")
    # assert
    assert model_opset(converted) == 13 and model_opset(model) == 9
    np.testing.assert_array_equal(run_model(converted, {"x": x})[0], run_model(model, {"x": x})[0])


def test_failed_conversion_names_the_op() -> None:
    # setup: an op without a schema in the default domain cannot be converted
    model = parse(OPSET_9)
    model.graph.node.append(helper.make_node("NoSuchOp", ["y"], ["z"], name="odd"))
    model.graph.output[0].name = "z"
    # execute / assert
    with pytest.raises(OpsetUpgradeError, match="int8 needs opset >= 13, the model has opset 9, and the onnx version "
                                                "converter cannot convert it: op NoSuchOp has no conversion to opset 13"):
        upgrade_opset(model, 13, "int8")
