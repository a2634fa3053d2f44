"""The model card: the JSON that makes an ``.onnx`` file describe itself.

Training writes it into the ONNX ``metadata_props`` under :data:`CARD_KEY`; the runtime reads it and checks
it against the graph before the first frame. This module is the single definition both sides use.

A card (schema version 1) looks like::

    {
      "schema_version": 1,
      "name": "qc-demo", "version": "2026.11.22", "task": "segmentation",
      "classes": ["good", "scratch", "crack", "pit", "stain"],
      "input": {"name": "image", "height": 256, "width": 256, "channels": 1, "channel_order": "GRAY",
                "mean": [0.5], "std": [0.25]},
      "inference": {"mode": "resize"}            # or {"mode": "tile", "tile_size": 256, "overlap": 32}
      "output": {"name": "probs", "kind": "probabilities", "image_scores": null},
      "thresholds": {"scratch": 0.5, ...},      # calibrated default per defect class
      "good_scores": {...},                     # validation score distribution of good parts (optional)
      "provenance": {"dataset": ..., "dataset_sha256": ..., "split": ..., "code_version": ...,
                     "created_at": ..., "metrics": {...}}
    }

The output named in ``output.name`` is N x C x H x W class probabilities (softmax over C, C = len(classes)).
An optional ``output.image_scores`` names an N x C output of image-level class probabilities.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qcstation.inspect.errors import ModelCardError

CARD_KEY = "qcstation.card"
CARD_SCHEMA_VERSION = 1

InferenceMode = Literal["resize", "tile"]
ChannelOrder = Literal["GRAY", "RGB", "BGR"]


def _fail(path: str, expected: str, got: object) -> ModelCardError:
    return ModelCardError(f"model card field '{path}': expected {expected}, got {got!r}")


def _get(d: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise ModelCardError(f"model card is missing field '{path}{key}'")
    return d[key]


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(path, "a non-empty string", v)
    return v


def _int(v: Any, path: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _fail(path, f"an integer >= {lo}", v)
    return v


def _floats(v: Any, path: str, n: int) -> tuple[float, ...]:
    if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != n:
        raise _fail(path, f"a list of {n} numbers", v)
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise _fail(path, f"a list of {n} finite numbers", v)
        out.append(float(x))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How frames are turned into the model's input tensor (N x C x H x W float32)."""

    name: str
    height: int
    width: int
    channels: int
    channel_order: ChannelOrder
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: Any) -> InputSpec:
        if not isinstance(d, Mapping):
            raise _fail("input", "an object", d)
        channels = _int(_get(d, "channels", "input."), "input.channels")
        if channels not in (1, 3):
            raise _fail("input.channels", "1 or 3", channels)
        order = _get(d, "channel_order", "input.")
        if order not in ("GRAY", "RGB", "BGR") or (channels == 1) != (order == "GRAY"):
            raise _fail("input.channel_order", "GRAY for 1 channel, RGB or BGR for 3", order)
        std = _floats(_get(d, "std", "input."), "input.std", channels)
        if any(s <= 0 for s in std):
            raise _fail("input.std", "positive numbers", list(std))
        return cls(
            name=_str(_get(d, "name", "input."), "input.name"),
            height=_int(_get(d, "height", "input."), "input.height", 8),
            width=_int(_get(d, "width", "input."), "input.width", 8),
            channels=channels,
            channel_order=order,
            mean=_floats(_get(d, "mean", "input."), "input.mean", channels),
            std=std,
        )


@dataclass(frozen=True, slots=True)
class InferenceSpec:
    """Whether a frame is resized to the input size or cut into native-resolution tiles."""

    mode: InferenceMode = "resize"
    tile_size: int | None = None
    overlap: int = 0

    @classmethod
    def from_dict(cls, d: Any) -> InferenceSpec:
        if not isinstance(d, Mapping):
            raise _fail("inference", "an object", d)
        mode = _get(d, "mode", "inference.")
        if mode == "resize":
            return cls("resize")
        if mode != "tile":
            raise _fail("inference.mode", "'resize' or 'tile'", mode)
        tile = _int(_get(d, "tile_size", "inference."), "inference.tile_size", 8)
        overlap = _int(d.get("overlap", 0), "inference.overlap", 0)
        if overlap >= tile // 2:
            raise _fail("inference.overlap", f"less than half the tile size ({tile // 2})", overlap)
        return cls("tile", tile, overlap)


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """Which graph output holds the probability maps (and, optionally, image-level scores)."""

    name: str
    kind: Literal["probabilities"] = "probabilities"
    image_scores: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> OutputSpec:
        if not isinstance(d, Mapping):
            raise _fail("output", "an object", d)
        kind = d.get("kind", "probabilities")
        if kind != "probabilities":
            raise _fail("output.kind", "'probabilities' (softmax over classes)", kind)
        image_scores = d.get("image_scores")
        return cls(
            name=_str(_get(d, "name", "output."), "output.name"),
            image_scores=None if image_scores is None else _str(image_scores, "output.image_scores"),
        )


