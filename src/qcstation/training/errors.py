"""Errors of the training package.

Hierarchy::

    TrainingError                 base of everything raised on purpose by qcstation.training
    ├── DatasetError              a dataset cannot be read: empty, missing/mis-sized mask, bad dataset.yaml
    ├── ModelBuildError           an unknown architecture or an impossible configuration
    │   └── WeightsUnavailableError   pretrained weights could not be fetched (offline, no cache)
    ├── CheckpointError           a checkpoint is unreadable or belongs to another architecture/task
    └── ExportError               ONNX export, card writing or the torch/onnxruntime parity check failed

Each carries a short ``code`` so a CLI or API can map it without parsing the message.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of the training package's errors."""

    code = "training_error"


class DatasetError(TrainingError):
    """A dataset cannot be read or does not follow its layout."""

    code = "dataset_error"


class ModelBuildError(TrainingError):
    """A network cannot be built as asked."""

    code = "model_build_error"


class WeightsUnavailableError(ModelBuildError):
    """Pretrained weights were asked for but could not be fetched."""

    code = "weights_unavailable"


class CheckpointError(TrainingError):
    """A checkpoint cannot be used to resume or export."""

    code = "checkpoint_error"


class ExportError(TrainingError):
    """The exported model is not a faithful, self-describing copy of the network."""

    code = "export_error"
