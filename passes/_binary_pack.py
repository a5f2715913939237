"""Bit packing of binarised weights and the standard-ONNX subgraph that unpacks them.

Bit order: the signs of a weight tensor are read in its stored layout (row-major, C order) and
packed little-endian within each byte: bit ``j`` (value ``2**j``) of byte ``i`` holds the sign of
flat element ``8*i + j``, ``1`` meaning +1 and ``0`` meaning -1 (a zero weight counts as +1). The
last byte is padded with 0 bits. The bytes are a uint8 initializer of shape ``[ceil(N/8), 1]``
(``numpy.packbits(bits, bitorder="little")``); the per-channel scales are an initializer shaped to
broadcast against the weight (``[C, 1, 1, 1]`` for Conv): floats of the weight's dtype or float16,
or uint8 log codes with their decoding subgraph (``passes._binary_alpha``).

The subgraph, per bit-plane ``p`` (opset >= 11; BitShift is defined for uint8)::

    bits  = BitShift(BitShift(packed, [7, 6, ..., 0], LEFT), [7], RIGHT)  # uint8 [M, 8], column j = bit j
    sign  = (Cast(bits, to=T) - 0.5) * 2    # ±1; T = W.dtype, or float32 for float16 weights;
                                            # * 2·unit (±unit) for uint8 codes (passes._binary_alpha)
    plane = Reshape(sign, W.shape) * alpha_p      # Reshape [-1] + Slice [0:N] first if N % 8 != 0;
                                                  # alpha_p through Cast if stored as float16;
                                                  # Pow(ratio, Cast(codes)) if stored as uint8 codes
    W     = plane_0 (+ plane_1)                   # (Cast to float16 if T differs) named like the weight

All inputs are constants, so a runtime may fold the whole subgraph into a float initializer when
the session starts (``unpack_nodes_left_by_onnxruntime`` measures whether onnxruntime does).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.runtime import make_session
from passes._binary_alpha import ScaleFormat, add_node, emit_power
from passes._binary_layers import WeightLayer
from passes._binary_refit import Planes

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
    """Bytes of one layer's weight before and after packing (bits + scales)."""

    float_bytes: int
    packed_bytes: int

    @property
    def ratio(self) -> float:
        return self.float_bytes / self.packed_bytes


