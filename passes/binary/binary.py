"""Binary-weight packing (BWN, SEEDS.md §2): 1-bit weights in standard ONNX.

Each selected Conv/Gemm/MatMul weight becomes ``W ≈ alpha · sign(W)`` per output channel (or two
bit-planes, ``alpha1·B1 + alpha2·B2``, with ``bits=2``). The signs are packed 8 per byte into a
uint8 initializer and the scales stored once per channel, by default as uint8 log-scale codes
(``passes.binary.alpha``). A subgraph of standard ops rebuilds the float weights, so any
onnxruntime loads and runs the model unchanged (``passes.binary.pack``): one
BitShift/Cast/Where/Split chain per model decodes the bits of every packed layer, then per layer a
Reshape and a Mul apply the scales (Cast, Pow and Mul decode uint8 codes first). Bit order:
little-endian within a byte, bit ``j`` of byte ``i`` holds the sign of flat element ``8*i + j`` of
the weight in its stored row-major layout; 1 = +1, 0 = -1 (zero counts as +1).

A float32 layer of ``C`` channels with ``K`` weights each shrinks from ``4CK`` bytes to
``C(K/8 + 1) + 8`` per bit-plane with uint8 scales, about ``32K / (K + 8)`` times;
``C(K/8 + 2)`` and ``32K / (K + 16)`` with float16, ``C(K/8 + 4)`` and ``32K / (K + 32)`` with
float32 scales (``alpha_dtype``). The file carries ~90 bytes of graph per packed layer beyond those
(~235 with uint8 scales), and ~750 once per model for the bit decoding. onnxruntime constant-folds
the unpacking subgraphs when a session starts (measured,
``details["onnxruntime_unpack_nodes_left"]``), so the packed model runs at the float model's speed;
it is smaller on disk and in transit, not faster.

With calibration data the signs and scales are refitted layer by layer in graph order by the
alternating update (``passes.binary.refit``): each layer's input comes from the already binarised
model and its output is matched to the float model's. Without calibration data the scales are the
plain ``alpha = mean |W|``. The first and last compute layers stay float by default, as in the
source. ``hwgq=True`` adds the source's 2-bit activation quantizer after BatchNormalization+Relu.
``onnxopt unpack`` (``passes.binary.unpack``) turns the packed model back into a plain float one.
"""

from __future__ import annotations

import logging
import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar

