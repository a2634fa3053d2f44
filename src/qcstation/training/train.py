"""Entry points: train on a dataset folder, or on a freshly generated synthetic set, and export the model.

:func:`train_dataset` is the whole recipe - read, split by group, train, calibrate on the validation split,
export the ONNX with its card, verify. :func:`train_synthetic` first writes a synthetic set with
:mod:`qcstation.synth` and is how the shipped ``models/qc-demo.onnx`` is made.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import qcstation
from qcstation.inspect.card import InferenceSpec, InputSpec, ModelCard, OutputSpec
from qcstation.training.calibrate import Calibration, calibrate_thresholds, decide
from qcstation.training.data import SegmentationDataset, Subset, split_by_group, train_transform
from qcstation.training.engine import (
    FitResult,
    TrainConfig,
    class_weights_from_counts,
    evaluate,
    fit,
    model_from_checkpoint,
)
from qcstation.training.export import ExportReport, export_onnx
from qcstation.training.nets import build_model, count_parameters

log = logging.getLogger(__name__)

#: Seed of the shipped model's training set; deliberately not the demo images' seed (20261122).
SHIPPED_SEED = 7301
MEAN = (0.5,)
STD = (0.25,)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_path: the exported ``.onnx``.
        card: its model card.
        calibration: thresholds and validation rates.
        fit: the training history and checkpoint paths.
        export: the export checks.
        work_dir: where the dataset (synthetic runs), checkpoints and log.csv are.
        metrics: the validation metrics written into the card's provenance.
    """

    model_path: Path
    card: ModelCard
    calibration: Calibration
    fit: FitResult
    export: ExportReport
    work_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def dataset_sha256(root: Path) -> str:
    """sha256 over every file under ``root`` (relative path and content, in sorted path order)."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def code_version() -> str:
    """``qcstation <version>`` plus the git commit of the source tree, when it is a git checkout."""
    version = f"qcstation {qcstation.__version__}"
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    commit = out.stdout.strip()
    return f"{version} (git {commit})" if out.returncode == 0 and commit else version


def train_dataset(
    dataset_dir: str | Path,
    out: str | Path,
    *,
    name: str,
    epochs: int,
    seed: int,
    size: int = 256,
    width: int = 16,
    arch: str = "unet_small",
    arch_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    lr: float = 3e-3,
    crop: int | None = None,
    defect_crop_p: float = 0.5,
    max_class_weight: float = 4.0,
    val_fraction: float = 0.2,
    target_false_reject: float = 0.01,
    patience: int | None = 6,
    min_epochs: int | None = None,
    num_threads: int | None = None,
    max_steps_per_epoch: int | None = None,
    work_dir: str | Path | None = None,
    resume: str | Path | None = None,
    version: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a gray segmentation model on a dataset folder and export it with a calibrated card.

    Args:
        dataset_dir: a folder with ``dataset.yaml`` (see :mod:`qcstation.training.data`).
        out: the ``.onnx`` file to write.
        name: the model's name in its card.
        epochs: maximum epochs (early stopping may end sooner).
        seed: seed of the split, the initial weights, augmentation and shuffling.
        size: model input height and width (images are resized to it).
        width: ``unet_small`` width (ignored for other architectures).
        arch: architecture name (see :func:`~qcstation.training.nets.build_model`).
        arch_kwargs: architecture options (default for unet_small: ``{"width": width}``).
        batch_size: samples per step.
        lr: peak learning rate.
        crop: train on random ``crop`` x ``crop`` crops (None: size // 2; ``size``: whole images).
        defect_crop_p: share of crops placed on defect pixels (when the image has any).
        max_class_weight: upper clip of the cross-entropy class weights (higher: more recall, more false
            rejects).
        val_fraction: share of groups (parts) held out for validation and calibration.
        target_false_reject: calibration target per class on good validation images.
        patience: early-stopping patience in epochs (None: off).
        min_epochs: no early stop before this epoch (None: half of ``epochs``).
        num_threads: torch CPU threads (None: all cores).
        max_steps_per_epoch: cap steps per epoch (smoke runs).
        work_dir: where checkpoints and log.csv go (default: a new temporary folder).
        resume: a checkpoint to continue from.
        version: the card's version (default: today's UTC date, ``YYYY.MM.DD``).
        provenance: extra provenance fields (e.g. the generator seed).

    Returns:
        The exported model, its card, calibration and training history.

    Raises:
        DatasetError: the dataset cannot be read.
        CheckpointError: ``resume`` does not fit.
        ExportError: the export fails its checks.
        TrainingError: training diverged.
    """
    root = Path(dataset_dir)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="qcstation-train-"))
    work.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    code = code_version()  # read now: the tree may change while training runs
    ds = SegmentationDataset.from_folder(root, size=size, channels=1, mean=MEAN, std=STD)
    classes = ds.classes
    train_idx, val_idx = split_by_group(ds.samples, val_fraction, seed)
    counts = ds.class_pixel_counts(train_idx)
    weights = class_weights_from_counts(counts, max_weight=max_class_weight)
    kwargs = (
        dict(arch_kwargs) if arch_kwargs is not None else ({"width": width} if arch == "unet_small" else {})
    )
    config = TrainConfig(
        classes=classes,
        arch=arch,
        arch_kwargs=kwargs,
        in_channels=1,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        class_weights=weights,
        seed=seed,
        num_threads=num_threads,
        patience=patience,
        min_epochs=epochs // 2 if min_epochs is None else min_epochs,
        max_steps_per_epoch=max_steps_per_epoch,
    )
    model = build_model(arch, 1, len(classes), **kwargs)
    log.info(
        "dataset %s: %d samples (%d train, %d val, %d skipped), class pixels %s, CE weights %s; "
        "%s with %d parameters",
        root,
        len(ds),
        len(train_idx),
        len(val_idx),
        len(ds.skipped),
        counts.tolist(),
        weights,
        arch,
        count_parameters(model),
    )
    crop_side = crop if crop is not None else size // 2
    train_set = Subset(
        ds,
        train_idx,
        train_transform(crop_side if crop_side < size else None, defect_crop_p=defect_crop_p, seed=seed),
    )
    val_set = Subset(ds, val_idx)
    result = fit(model, train_set, val_set, config, work / "checkpoints", resume=resume)

    best, _ = model_from_checkpoint(result.best_checkpoint)
    from torch.utils.data import DataLoader

    ev = evaluate(best, DataLoader(val_set, batch_size=batch_size), classes)
    cal = calibrate_thresholds(
        ev.max_probs, ev.image_labels, classes, target_false_reject=target_false_reject
    )
    predicted = decide(ev.max_probs, classes, cal.thresholds)
    metrics: dict[str, Any] = {
        "split": "val",
        "images": len(val_idx),
        "defective_images": int(ev.image_labels.sum()),
        "pixel_iou": {c: _r(ev.metrics[f"iou_{c}"]) for c in classes},
        "miou_defects": _r(ev.metrics["miou_defects"]),
        "image_accuracy": _r(float((predicted == ev.image_labels.astype(bool)).mean())),
        "image_accuracy_argmax": _r(ev.metrics["image_accuracy"]),
        "false_reject_rate": _r(cal.false_reject_rate),
        "recall": None if cal.recall is None else _r(cal.recall),
    }
    card = ModelCard(
        name=name,
        version=version or created.strftime("%Y.%m.%d"),
        classes=tuple(classes),
        input=InputSpec("image", size, size, 1, "GRAY", MEAN, STD),
        output=OutputSpec("probs"),
        inference=InferenceSpec("resize"),
        thresholds=cal.thresholds,
        good_scores=cal.good_scores,
        provenance={
            "dataset": str(root),
            "dataset_sha256": dataset_sha256(root),
            "split": {
                "method": "by group (part), seeded",
                "seed": seed,
                "val_fraction": val_fraction,
                "train": len(train_idx),
                "val": len(val_idx),
                "skipped": len(ds.skipped),
            },
            "code_version": code,
            "created_at": created.isoformat(timespec="seconds"),
            "training": {
                "arch": arch,
                "arch_kwargs": kwargs,
                "parameters": count_parameters(best),
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "batch_size": batch_size,
                "lr": lr,
                "crop": crop_side,
                "defect_crop_p": defect_crop_p,
                "class_weights": weights,
                "seconds": round(result.seconds, 1),
            },
            "metrics": metrics,
            **dict(provenance or {}),
        },
    )
    if cal.recall is not None and cal.recall < 0.5:
        log.warning(
            "the model finds only %.0f %% of the defective validation images; train longer or check the data",
            100 * cal.recall,
        )
    report = export_onnx(best, card, out)
    log.info("wrote %s; val metrics %s", report.path, metrics)
    return TrainResult(report.path, report.card, cal, result, report, work, metrics)


