"""Tiny, real ONNX models built with the ``onnx`` package (no torch needed).

The factory model is a 1x1 convolution + softmax: a pixel's class-k logit is ``w_k * x + b_k`` on the
normalised intensity ``x``. With the defaults, dark pixels on a bright part score as the defect class, so a
test draws a dark blob where it wants a region, and knows exactly where the detector must find it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from qcstation.inspect.card import CARD_KEY

ModelFactory = Callable[..., Path]


def build_model(
    path: Path,
    *,
    classes: tuple[str, ...] = ("good", "dark"),
    size: int = 64,
    channels: int = 1,
    mode: str = "resize",
    overlap: int = 8,
    card_overrides: dict[str, Any] | None = None,
    image_head: bool = False,
    gain: float = 20.0,
    hidden: int = 0,
) -> Path:
    """Write a tiny self-describing segmentation model: class 1 fires on dark pixels (x < 0.5).

    Class k >= 2 fires on bright pixels (x > 0.5), so multi-class tests have something to find too.
    With ``hidden`` > 0 a first 1x1 convolution copies the channels' mean into that many channels (with a
    Relu, which keeps the non-negative pixels as they are) and the class convolution reads those: the same
    probabilities from a graph with a convolution that does not read the image.
    """
    n = len(classes)
    reads = hidden or channels
    w = np.zeros((n, reads, 1, 1), np.float32)
    b = np.zeros((n,), np.float32)
    for k in range(1, n):
        sign = -1.0 if k == 1 else 1.0
        w[k, :, 0, 0] = sign * gain / reads
        b[k] = -sign * gain * 0.5 - 2.0 * (k - 1)
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, size, size])]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n, size, size])]
    initializers = []
    nodes = [
        helper.make_node("Conv", ["features" if hidden else "image", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    if hidden:
        w1 = np.full((hidden, channels, 1, 1), 1.0 / channels, np.float32)
        initializers.append(helper.make_tensor("W1", TensorProto.FLOAT, w1.shape, w1.ravel()))
        nodes[:0] = [
            helper.make_node("Conv", ["image", "W1"], ["pre"], name="stem"),
            helper.make_node("Relu", ["pre"], ["features"]),
        ]
    if image_head:
        nodes.append(helper.make_node("ReduceMax", ["probs"], ["image_scores"], axes=[2, 3], keepdims=0))
        outputs.append(helper.make_tensor_value_info("image_scores", TensorProto.FLOAT, ["N", n]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        outputs,
        initializer=[
            *initializers,
            helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
            helper.make_tensor("B", TensorProto.FLOAT, b.shape, b),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card: dict[str, Any] = {
        "schema_version": 1,
        "name": "tiny",
        "version": "1",
        "task": "segmentation",
        "classes": list(classes),
        "input": {
            "name": "image",
            "height": size,
            "width": size,
            "channels": channels,
            "channel_order": "GRAY" if channels == 1 else "BGR",
            "mean": [0.0] * channels,
            "std": [1.0] * channels,
        },
        "inference": {"mode": "resize"}
        if mode == "resize"
        else {"mode": "tile", "tile_size": size, "overlap": overlap},
        "output": {
            "name": "probs",
            "kind": "probabilities",
            "image_scores": "image_scores" if image_head else None,
        },
        "thresholds": {c: 0.5 for c in classes[1:]},
        "provenance": {"dataset": "tests"},
    }
    for key, value in (card_overrides or {}).items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    helper.set_model_props(model, {CARD_KEY: json.dumps(card)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def part_image(
    size: tuple[int, int] = (128, 128), blobs: tuple[tuple[int, int, int], ...] = ()
) -> np.ndarray:
    """A bright uint8 part with dark square blobs (x, y, half-size)."""
    img = np.full(size, 220, np.uint8)
    for x, y, r in blobs:
        img[max(0, y - r) : y + r, max(0, x - r) : x + r] = 10
    return img
