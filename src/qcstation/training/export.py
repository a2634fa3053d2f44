"""ONNX export: the network wrapped with a softmax, its model card in the metadata, checked end to end.

The exported graph takes ``image`` (N x C_in x H x W float32, normalised as the card says; N dynamic,
H and W fixed) and returns ``probs`` (N x C x H x W softmax probabilities). After writing, the file is
loaded back: the card must parse and match the graph (the runtime's own check), and onnxruntime must agree
with torch on sample inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from qcstation.inspect.card import (
    CARD_KEY,
    InferenceSpec,
    InputSpec,
    ModelCard,
    OutputSpec,
    TensorInfo,
    check_against_graph,
)
from qcstation.inspect.errors import ModelCardError
from qcstation.training.errors import CheckpointError, ExportError

if TYPE_CHECKING:
    from qcstation.training.backbones import BackboneDefectNet
    from qcstation.training.defectnet import DefectNet

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


# -- export from a training checkpoint (`qcstation export`) ----------------------------------------------

MEAN = (0.5,)
STD = (0.25,)


@dataclass
class CheckpointModel:
    """A network rebuilt from a training checkpoint, ready to export.

    Attributes:
        net: what :func:`export_onnx` gets: a logits network, or (``image_scores``) a module returning
            (probabilities, image probabilities).
        classes: class names, index 0 = good.
        in_channels: 1 or 3.
        size: the training input side when the checkpoint records it, else None.
        image_scores: the network has an image-level head (exported as a second output).
        kind: ``engine`` (:mod:`~qcstation.training.engine` checkpoints), ``defectnet``, or
            ``defectnet-ensemble`` (the members' best checkpoints of an ensemble run).
        epoch: the checkpoint's epoch (an ensemble: its members' latest).
        training: the training arguments stored in the checkpoint (an ensemble: its first member's, with
            ``members``).
        path: the ``.pt`` file read, or an ensemble's checkpoints folder.
        members: an ensemble's networks, one per ``member<k>/best.pt`` or, for members trained with
            ``snapshots``, one per kept snapshot (empty for a single network).
    """

    net: nn.Module
    classes: tuple[str, ...]
    in_channels: int
    size: int | None
    image_scores: bool
    kind: str
    epoch: int
    training: dict[str, Any]
    path: Path | None = None
    members: tuple[CheckpointModel, ...] = ()

    def probabilities(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(N x C x H x W probabilities, N x C image probabilities or None) from torch, for parity checks."""
        with torch.no_grad():
            if self.image_scores:
                probs, img = self.net(x)
                return probs.numpy(), img.numpy()
            return ProbabilityModel(self.net).eval()(x).numpy(), None


