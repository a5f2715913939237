"""The registry, pass settings parsing and the pipeline's postconditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import onnx_graphsurgeon as gs
import pytest
from conftest import parse

from onnxopt.errors import PostconditionError, PreconditionError, RegistryError, UnknownPassError
from onnxopt.pass_base import Pass, PassContext, PassReport
from onnxopt.pipeline import Pipeline
from onnxopt.registry import Registry, default_registry


@dataclass(kw_only=True)
class Demo(Pass):
    name: ClassVar[str] = "demo"
    summary: ClassVar[str] = "a pass for tests"
    ratio: float = 0.5
    method: Literal["a", "b"] = "a"
    ops: tuple[str, ...] = ()
    flag: bool = False
    limit: int | None = field(default=None, metadata={"help": "an optional limit"})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        return PassReport(self.name)


def test_create_parses_typed_settings() -> None:
    p = Registry([Demo]).create("demo:ratio=0.25:method=b:ops=Conv,Gemm:flag=yes:limit=3")
    assert p == Demo(ratio=0.25, method="b", ops=("Conv", "Gemm"), flag=True, limit=3)


def test_create_none_for_optional() -> None:
    assert Registry([Demo]).create("demo:limit=none").limit is None


@pytest.mark.parametrize(
    ("spec", "match"),
    [("nope", "unknown pass 'nope'"), ("demo:bogus=1", "no setting 'bogus'"), ("demo:ratio=abc", "cannot read"),
     ("demo:method=c", "not one of a, b"), ("demo:ratio", "expected key=value"), ("demo:flag=maybe", "cannot read")],
)
def test_create_errors(spec: str, match: str) -> None:
    with pytest.raises(UnknownPassError, match=match):
        Registry([Demo]).create(spec)


def test_duplicate_names_raise() -> None:
    with pytest.raises(RegistryError, match="registered twice"):
        Registry([Demo, Demo])


def test_settings_listed_with_types_and_defaults() -> None:
    settings = {s.name: s for s in Demo.settings()}
    assert settings["method"].type_name == "a|b"
    assert settings["ops"].type_name == "list[str]"
    assert settings["limit"].default is None and settings["limit"].help == "an optional limit"


def test_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "demo"\nratio = 0.1\nops = ["Conv"]\nflag = true\n\n[[pass]]\nname = "demo"\n')
    assert Registry([Demo]).from_recipe(recipe) == [Demo(ratio=0.1, ops=("Conv",), flag=True), Demo()]


def test_builtin_registry_has_unique_documented_passes() -> None:
    registry = default_registry()
    assert len(registry.names()) == len(set(registry.names())) >= 5
    for cls in registry.classes():
        assert cls.summary and cls.name
        cls()  # every built-in pass has defaults for all settings


MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2] x) => (float[2] y) { y = Relu(x) }
"""


@dataclass(kw_only=True)
class RenameOutput(Pass):
    name: ClassVar[str] = "rename-output"
    summary: ClassVar[str] = "breaks the interface"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        graph.outputs[0].name = "renamed"
        return PassReport(self.name, changes=1)


@dataclass(kw_only=True)
class NeedsData(Pass):
    name: ClassVar[str] = "needs-data"
    summary: ClassVar[str] = "needs calibration"
    needs_calibration: ClassVar[bool] = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        return PassReport(self.name)


@dataclass(kw_only=True)
class Refuses(Pass):
    name: ClassVar[str] = "refuses"
    summary: ClassVar[str] = "never applies"

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:
        raise PreconditionError("refuses: this model has no Frobnicate node")


def test_pipeline_refuses_interface_change() -> None:
    with pytest.raises(PostconditionError, match="changed the graph interface"):
        Pipeline([RenameOutput()]).run(parse(MODEL))


def test_pipeline_requires_calibration() -> None:
    with pytest.raises(PreconditionError, match="needs calibration data"):
        Pipeline([NeedsData()]).run(parse(MODEL))


def test_pipeline_propagates_precondition_reason() -> None:
    with pytest.raises(PreconditionError, match="no Frobnicate"):
        Pipeline([Refuses()]).run(parse(MODEL))


def test_pipeline_keeps_model_fields() -> None:
    model = parse(MODEL)
    model.metadata_props.add(key="k", value="v")
    model.doc_string = "doc"
    out = Pipeline([Demo()]).run(model).model
    assert {p.key: p.value for p in out.metadata_props} == {"k": "v"}
    assert out.doc_string == "doc" and out.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 17)]
