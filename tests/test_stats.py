"""Static statistics: parameters, MACs and nodes, subgraphs included, dynamic dims never guessed."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import parse
from onnx import numpy_helper

from onnxopt.stats import model_stats


DYNAMIC_CONV = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3, H, W] x) => (float[N, 4, H, W] y) {
    y = Conv <pads = [1, 1, 1, 1]> (x, w)
}
"""


def _with_weights(text: str, **weights: tuple[int, ...]) -> onnx.ModelProto:
    """The model ``text`` with zero-filled initializers of the given shapes."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(np.zeros(shape, np.float32), name)
                                   for name, shape in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def test_conv_and_gemm_macs_per_sample_with_a_dynamic_batch() -> None:
    model = _with_weights("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N, 3, 8, 8] x) => (float[N, 5] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            f = Flatten(c)
            y = Gemm <transB = 1> (f, g)
        }""", w=(4, 3, 3, 3), g=(5, 256))
    stats = model_stats(model)
    # Conv: 4*8*8 outputs x 3*3*3 MACs; Gemm: 256 x 5
    assert stats.macs == 4 * 8 * 8 * 27 + 256 * 5
    assert (stats.parameters, stats.parameter_bytes, stats.macs_unknown_nodes) == (108 + 1280, 4 * 1388, 0)


def test_dynamic_spatial_dims_make_macs_unknown_not_guessed() -> None:
    model = _with_weights(DYNAMIC_CONV, w=(4, 3, 3, 3))
    stats = model_stats(model)
    assert (stats.macs, stats.macs_unknown_nodes) == (0, 1)


def test_subgraph_nodes_weights_and_macs_are_counted() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[1, 2] x, bool c) => (float[1, 2] y) {
            y = If(c) <
                then_branch = g1 () => (float[1, 2] a) <float[2, 2] K = {1.0, 2.0, 3.0, 4.0}> { a = MatMul(x, K) },
                else_branch = g2 () => (float[1, 2] b) { b = Neg(x) }>
        }""")
    stats = model_stats(model)
    assert stats.op_histogram == {"If": 1, "MatMul": 1, "Neg": 1}
    assert (stats.nodes, stats.parameters, stats.macs) == (3, 4, 4)


def test_reports_mark_macs_with_unknown_shapes_as_a_lower_bound() -> None:
    from onnxopt.render import fmt_macs

    model = _with_weights(DYNAMIC_CONV, w=(4, 3, 3, 3))
    assert fmt_macs(model_stats(model)) == "≥ 0 (+1 of unknown shape)"