class UnpackBuilder:
    """Adds unpacking subgraphs to one graph, sharing the small constants between layers."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        #: names of the nodes added (to find any a runtime leaves unfolded)
        self.node_names: set[str] = set()
        # constants of an earlier run (the same values under the same names) are reused
        self._constants: dict[str, gs.Tensor] = {
            name: t for name, t in graph.tensors().items() if name.startswith("binary/") and isinstance(t, gs.Constant)}

    def replace_weight(self, layer: WeightLayer, planes: Planes, fmt: ScaleFormat) -> PackedSize:
        """Feed ``layer`` from packed ``planes`` instead of its float weight initializer; the scales
        are stored in ``fmt`` (cast or decoded to the weight's dtype in the subgraph)."""
        weight = layer.weight
        dtype = fmt.compute
        terms: list[gs.Variable] = []
        packed_bytes = 0
        for p in range(planes.bits):
            prefix = f"{weight.name}/binary{p}"
            packed = pack_signs(layer.from_matrix(planes.signs[p]))
            scale: gs.Tensor
            if planes.codes is not None:  # ±unit from the sign subgraph, ratio^code from emit_power
                coded = planes.codes[p]
                unit2 = gs.Constant(f"{prefix}/sign_scale", coded.sign_scale(dtype))
                scale = emit_power(self.graph, prefix, coded, layer.alpha_shape(), dtype, self.node_names)
                packed_bytes += packed.nbytes + coded.nbytes(dtype)
            else:
                unit2 = self._shared(f"binary/two_{dtype.name}", np.array(2, dtype))
                scale = gs.Constant(f"{prefix}/alpha", planes.alphas[p].astype(fmt.dtype).reshape(layer.alpha_shape()))
                packed_bytes += packed.nbytes + scale.values.nbytes
            terms.append(self._plane(prefix, packed, unit2, scale, list(weight.shape), dtype))
        out = gs.Variable(weight.name, dtype=weight.values.dtype, shape=list(weight.shape))
        result = terms[0]
        for i, term in enumerate(terms[1:], start=1):
            result = self._node("Add", f"{weight.name}/binary/add{i}", [result, term], dtype, weight.shape)
        if weight.values.dtype != dtype:
            result = self._node("Cast", f"{weight.name}/binary/cast", [result], weight.values.dtype, weight.shape,
                                to=_onnx_type(weight.values.dtype))
        index = layer.node.inputs.index(weight)
        self._rename_output(result, out)
        layer.node.inputs[index] = out
        return PackedSize(int(weight.values.nbytes), packed_bytes)

    def _plane(self, prefix: str, packed: np.ndarray, unit2: gs.Tensor, scale: gs.Tensor, shape: list[int],
               dtype: np.dtype) -> gs.Variable:
        """``Reshape((bit − 0.5) · unit2) · scale`` for one bit-plane, in ``dtype``: ``unit2`` is 2 for
        float scales, ``2·unit`` for uint8 codes (``scale = ratio^code``)."""
        n, m = int(np.prod(shape)), packed.shape[0]
        shifts = self._shared("binary/shifts", np.arange(7, -1, -1, dtype=np.uint8))
        seven = self._shared("binary/seven", np.array([7], np.uint8))
        half = self._shared(f"binary/half_{dtype.name}", np.array(0.5, dtype))
        bits = gs.Constant(f"{prefix}/bits", packed)
        top = self._node("BitShift", f"{prefix}/shl", [bits, shifts], np.uint8, [m, 8], direction="LEFT")
        bit = self._node("BitShift", f"{prefix}/shr", [top, seven], np.uint8, [m, 8], direction="RIGHT")
        real = self._node("Cast", f"{prefix}/cast", [bit], dtype, [m, 8], to=_onnx_type(dtype))
        centred = self._node("Sub", f"{prefix}/sub", [real, half], dtype, [m, 8])
        sign = self._node("Mul", f"{prefix}/mul2", [centred, unit2], dtype, [m, 8])
        if n != 8 * m:  # drop the padding bits of the last byte
            zero = self._shared("binary/zero", np.array([0], np.int64))
            flat = self._node("Reshape", f"{prefix}/flatten", [sign, self._shared("binary/flat", np.array([-1], np.int64))],
                              dtype, [8 * m])
            count = gs.Constant(f"{prefix}/count", np.array([n], np.int64))
            sign = self._node("Slice", f"{prefix}/trim", [flat, zero, count, zero], dtype, [n])
        shaped = self._node("Reshape", f"{prefix}/reshape", [sign, gs.Constant(f"{prefix}/shape", np.array(shape, np.int64))],
                            dtype, shape)
        if np.dtype(scale.dtype) != dtype:
            scale = self._node("Cast", f"{prefix}/alpha_cast", [scale], dtype, scale.shape, to=_onnx_type(dtype))
        return self._node("Mul", f"{prefix}/scale", [shaped, scale], dtype, shape)

    def _node(self, op: str, name: str, inputs: list[gs.Tensor], dtype: np.dtype | type, shape: Sequence[int],
              **attrs: object) -> gs.Variable:
        self.node_names.add(name)
        return add_node(self.graph, op, name, inputs, dtype, shape, **attrs)

    def _shared(self, name: str, values: np.ndarray) -> gs.Tensor:
        if name not in self._constants:
            self._constants[name] = gs.Constant(name, values)
        return self._constants[name]

    @staticmethod
    def _rename_output(produced: gs.Variable, final: gs.Variable) -> None:
        node = produced.inputs[0]
        node.outputs[0] = final


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