def _kwargs_for(fn: Any, config: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    return {k: config[k] for k in params if k in config and k not in skip}


def load_checkpoint_model(path: str | Path) -> CheckpointModel:
    """Rebuild the network of a training checkpoint in eval mode.

    Two kinds are read: the engine's (``format: qcstation.checkpoint/1``, written by ``train_dataset``) and
    DefectNet's (``config`` + ``model``, written by ``qcstation train``), which is exported as the station
    model (test-time augmentation and the image head as its config says). A folder is a run's checkpoints
    folder (or the work dir holding ``checkpoints/``): an ensemble's (see :func:`load_ensemble_model`) when
    it holds ``member<k>`` folders, else its ``best.pt``.

    Args:
        path: the ``.pt`` file, or a run's checkpoints folder or work dir.

    Returns:
        The network with its classes and training arguments.

    Raises:
        CheckpointError: missing, unreadable, of neither kind, or weights that do not fit the architecture.
    """
    from qcstation.training.engine import CHECKPOINT_FORMAT, model_from_checkpoint

    p = Path(path)
    if p.is_dir():
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        if any(_MEMBER.fullmatch(d.name) for d in folder.iterdir() if d.is_dir()):
            return load_ensemble_model(folder)
        if not (folder / "best.pt").is_file():
            raise CheckpointError(
                f"{folder} holds neither best.pt nor member<k>/best.pt: pass a checkpoint file, a run's "
                "checkpoints folder or its work dir"
            )
        p = folder / "best.pt"
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle/zip/runtime errors for a bad file
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {str(e)[:200]}") from e
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        net, ck = model_from_checkpoint(p)
        args = dict(ck.get("args", {}))
        size = args.get("size")
        return CheckpointModel(
            net.eval(),
            tuple(ck["classes"]),
            int(ck["in_channels"]),
            int(size) if isinstance(size, int) else None,
            False,
            "engine",
            int(ck.get("epoch", 0)),
            {"arch": ck["arch"], "arch_kwargs": ck["arch_kwargs"], **args},
            p,
        )
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or "model" not in ckpt or "classes" not in config:
        raise CheckpointError(
            f"{p} is not a qcstation checkpoint: expected the engine's (format {CHECKPOINT_FORMAT!r}) or a "
            "DefectNet one ('config' with 'classes', and 'model') as `qcstation train` writes"
        )
    from qcstation.training.defectnet import StationModel

    classes = tuple(str(c) for c in config["classes"])
    in_channels = int(config.get("in_channels", 1))
    kwargs = _defectnet_spec(config)
    try:
        net = _defectnet(in_channels, len(classes), config)
        net.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{p}: weights do not fit DefectNet{kwargs} with {len(classes)} classes: {str(e)[:300]}"
        ) from e
    station = StationModel(net.eval(), **_kwargs_for(StationModel.__init__, config, ("self", "net")))
    size = config.get("size")
    return CheckpointModel(
        station.eval(),
        classes,
        in_channels,
        int(size) if isinstance(size, int) else None,
        True,
        "defectnet",
        int(ckpt.get("epoch", 0)),
        dict(config),
        p,
    )


def _defectnet_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture options of a DefectNet checkpoint's config (what members must share)."""
    from qcstation.training.defectnet import DefectNet

    backbone = str(config.get("backbone", "unet"))
    if backbone != "unet":
        return {"backbone": backbone, "pool_topk": float(config.get("pool_topk", 0.0))}
    return _kwargs_for(DefectNet.__init__, config, ("self", "in_channels", "num_classes"))


def _defectnet(
    in_channels: int, num_classes: int, config: Mapping[str, Any]
) -> DefectNet | BackboneDefectNet:
    """The untrained network of a DefectNet checkpoint's config (never fetches pretrained weights)."""
    from qcstation.training.defectnet import DefectNet, net_from_config

    if str(config.get("backbone", "unet")) != "unet":
        return net_from_config(num_classes, dict(config), pretrained=False)
    return DefectNet(in_channels, num_classes, **_defectnet_spec(config))


_MEMBER = re.compile(r"member(\d+)")
SNAPSHOT_GLOB = "snapshot_e*.pt"
"""A member's kept snapshots (``DefectTrainConfig.snapshots``), ``snapshot_e<epoch>.pt``."""