@dataclass(frozen=True, slots=True)
class ModelCard:
    """Everything the runtime needs to know about a model, and where it came from."""

    name: str
    version: str
    classes: tuple[str, ...]
    input: InputSpec
    output: OutputSpec
    inference: InferenceSpec = InferenceSpec()
    thresholds: dict[str, float] = field(default_factory=dict)
    good_scores: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    task: Literal["segmentation"] = "segmentation"
    schema_version: int = CARD_SCHEMA_VERSION

    @property
    def defect_classes(self) -> tuple[str, ...]:
        """Class names except index 0 (background/good)."""
        return self.classes[1:]

    def threshold(self, class_name: str) -> float:
        """The card's default threshold for a defect class (0.5 when the card gives none)."""
        return self.thresholds.get(class_name, 0.5)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["input"]["mean"] = list(self.input.mean)
        d["input"]["std"] = list(self.input.std)
        return d

    def to_json(self) -> str:
        """Serialise for the ONNX metadata (stable key order)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse and validate a card.

        Raises:
            ModelCardError: the text is not JSON or a field is missing or wrong, naming the field.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise ModelCardError(f"model card is not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, d: Any) -> ModelCard:
        """Validate a parsed card (see :meth:`from_json`)."""
        if not isinstance(d, Mapping):
            raise _fail("(root)", "a JSON object", type(d).__name__)
        version = _get(d, "schema_version", "")
        if version != CARD_SCHEMA_VERSION:
            raise ModelCardError(
                f"model card schema_version {version!r} is not supported by this runtime "
                f"(expected {CARD_SCHEMA_VERSION}); upgrade qcstation or re-export the model"
            )
        task = _get(d, "task", "")
        if task != "segmentation":
            raise _fail("task", "'segmentation'", task)
        classes = _get(d, "classes", "")
        if (
            not isinstance(classes, list)
            or len(classes) < 2
            or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise _fail("classes", "a list of at least 2 distinct names (index 0 = good)", classes)
        thresholds = d.get("thresholds", {})
        if not isinstance(thresholds, Mapping):
            raise _fail("thresholds", "an object of class name -> number", thresholds)
        for k, v in thresholds.items():
            if k not in classes[1:]:
                raise _fail(f"thresholds.{k}", f"one of the defect classes {classes[1:]}", k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < v <= 1.0:
                raise _fail(f"thresholds.{k}", "a number in (0, 1]", v)
        good_scores = d.get("good_scores", {})
        provenance = d.get("provenance", {})
        if not isinstance(good_scores, Mapping):
            raise _fail("good_scores", "an object", good_scores)
        if not isinstance(provenance, Mapping):
            raise _fail("provenance", "an object", provenance)
        return cls(
            name=_str(_get(d, "name", ""), "name"),
            version=_str(_get(d, "version", ""), "version"),
            classes=tuple(classes),
            input=InputSpec.from_dict(_get(d, "input", "")),
            output=OutputSpec.from_dict(_get(d, "output", "")),
            inference=InferenceSpec.from_dict(d.get("inference", {"mode": "resize"})),
            thresholds={k: float(v) for k, v in thresholds.items()},
            good_scores=dict(good_scores),
            provenance=dict(provenance),
        )


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Name, shape and element type of a graph input or output (as onnxruntime reports them)."""

    name: str
    shape: tuple[int | str | None, ...]
    type: str


def check_against_graph(card: ModelCard, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> None:
    """Refuse a card that does not describe the graph it sits in.

    Args:
        card: the parsed card.
        inputs: the graph's inputs.
        outputs: the graph's outputs.

    Raises:
        ModelCardError: saying which of name, rank, channels, size or class count disagrees.
    """
    by_name = {t.name: t for t in inputs}
    if card.input.name not in by_name:
        raise ModelCardError(
            f"model card names input '{card.input.name}' but the graph's inputs are {sorted(by_name)}"
        )
    inp = by_name[card.input.name]
    if inp.type != "tensor(float)":
        raise ModelCardError(f"graph input '{inp.name}': expected tensor(float), got {inp.type}")
    if len(inp.shape) != 4:
        raise ModelCardError(f"graph input '{inp.name}': expected rank 4 (N, C, H, W), got shape {inp.shape}")
    _dim(inp.name, "channels", inp.shape[1], card.input.channels)
    _dim(inp.name, "height", inp.shape[2], card.input.height)
    _dim(inp.name, "width", inp.shape[3], card.input.width)
    if card.inference.mode == "tile" and (
        card.inference.tile_size != card.input.height or card.inference.tile_size != card.input.width
    ):
        raise ModelCardError(
            f"model card tile_size {card.inference.tile_size} differs from the input size "
            f"{card.input.height}x{card.input.width}"
        )
    outs = {t.name: t for t in outputs}
    if card.output.name not in outs:
        raise ModelCardError(
            f"model card names output '{card.output.name}' but the graph's outputs are {sorted(outs)}"
        )
    out = outs[card.output.name]
    if len(out.shape) != 4:
        raise ModelCardError(
            f"graph output '{out.name}': expected rank 4 (N, C, H, W), got shape {out.shape}"
        )
    _dim(out.name, "classes", out.shape[1], len(card.classes))
    if card.output.image_scores is not None:
        if card.output.image_scores not in outs:
            raise ModelCardError(
                f"model card names image-score output '{card.output.image_scores}' but the graph's outputs "
                f"are {sorted(outs)}"
            )
        img = outs[card.output.image_scores]
        if len(img.shape) != 2:
            raise ModelCardError(f"graph output '{img.name}': expected rank 2 (N, C), got shape {img.shape}")
        _dim(img.name, "classes", img.shape[1], len(card.classes))


def _dim(tensor: str, what: str, actual: int | str | None, expected: int) -> None:
    if isinstance(actual, int) and actual != expected:
        raise ModelCardError(
            f"graph tensor '{tensor}' has {what} {actual} but the model card says {expected}"
        )
