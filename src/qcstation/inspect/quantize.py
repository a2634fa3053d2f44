"""INT8 static quantization of a station model, with its model card carried over.

onnxruntime's ``quantize_static`` in QDQ format (per-channel int8 weights, uint8 activations), calibrated on
real frames put through the detector's own pre-processing, so the activation ranges are those the station
will see. The weights use 7 of their 8 bits (``reduce_range``) by default: on a CPU without VNNI (AVX2 only,
as many line-side PCs are) onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits, which
saturate with full-range weights. On such a CPU (an AMD EPYC with AVX2 only) the demo model lost 0.039 image
AUROC with full-range weights and 0.002 with 7-bit ones, at the same speed; on an AVX-512 VNNI CPU full-range
weights lost nothing. A model is quantized once and may run on either, so the default is the safe one.

Convolutions that read the image itself (at most :data:`FLOAT_CONV_MAX_IN_CHANNELS` input channels: the
stem on a gray or colour frame) stay FP32. Their int8 kernel has almost nothing to sum over (a 3x3 window of
one channel is 9 products) and runs at full resolution, so it costs more than it saves: on the shipped model,
on one thread of an AVX-512 / AMX Xeon, the stem alone took 1.4 ms in int8 against 0.2 ms in FP32, and
keeping it float made the whole INT8 model 1.42x as fast as FP32 instead of 1.27-1.30x, with image AUROC
0.9894 instead of 0.9872 (FP32 0.9891), docs/PERFORMANCE.md.

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
from typing import Any

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


FLOAT_CONV_MAX_IN_CHANNELS = 3
"""Convolutions with at most this many input channels (per group) are left in FP32 (module docstring)."""


def image_convs(model: Any, max_in_channels: int = FLOAT_CONV_MAX_IN_CHANNELS) -> list[str]:
    """Names of the Conv nodes whose weights have at most ``max_in_channels`` input channels per group.

    Args:
        model: an ``onnx.ModelProto`` (weights as initializers, as the station's exporters write them).
        max_in_channels: the bound; 0 selects nothing.
    """
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        dims = weights.get(node.input[1])
        if dims is not None and len(dims) >= 2 and dims[1] <= max_in_channels:
            names.append(node.name)
    return names


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
    float_image_convs: bool = True,
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
        float_image_convs: leave the convolutions that read the image (:func:`image_convs`) in FP32.
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
        kept_float = image_convs(onnx.load(str(pre))) if float_image_convs else []
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
            nodes_to_exclude=kept_float,
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
            "kept_fp32": kept_float,
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
