"""Errors raised by the detector runtime.

Hierarchy::

    InspectError                 base; every error carries a short machine-readable ``code``
    ├── ModelLoadError           the model file is missing, unreadable or not ONNX   (model_load)
    ├── ModelCardError           the card is missing, malformed or contradicts the graph (model_card)
    ├── FrameError               a frame cannot be inspected (empty, wrong dtype/shape) (bad_frame)
    └── InferenceError           onnxruntime failed while running a frame             (inference)
"""

from __future__ import annotations


class InspectError(Exception):
    """Base class of detector-runtime errors."""

    code = "inspect"


class ModelLoadError(InspectError):
    """The model file cannot be loaded."""

    code = "model_load"


class ModelCardError(InspectError):
    """The model card is missing, malformed, or does not match the ONNX graph."""

    code = "model_card"


class FrameError(InspectError):
    """A frame cannot be inspected."""

    code = "bad_frame"


class InferenceError(InspectError):
    """Inference failed on a frame."""

    code = "inference"
