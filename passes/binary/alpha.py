"""How a binarised layer stores its per-channel scales, and how the model decodes them.

``alpha_dtype`` picks the format (``ScaleFormat``):

* ``float32`` / ``float16``: one float per channel and bit-plane (``float32`` means the weight's own
  dtype); ``4C`` or ``2C`` bytes per plane.
* ``uint8``: one log-scale code per channel and plane plus two float32 scalars per plane
  (``ratio`` and ``2·unit``), ``C + 8`` bytes. The levels are geometric, ``alpha_c = unit · ratio^code_c = exp(lo + code_c·step)``
  with ``lo = log unit`` and ``step = log ratio``, for ``code_c`` in 1..255; code 0 is a zero scale
  (a channel whose weights are all 0). Codes 1 and 255 are the smallest and largest nonzero scale of
  the plane, so every decoded scale is within ``step / 2`` of the true one in log space (plus
  float32 rounding). All scales equal: ``ratio = 1``, every code 1. A negative scale (a least-squares
  solve can give one) is stored as its magnitude with the channel's signs flipped, which is the same
  weight (``alpha·B = (−alpha)·(−B)``).

The uint8 decoding costs three nodes per layer (both bit-planes of a 2-bit layer share them; the
codes, ratios and units are stacked on a leading plane axis)::

    exponent = Cast(codes, to=float32)              # codes in the broadcast shape of the scales
    power    = Pow(ratio, exponent)
               (· Sign(exponent) when a plane has a zero scale; Cast to the weight's dtype if not float32)
    alpha    = unit · power

Few nodes matter: the three nodes and two scalars cost ~145 bytes of graph per layer, as much as
the uint8 codes of a 50-channel layer save over float32 scales (``3C - 8`` bytes). ``decode_log``
evaluates that same subgraph in onnxruntime, so the scales the refit works with and reports errors
for are exactly the ones the packed model computes (``Pow`` is not bit-exact across
implementations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import PreconditionError
from onnxopt.runtime import make_session

logger = logging.getLogger(__name__)

AlphaDtype = Literal["float32", "float16", "uint8"]
#: codes 1..LEVELS carry geometric scales, code 0 is a zero scale
LEVELS = 255
DECODE_OPSET = 13


@dataclass(frozen=True)
class LogCodes:
    """One plane's scales as uint8 codes: ``alpha = unit · ratio^code`` (0 for code 0)."""

    codes: np.ndarray  # uint8 [C]
    unit: np.float32
    ratio: np.float32

    @property
    def step(self) -> float:
        """The log-space distance of neighbouring levels."""
        return float(np.log(np.float64(self.ratio)))

    @property
    def has_zero(self) -> bool:
        return bool((self.codes == 0).any())

    def nbytes(self, dtype: np.dtype) -> int:
        """Stored bytes: the codes, ``ratio`` (float32) and ``unit`` (in ``dtype``, the dtype the
        unpacking subgraph computes in)."""
        return int(self.codes.nbytes) + 4 + np.dtype(dtype).itemsize


def encode_log(alphas: np.ndarray) -> LogCodes:
    """Codes of non-negative finite scales ``[C]`` (see the module docstring)."""
    positive = alphas > 0
    codes = np.zeros(alphas.shape, np.uint8)
    if not positive.any():
        return LogCodes(codes, np.float32(1), np.float32(1))
    logs = np.log(alphas[positive].astype(np.float64))
    smallest, largest = float(logs.min()), float(logs.max())
    ratio = np.float32(np.exp((largest - smallest) / (LEVELS - 1)))
    if ratio <= 1:  # all equal (to float32 precision): one level
        codes[positive] = 1
        return LogCodes(codes, np.float32(np.exp(smallest)), np.float32(1))
    step = float(np.log(np.float64(ratio)))  # the step the stored ratio really has
    unit = np.float32(np.exp(smallest - step))
    index = np.rint((logs - np.log(np.float64(unit))) / step)
    codes[positive] = np.clip(index, 1, LEVELS).astype(np.uint8)
    return LogCodes(codes, unit, ratio)


def add_node(graph: gs.Graph, op: str, name: str, inputs: list[gs.Tensor], output: str | None = None,
             **attrs: object) -> gs.Variable:
    """Append ``op`` named ``name`` to ``graph``; its one output is named ``output`` (default: the
    node's name) and has no dtype or shape (the file then carries no value_info for it; shape
    inference recovers both)."""
    out = gs.Variable(output or name)
    graph.nodes.append(gs.Node(op, name, attrs=dict(attrs), inputs=inputs, outputs=[out]))
    return out


