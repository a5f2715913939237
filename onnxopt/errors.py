"""Exception types.

``OnnxoptError`` and its subclasses are *user* errors: bad input, a pass that cannot apply,
data that does not match the model. The CLI prints their message on one line and exits 2.
Anything else escaping the library is an internal error (exit 1).
"""

from __future__ import annotations


class OnnxoptError(Exception):
    """Base of all errors a user can act on. The message must say what and why."""


class ModelLoadError(OnnxoptError):
    """The model file is missing, unreadable, or not a valid ONNX model."""


class ModelSaveError(OnnxoptError):
    """The model cannot be written: it would overwrite the input, fails the checker or onnxruntime."""


class ModelRunError(ModelSaveError):
    """The model loads in onnxruntime but fails on its first run; ``detail`` is onnxruntime's reason."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class DataError(OnnxoptError):
    """Calibration/evaluation data is missing, empty, or does not match the model's inputs."""


class PassError(OnnxoptError):
    """Base of errors raised by passes and the pipeline."""


class PreconditionError(PassError):
    """A pass cannot apply to this model; the message says why."""


class PostconditionError(PassError):
    """A pass produced a model that breaks its own promises (a bug in the pass)."""


class UnknownPassError(PassError):
    """A pass name or setting that the registry does not know."""


class RegistryError(PassError):
    """A pass was registered twice or is malformed."""
