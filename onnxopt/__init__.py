"""onnxopt: ONNX graph-level post-training optimization with measured accuracy and latency deltas.

    import onnxopt
    result = onnxopt.optimize("model.onnx", ["fold-batchnorm", "fp16"], evaluation="eval.npz",
                              output="model.opt.onnx")
    result.model, result.report
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module defining it; imported on first access, so that a program using one module
#: (``from onnxopt.data import open_data``) does not import the API, the evaluator and the registry
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["optimize", "OptimizeReport", "OptimizeResult"], "onnxopt.api"),
    **dict.fromkeys(["Batch", "DataSource", "open_data"], "onnxopt.data"),
    **dict.fromkeys(["Comparison", "compare"], "onnxopt.evaluate"),
    **dict.fromkeys(["DataError", "ModelLoadError", "ModelSaveError", "OnnxoptError", "PassError",
                     "PostconditionError", "PreconditionError", "UnknownPassError"], "onnxopt.errors"),
    **dict.fromkeys(["load_model", "save_model"], "onnxopt.model_io"),
    **dict.fromkeys(["Pass", "PassContext", "PassReport", "Tolerance"], "onnxopt.pass_base"),
    "Pipeline": "onnxopt.pipeline",
    **dict.fromkeys(["Registry", "default_registry"], "onnxopt.registry"),
    "model_stats": "onnxopt.stats",
}

if TYPE_CHECKING:
    from onnxopt.api import OptimizeReport, OptimizeResult, optimize
    from onnxopt.data import Batch, DataSource, open_data
    from onnxopt.evaluate import Comparison, compare
    from onnxopt.errors import (DataError, ModelLoadError, ModelSaveError, OnnxoptError, PassError,
                                PostconditionError, PreconditionError, UnknownPassError)
    from onnxopt.model_io import load_model, save_model
    from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
    from onnxopt.pipeline import Pipeline
    from onnxopt.registry import Registry, default_registry
    from onnxopt.stats import model_stats


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: onnxopt.errors, ...
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "optimize", "OptimizeReport", "OptimizeResult", "compare", "Comparison", "load_model", "save_model", "model_stats",
    "Pass", "PassContext", "PassReport", "Tolerance", "Pipeline", "Registry", "default_registry",
    "DataSource", "Batch", "open_data",
    "OnnxoptError", "ModelLoadError", "ModelSaveError", "DataError", "PassError", "PreconditionError",
    "PostconditionError", "UnknownPassError",
]
