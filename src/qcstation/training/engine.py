"""The training engine: loss, one epoch, evaluation, and :func:`fit` with checkpoints, resume and early stop.

Training runs on the CPU by default (``device="cpu"``); it is deterministic for a fixed seed on one
machine and thread count. Every epoch appends a row to ``<out_dir>/log.csv`` and writes ``last.pt``;
``best.pt`` holds the epoch with the best validation metric. A checkpoint stores the architecture and its
options, the class names, the epoch, the optimiser/scheduler state and the training arguments, so it can
be resumed or exported without anything else.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from qcstation.training.devices import Amp, resolve_device, resolve_precision
from qcstation.training.errors import CheckpointError, TrainingError
from qcstation.training.nets import build_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "qcstation.checkpoint/1"


@dataclass
class TrainConfig:
    """Arguments of one training run (stored in every checkpoint).

    Attributes:
        classes: class names, index 0 = good.
        arch: architecture name for :func:`~qcstation.training.nets.build_model`.
        arch_kwargs: architecture options (e.g. ``{"width": 16}``).
        in_channels: 1 (gray) or 3.
        epochs: maximum number of epochs.
        batch_size: samples per step.
        lr: peak learning rate of AdamW (cosine decay to ``lr * min_lr_ratio``).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before the cosine decay.
        min_lr_ratio: final learning rate as a share of ``lr``.
        dice_weight: weight of the Dice term next to cross-entropy.
        class_weights: cross-entropy class weights (None: equal).
        seed: seed of every random generator.
        num_threads: torch CPU threads (None: all cores).
        patience: stop after this many epochs without improvement of ``monitor`` (None: never).
        min_epochs: never stop early before this epoch (the defect IoU often sits at 0 for the first
            epochs while the network learns the background).
        monitor: validation metric to maximise (a key of :class:`EvalResult.metrics`).
        max_steps_per_epoch: cap on steps per epoch (None: whole training set), for smoke runs.
        device: "cpu", "cuda", "cuda:N" or "auto" (:func:`~qcstation.training.devices.resolve_device`).
        precision: "auto" (mixed precision on a GPU, fp32 on the CPU), "fp32", "bf16" or "fp16" (GPU);
            the weights stay float32 (:mod:`qcstation.training.devices`).
    """

    classes: tuple[str, ...]
    arch: str = "unet_small"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 1
    epochs: int = 20
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.02
    dice_weight: float = 1.0
    class_weights: list[float] | None = None
    seed: int = 0
    num_threads: int | None = None
    patience: int | None = 6
    min_epochs: int = 0
    monitor: str = "miou_defects"
    max_steps_per_epoch: int | None = None
    device: str = "cpu"
    precision: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (what a checkpoint stores)."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["classes"] = tuple(known["classes"])
        return cls(**known)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(num_threads: int | None) -> int:
    """Set torch's CPU thread count (None: one per core) and return it."""
    n = num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


class DiceCELoss(nn.Module):
    """Class-weighted cross-entropy plus soft Dice over the defect classes (index >= 1).

    Dice counters the imbalance of a few defect pixels against a large good background; classes absent
    from both target and prediction contribute (almost) nothing thanks to the smoothing term.

    Args:
        num_classes: C.
        class_weights: C cross-entropy weights (None: equal).
        dice_weight: weight of the Dice term.
        smooth: Dice smoothing.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        if class_weights is not None and len(class_weights) != num_classes:
            raise TrainingError(f"expected {num_classes} class weights, got {len(class_weights)}")
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight)
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of N x C x H x W logits against N x H x W class indices."""
        weight: torch.Tensor | None = self.weight  # type: ignore[assignment]
        ce = F.cross_entropy(logits, target, weight=weight)
        if self.dice_weight == 0.0:
            return ce
        probs = logits.softmax(dim=1)[:, 1:]
        onehot = F.one_hot(target, self.num_classes).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        return ce + self.dice_weight * (1.0 - dice.mean())


def class_weights_from_counts(
    counts: np.ndarray, power: float = 0.5, max_weight: float = 10.0
) -> list[float]:
    """Cross-entropy weights from pixel counts: ``(count_good / count_c) ** power``, clipped to [1, max].

    Args:
        counts: pixels per class over the training set.
        power: 0.5 = square-root inverse frequency (1 would be full inverse frequency).
        max_weight: upper clip, so a class with a handful of pixels cannot dominate.

    Returns:
        One weight per class (good = 1).
    """
    c = np.maximum(counts.astype(np.float64), 1.0)
    w = np.clip((c[0] / c) ** power, 1.0, max_weight)
    w[0] = 1.0
    return [round(float(x), 4) for x in w]