def emit_scales(graph: gs.Graph, name: str, planes: Sequence[LogCodes], shape: Sequence[int], dtype: np.dtype,
                names: set[str]) -> gs.Variable:
    """Add ``alpha = unit · ratio^codes`` (zero for code 0) in ``dtype`` to ``graph`` as the tensor
    ``name``; the codes are stored as ``{name}.c`` in ``shape``, with a leading plane axis when there is
    more than one plane, ratio and unit as ``{name}.r`` and ``{name}.u`` (broadcasting per plane).
    The names of the nodes added go into ``names``."""
    stacked = len(planes) > 1
    per_plane = [len(planes)] + [1] * len(shape) if stacked else []

    def node(op: str, out: str, inputs: list[gs.Tensor], **attrs: object) -> gs.Variable:
        names.add(out)
        return add_node(graph, op, out, inputs, **attrs)

    codes = np.stack([p.codes.reshape(shape) for p in planes]) if stacked else planes[0].codes.reshape(shape)
    ratio = np.array([p.ratio for p in planes], np.float32).reshape(per_plane)
    unit = np.array([p.unit for p in planes], dtype).reshape(per_plane)
    exponent = node("Cast", f"{name}.e", [gs.Constant(f"{name}.c", codes)], to=onnx.TensorProto.FLOAT)
    power = node("Pow", f"{name}.p", [gs.Constant(f"{name}.r", ratio), exponent])
    if any(p.has_zero for p in planes):
        power = node("Mul", f"{name}.z", [power, node("Sign", f"{name}.nz", [exponent])])
    if np.dtype(dtype) != np.float32:
        power = node("Cast", f"{name}.pc", [power], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    return node("Mul", name, [gs.Constant(f"{name}.u", unit), power])


def decode_log(planes: Sequence[LogCodes], dtype: np.dtype) -> list[np.ndarray]:
    """The scales ``unit · ratio^code`` ``[C]`` the packed model computes in ``dtype`` for each of
    ``planes``: onnxruntime (optimizations off, CPU) runs the subgraph ``emit_scales`` adds, with the
    planes stacked as the packed model stacks them."""
    graph = gs.Graph(opset=DECODE_OPSET, name="alpha_decode")
    alpha = emit_scales(graph, "a", planes, [len(planes[0].codes)], dtype, set())
    alpha.dtype = np.dtype(dtype)
    graph.outputs = [alpha]
    session = make_session(graph)
    (values,) = session.run([alpha.name], {})
    return list(values) if len(planes) > 1 else [values]


def compute_dtype(weight_dtype: np.dtype) -> np.dtype:
    """The dtype the unpacking subgraph computes in: float16 weights are rebuilt in float32 and cast at
    the end (onnxruntime's CPU provider has no float16 Mul/Sub, which would block constant folding)."""
    return np.dtype(np.float32) if weight_dtype == np.float16 else np.dtype(weight_dtype)


@dataclass(frozen=True)
class ScaleFormat:
    """How one layer stores its scales: floats of ``dtype``, or uint8 codes (``dtype`` uint8) decoded
    in ``compute`` (the dtype the unpacking subgraph computes in)."""

    dtype: np.dtype
    compute: np.dtype

    @classmethod
    def of(cls, alpha_dtype: AlphaDtype, weight_dtype: np.dtype) -> ScaleFormat:
        return cls(np.dtype(weight_dtype if alpha_dtype == "float32" else alpha_dtype), compute_dtype(weight_dtype))

    @property
    def coded(self) -> bool:
        return self.dtype == np.uint8

    def store(self, alphas: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[LogCodes, ...] | None]:
        """Scales ``[p, C]`` and signs ``[p, C, K]`` as stored: (the scales the model computes, as
        float64; the signs, flipped where a coded scale was negative; the codes, when coded)."""
        if not self.coded:
            return alphas.astype(self.dtype).astype(np.float64), signs, None
        if not np.isfinite(alphas).all():
            raise PreconditionError("binary: non-finite scales (non-finite weights?) cannot be stored with "
                                    "alpha_dtype=uint8")
        negative = alphas < 0
        if negative.any():
            signs = np.where(negative[:, :, None], -signs, signs).astype(signs.dtype)
        coded = tuple(encode_log(np.abs(plane)) for plane in alphas)
        decoded = np.stack(decode_log(coded, self.compute)).astype(np.float64)
        return decoded, signs, coded