def load_ensemble_model(folder: str | Path) -> CheckpointModel:
    """Rebuild an ensemble run's :class:`~qcstation.training.defectnet.DefectEnsemble`, wrapped as trained.

    The members are the folder's ``member0/best.pt``, ``member1/best.pt``, ... (at least two, none missing
    in between), DefectNet checkpoints of one class list, input and architecture; a member trained with
    ``snapshots`` > 1 contributes its kept ``snapshot_e<epoch>.pt`` networks instead of its ``best.pt``
    alone. The networks are wrapped in ``StationModel(DefectEnsemble(nets), tta=config.tta)``, as
    ``train_main`` exports them.

    Args:
        folder: the run's checkpoints folder (the one holding the ``member<k>`` folders).

    Returns:
        The station model of the averaged members, with the first member's training arguments.

    Raises:
        CheckpointError: a member's checkpoint is missing or unreadable, not DefectNet's, or differs from the
            first member in classes, input channels, size, architecture (the scale of the local-contrast
            channel may differ) or test-time augmentation.
    """
    from qcstation.training.defectnet import DefectEnsemble, DefectNet, StationModel

    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"ensemble checkpoints folder not found: {root}")
    found = [int(hit.group(1)) for d in root.iterdir() if d.is_dir() and (hit := _MEMBER.fullmatch(d.name))]
    files = [root / f"member{k}" / "best.pt" for k in range(max(2, max(found, default=0) + 1))]
    for f in files:
        if not f.is_file():
            raise CheckpointError(
                f"ensemble member checkpoint missing: {f} (an ensemble of {len(files)} needs every "
                f"member<k>/best.pt in {root}; an interrupted run goes on with `qcstation train --resume`)"
            )
    models = [load_checkpoint_model(f) for f in files]
    # a member trained with ``snapshots`` > 1 contributes its kept snapshots, as train_main exported it
    used: list[tuple[Path, CheckpointModel]] = []
    for f, m in zip(files, models, strict=True):
        snaps = sorted(f.parent.glob(SNAPSHOT_GLOB)) if int(m.training.get("snapshots", 1)) > 1 else []
        used += [(s, load_checkpoint_model(s)) for s in snaps] or [(f, m)]

    def spec(m: CheckpointModel) -> dict[str, Any]:
        arch = _defectnet_spec(m.training)
        arch.pop("local_contrast", None)  # an input channel of each member's own (member_local_contrast)
        return {
            "classes": list(m.classes),
            "in_channels": m.in_channels,
            "size": m.size,
            **arch,
            "tta": bool(m.training.get("tta", True)),
        }

    ref = spec(models[0])
    for f, m in used:
        if m.kind != "defectnet":
            raise CheckpointError(
                f"{f}: an ensemble member must be a DefectNet checkpoint, not an {m.kind} one"
            )
        mine = spec(m)
        diff = [k for k in {**ref, **mine} if mine.get(k) != ref.get(k)]
        if diff:
            raise CheckpointError(
                f"{f} does not match {files[0]}: "
                + ", ".join(f"{k} {mine.get(k)!r} vs {ref.get(k)!r}" for k in diff)
                + "; the members of an ensemble must share classes, input size and architecture"
            )
    nets: list[DefectNet] = []
    for _, m in used:
        assert isinstance(m.net, StationModel) and isinstance(m.net.net, DefectNet)
        nets.append(m.net.net)
    first = models[0]
    station = StationModel(DefectEnsemble(nets), tta=ref["tta"]).eval()
    log.info(
        "ensemble of %d members (%d networks): %s", len(files), len(nets), ", ".join(str(f) for f in files)
    )
    return CheckpointModel(
        station,
        first.classes,
        first.in_channels,
        first.size,
        True,
        "defectnet-ensemble",
        max(m.epoch for m in models),
        {**first.training, "members": len(models)},
        root,
        tuple(m for _, m in used),
    )


def peak_verdicts(peaks: np.ndarray, classes: Sequence[str], thresholds: Mapping[str, float]) -> list[str]:
    """Per image, the defect classes whose map peak reaches its threshold (``"+"``-joined), or ``PASS``.

    This is the model's own verdict at its card thresholds: the runtime finds a region of a class exactly
    when some pixel of its map reaches the threshold.

    Args:
        peaks: N x C per-image maximum of each class map.
        classes: class names, index 0 = good.
        thresholds: defect class -> threshold.

    Returns:
        One verdict string per image.
    """
    out = []
    for row in np.asarray(peaks):
        # compared in float64, as the runtime compares a class's peak with its threshold
        hit = [c for k, c in enumerate(classes) if k and float(row[k]) >= thresholds.get(c, 0.5)]
        out.append("+".join(hit) if hit else "PASS")
    return out


def _latency(det: Any, image: np.ndarray, runs: int) -> dict[str, float]:
    prepared = det.prepare(image)
    for _ in range(3):
        det.run(prepared)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        det.run(prepared)
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": round(float(np.median(times)), 3),
        "p90_ms": round(float(np.quantile(times, 0.9)), 3),
        "runs": runs,
    }


