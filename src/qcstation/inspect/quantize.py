"""INT8 static quantization of a station model, with its model card carried over.

onnxruntime's ``quantize_static`` in QDQ format (per-channel int8 weights, uint8 activations), calibrated on
real frames put through the detector's own pre-processing, so the activation ranges are those the station
will see. The weights use 7 of their 8 bits (``reduce_range``) by default: on a CPU without VNNI (AVX2 only,
as many line-side PCs are) onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits, which
saturate with full-range weights. On such a CPU (an AMD EPYC with AVX2 only) the demo model lost 0.039 image
AUROC with full-range weights and 0.002 with 7-bit ones, at the same speed; on an AVX-512 VNNI CPU full-range
weights lost nothing. A model is quantized once and may run on either, so the default is the safe one.

``quantize_static`` writes a new graph; the card (:data:`~qcstation.inspect.card.CARD_KEY`) is
copied onto it and its provenance records the quantization, so the result loads with
:meth:`Detector.from_path <qcstation.inspect.detector.Detector.from_path>` and says what it is.

    from qcstation.inspect.quantize import quantize_model
    quantize_model("models/qc-demo.onnx", "/tmp/qc-demo-int8.onnx", frames)
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcstation.inspect.card import CARD_KEY, ModelCard
from qcstation.inspect.detector import Detector
from qcstation.inspect.errors import ModelLoadError

DEFAULT_OP_TYPES: tuple[str, ...] = (
    "Conv",
    "Relu",
    "Add",
    "Concat",
    "Resize",
    "MaxPool",
    "AveragePool",
    "MatMul",
    "Gemm",
    "Mul",
)
"""Operators quantized by default: everything on the path of the activations except the final Softmax.

Softmax stays float, so the class probabilities the thresholds are applied to are not rounded to 1/255
steps. Quantizing the convolutions alone was measured slower than FP32 on the shipped model: the Q/DQ pairs
around every Relu, Resize and Concat between them cost more than the int8 convolutions saved.
"""


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_model` wrote."""

    path: Path
    frames: int
    sha256: str
    card: ModelCard


class _FrameReader:
    """A ``CalibrationDataReader``: one input feed per calibration frame (tile mode: all its tiles)."""

    def __init__(self, input_name: str, tensors: Sequence[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter({input_name: t} for t in tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None when calibration data is exhausted."""
        return next(self._feeds, None)


def quantize_model(
    src: str | Path,
    dst: str | Path,
    frames: Iterable[np.ndarray],
    *,
    max_frames: int = 64,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    per_channel: bool = True,
    reduce_range: bool = True,
    calibration_label: str = "frames",
) -> QuantizeResult:
    """Write an INT8 (QDQ) copy of a station model, calibrated on real frames, with its card preserved.

    Args:
        src: the FP32 ``.onnx`` model (with a card).
        dst: where to write the quantized model.
        frames: calibration images as the station receives them (gray/BGR, uint8/uint16); at most
            ``max_frames`` are used.
        max_frames: the calibration budget.
        op_types: operator types to quantize (None: every type onnxruntime can quantize).
        per_channel: per-output-channel weight scales (recommended for convolutions).
        reduce_range: 7-bit weights, so CPUs without VNNI do not saturate (module docstring).
        calibration_label: what the frames were (recorded in the card's provenance), e.g. a folder name.

    Returns:
        The written path, number of calibration frames, the file's sha256 and its card.

    Raises:
        ModelLoadError: the source model does not load, or no calibration frame was given.
        ModelCardError: the source model has no valid card.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    src, dst = Path(src), Path(dst)
    det = Detector.from_path(src, warmup=False)
    tensors = []
    for image in frames:
        tensors.append(det.bare_input(image))
        if len(tensors) >= max_frames:
            break
    if not tensors:
        raise ModelLoadError("quantization needs at least one calibration frame")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # shape inference and graph clean-up first, as onnxruntime recommends before quantizing
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre),
            str(dst),
            _FrameReader(det.card.input.name, tensors),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    card = det.card.to_dict()
    card["provenance"] = {
        **card.get("provenance", {}),
        "quantization": {
            "method": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "weights": ("int8" + (" (7-bit range)" if reduce_range else ""))
            + (", per-channel" if per_channel else ", per-tensor"),
            "activations": "uint8",
            "op_types": list(op_types) if op_types is not None else "all",
            "calibration": {"method": "MinMax", "frames": len(tensors), "data": calibration_label},
            "from_sha256": det.info.sha256,
            "onnxruntime": ort.__version__,
        },
    }
    model = onnx.load(str(dst))
    props = {p.key: p.value for p in model.metadata_props if p.key != CARD_KEY}
    props[CARD_KEY] = json.dumps(card, sort_keys=True)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    data = dst.read_bytes()
    return QuantizeResult(dst, len(tensors), hashlib.sha256(data).hexdigest(), ModelCard.from_dict(card))