@dataclass
class EvalResult:
    """Validation figures of one pass.

    Attributes:
        metrics: loss, pixel IoU per class (``iou_<name>``), mean IoU over all and over defect classes,
            image-level accuracy (an image is defective when any pixel's argmax is a defect class).
        max_probs: N x C maximum probability of each class per image (for calibration).
        image_labels: N ground-truth image labels (1: the mask has defect pixels).
        present: N x C, whether each class occurs in each image's mask.
    """

    metrics: dict[str, float]
    max_probs: np.ndarray
    image_labels: np.ndarray
    present: np.ndarray


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[str],
    *,
    loss_fn: nn.Module | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Run a model over a loader and measure it.

    Args:
        model: the network (logits out).
        loader: yields (images, masks).
        classes: class names, index 0 = good.
        loss_fn: also report the mean loss when given.
        device: torch device.

    Returns:
        The figures and per-image maxima.
    """
    model.eval()
    c = len(classes)
    conf = torch.zeros(c, c, dtype=torch.int64)
    maxima: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    present: list[np.ndarray] = []
    predicted_bad: list[np.ndarray] = []
    loss_sum, n = 0.0, 0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        logits = model(images)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks).item() * images.shape[0]
        n += images.shape[0]
        probs = logits.softmax(dim=1)
        pred = probs.argmax(dim=1)
        conf += torch.bincount((masks * c + pred).flatten().cpu(), minlength=c * c).reshape(c, c)
        maxima.append(probs.amax(dim=(2, 3)).cpu().numpy())
        labels.append((masks > 0).flatten(1).any(dim=1).cpu().numpy())
        present.append(F.one_hot(masks, c).flatten(1, 2).any(dim=1).cpu().numpy())
        predicted_bad.append((pred > 0).flatten(1).any(dim=1).cpu().numpy())
    if n == 0:
        raise TrainingError("evaluation loader is empty")
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan).numpy()
    metrics: dict[str, float] = {f"iou_{name}": float(iou[k]) for k, name in enumerate(classes)}
    metrics["miou"] = float(np.nanmean(iou))
    metrics["miou_defects"] = float(np.nanmean(iou[1:])) if np.isfinite(iou[1:]).any() else 0.0
    y = np.concatenate(labels).astype(np.int64)
    yhat = np.concatenate(predicted_bad).astype(np.int64)
    metrics["image_accuracy"] = float((y == yhat).mean())
    if loss_fn is not None:
        metrics["loss"] = loss_sum / n
    return EvalResult(metrics, np.concatenate(maxima), y, np.concatenate(present))


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float) -> Any:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


@dataclass
class FitResult:
    """What :func:`fit` leaves behind.

    Attributes:
        best_checkpoint: path of ``best.pt``.
        last_checkpoint: path of ``last.pt``.
        best_epoch: epoch (1-based) of the best validation metric.
        best_metric: its value.
        epochs_run: epochs completed (including resumed ones).
        history: one dict per epoch (the CSV rows).
        seconds: wall time of this call.
    """

    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_metric: float
    epochs_run: int
    history: list[dict[str, float]]
    seconds: float


def save_checkpoint(path: Path, model: nn.Module, config: TrainConfig, **state: Any) -> None:
    """Write a checkpoint (weights, architecture, classes, training arguments and any extra ``state``)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": config.arch,
        "arch_kwargs": dict(config.arch_kwargs),
        "in_channels": config.in_channels,
        "classes": list(config.classes),
        "args": config.to_dict(),
        "model": model.state_dict(),
        **state,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by this engine.

    Args:
        path: the ``.pt`` file.

    Returns:
        Its contents.

    Raises:
        CheckpointError: missing, unreadable, or not a qcstation checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle/zip/runtime errors for a bad file
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is not a qcstation checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return ckpt


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint, in eval mode.

    Returns:
        (model, checkpoint dict).

    Raises:
        CheckpointError: the checkpoint cannot be read or its weights do not fit its architecture.
    """
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["arch"], ckpt["in_channels"], len(ckpt["classes"]), **ckpt["arch_kwargs"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {ckpt['arch']}: {str(e)[:300]}"
        ) from e
    return model.eval(), ckpt


def check_resumable(ckpt: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume from a checkpoint of another architecture, input or class list.

    Raises:
        CheckpointError: naming what differs.
    """
    mine = {
        "arch": config.arch,
        "arch_kwargs": dict(config.arch_kwargs),
        "in_channels": config.in_channels,
        "classes": list(config.classes),
    }
    for key, want in mine.items():
        got = ckpt.get(key)
        if got != want:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with {key}={got!r} "
                f"but this run has {key}={want!r}"
            )