def _pick(n: int, k: int) -> list[int]:
    return sorted({round(float(i)) for i in np.linspace(0, n - 1, min(n, k))}) if n else []


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    dataset: str | Path | None = None,
    layout: str | None = None,
    size: int | None = None,
    name: str | None = None,
    version: str | None = None,
    threshold: float | None = None,
    card_from: str | Path | None = None,
    target_false_reject: float = 0.02,
    max_images: int = 48,
    int8: bool = False,
    latency_runs: int = 30,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export a training checkpoint (or an ensemble's) as a self-describing ONNX model, checked against torch.

    Checks, on up to ``max_images`` images of ``dataset`` (put through the station's own
    :class:`~qcstation.inspect.detector.Detector`): max |torch - onnxruntime| of the probability maps and
    identical verdicts at the card's thresholds (a disagreement is tolerated only for an image whose peak is
    within that difference of a threshold, and reported as borderline). Measures the model's latency
    (``session.run``) on this machine. With ``int8``, also writes ``<out stem>-int8.onnx`` (static QDQ,
    calibrated on the same images) and reports its difference from FP32: probabilities, verdicts, image
    AUROC and latency. The checks and timings go into the card's provenance (``export``).

    Args:
        checkpoint: a ``.pt`` checkpoint, or a run's checkpoints folder or work dir (an ensemble's: the
            average of its members' ``best.pt``; see :func:`load_checkpoint_model`).
        out: the ``.onnx`` file to write.
        dataset: images for the parity check, threshold calibration and INT8 calibration (any layout; a
            name under ``$QCSTATION_DATASETS`` works). None: synthetic inputs, thresholds 0.5 or given.
        layout: the dataset's layout (default: detected).
        size: model input side (default: the checkpoint's, else 256).
        name: the model's name (default: the checkpoint's folder name, or above it for ``checkpoints``).
        version: the card's version (default: today's UTC date).
        threshold: one threshold for every defect class (default: calibrated on the dataset's good images,
            or taken from ``card_from``).
        card_from: an exported model of the same run whose card supplies name, version, thresholds, good
            scores and provenance.
        target_false_reject: calibration target on good images.
        max_images: parity and INT8 calibration budget.
        int8: also write and check an INT8 model.
        latency_runs: timed ``session.run`` calls per model.
        threads: onnxruntime intra-op threads for the checks and timings (None: onnxruntime's default).

    Returns:
        A JSON-ready report: paths, parity, thresholds, metrics, latency (and ``int8``).

    Raises:
        CheckpointError: the checkpoint cannot be read or rebuilt.
        DatasetError: the dataset cannot be read or has no readable image.
        ExportError: export, card validation, parity or verdict agreement failed.
    """
    from qcstation.inspect.detector import Detector
    from qcstation.inspect.metrics import auroc, threshold_at_frr
    from qcstation.training.api import files_sha256, resolve_dataset
    from qcstation.training.calibrate import calibrate_thresholds, summarise
    from qcstation.training.data import normalise
    from qcstation.training.errors import DatasetError
    from qcstation.training.layouts import open_dataset
    from qcstation.training.train import code_version

    created = datetime.now(UTC)
    ckpt_path = Path(checkpoint)
    model = load_checkpoint_model(ckpt_path)
    base: ModelCard | None = None
    if card_from is not None:
        base = Detector.from_path(card_from, warmup=False).card
        if base.classes != model.classes:
            raise ExportError(
                f"--card-from {card_from}: classes {list(base.classes)} differ from the checkpoint's "
                f"{list(model.classes)}"
            )
    side = int(size or model.size or (base.input.height if base is not None else 0) or 256)
    if not (size or model.size or base):
        log.warning(
            "%s does not record its input size; exporting at %dx%d (set --size)", ckpt_path, side, side
        )
    classes = model.classes
    mean, std = MEAN * model.in_channels, STD * model.in_channels
    order: Literal["GRAY", "RGB"] = "GRAY" if model.in_channels == 1 else "RGB"
    out_path = Path(out)

    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[str] = []
    sides: list[str | None] = []
    data_prov: dict[str, Any] = {}
    if dataset is not None:
        reader = open_dataset(resolve_dataset(dataset), layout=layout)
        samples = reader.samples()
        loaded = reader.load((side, side), samples)
        if not loaded:
            raise DatasetError(f"dataset {reader.root} has no readable image to check the export on")
        for s in loaded:
            img = s.image if model.in_channels == 1 else cv2.cvtColor(s.image, cv2.COLOR_GRAY2RGB)
            images.append(img)
            labels.append(int(s.mask.any()))
            files.append(s.sample.image.name)
            sides.append(s.split)
        data_prov = {
            "dataset": reader.root.name,
            "layout": reader.layout,
            "dataset_sha256": files_sha256(
                [p for s in samples for p in (s.image, s.label) if p.is_file()], reader.root
            ),
            "images": len(loaded),
            "skipped": len(reader.problems),
        }

    def batch(idx: Sequence[int]) -> torch.Tensor:
        return torch.stack([normalise(images[i], mean, std) for i in idx])

    def torch_scores(idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(N x C map peaks, N image scores) from torch, in chunks."""
        peaks, scores = [], []
        for k in range(0, len(idx), 8):
            probs, img = model.probabilities(batch(idx[k : k + 8]))
            pk = probs.max(axis=(2, 3))
            peaks.append(pk)
            scores.append((img if img is not None else pk)[:, 1:].max(axis=1))
        return np.concatenate(peaks), np.concatenate(scores)

    # thresholds: given, from an earlier card, calibrated on good images, or 0.5
    good_scores: dict[str, Any] = {}
    calibration: dict[str, Any]
    if threshold is not None:
        thresholds = {c: float(threshold) for c in classes[1:]}
        calibration = {"method": "given", "threshold": float(threshold)}
    elif base is not None:
        thresholds, good_scores = dict(base.thresholds), dict(base.good_scores)
        calibration = {"method": "card", "from": str(card_from)}
    else:
        good = [i for i, (y, sd) in enumerate(zip(labels, sides, strict=True)) if y == 0 and sd != "test"]
        good = [good[i] for i in _pick(len(good), 256)]
        if good:
            peaks, scores = torch_scores(good)
            if model.image_scores:
                thr = float(np.clip(threshold_at_frr(scores, target_false_reject), 1e-4, 1.0))
                thresholds = {c: round(thr, 6) for c in classes[1:]}
                good_scores = summarise(scores)
            else:
                cal = calibrate_thresholds(
                    peaks, np.zeros(len(good), np.int64), classes, target_false_reject=target_false_reject
                )
                thresholds, good_scores = dict(cal.thresholds), dict(cal.good_scores)
            calibration = {
                "method": f"{target_false_reject:.1%} false rejects on good images (non-test sides)",
                "good_images": len(good),
                "note": "these may include training images, which score lower than new parts; prefer "
                "--card-from with the model `qcstation train` wrote, or --threshold",
            }
            good_scores["target_false_reject"] = target_false_reject
        else:
            thresholds = {c: 0.5 for c in classes[1:]}
            calibration = {"method": "default 0.5 (no good images to calibrate on)"}

    training = {k: v for k, v in model.training.items() if k != "classes"}
    provenance: dict[str, Any] = dict(base.provenance) if base is not None else {}
    provenance.update(
        {
            **({k: v for k, v in data_prov.items() if k in ("dataset", "dataset_sha256")}),
            "checkpoint": _checkpoint_provenance(model),
            "training": provenance.get("training", training),
            "code_version": code_version(),
            "created_at": created.isoformat(timespec="seconds"),
            "calibration": calibration,
        }
    )
    card = ModelCard(
        name=name or (base.name if base else _default_name(model.path or ckpt_path)),
        version=version or (base.version if base else created.strftime("%Y.%m.%d")),
        classes=classes,
        input=InputSpec("image", side, side, model.in_channels, order, mean, std),
        output=OutputSpec("probs", image_scores="image_probs" if model.image_scores else None),
        inference=InferenceSpec("resize"),
        thresholds=thresholds,
        good_scores=good_scores,
        provenance=provenance,
    )

    # parity on real images: torch against the station's own detector
    pick = _pick(len(images), max_images)
    samples_x = batch(pick).numpy() if pick else None
    report = export_onnx(model.net, card, out_path, samples=samples_x)
    det = Detector.from_path(out_path, intra_op_threads=threads)
    if pick:
        frames = [images[i] for i in pick]
        names = [files[i] for i in pick]
    else:
        raw = parity_inputs(card, count=4)
        frames = [
            np.clip((x.transpose(1, 2, 0) * np.array(std) + np.array(mean)) * 255.0, 0, 255)
            .round()
            .astype(np.uint8)
            .squeeze()
            for x in raw
        ]
        names = [f"synthetic:{k}" for k in range(len(frames))]
    x = torch.stack([normalise(f, mean, std) for f in frames])
    ref_probs, ref_img = model.probabilities(x)
    got = [det.predict(f) for f in frames]
    got_probs = np.stack([g[0] for g in got])
    diff = float(np.abs(got_probs - ref_probs).max())
    if ref_img is not None:
        got_img = np.stack([np.asarray(g[1]) for g in got])
        diff = max(diff, float(np.abs(got_img - ref_img).max()))
    ref_peaks, got_peaks = ref_probs.max(axis=(2, 3)), got_probs.max(axis=(2, 3))
    torch_v = peak_verdicts(ref_peaks, classes, thresholds)
    onnx_v = peak_verdicts(got_peaks, classes, thresholds)
    station_v = []
    for f in frames:
        regions = det.inspect(f, defect_map=False).regions
        hit = sorted({r.class_id for r in regions})
        station_v.append("+".join(classes[k] for k in hit) if hit else "PASS")
    disagreements: list[dict[str, Any]] = []
    for k in range(len(frames)):
        if torch_v[k] == onnx_v[k] == station_v[k]:
            continue
        margin = min(abs(float(ref_peaks[k, c]) - thresholds[classes[c]]) for c in range(1, len(classes)))
        disagreements.append(
            {
                "image": names[k],
                "torch": torch_v[k],
                "onnxruntime": onnx_v[k],
                "station": station_v[k],
                "borderline": margin <= diff + 1e-6,
            }
        )
    hard = [d for d in disagreements if not d["borderline"]]
    if hard:
        out_path.unlink(missing_ok=True)
        raise ExportError(
            f"{out_path}: verdicts differ between torch and the exported model on {len(hard)} of "
            f"{len(frames)} images (e.g. {hard[0]}); max |difference| of probabilities {diff:.3g}"
        )
    parity = {
        "images": len(frames),
        "real_images": bool(pick),
        "max_abs_diff": diff,
        "verdicts_identical": len(frames) - len(disagreements),
        "borderline": disagreements,
    }
    if not pick:
        log.warning("no dataset given: parity checked on synthetic inputs only; pass --dataset")
    metrics: dict[str, Any] = {}
    y = np.array([labels[i] for i in pick], np.int64)
    fp32_scores = np.array([float(det.inspect(f, defect_map=False).image_score) for f in frames])
    if pick and 0 < y.sum() < len(y):
        metrics["image_auroc"] = round(auroc(fp32_scores, y), 4)
    latency = {
        "fp32": _latency(det, frames[0], latency_runs),
        "intra_op_threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    result: dict[str, Any] = {
        "model": str(out_path),
        "checkpoint": str(ckpt_path),
        "kind": model.kind,
        **({"members": [str(m.path) for m in model.members]} if model.members else {}),
        "classes": list(classes),
        "input": [model.in_channels, side, side],
        "thresholds": thresholds,
        "calibration": calibration,
        "parity": parity,
        "metrics": metrics,
        "latency": latency,
        "size_bytes": report.size_bytes,
        **({"dataset": data_prov} if data_prov else {}),
    }
    _rewrite_card(out_path, {"export": {"parity": parity, "metrics": metrics, "latency": latency}})
    if int8:
        result["int8"] = _int8(
            out_path, frames, y if pick else None, fp32_scores, got_probs, card, latency_runs, threads
        )
    result["sha256"] = hashlib.sha256(out_path.read_bytes()).hexdigest()
    return result


def _checkpoint_provenance(model: CheckpointModel) -> dict[str, Any]:
    """The card's ``checkpoint`` entry: the file (or an ensemble's members' files) with hashes and epochs."""
    assert model.path is not None

    def entry(m: CheckpointModel, file: str) -> dict[str, Any]:
        assert m.path is not None
        return {"file": file, "sha256": hashlib.sha256(m.path.read_bytes()).hexdigest(), "epoch": m.epoch}

    if not model.members:
        return {**entry(model, model.path.name), "kind": model.kind}
    return {
        "folder": model.path.name,
        "kind": model.kind,
        "epoch": model.epoch,
        "members": [entry(m, m.path.relative_to(model.path).as_posix()) for m in model.members if m.path],
    }


def _default_name(path: Path) -> str:
    folder = path.resolve() if path.is_dir() else path.resolve().parent
    return (folder.parent.name if folder.name == "checkpoints" else folder.name) or "model"


def _rewrite_card(path: Path, extra: Mapping[str, Any]) -> ModelCard:
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    card = ModelCard.from_json(meta[CARD_KEY])
    final = dataclasses.replace(card, provenance={**card.provenance, **extra})
    write_card(model, final)
    onnx.save(model, str(path))
    return final


def _int8(
    fp32_path: Path,
    frames: Sequence[np.ndarray],
    labels: np.ndarray | None,
    fp32_scores: np.ndarray,
    fp32_probs: np.ndarray,
    card: ModelCard,
    runs: int,
    threads: int | None,
) -> dict[str, Any]:
    """Quantize, then compare the INT8 model with the FP32 one on the same frames."""
    from qcstation.inspect.detector import Detector
    from qcstation.inspect.errors import ModelLoadError
    from qcstation.inspect.metrics import auroc
    from qcstation.inspect.quantize import quantize_model

    dst = fp32_path.with_name(f"{fp32_path.stem}-int8.onnx")
    try:
        q = quantize_model(
            fp32_path, dst, frames, calibration_label=str(card.provenance.get("dataset", "frames"))
        )
    except ModelLoadError as e:
        raise ExportError(f"INT8 quantization failed: {e}") from e
    except Exception as e:  # onnxruntime.quantization raises untyped errors for unsupported graphs
        raise ExportError(f"INT8 quantization failed: {type(e).__name__}: {str(e)[:300]}") from e
    det = Detector.from_path(dst, intra_op_threads=threads)
    probs = np.stack([det.predict(f)[0] for f in frames])
    scores = np.array([float(det.inspect(f, defect_map=False).image_score) for f in frames])
    thr = dict(card.thresholds)
    v32 = peak_verdicts(fp32_probs.max(axis=(2, 3)), card.classes, thr)
    v8 = peak_verdicts(probs.max(axis=(2, 3)), card.classes, thr)
    changed = [k for k in range(len(frames)) if v32[k] != v8[k]]
    info: dict[str, Any] = {
        "model": str(dst),
        "calibration_frames": q.frames,
        "max_abs_diff_vs_fp32": float(np.abs(probs - fp32_probs).max()),
        "max_image_score_diff_vs_fp32": float(np.abs(scores - fp32_scores).max()),
        "verdicts_changed": len(changed),
        "images": len(frames),
        "latency": _latency(det, frames[0], runs),
    }
    if labels is not None and 0 < labels.sum() < len(labels):
        a32, a8 = auroc(fp32_scores, labels), auroc(scores, labels)
        info["image_auroc"] = {"fp32": round(a32, 4), "int8": round(a8, 4), "change": round(a8 - a32, 4)}
    if changed:
        log.warning("INT8 changes the verdict of %d of %d images", len(changed), len(frames))
    _rewrite_card(dst, {"int8_check": {k: v for k, v in info.items() if k != "model"}})
    info["sha256"] = hashlib.sha256(dst.read_bytes()).hexdigest()
    return info
