"""Bit packing of binarised weights and the standard-ONNX subgraph that unpacks them.

Bit order: the signs of a weight tensor are read in its stored layout (row-major, C order) and
packed little-endian within each byte: bit ``j`` (value ``2**j``) of byte ``i`` holds the sign of
flat element ``8*i + j``, ``1`` meaning +1 and ``0`` meaning -1 (a zero weight counts as +1). A
2-bit layer's two planes follow each other (plane 0 first). All packed layers of one run share one
bit stream, each layer's signs following the previous layer's without padding; the last byte is
padded with 0 bits. The bytes are a uint8 initializer of shape ``[ceil(N/8), 1]``
(``numpy.packbits(bits, bitorder="little")``).

The subgraph (opset >= 11; BitShift is defined for uint8), once per run and compute dtype ``T``
(the weight's dtype, float32 for float16 weights)::

    binary/signs.hi  = BitShift(binary/signs.bits, binary/shifts=[7, 6, ..., 0], LEFT)   # uint8 [M, 8]
    binary/signs.on  = Cast(BitShift(binary/signs.hi, binary/seven=[7], RIGHT), to=bool)  # column j = bit j
    binary/signs     = Where(binary/signs.on, 1, -1)                                      # ±1 in T
    <w>/b, ...       = Split(Reshape(binary/signs, [-1]), binary/signs.n)   # one ±1 run per layer (+ padding)

and per layer, with weight ``<w>`` (``lead`` = ``[2]`` for 2-bit layers, nothing for 1-bit)::

    <w>/b.s = Reshape(<w>/b, lead + W.shape)          # the shape tensor is shared by equal shapes
    <w>/a   = scales in T, shape lead + broadcast shape of one plane's scales ([C, 1, 1, 1] for Conv):
              the initializer itself, Cast(<w>/a.float16) when stored as float16, or
              unit · ratio^codes from uint8 codes (passes.binary.alpha.emit_scales)
    <w>     = <w>/b.s · <w>/a                          # 2-bit: ReduceSum over the plane axis;
                                                       # float16 weights: Cast at the end

Node names are their output's name; no unpacking tensor carries value_info (shape inference
recovers types and shapes). All inputs are constants, so a runtime may fold the whole subgraph into
float initializers when the session starts (``unpack_nodes_left_by_onnxruntime`` measures whether
onnxruntime does); the products ``±1 · alpha`` and the sum of two planes are exact, so the weights
equal ``Planes.dequantize``.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graph import default_opset
from onnxopt.runtime import make_session
from passes.binary.alpha import ScaleFormat, add_node, emit_scales
from passes.binary.layers import WeightLayer
from passes.binary.refit import Planes

logger = logging.getLogger(__name__)

BIT_ORDER = ("little-endian within a byte: bit j of byte i holds the sign of flat element 8*i+j of the "
             "weight in its stored row-major layout; 1 = +1, 0 = -1 (zero weights count as +1)")
#: the ops only unpacking subgraphs use (what ``unpack`` looks for)
UNPACK_OPS = frozenset({"BitShift"})
MIN_OPSET = 11


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """Pack a ±1 tensor (any shape, row-major) into uint8 ``[ceil(N/8), 1]`` in the documented order."""
    return np.packbits(signs.reshape(-1) > 0, bitorder="little").reshape(-1, 1)


def unpack_signs(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The ±1 int8 tensor of ``shape`` that ``pack_signs`` packed (the numpy reference)."""
    n = int(np.prod(shape))
    bits = np.unpackbits(packed.reshape(-1), count=n, bitorder="little")
    return (bits.astype(np.int8) * 2 - 1).reshape(shape)


@dataclass(frozen=True)
class PackedSize:
    """Bytes of one layer's weight before and after packing (its share of the bit stream, rounded up
    to whole bytes, plus its scales)."""

    float_bytes: int
    packed_bytes: int
    #: the prefix of the layer's unpacking tensors and nodes (``b<i>/``)
    prefix: str

    @property
    def ratio(self) -> float:
        return self.float_bytes / self.packed_bytes