def fit(
    model: nn.Module,
    train_set: Dataset[tuple[torch.Tensor, torch.Tensor]],
    val_set: Dataset[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
) -> FitResult:
    """Train ``model`` with AdamW, a warm-up + cosine schedule, early stopping and checkpoints.

    Args:
        model: built with ``build_model(config.arch, config.in_channels, len(config.classes),
            **config.arch_kwargs)``.
        train_set: training samples (augmented).
        val_set: validation samples (not augmented).
        config: the run's arguments.
        out_dir: where ``last.pt``, ``best.pt`` and ``log.csv`` go (created).
        resume: a checkpoint to continue from (same architecture, input and classes).

    Returns:
        Where the checkpoints are and how training went.

    Raises:
        CheckpointError: ``resume`` is unreadable or belongs to another architecture/input/class list.
        TrainingError: an empty training or validation set, or a non-finite loss.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0 or len(val_set) == 0:  # type: ignore[arg-type]
        raise TrainingError(
            f"need non-empty train and val sets, got {len(train_set)} and {len(val_set)}"  # type: ignore[arg-type]
        )
    threads = set_threads(config.num_threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    amp = Amp(resolve_precision(config.precision, device), device)
    model.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, drop_last=True, generator=gen
    )
    if len(train_loader) == 0:
        train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=gen)
    val_loader = DataLoader(val_set, batch_size=config.batch_size, shuffle=False)
    steps_per_epoch = len(train_loader)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    loss_fn = DiceCELoss(len(config.classes), config.class_weights, config.dice_weight).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = max(1, config.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, min(config.warmup_steps, total // 4), config.min_lr_ratio)
    )
    start_epoch, best_metric, best_epoch, bad_epochs = 0, -math.inf, 0, 0
    history: list[dict[str, float]] = []
    if resume is not None:
        rpath = Path(resume)
        ckpt = load_checkpoint(rpath)
        check_resumable(ckpt, config, rpath)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        best_metric = float(ckpt["best_metric"])
        best_epoch = int(ckpt["best_epoch"])
        bad_epochs = int(ckpt["bad_epochs"])
        history = [dict(h) for h in ckpt.get("history", [])]
        log.info(
            "resuming from %s at epoch %d (best %s %.4f)", rpath, start_epoch, config.monitor, best_metric
        )
    log.info(
        "training %s on %d samples (%d steps/epoch), validating on %d, %d epochs, %d CPU threads, %s in %s",
        config.arch,
        len(train_set),  # type: ignore[arg-type]
        steps_per_epoch,
        len(val_set),  # type: ignore[arg-type]
        config.epochs,
        threads,
        device,
        amp.precision,
    )
    last_path, best_path = out / "last.pt", out / "best.pt"
    log_path = out / "log.csv"
    epoch = start_epoch
    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum, seen = 0.0, 0
        for step, (images, masks) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            images, masks = images.to(device), masks.to(device)
            with amp.autocast():
                logits = model(images)
            loss = loss_fn(logits.float(), masks)  # the loss in float32
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch} step {step}; lower the lr")
            amp.step(loss, optimizer)
            scheduler.step()
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
        result = evaluate(model, val_loader, config.classes, loss_fn=loss_fn, device=str(device))
        if config.monitor not in result.metrics:
            raise TrainingError(
                f"monitor {config.monitor!r} is not a metric; known: {sorted(result.metrics)}"
            )
        value = result.metrics[config.monitor]
        row: dict[str, float] = {
            "epoch": epoch,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "train_loss": loss_sum / max(1, seen),
            "val_loss": result.metrics["loss"],
            **{f"val_{k}": v for k, v in result.metrics.items() if k != "loss"},
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        improved = value > best_metric
        if improved:
            best_metric, best_epoch, bad_epochs = value, epoch, 0
        else:
            bad_epochs += 1
        state = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "history": history,
        }
        save_checkpoint(last_path, model, config, **state)
        if improved:
            save_checkpoint(best_path, model, config, **state)
        _append_csv(log_path, row)
        log.info(
            "epoch %d/%d  loss %.4f  val %s %.4f  image acc %.3f  %.1fs%s",
            epoch,
            config.epochs,
            row["train_loss"],
            config.monitor,
            value,
            result.metrics["image_accuracy"],
            row["seconds"],
            "  *best*" if improved else "",
        )
        if config.patience is not None and bad_epochs >= config.patience and epoch >= config.min_epochs:
            log.info("early stop: no %s improvement for %d epochs", config.monitor, bad_epochs)
            break
    if not best_path.exists():
        raise TrainingError(f"no epoch was run (resumed at epoch {start_epoch} of {config.epochs})")
    return FitResult(
        best_path, last_path, best_epoch, best_metric, epoch, history, time.perf_counter() - t_start
    )


def _append_csv(path: Path, row: Mapping[str, float]) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
