"""``MatMul(A, W) + b`` (A of rank 2, W and b constant) becomes ``Gemm(A, W, b)``.

onnxruntime does the same rewrite before it fuses Q/DQ groups; done after quantization, it leaves a
float Gemm. As a Gemm the bias becomes int32 inside QGemm, which also keeps the output in float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import constant_value
from onnxopt.pass_base import Tolerance
from passes.canonical.rule import RulePass, RuleScope

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiasAdd:
    add: gs.Node
    bias: np.ndarray


@dataclass(kw_only=True)
class MatMulAddToGemm(RulePass[BiasAdd]):
    name: ClassVar[str] = "matmul-add-to-gemm"
    summary: ClassVar[str] = ("Turn MatMul(A, W) + b with a rank-2 A and constant W, b into Gemm (the bias then "
                              "quantizes to int32 inside QGemm).")
    # Gemm adds the bias inside the product's accumulation, MatMul+Add after it: one rounding apart
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=1e-5, atol=1e-6)
    ops: ClassVar[frozenset[str]] = frozenset({"MatMul"})

    def check(self, node: gs.Node, scope: RuleScope) -> BiasAdd | str:
        a, w = node.inputs
        out = node.outputs[0]
        weight = constant_value(w)
        if weight is None or weight.ndim != 2:
            return "second input is not a constant matrix"
        rank = len(scope.types.shapes.get(a.name, ()))
        if rank != 2:
            return f"first input has rank {rank or 'unknown'}, Gemm needs 2"
        if len(out.outputs) != 1 or scope.is_graph_output(out):
            return f"output '{out.name}' has {len(out.outputs) + scope.is_graph_output(out)} consumers, not one Add"
        add = out.outputs[0]
        if add.op != "Add":
            return f"output feeds {add.op}, not Add"
        bias_tensor = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        bias = constant_value(bias_tensor)
        if bias is None or bias.dtype != weight.dtype or bias.size != weight.shape[1] or bias.ndim > 2:
            return f"the Add operand '{bias_tensor.name}' is not a constant vector of {weight.shape[1]} {weight.dtype}"
        return BiasAdd(add, bias)

    def rewrite(self, node: gs.Node, found: BiasAdd, scope: RuleScope) -> None:
        a, w = node.inputs
        gemm_bias = gs.Constant(scope.names.fresh(f"{node.name}_gemm_bias"),
                                np.ascontiguousarray(found.bias.reshape(-1)))
        scope.graph.nodes.append(gs.Node("Gemm", node.name, inputs=[a, w, gemm_bias],
                                         outputs=list(found.add.outputs)))
        found.add.outputs.clear()
        node.outputs.clear()