@dataclass
class _Stream:
    """The sign bits of the layers packed in one compute dtype, and the Split outputs they feed."""

    dtype: np.dtype
    signs: list[np.ndarray] = field(default_factory=list)
    outputs: list[gs.Variable] = field(default_factory=list)


class UnpackBuilder:
    """Adds unpacking subgraphs to one graph (``replace_weight`` per layer, then ``finish``), sharing
    the bit stream, its decoding and the small constants between layers."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.opset = default_opset(graph)
        #: names of the nodes added (to find any a runtime leaves unfolded)
        self.node_names: set[str] = set()
        self._tensors = graph.tensors()
        self._taken = set(self._tensors) | {node.name for node in graph.nodes}
        self._constants: dict[str, gs.Tensor] = {}
        self._streams: dict[np.dtype, _Stream] = {}
        self._next_index = 0

    def replace_weight(self, layer: WeightLayer, planes: Planes, fmt: ScaleFormat) -> PackedSize:
        """Feed ``layer`` from packed ``planes`` instead of its float weight initializer; the scales
        are stored in ``fmt`` (cast or decoded to the weight's dtype in the subgraph)."""
        weight = layer.weight
        dtype = fmt.compute
        prefix = self._layer_prefix()
        lead = [planes.bits] if planes.bits > 1 else []
        stream = self._streams.setdefault(dtype, _Stream(dtype))
        signs = np.stack([layer.from_matrix(planes.signs[p]) for p in range(planes.bits)])
        flat = self._claim(gs.Variable(f"{prefix}b"))
        stream.signs.append(signs.reshape(-1))
        stream.outputs.append(flat)
        shape = self._shared(f"binary/shape.{'x'.join(map(str, lead + list(weight.shape)))}",
                             np.array(lead + list(weight.shape), np.int64))
        shaped = self._node("Reshape", f"{prefix}b.s", [flat, shape])
        alpha_shape = lead + layer.alpha_shape()
        if planes.codes is not None:
            scale = emit_scales(self.graph, f"{prefix}a", planes.codes, layer.alpha_shape(), dtype, self.node_names)
            scale_bytes = sum(coded.nbytes(dtype) for coded in planes.codes)
        else:
            stored = planes.alphas.astype(fmt.dtype).reshape(alpha_shape)
            scale_bytes = stored.nbytes
            if fmt.dtype == dtype:
                scale = gs.Constant(f"{prefix}a", stored)
            else:
                scale = self._node("Cast", f"{prefix}a", [gs.Constant(f"{prefix}a.{fmt.dtype.name}", stored)],
                                   to=_onnx_type(dtype))
        steps: list[tuple[str, dict[str, object]]] = [("Mul", {})]
        if lead:
            steps.append(("ReduceSum", {"keepdims": 0}))
        if weight.values.dtype != dtype:
            steps.append(("Cast", {"to": _onnx_type(weight.values.dtype)}))
        result: gs.Tensor = shaped
        for i, (op, attrs) in enumerate(steps):
            inputs = [result, scale] if op == "Mul" else [result]
            if op == "ReduceSum":
                if self.opset >= 13:
                    inputs.append(self._shared("binary/axis0", np.array([0], np.int64)))
                else:
                    attrs = {**attrs, "axes": [0]}
            if i < len(steps) - 1:
                result = self._node(op, f"{prefix}w.{op.lower()}", inputs, **attrs)
            else:  # the unpacked weight keeps the weight's name
                result = self._node(op, f"{prefix}w", inputs, output=weight.name, **attrs)
        layer.node.inputs[layer.node.inputs.index(weight)] = result
        return PackedSize(int(weight.values.nbytes), -(-signs.size // 8) + scale_bytes, prefix)

    def finish(self) -> None:
        """Add the bit streams and their decoding (after every ``replace_weight``)."""
        for stream in self._streams.values():
            self._decode(stream)
        self._streams.clear()

    def _decode(self, stream: _Stream) -> None:
        base = self._stream_name(stream.dtype)
        signs = np.concatenate(stream.signs)
        packed = pack_signs(signs)
        sizes = [s.size for s in stream.signs]
        outputs = list(stream.outputs)
        if 8 * packed.shape[0] != signs.size:  # the padding bits of the last byte
            sizes.append(8 * packed.shape[0] - signs.size)
            outputs.append(self._claim(gs.Variable(f"{base}.pad")))
        shifts = self._shared("binary/shifts", np.arange(7, -1, -1, dtype=np.uint8))
        seven = self._shared("binary/seven", np.array([7], np.uint8))
        one = self._shared(f"binary/one_{stream.dtype.name}", np.array(1, stream.dtype))
        minus_one = self._shared(f"binary/minus_one_{stream.dtype.name}", np.array(-1, stream.dtype))
        top = self._node("BitShift", f"{base}.hi", [gs.Constant(f"{base}.bits", packed), shifts], direction="LEFT")
        bit = self._node("BitShift", f"{base}.bit", [top, seven], direction="RIGHT")
        on = self._node("Cast", f"{base}.on", [bit], to=onnx.TensorProto.BOOL)
        sign = self._node("Where", base, [on, one, minus_one])
        flat = self._node("Reshape", f"{base}.flat", [sign, self._shared("binary/flat", np.array([-1], np.int64))])
        split_sizes = np.array(sizes, np.int64)
        if self.opset >= 13:
            split = gs.Node("Split", f"{base}.split", attrs={"axis": 0},
                            inputs=[flat, gs.Constant(f"{base}.n", split_sizes)], outputs=outputs)
        else:
            split = gs.Node("Split", f"{base}.split", attrs={"axis": 0, "split": split_sizes.tolist()},
                            inputs=[flat], outputs=outputs)
        self.node_names.add(split.name)
        self.graph.nodes.append(split)

    def _node(self, op: str, name: str, inputs: list[gs.Tensor], output: str | None = None,
              **attrs: object) -> gs.Variable:
        self.node_names.add(name)
        self._taken.add(name)
        return add_node(self.graph, op, name, inputs, output=output, **attrs)

    def _claim(self, tensor: gs.Variable) -> gs.Variable:
        self._taken.add(tensor.name)
        return tensor

    def _layer_prefix(self) -> str:
        """``b<i>/`` with the first ``i`` under which the model has no tensor or node yet."""
        self._next_index = next(i for i in itertools.count(self._next_index)
                                if not any(name.startswith(f"b{i}/") for name in self._taken))
        self._next_index += 1
        return f"b{self._next_index - 1}/"

    def _stream_name(self, dtype: np.dtype) -> str:
        """``binary/signs`` (``_float64`` for float64 weights), numbered if an earlier run took it."""
        suffix = "" if dtype == np.float32 else f"_{dtype.name}"
        base = next(base for base in (f"binary/signs{i if i > 1 else ''}{suffix}" for i in itertools.count(1))
                    if not any(name == base or name.startswith(f"{base}.") for name in self._taken))
        self._taken.add(base)
        return base

    def _shared(self, name: str, values: np.ndarray) -> gs.Tensor:
        """The constant ``values`` under ``name`` (numbered if the model holds other values under it),
        one tensor for the whole model."""
        i = 1
        while True:
            candidate = name if i == 1 else f"{name}~{i}"
            found = self._constants.get(candidate, self._tensors.get(candidate))
            if found is None:
                self._constants[candidate] = gs.Constant(candidate, values)
                self._taken.add(candidate)
                return self._constants[candidate]
            if (isinstance(found, gs.Constant) and found.values.dtype == values.dtype
                    and np.array_equal(found.values, values)):
                self._constants[candidate] = found
                return found
            i += 1


def _onnx_type(dtype: np.dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def unpack_nodes_left_by_onnxruntime(model: onnx.ModelProto, providers: Sequence[str], names: set[str]) -> int:
    """How many of the nodes ``names`` remain after onnxruntime's session-start optimizations
    (0: every unpacking subgraph was folded into a float initializer)."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-binary-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        make_session(model, providers=providers, optimize=True, optimized_model_path=str(path))
        optimized = onnx.load(str(path), load_external_data=False)
    return sum(node.name in names for node in optimized.graph.node)