def train_synthetic(
    out: str | Path,
    *,
    samples: int,
    epochs: int,
    seed: int,
    size: int = 256,
    width: int = 16,
    work_dir: str | Path | None = None,
    name: str = "qc-demo",
    **kw: Any,
) -> TrainResult:
    """Generate a synthetic training set with :mod:`qcstation.synth`, train on it, and export the model.

    Args:
        out: the ``.onnx`` file to write.
        samples: images to generate (half of them defective); 20 % of them are held out for validation.
        epochs: maximum epochs.
        seed: generator seed of the images; also seeds the split and training. Use a seed other than the
            demo images' (``qcstation.synth.DEMO_SEED``) so the demo set stays unseen.
        size: image and model input side.
        width: ``unet_small`` width.
        work_dir: where the generated images, checkpoints and log go (default: a new temporary folder).
        name: the model's name in its card.
        **kw: further options of :func:`train_dataset`.

    Returns:
        See :func:`train_dataset`; the card's provenance names dataset "qcstation.synth" and its seed.

    Raises:
        ValueError: ``seed`` is the demo seed.
        TrainingError: see :func:`train_dataset`.
    """
    from qcstation import synth

    if seed == synth.DEMO_SEED:
        raise ValueError(f"seed {seed} is the demo images' seed; training on it would leak the demo set")
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="qcstation-synth-"))
    data_dir = work / "data"
    log.info("generating %d synthetic images (seed %d) in %s", samples, seed, data_dir)
    synth.generate_dataset(data_dir, samples, seed, defect_rate=0.5, size=(size, size))
    result = train_dataset(
        data_dir,
        out,
        name=name,
        epochs=epochs,
        seed=seed,
        size=size,
        width=width,
        work_dir=work,
        provenance={
            "dataset": "qcstation.synth",
            "generator": {"module": "qcstation.synth", "seed": seed, "count": samples, "defect_rate": 0.5},
        },
        **kw,
    )
    return result


def _r(x: float) -> float | None:
    return None if x != x else round(float(x), 4)
