"""Static model statistics: op histogram, parameter count, MACs, size.

MACs are estimated from inferred shapes for Conv, ConvTranspose, Gemm and MatMul (the ops that
dominate compute); a symbolic leading (batch) dimension counts as 1, so the figure is per sample,
while a node with any other symbolic dimension (dynamic height, width, sequence) is counted in
``macs_unknown_nodes`` instead of being guessed. Elementwise ops are ignored. Nodes, parameters and
MACs include If/Loop/Scan bodies (both branches of an If, one iteration of a Loop).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxopt.graph import subgraph_protos
from onnxopt.model_io import skeleton

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStats:
    nodes: int
    op_histogram: dict[str, int]
    parameters: int
    parameter_bytes: int
    macs: int
    macs_unknown_nodes: int
    opsets: dict[str, int]
    inputs: list[tuple[str, str, list[int | str]]] = field(default_factory=list)
    outputs: list[tuple[str, str, list[int | str]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _dims(type_proto: onnx.TypeProto) -> list[int | str]:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return []
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in type_proto.tensor_type.shape.dim
    ]


def _elem_name(type_proto: onnx.TypeProto) -> str:
    if not type_proto.HasField("tensor_type"):
        return "non-tensor"
    return onnx.helper.tensor_dtype_to_np_dtype(type_proto.tensor_type.elem_type).name


def _numeric_shape(dims: list[int | str]) -> list[int] | None:
    """Static dims with a symbolic batch axis read as 1; ``None`` when any other dim is symbolic."""
    if not dims:
        return None
    known = [isinstance(d, int) and d > 0 for d in dims]
    if not all(known[1:]):
        return None
    return [d if ok else 1 for d, ok in zip(dims, known)]  # type: ignore[misc]


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Compute statistics of ``model`` (shape inference runs on a copy; failures are tolerated)."""
    graph = model.graph
    try:
        # inferred without the large weights: no 2 GB limit, no serialised copy of the weights
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception as exc:  # shape inference may fail on custom ops; MACs then stay partial
        logger.debug("shape inference failed: %s", exc)
        inferred = model
    graphs = [graph, *subgraph_protos(graph)]
    nodes = [n for g in graphs for n in g.node]
    initializers = [t for g in graphs for t in g.initializer]
    shapes: dict[str, list[int] | None] = {}
    for g in [inferred.graph, *subgraph_protos(inferred.graph)]:
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            shapes[vi.name] = _numeric_shape(_dims(vi.type))
    for init in initializers:
        shapes[init.name] = list(init.dims)

    macs = 0
    unknown = 0
    for node in nodes:
        if node.op_type not in _MAC_OPS:
            continue
        got = _MAC_OPS[node.op_type](node, shapes)
        if got is None:
            unknown += 1
        else:
            macs += got

    params = sum(int(np.prod(init.dims)) for init in initializers)
    param_bytes = sum(
        int(np.prod(init.dims)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        if init.data_type != onnx.TensorProto.STRING
        else 0
        for init in initializers
    )
    return ModelStats(
        nodes=len(nodes),
        op_histogram=dict(sorted(Counter(n.op_type for n in nodes).items())),
        parameters=params,
        parameter_bytes=param_bytes,
        macs=int(macs),
        macs_unknown_nodes=unknown,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        inputs=[(i.name, _elem_name(i.type), _dims(i.type)) for i in graph.input
                if i.name not in {t.name for t in graph.initializer}],
        outputs=[(o.name, _elem_name(o.type), _dims(o.type)) for o in graph.output],
    )


def _conv_macs(node: onnx.NodeProto, shapes: dict[str, list[int] | None]) -> int | None:
    w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
    if not w or not y:
        return None
    # W: [Cout, Cin/group, k...]; every output element costs Cin/group * prod(k) MACs.
    return int(np.prod(y) * np.prod(w[1:]))


def _conv_transpose_macs(node: onnx.NodeProto, shapes: dict[str, list[int] | None]) -> int | None:
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if not x or not w:
        return None
    # W: [Cin, Cout/group, k...]; every input element is scattered to Cout/group * prod(k) outputs.
    return int(np.prod(x) * np.prod(w[1:]))


def _gemm_macs(node: onnx.NodeProto, shapes: dict[str, list[int] | None]) -> int | None:
    a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not a or not y:
        return None
    trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
    k = a[0] if trans_a else a[-1]
    return int(np.prod(y) * k)


def _matmul_macs(node: onnx.NodeProto, shapes: dict[str, list[int] | None]) -> int | None:
    a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not a or not y:
        return None
    return int(np.prod(y) * a[-1])


_MAC_OPS = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
}
