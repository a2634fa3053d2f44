"""ONNX export: the network wrapped with a softmax, its model card in the metadata, checked end to end.

The exported graph takes ``image`` (N x C_in x H x W float32, normalised as the card says; N dynamic,
H and W fixed) and returns ``probs`` (N x C x H x W softmax probabilities). After writing, the file is
loaded back: the card must parse and match the graph (the runtime's own check), and onnxruntime must agree
with torch on sample inputs.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from qcstation.inspect.card import CARD_KEY, ModelCard, TensorInfo, check_against_graph
from qcstation.inspect.errors import ModelCardError
from qcstation.training.errors import ExportError

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ProbabilityModel(nn.Module):
    """Wraps a logits network so its output is softmax probabilities over the class axis."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """N x C x H x W probabilities."""
        # Written out rather than torch.softmax: onnxruntime runs Softmax(axis=1) of an N x C x H x W tensor
        # as H*W rows of C values, which was a quarter of the demo model's time; this is one pass per step.
        logits = self.net(image)
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` checked.

    Attributes:
        path: the written file.
        card: the card as read back from the file.
        max_abs_diff: largest |torch - onnxruntime| over the parity inputs' probabilities.
        argmax_agreement: share of pixels where torch and onnxruntime pick the same class.
        size_bytes: file size.
    """

    path: Path
    card: ModelCard
    max_abs_diff: float
    argmax_agreement: float
    size_bytes: int


def write_card(model: onnx.ModelProto, card: ModelCard) -> None:
    """Put the card's JSON into ``metadata_props`` under :data:`CARD_KEY`, replacing an older one."""
    keep = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key = CARD_KEY
    entry.value = card.to_json()


def read_card(session: ort.InferenceSession) -> ModelCard:
    """Parse the card of a loaded model and check it against the graph (as the station does on load).

    Raises:
        ModelCardError: no card, a malformed card, or one that does not match the graph.
    """
    meta = session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        raise ModelCardError(f"the model has no '{CARD_KEY}' metadata")
    card = ModelCard.from_json(meta[CARD_KEY])
    check_against_graph(
        card,
        [TensorInfo(t.name, tuple(t.shape), t.type) for t in session.get_inputs()],
        [TensorInfo(t.name, tuple(t.shape), t.type) for t in session.get_outputs()],
    )
    return card


def parity_inputs(card: ModelCard, count: int = 3, seed: int = 0) -> np.ndarray:
    """Sample inputs in the card's normalised space: a flat grey frame, noise, and a frame with features."""
    rng = np.random.default_rng(seed)
    c, h, w = card.input.channels, card.input.height, card.input.width
    mean = np.asarray(card.input.mean, np.float32).reshape(1, c, 1, 1)
    std = np.asarray(card.input.std, np.float32).reshape(1, c, 1, 1)
    raw = rng.uniform(0.0, 1.0, (count, c, h, w)).astype(np.float32)
    raw[0] = 0.5
    if count > 2:
        yy, xx = np.mgrid[0:h, 0:w]
        raw[2] = 0.6 + 0.05 * rng.standard_normal((h, w))
        raw[2, :, (yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (min(h, w) // 10) ** 2] = 0.15
        raw[2, :, h // 4, w // 8 : w - w // 8] = 0.2
    return ((raw - mean) / std).astype(np.float32)


def export_onnx(
    net: nn.Module,
    card: ModelCard,
    path: str | Path,
    *,
    samples: np.ndarray | Sequence[np.ndarray] | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Export a logits network as a self-describing probability model and verify the file.

    Args:
        net: N x C_in x H x W -> N x C x H x W logits (any device; exported on the CPU in eval mode); when
            the card names ``output.image_scores``, a module returning (N x C x H x W probabilities,
            N x C image probabilities) instead, exported as is.
        card: the model card to embed; its input/output names and sizes define the graph's.
        path: the ``.onnx`` file to write (parent folders are created).
        samples: N x C_in x H x W normalised inputs for the parity check (default: :func:`parity_inputs`).
        tolerance: largest allowed |torch - onnxruntime| probability difference.

    Returns:
        What was written and checked.

    Raises:
        ExportError: torch cannot export the network, the card does not match the graph, or onnxruntime
            disagrees with torch beyond ``tolerance``.
    """
    out = Path(path)
    two_outputs = card.output.image_scores is not None
    # with an image head the network already returns (probabilities, image probabilities)
    wrapped = (net if two_outputs else ProbabilityModel(net)).cpu().eval()
    output_names = [card.output.name] + ([str(card.output.image_scores)] if two_outputs else [])
    c, h, w = card.input.channels, card.input.height, card.input.width
    dummy = torch.zeros(1, c, h, w)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (the dynamo one needs onnxscript, which is not a
            # dependency); torch's notice about it is attributed to this module, so silence just that notice.
            warnings.filterwarnings(
                "ignore", message=r"You are using the legacy TorchScript", category=DeprecationWarning
            )
            torch.onnx.export(
                wrapped,
                (dummy,),
                buf,  # type: ignore[arg-type]  # a file object is accepted, the stub says path only
                input_names=[card.input.name],
                output_names=output_names,
                dynamic_axes={card.input.name: {0: "N"}, **{o: {0: "N"} for o in output_names}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:  # torch.onnx raises a variety of errors for unsupported operators
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:300]}") from e
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name = "qcstation"
    model.doc_string = f"{card.name} {card.version}: {card.task}, classes {list(card.classes)}"
    write_card(model, card)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported graph is not valid ONNX: {str(e)[:300]}") from e
    data = model.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    try:
        loaded = read_card(session)
    except ModelCardError as e:
        raise ExportError(f"{out}: the written card does not validate: {e}") from e
    if loaded != card:
        raise ExportError(f"{out}: the card read back differs from the card written")

    x = (
        parity_inputs(card)
        if samples is None
        else np.asarray(np.stack(list(samples)) if isinstance(samples, Sequence) else samples, np.float32)
    )
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise ExportError(f"parity samples: expected N x {c} x {h} x {w}, got {x.shape}")
    with torch.no_grad():
        ref_out = wrapped(torch.from_numpy(x))
    refs = [t.numpy() for t in ref_out] if two_outputs else [ref_out.numpy()]
    gots = [np.asarray(o) for o in session.run(output_names, {card.input.name: x})]
    for got_o, ref_o, name in zip(gots, refs, output_names, strict=True):
        if got_o.shape != ref_o.shape:
            raise ExportError(
                f"onnxruntime output {name} shape {got_o.shape} differs from torch {ref_o.shape}"
            )
    ref, got = refs[0], gots[0]
    diff = max(float(np.abs(g - r).max()) for g, r in zip(gots, refs, strict=True))
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    if not diff < tolerance:
        raise ExportError(
            f"{out}: onnxruntime and torch disagree: max |difference| of probabilities {diff:.3g} "
            f"(tolerance {tolerance:g})"
        )
    log.info(
        "exported %s (%.2f MB): parity max |diff| %.2e, argmax agreement %.6f",
        out,
        len(data) / 1e6,
        diff,
        agree,
    )
    return ExportReport(out, loaded, diff, agree, len(data))
