"""The detector runtime: model card, ONNX session, pre/post-processing, tiling, overlays.

Depends on numpy, OpenCV and onnxruntime only — never on the station, the training package or torch.
"""

from __future__ import annotations

from qcstation.inspect.card import CARD_KEY, CARD_SCHEMA_VERSION, ModelCard
from qcstation.inspect.detector import Detector
from qcstation.inspect.errors import FrameError, InferenceError, InspectError, ModelCardError, ModelLoadError
from qcstation.inspect.types import Frame, Inspection, ModelInfo, Region

__all__ = [
    "CARD_KEY",
    "CARD_SCHEMA_VERSION",
    "Detector",
    "Frame",
    "FrameError",
    "InferenceError",
    "InspectError",
    "Inspection",
    "ModelCard",
    "ModelCardError",
    "ModelInfo",
    "ModelLoadError",
    "Region",
]
