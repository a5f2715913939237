"""onnxopt: ONNX graph-level post-training optimization with measured accuracy and latency deltas.

    import onnxopt
    result = onnxopt.optimize("model.onnx", ["fold-batchnorm", "fp16"], evaluation="eval.npz",
                              output="model.opt.onnx")
    result.model, result.report
"""

from __future__ import annotations

from onnxopt.api import OptimizeReport, OptimizeResult, optimize
from onnxopt.data import Batch, DataSource, open_data
from onnxopt.evaluate import Comparison, compare
from onnxopt.errors import (
    DataError,
    ModelLoadError,
    ModelSaveError,
    OnnxoptError,
    PassError,
    PostconditionError,
    PreconditionError,
    UnknownPassError,
)
from onnxopt.model_io import load_model, save_model
from onnxopt.pass_base import Pass, PassContext, PassReport, Tolerance
from onnxopt.pipeline import Pipeline
from onnxopt.registry import Registry, default_registry
from onnxopt.stats import model_stats

__version__ = "0.1.0"


__all__ = [
    "optimize", "OptimizeReport", "OptimizeResult", "compare", "Comparison", "load_model", "save_model", "model_stats",
    "Pass", "PassContext", "PassReport", "Tolerance", "Pipeline", "Registry", "default_registry",
    "DataSource", "Batch", "open_data",
    "OnnxoptError", "ModelLoadError", "ModelSaveError", "DataError", "PassError", "PreconditionError",
    "PostconditionError", "UnknownPassError",
]
