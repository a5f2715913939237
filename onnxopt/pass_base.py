"""The pass contract.

A pass is a dataclass whose fields are its typed settings, with class-level facts about it
(``name``, ``needs_calibration``, ``lossy``, ``idempotent``, ``tolerance``). The pipeline calls
``requires`` (raise ``PreconditionError`` saying why it cannot apply), then runs the passes that
``prerequisites`` declares as a sub-pipeline on the same graph, then ``run`` (edit the
onnx-graphsurgeon graph in place, return a ``PassReport``), then ``ensures`` (postconditions).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import onnx_graphsurgeon as gs

from onnxopt.errors import PostconditionError, UnknownPassError

if TYPE_CHECKING:
    from onnxopt.data import DataSource


@dataclass(frozen=True)
class Tolerance:
    """What a pass promises about outputs on the same inputs.

    ``rtol``/``atol`` bound the elementwise difference (``numpy.allclose``); ``min_agreement`` is the
    least top-1 agreement on classification outputs. Lossless passes use ``EXACT``.
    """

    rtol: float = 0.0
    atol: float = 0.0
    min_agreement: float = 1.0

    @property
    def exact(self) -> bool:
        return self.rtol == 0.0 and self.atol == 0.0


EXACT = Tolerance()


@dataclass
class PassContext:
    """What a pass may use besides the graph: calibration data, a seed, the target runtime."""

    calibration: DataSource | None = None
    seed: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    #: intra-op threads of the passes' own onnxruntime sessions (``None``: onnxruntime's default)
    threads: int | None = None
    progress: bool = False


@dataclass(frozen=True)
class Skip:
    """A node or group a pass looked at and left alone, and why."""

    target: str
    reason: str


class Details:
    """Base of a pass's typed report details: a dataclass whose fields are the details. ``to_dict`` is
    their JSON form (a field that is ``None`` is left out: a detail that did not apply), and
    ``details[key]`` reads that form, for readers of the JSON."""

    def to_dict(self) -> dict[str, Any]:
        assert dataclasses.is_dataclass(self)  # subclasses are dataclasses
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()


@dataclass
class PassReport:
    """What one pass did. ``changes`` counts edits in the pass's own unit (nodes, tensors, groups)."""

    pass_name: str
    changes: int = 0
    nodes_added: int = 0
    nodes_removed: int = 0
    skipped: list[Skip] = field(default_factory=list)
    #: what the pass found and did: a ``Details`` dataclass, or a plain dict of JSON values
    details: dict[str, Any] | Details = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: reports of the passes this one declared in ``Pass.prerequisites``, in the order they ran
    prerequisites: list[PassReport] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return self.changes > 0 or self.nodes_added > 0 or self.nodes_removed > 0

    def skip(self, target: str, reason: str) -> None:
        self.skipped.append(Skip(target, reason))

    def details_dict(self) -> dict[str, Any]:
        """The details as JSON values."""
        return self.details.to_dict() if isinstance(self.details, Details) else self.details

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(dataclasses.replace(self, prerequisites=[], details={}))
        out["details"] = self.details_dict()
        out["modified"] = self.modified
        out["prerequisites"] = [r.to_dict() for r in self.prerequisites]
        return out


@dataclass(frozen=True)
class Setting:
    """One typed setting of a pass, as shown by ``onnxopt passes`` and parsed from the CLI."""

    name: str
    type_name: str
    default: Any
    help: str


@dataclass(kw_only=True)
class Pass:
    """Base class of all passes. Subclasses are ``@dataclass(kw_only=True)``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    #: uses calibration data when given (range guards, recovery, refits) but runs without it
    uses_calibration: ClassVar[bool] = False
    lossy: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True
    tolerance: ClassVar[Tolerance] = EXACT
    #: works on float32 weights and activations only: the pipeline converts a float16 model to float32
    #: first (the ``fp32`` pass) and says so in its report
    needs_float32: ClassVar[bool] = False

    def min_opset(self) -> int:
        """The default-domain opset this pass needs with its settings; the pipeline upgrades an older
        model to it with onnx's version converter before any pass runs (``onnxopt.opset``)."""
        return 1

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Raise ``PreconditionError`` with the reason when the pass cannot apply."""

    def prerequisites(self, graph: gs.Graph) -> list[Pass]:
        """Passes to run first, on the same graph, after ``requires`` (their ``requires``, cleanup and
        ``ensures`` apply, their reports nest in this pass's). What they change is kept only when this
        pass then modifies the graph."""
        return []

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        raise NotImplementedError

    def ensures(self, graph: gs.Graph, ctx: PassContext, report: PassReport) -> None:
        """Raise ``PostconditionError`` when the result breaks the pass's promises."""

    # -- settings -------------------------------------------------------------------------
    @classmethod
    def settings(cls) -> list[Setting]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out.append(Setting(f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return out

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> Pass:
        """Build the pass from ``name=value`` strings (CLI / recipe), converting to the field types."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            attr = key.replace("-", "_")
            if attr not in known:
                raise UnknownPassError(
                    f"pass '{cls.name}' has no setting '{key}'; settings: {', '.join(sorted(known)) or 'none'}")
            kwargs[attr] = parse_value(hints[attr], raw, f"{cls.name}:{key}")
        return cls(**kwargs)

    def describe(self) -> str:
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.name}({values})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(m.value for m in tp)
    return getattr(tp, "__name__", str(tp))


def parse_value(tp: Any, raw: Any, where: str) -> Any:
    """Convert ``raw`` (usually a string) to the type ``tp``; raise ``UnknownPassError`` if it cannot."""
    if not isinstance(raw, str):
        return raw
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if origin in (typing.Union, types.UnionType):
            if raw.lower() in ("none", "") and type(None) in args:
                return None
            errors = []
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return parse_value(arg, raw, where)
                except UnknownPassError as exc:
                    errors.append(str(exc))
            raise UnknownPassError(errors[0] if errors else f"{where}: cannot parse {raw!r}")
        if origin is Literal:
            if raw in args:
                return raw
            raise UnknownPassError(f"{where}: {raw!r} is not one of {', '.join(map(str, args))}")
        if origin in (tuple, list):
            items = [s.strip() for s in raw.split(",") if s.strip()]
            return tuple(parse_value(args[0], s, where) for s in items)
        if tp is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp in (int, float, str):
            return tp(raw)
    except ValueError as exc:
        raise UnknownPassError(f"{where}: cannot read {raw!r} as {_type_name(tp)}") from exc
    raise UnknownPassError(f"{where}: settings of type {_type_name(tp)} cannot be given as text")


def check_io_kept(graph: gs.Graph, input_names: list[str], output_names: list[str], pass_name: str) -> None:
    """Postcondition shared by every pass: graph input and output names are unchanged."""
    now_in = [t.name for t in graph.inputs]
    now_out = [t.name for t in graph.outputs]
    if now_in != input_names or now_out != output_names:
        raise PostconditionError(
            f"pass '{pass_name}' changed the graph interface: inputs {input_names} -> {now_in}, "
            f"outputs {output_names} -> {now_out}")