import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import PreconditionError
from onnxopt.graph import constant_bytes, export, subgraphs
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from onnxopt.settings_check import require_known
from passes.binary import hwgq
from passes.binary.alpha import AlphaDtype, ScaleFormat
from passes.binary.layers import SUPPORTED_OPS, WeightLayer, select_layers
from passes.binary.pack import BIT_ORDER, MIN_OPSET, UnpackBuilder, unpack_nodes_left_by_onnxruntime
from passes.binary.refit import Planes, Refitter, plain_planes

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class BinaryWeights(Pass):
    name: ClassVar[str] = "binary"
    summary: ClassVar[str] = ("binarise Conv/Gemm/MatMul weights per output channel and pack them 8 per byte "
                              "(~30x smaller layers), refit on calibration data when given")
    needs_calibration: ClassVar[bool] = False
    lossy: ClassVar[bool] = True
    uses_calibration: ClassVar[bool] = True
    idempotent: ClassVar[bool] = True
    # Outputs change a lot (no elementwise bound). Top-1 agreement with the float model on the bundled
    # models' eval data at default settings with their calibration data (refit): 0.929 resnet_fmnist,
    # 0.993 vgg_digits, 0.964 mlp_fmnist (docs/BENCHMARKS.md, "binary"). Without calibration data the
    # plain binarisation of resnet_fmnist agrees on 11% only: the promise needs the refit.
    tolerance: ClassVar[Tolerance] = Tolerance(rtol=math.inf, atol=math.inf, min_agreement=0.85)

    bits: int = field(default=1, metadata={"help": "bit-planes per weight: 1 (alpha·B) or 2 (alpha1·B1 + alpha2·B2)"})
    refit: bool = field(default=True, metadata={
        "help": "run the alternating update of signs and scales when calibration data is given"})
    refit_iterations: int = field(default=3, metadata={"help": "alternating update iterations per layer"})
    refit_rows: int = field(default=4096, metadata={
        "help": "calibration rows (im2col positions for Conv) sampled per layer for the refit"})
    refit_ridge: tuple[float, ...] = field(default=(0.01, 0.1, 1.0), metadata={
        "help": "candidate weights of the refit's pull towards the float weights (relative to the data "
                "term); the one with the lowest error on held-out calibration samples (1 in 4) is used"})
    keep_first: bool = field(default=True, metadata={"help": "keep the first compute layer(s) in full precision"})
    keep_last: bool = field(default=True, metadata={"help": "keep the last compute layer(s) in full precision"})
    op_types: tuple[str, ...] = field(default=SUPPORTED_OPS, metadata={"help": "op types to binarise"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={"help": "node names to keep in full precision"})
    min_weights: int = field(default=512, metadata={"help": "layers with fewer weights stay in full precision"})
    min_channel_weights: int = field(default=0, metadata={
        "help": "layers with fewer weights per output channel (K) stay in full precision. A packed layer "
                "is at most 32K/(K+8) times smaller (K=16: 21x, K=32: 25.6x; 29x needs K >= 78). Default 0: "
                "keeping resnet_fmnist's 1x1 shortcut convs (K=16, 32) float gained no top-1 (0.898 vs 0.899, "
                "mean of 16 refit seeds) and grew the packed weights from 19.5x to 15.4x smaller"})
    alpha_dtype: AlphaDtype = field(default="uint8", metadata={
        "help": "storage of the per-channel scales: uint8 log-scale codes, alpha = exp(lo + code*step) with "
                "lo/step per layer and bit-plane in two float32 scalars (C + 8 bytes; a float32 layer shrinks "
                "32K/(K+8) times: K=144 30.3x, K=288 31.1x), float16 (32K/(K+16)) or float32, i.e. the "
                "weight's dtype (32K/(K+32): K=144 26.2x). uint8 is the default: it loses at most 0.1 point of "
                "top-1 against float32 on the bundled models (mean of 16 refit seeds). Decoding the codes adds 3 nodes and "
                "2 scalars per layer (~145 bytes of graph), so the file itself only shrinks for layers with more than "
                "~50 channels"})
    pack: bool = field(default=True, metadata={
        "help": "pack the bits (false: write the binarised weights as plain float initializers)"})
    hwgq: bool = field(default=False, metadata={
        "help": "add the 2-bit HWGQ activation quantizer (QDQ fake-quant) after BatchNormalization+Relu"})
    check_folding: bool = field(default=True, metadata={
        "help": "measure whether onnxruntime folds the unpacking subgraphs at session start"})

    def min_opset(self) -> int:
        """Packing decodes with BitShift (opset 11); HWGQ gives Clip its bounds as inputs (opset 11)."""
        return max(MIN_OPSET if self.pack else 1, hwgq.MIN_OPSET if self.hwgq else 1)

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        if self.bits not in (1, 2):
            raise PreconditionError(f"binary: bits={self.bits}; choose 1 or 2")
        if self.alpha_dtype not in typing.get_args(AlphaDtype):
            raise PreconditionError(f"binary: alpha_dtype={self.alpha_dtype!r}; choose one of "
                                    f"{', '.join(typing.get_args(AlphaDtype))}")
        unknown = [op for op in self.op_types if op not in SUPPORTED_OPS]
        if unknown:
            raise PreconditionError(f"binary: cannot binarise {', '.join(unknown)}; op_types may hold "
                                    f"{', '.join(SUPPORTED_OPS)}")
        if self.refit_iterations < 1 or self.refit_rows < 1 or not self.refit_ridge or min(self.refit_ridge) < 0:
            raise PreconditionError("binary: refit_iterations and refit_rows must be >= 1, refit_ridge non-empty and >= 0")
        require_known("binary", "exclude_nodes", self.exclude_nodes,
                      [n.name for g in [graph, *subgraphs(graph)] for n in g.nodes if n.name], "node names of the model")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        graph.toposort()
        bytes_before = constant_bytes(graph)
        layers = select_layers(graph, op_types=self.op_types, keep_first=self.keep_first, keep_last=self.keep_last,
                               exclude_nodes=self.exclude_nodes, min_weights=self.min_weights, report=report,
                               min_channel_weights=self.min_channel_weights)
        float_model = export(graph) if self._will_refit(layers, ctx) else None
        if self.hwgq:
            report.details["hwgq_step"] = round(hwgq.lloyd_uniform_step(2), 6)
            report.details["hwgq_quantized"] = hwgq.insert_hwgq(graph, report)
            report.changes += report.details["hwgq_quantized"]
        formats = {layer.name: ScaleFormat.of(self.alpha_dtype, layer.weight.values.dtype) for layer in layers}
        planes = {layer.name: plain_planes(layer.matrix(), self.bits).stored(formats[layer.name]) for layer in layers}
        self._refit(graph, layers, planes, formats, float_model, ctx, report)
        added = self._write(graph, layers, planes, formats, report)
        report.changes += len(layers)
        bytes_after = constant_bytes(graph)
        report.details.update(bits=self.bits, bit_order=BIT_ORDER, packed=self.pack,
                              model_bytes_before=bytes_before, model_bytes_after=bytes_after,
                              model_compression=round(bytes_before / bytes_after, 3) if bytes_after else 1.0)
        if self.pack and self.check_folding and layers:
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            left = unpack_nodes_left_by_onnxruntime(export(graph), ctx.providers, added)
            report.details["onnxruntime_unpack_nodes_left"] = left
            report.notes.append("onnxruntime folds the unpacking subgraphs at session start (float latency)"
                                if left == 0 else
                                f"onnxruntime leaves {left} unpacking node(s) after its session-start optimizations")
        return report

    def _will_refit(self, layers: list[WeightLayer], ctx: PassContext) -> bool:
        return bool(layers) and self.refit and ctx.calibration is not None

    def _refit(self, graph: gs.Graph, layers: list[WeightLayer], planes: dict[str, Planes],
               formats: dict[str, ScaleFormat], float_model: onnx.ModelProto | None, ctx: PassContext,
               report: PassReport) -> None:
        if not self._will_refit(layers, ctx):
            why = "no layers to binarise" if not layers else (
                "refit=false" if not self.refit else "no calibration data")
            report.details["refit"] = f"not run ({why}); scales are alpha = mean|W| per channel"
            if layers:
                report.notes.append("plain binarisation without the refit can lose most of a deep network's "
                                    "accuracy (bundled resnet_fmnist: 93% -> 11% top-1, 90% refitted); give "
                                    "calibration data to refit")
            return
        refitter = Refitter(float_model, export(graph), ctx.calibration, ctx, rows=self.refit_rows,
                            ridges=self.refit_ridge, iterations=self.refit_iterations)
        fits = refitter.run(layers, planes, formats)
        report.details["refit"] = f"alternating update on {ctx.calibration.description}"
        report.details["refit_layers"] = [fit.to_dict() for fit in fits]
        for fit in fits:
            if fit.kept_plain:
                report.notes.append(f"{fit.layer}: the refit did not lower the held-out error; kept alpha = mean|W|")

    def _write(self, graph: gs.Graph, layers: list[WeightLayer], planes: dict[str, Planes],
               formats: dict[str, ScaleFormat], report: PassReport) -> set[str]:
        """Pack (or write as float) every layer's codes; return the names of the nodes added."""
        builder = UnpackBuilder(graph)
        rows = []
        for layer in layers:
            dtype = layer.weight.values.dtype
            code = planes[layer.name]
            if self.pack:
                size = builder.replace_weight(layer, code, formats[layer.name])
                sizes = {"float_bytes": size.float_bytes, "packed_bytes": size.packed_bytes,
                         "compression": round(size.ratio, 3), "unpack_prefix": size.prefix}
            else:
                index = layer.node.inputs.index(layer.weight)
                layer.node.inputs[index] = gs.Constant(layer.weight.name, layer.from_matrix(code.dequantize(dtype)))
                sizes = {}
            rows.append({"node": layer.name, "op": layer.node.op, "channels": layer.channels, "k": layer.k, **sizes})
        builder.finish()
        report.details["layers"] = rows
        return builder.node_names
