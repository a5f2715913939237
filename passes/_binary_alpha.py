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

The uint8 decoding costs two nodes per plane: ``unit`` rides on the sign subgraph, which computes
``±unit`` instead of ``±1`` from the stored scalar ``2·unit`` (``(bit − 0.5) · 2unit``, exact), and::

    power = Pow(ratio, Cast(codes, to=float32))     # codes in the broadcast shape of the scales
          (· Sign(Cast(codes)) when the plane has a zero scale; Cast to the weight's dtype if not float32)
    plane = Reshape(±unit) · power

Few nodes matter: each node and its output's value_info cost ~200 bytes of graph, as much as the
scales of a 64-channel layer save. ``decode_log`` evaluates that same subgraph in onnxruntime, so the
scales the refit works with and reports errors for are exactly the ones the packed model computes
(``Pow`` is not bit-exact across implementations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import PreconditionError
from onnxopt.graph import export
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

    def sign_scale(self, dtype: np.dtype) -> np.ndarray:
        """The stored scalar ``2·unit`` (in the dtype the subgraph computes in)."""
        return np.array(2 * self.unit, dtype)

    def nbytes(self, dtype: np.dtype) -> int:
        """Stored bytes: the codes, ``ratio`` and ``2·unit``."""
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


def add_node(graph: gs.Graph, op: str, name: str, inputs: list[gs.Tensor], dtype: np.dtype | type,
             shape: Sequence[int], **attrs: object) -> gs.Variable:
    """Append ``op`` to ``graph``; its one output is ``{name}/out``."""
    out = gs.Variable(f"{name}/out", dtype=np.dtype(dtype), shape=list(shape))
    graph.nodes.append(gs.Node(op, name, attrs=dict(attrs), inputs=inputs, outputs=[out]))
    return out


def emit_power(graph: gs.Graph, prefix: str, coded: LogCodes, shape: Sequence[int], dtype: np.dtype,
               names: set[str]) -> gs.Variable:
    """Add ``ratio^codes`` (zero for code 0) in ``dtype`` to ``graph``, the codes stored in ``shape``;
    the names of the nodes added go into ``names``."""

    def node(op: str, suffix: str, inputs: list[gs.Tensor], out: np.dtype | type = np.float32,
             **attrs: object) -> gs.Variable:
        names.add(f"{prefix}/{suffix}")
        return add_node(graph, op, f"{prefix}/{suffix}", inputs, out, shape, **attrs)

    codes = gs.Constant(f"{prefix}/alpha_codes", coded.codes.reshape(shape))
    ratio = gs.Constant(f"{prefix}/alpha_ratio", np.array(coded.ratio, np.float32))
    exponent = node("Cast", "alpha_exponent", [codes], to=onnx.TensorProto.FLOAT)
    power = node("Pow", "alpha_power", [ratio, exponent])
    if coded.has_zero:
        power = node("Mul", "alpha_zero", [power, node("Sign", "alpha_nonzero", [exponent])])
    if np.dtype(dtype) != np.float32:
        power = node("Cast", "alpha_power_cast", [power], dtype, to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    return power


def decode_log(planes: Sequence[LogCodes], dtype: np.dtype) -> list[np.ndarray]:
    """The scales ``unit · ratio^code`` ``[C]`` the packed model computes in ``dtype`` for each of
    ``planes``: onnxruntime (optimizations off, CPU) runs the subgraph ``emit_power`` adds and the
    product with ``unit`` that the sign subgraph contributes."""
    graph = gs.Graph(opset=DECODE_OPSET, name="alpha_decode")
    outputs = []
    for i, coded in enumerate(planes):
        power = emit_power(graph, f"p{i}", coded, [len(coded.codes)], dtype, set())
        unit = gs.Constant(f"p{i}/unit", np.array(coded.sign_scale(dtype) / 2, dtype))
        outputs.append(add_node(graph, "Mul", f"p{i}/alpha", [unit, power], dtype, [len(coded.codes)]))
    graph.outputs = outputs
    session = make_session(export(graph))
    return list(session.run([t.name for t in outputs], {}))


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
