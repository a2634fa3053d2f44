"""Entry points for the CLI: ``train_main``, ``evaluate_main`` and ``dataset_info``.

``train_main`` is the whole small-data recipe for a mask-folders dataset (e.g. magnetic tile): read, split
(``split.json`` when present, then a grouped validation split carved out of the training side), train a
:class:`~qcstation.training.defectnet.DefectNet` within a time budget, calibrate on validation for a
target false-reject rate, export the ONNX with its card, and evaluate it on the test side through the
station's :class:`~qcstation.inspect.Detector`. Test figures are reported and written into the card's
provenance; nothing is ever chosen on them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from qcstation.inspect.card import InferenceSpec, InputSpec, ModelCard, OutputSpec
from qcstation.inspect.metrics import auroc, recall_at_frr, threshold_at_frr
from qcstation.training.calibrate import summarise
from qcstation.training.data import (
    SPLIT_FILE,
    LoadedSample,
    check_leaks,
    dhash,
    split_by_group,
    suspect_labels,
)
from qcstation.training.defectnet import (
    GOOD_ONLY_RECIPE,
    SUPERVISED_RECIPE,
    DefectTrainConfig,
    Pool,
    StationModel,
    predict_pool,
    synthetic_validation,
    train_defect_net,
)
from qcstation.training.devices import Distributed, resolve_device, resolve_precision
from qcstation.training.errors import DatasetError
from qcstation.training.export import export_onnx, write_card
from qcstation.training.layouts import DatasetReader, open_dataset
from qcstation.training.train import code_version

log = logging.getLogger(__name__)

DATASETS_ENV = "QCSTATION_DATASETS"
DEFAULT_DATASETS = "../shared/datasets"
MEAN = (0.5,)
STD = (0.25,)

Mode = Literal["supervised", "good_only"]


def resolve_dataset(dataset: str | Path) -> Path:
    """A dataset folder: the path itself when it exists, else ``$QCSTATION_DATASETS/<dataset>``.

    ``QCSTATION_DATASETS`` defaults to ``../shared/datasets``.

    Raises:
        DatasetError: neither exists.
    """
    p = Path(dataset)
    if p.is_dir():
        return p
    base = Path(os.environ.get(DATASETS_ENV, DEFAULT_DATASETS))
    if (base / p).is_dir():
        return base / p
    raise DatasetError(f"dataset {dataset!r} not found (as a path, nor under {DATASETS_ENV}={base})")


def files_sha256(paths: Sequence[Path], root: Path) -> str:
    """sha256 over the sorted relative paths and the bytes of the given files."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


VALIDATION_LIST = "validation.txt"
"""The held-out images of a run, one path per line relative to the dataset, beside its checkpoints."""
SUSPECTS_LIST = "suspect_labels.txt"
"""The training-side images a run left out for suspect labels: path and reason, tab-separated, per line."""


def _check_held_out(
    held_out: Sequence[str], checkpoints: Path, resume: str | Path | None, *, write: bool = True
) -> str:
    """Write the run's held-out images beside its checkpoints; a resumed run must hold out the same ones.

    ``write=False`` checks without writing (the ranks of a ``torchrun`` job other than 0).

    Returns:
        sha256 of the list (the card's ``validation_sha256``).

    Raises:
        DatasetError: ``resume`` names a run that held out other images (another dataset, ``split_seed`` or
            ``val_fraction``): its checkpoint was chosen and would be calibrated on other parts.
    """
    text = "".join(f"{p}\n" for p in held_out)
    if resume is not None:
        before = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        listed = before / VALIDATION_LIST
        if listed.is_file() and listed.read_text(encoding="utf-8") != text:
            old = set(listed.read_text(encoding="utf-8").splitlines())
            raise DatasetError(
                f"cannot resume {before}: it held out other validation images than this run would "
                f"({len(old - set(held_out))} of its {len(old)} are not held out now); resume with the "
                "dataset, --split-seed, validation share and --refit/--no-refit it was started with"
            )
    if write:
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / VALIDATION_LIST).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def _write_suspects(suspects: dict[Path, str], root: Path, checkpoints: Path) -> None:
    """List the images left out for suspect labels beside the checkpoints (an empty file when none)."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{p.relative_to(root).as_posix()}\t{why}\n" for p, why in sorted(suspects.items()))
    (checkpoints / SUSPECTS_LIST).write_text(text, encoding="utf-8")


def _open(dataset: str | Path, layout: str | None, merge: str | None) -> DatasetReader:
    # any layout (given, from dataset.yaml, or detected): see qcstation.training.layouts
    return open_dataset(resolve_dataset(dataset), layout=layout, merge=merge)


def dataset_info(dataset: str | Path, *, layout: str | None = None) -> dict[str, Any]:
    """Counts per class and split side, image sizes, label coverage, groups, problems, leaks, suspect labels.

    Args:
        dataset: a dataset folder, or a name under ``$QCSTATION_DATASETS``.
        layout: the layout (default: mask_folders, inferred).

    Returns:
        A JSON-ready report; ``report["markdown"]`` is a printable summary.
    """
    reader = _open(dataset, layout, None)
    samples = reader.samples()
    if not samples:
        raise DatasetError(f"dataset {reader.root} is empty: no images found")
    loaded = reader.load(None, samples)
    per_class = Counter(s.source_class for s in loaded)
    per_side = Counter(f"{s.split or 'unsplit'}/{s.source_class}" for s in loaded)
    widths = [s.image.shape[1] for s in loaded]
    heights = [s.image.shape[0] for s in loaded]
    coverage: dict[str, float] = {}
    for cls in sorted(per_class):
        if cls == "good":
            continue
        fr = [float((s.mask > 0).mean()) for s in loaded if s.source_class == cls]
        coverage[cls] = round(statistics.fmean(fr), 5) if fr else 0.0
    side = {s.sample.image: s.split for s in loaded if s.split}
    hashes = {s.sample.image: dhash(s.image, 16) for s in loaded} if side else None
    leaks = check_leaks(samples, side, hashes=hashes) if side else []
    suspects = suspect_labels(loaded)
    report: dict[str, Any] = {
        "dataset": str(reader.root),
        "layout": reader.layout,
        "classes": list(reader.classes),
        "images": len(loaded),
        "per_class": dict(sorted(per_class.items())),
        "per_split": dict(sorted(per_side.items())),
        "groups": len({s.group for s in samples}),
        "size": {
            "width": [min(widths), int(statistics.median(widths)), max(widths)],
            "height": [min(heights), int(statistics.median(heights)), max(heights)],
        },
        "mean_mask_coverage": coverage,
        "split_file": (reader.root / SPLIT_FILE).is_file(),
        "problems": [{"file": f, "reason": r} for f, r in reader.problems],
        "leak_warnings": leaks,
        "suspect_labels": [
            {"file": p.relative_to(reader.root).as_posix(), "side": side.get(p), "reason": why}
            for p, why in sorted(suspects.items())
        ],
    }
    lines = [
        f"# {reader.root.name} ({reader.layout})",
        f"{len(loaded)} images, {report['groups']} groups; classes {list(reader.classes)}",
        "",
        "| class | images | mean mask coverage |",
        "|---|---|---|",
        *[f"| {c} | {n} | {coverage.get(c, 0.0):.4f} |" for c, n in sorted(per_class.items())],
        "",
        f"width min/median/max {report['size']['width']}, height {report['size']['height']}",
        f"per split: {report['per_split']}",
        f"problems: {len(reader.problems)}" + "".join(f"\n- {f}: {r}" for f, r in reader.problems),
        f"leak warnings: {leaks or 'none'}",
        f"suspect labels (worth relabelling; `train --drop-suspect-labels` leaves them out): {len(suspects)}"
        + "".join(
            f"\n- {p.relative_to(reader.root).as_posix()} ({side.get(p) or 'unsplit'}): {why}"
            for p, why in sorted(suspects.items())
        ),
    ]
    report["markdown"] = "\n".join(lines)
    return report


def _pool(items: Sequence[LoadedSample]) -> Pool:
    return Pool(
        [s.image for s in items],
        [s.mask for s in items],
        [s.sample.image.name for s in items],
        [s.sample.group for s in items],
    )


def refit_split(
    samples: Sequence[LoadedSample], train_idx: Sequence[int], val_idx: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Move every held-out group that has a defective image to the training side (a refit).

    Returns:
        (train indices, held-out indices), each sorted; the held-out ones are all good images.

    Raises:
        DatasetError: every held-out group has a defect, so nothing is left to calibrate on.
    """
    defective = {samples[i].sample.group for i in val_idx if samples[i].mask.any()}
    moved = [i for i in val_idx if samples[i].sample.group in defective]
    kept = [i for i in val_idx if samples[i].sample.group not in defective]
    if not kept:
        raise DatasetError(
            "refit: every held-out group has a defective image, so no good image is left out to calibrate "
            "the threshold on; hold out more of the groups (val_fraction) or train without the refit"
        )
    return sorted([*train_idx, *moved]), sorted(kept)


def train_main(
    dataset: str | Path,
    out: str | Path,
    *,
    mode: Mode = "supervised",
    layout: str | None = None,
    classes: Literal["merged", "folders"] = "merged",
    epochs: int | None = None,
    time_budget_min: float | None = None,
    size: int = 256,
    width: int = 16,
    batch_size: int = 12,
    lr: float = 2e-3,
    val_fraction: float = 0.2,
    target_false_reject: float = 0.02,
    seed: int = 0,
    split_seed: int = 0,
    num_threads: int | None = None,
    work_dir: str | Path | None = None,
    evaluate_split: str | None = "test",
    name: str | None = None,
    augment: str = "default",
    resume: str | Path | None = None,
    drop_suspects: bool = False,
    device: str = "auto",
    precision: str = "auto",
    backbone: str = "unet",
    pretrained: bool = False,
    refit: bool | None = None,
) -> dict[str, Any]:
    """Train, calibrate, export and (when the dataset has a test side) evaluate a defect model.

    Args:
        dataset: a dataset folder of any layout, or its name under ``$QCSTATION_DATASETS``.
        out: the ``.onnx`` file to write.
        mode: "supervised" (real masks) or "good_only" (good training images + synthetic anomalies, one
            class ``anomaly``).
        layout: dataset layout (default: dataset.yaml's, else detected; see qcstation.training.layouts).
        classes: "merged" (one class ``defect``) or "folders" (one class per defect folder).
        epochs: stop after this many epochs; the learning-rate schedule spans them when they end before the
            budget (None: supervised, only the time budget stops; good-only, 40 epochs from
            :data:`~qcstation.training.defectnet.GOOD_ONLY_RECIPE`, the last one kept).
        time_budget_min: training wall-time budget; the learning-rate schedule spans it (None: the
            mode's default, 44 min supervised from
            :data:`~qcstation.training.defectnet.SUPERVISED_RECIPE`, 35 min good-only). Supervised mode
            trains the recipe's three members at once (sharing the threads), so the budget is wall
            time for all of them.
        size: square model input side (frames are resized to it).
        width: U-Net width.
        batch_size: images per step.
        lr: peak learning rate.
        val_fraction: share of the training side's groups held out for validation and calibration.
        target_false_reject: calibration target on good validation images.
        seed: seed of the initial weights, the sampling and augmentation.
        split_seed: seed of the validation carve-out (and of good-only mode's synthetic validation defects),
            apart from ``seed`` so that runs on several seeds are compared and calibrated on the same held-out
            parts. The held-out images are listed in ``<work_dir>/checkpoints/validation.txt``, and their
            hash goes into the card.
        num_threads: torch CPU threads (None: all cores).
        work_dir: checkpoints, log.csv and the evaluation report (default: a new temporary folder).
        evaluate_split: split side to evaluate the exported model on (None: skip).
        name: the model's name (default: ``<dataset>-<mode>``).
        augment: augmentation preset (light, default, heavy) or a YAML file overriding one
            (:mod:`qcstation.training.augment`).
        resume: an interrupted run's work dir, its ``checkpoints`` folder or its ``last.pt``: training goes
            on from the last epoch it finished, within what is left of the time budget.
        drop_suspects: leave out of training and validation the training-side images whose labels the
            data contradicts (:func:`~qcstation.training.data.suspect_labels`: a defective image with an
            empty mask, a good-labelled photograph of the same view as a defective one); they are logged and
            listed in ``<work_dir>/checkpoints/suspect_labels.txt``. The test side is never touched. Off by
            default: on magnetic tile it lowered validation AUROC (0.938 vs 0.953 on the same clean
            validation images, runs 27 and 29), so relabelling them is the engineer's call.
        device: "auto" (a CUDA device when one is visible, else the CPU), "cpu", "cuda" or "cuda:N"
            (:mod:`qcstation.training.devices`).
        precision: "auto" (mixed precision on a GPU, fp32 on the CPU), "fp32", "bf16" or "fp16".
        backbone: "unet" (the from-scratch U-Net encoder, the default) or a torchvision ResNet encoder
            ("resnet18", "resnet34", "resnet50"; :mod:`qcstation.training.backbones`).
        pretrained: start the ResNet encoder from torchvision's ImageNet weights (downloaded once into
            the torch hub cache; offline, a clear error naming the file to copy there).
        refit: supervised mode: of the held-out groups, those with a defective image train too (the scarce
            defects all teach), and only the good groups stay out, to calibrate the threshold on. Nothing
            is then left to choose an epoch on, so the members keep their last epoch
            (``DefectTrainConfig.keep_last``; their validation curve is logged on those good images with
            synthetic anomalies drawn onto copies), and the summary has no validation AUROC or recall.
            None (the default): refit in supervised mode where a held-out group is defect-free, else (with
            a warning) validate on the real held-out defects and choose the members' epochs on them; never
            in good-only mode. Why it is the default: choosing epochs on the few held-out defects fits their
            noise (``scripts/nested_epoch_choice.py``: on magnetic tile the chosen epochs scored AUROC 0.878
            on validation groups they were not chosen on, the last epochs 0.916), so those defects teach
            more than they choose (docs/training-magnetic-tile.md, runs 49 and 50). True: refit or stop with
            a DatasetError; False: never.

    Started by ``torchrun`` (several processes, e.g. one per GPU), every process runs this function: they
    train together, and rank 0 alone calibrates, exports and evaluates (the other ranks return
    ``{"rank": r}`` once training is over). Without ``work_dir`` they share rank 0's temporary folder.

    Returns:
        A summary: model path, card, validation and test figures, wall times; in supervised mode (not
        ``refit``) also ``val_report``, the held-out images scored by the exported model as the station
        scores them (``<work_dir>/eval-val``, :func:`~qcstation.training.evaluate.evaluate_main`), the
        report to look at misses on while choosing.
    """
    t0 = time.perf_counter()
    created = datetime.now(UTC)
    code = code_version()
    dist = Distributed.from_env()
    where = resolve_device(device, dist)
    resolve_precision(precision, where)  # bad values fail before any data is read
    if refit and mode != "supervised":
        raise DatasetError("refit is for supervised training (good-only validation is synthetic already)")
    dist.init(where)  # before anything is written: the ranks agree on the work dir
    merge = "anomaly" if mode == "good_only" else ("defect" if classes == "merged" else None)
    reader = _open(dataset, layout, merge)
    if work_dir is not None:
        work = Path(work_dir)
    else:
        made = tempfile.mkdtemp(prefix="qcstation-train-") if dist.is_main else ""
        work = Path(dist.broadcast_object(made))
    work.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        log.info("work dir %s (checkpoints there; resume an interrupted run with it)", work)
    if resume is not None and (Path(resume) / "checkpoints").is_dir():
        resume = Path(resume) / "checkpoints"
    samples = reader.samples()
    loaded = reader.load((size, size), samples)
    has_split = any(s.split for s in loaded)
    train_side = [s for s in loaded if not has_split or s.split == "train"]
    suspects = suspect_labels(train_side) if drop_suspects else {}
    if suspects:
        log.warning(
            "leaving out %d training-side image(s) whose labels the data contradicts (listed in %s):%s",
            len(suspects),
            work / "checkpoints" / SUSPECTS_LIST,
            "".join(f"\n  {p.name}: {why}" for p, why in sorted(suspects.items())[:20]),
        )
        train_side = [s for s in train_side if s.sample.image not in suspects]
    if dist.is_main:
        _write_suspects(suspects, reader.root, work / "checkpoints")
    if mode == "good_only":
        train_side = [s for s in train_side if s.source_class == "good"]
    if not train_side:
        raise DatasetError(f"{reader.root}: no training images" + (" on the train side" if has_split else ""))
    tr_idx, va_idx = split_by_group([s.sample for s in train_side], val_fraction, split_seed)
    refit_moved = 0
    asked = refit is not None
    refit = mode == "supervised" if refit is None else refit
    if refit:
        before = len(va_idx)
        try:
            tr_idx, va_idx = refit_split(train_side, tr_idx, va_idx)
        except DatasetError as e:
            if asked:
                raise
            log.warning("%s; choosing the members' epochs on the held-out defects instead", e)
            refit = False
        else:
            refit_moved = before - len(va_idx)
            log.info(
                "refit: %d held-out image(s) of groups with defects train too; %d good image(s) stay out "
                "to calibrate on, and the members keep their last epoch",
                refit_moved,
                len(va_idx),
            )
    held_out = sorted(train_side[i].sample.image.relative_to(reader.root).as_posix() for i in va_idx)
    held_out_sha = _check_held_out(held_out, work / "checkpoints", resume, write=dist.is_main)
    used = [s for s in loaded if mode != "good_only" or s.source_class == "good" or s.split != "train"]
    side = {s.sample.image: (s.split or "train") for s in used}
    side.update({train_side[i].sample.image: "val" for i in va_idx})
    leaks = check_leaks([s.sample for s in used], side)
    train_pool = _pool([train_side[i] for i in tr_idx])
    val_pool = _pool([train_side[i] for i in va_idx])
    if mode == "good_only":
        val_pool = synthetic_validation(val_pool, split_seed + 1)
    # what the training loop validates on: a refit's held-out images are all good, so anomalies are drawn
    # onto copies of them to keep a curve to watch (nothing is chosen on it)
    loop_val = synthetic_validation(val_pool, split_seed + 1) if refit else val_pool
    recipe = dict(SUPERVISED_RECIPE) if mode == "supervised" else dict(GOOD_ONLY_RECIPE)
    if time_budget_min is not None:
        recipe["time_budget_min"] = time_budget_min
    if epochs is not None:
        recipe["max_epochs"] = epochs
    recipe.setdefault("max_epochs", 10_000)  # supervised: as many as the budget allows
    recipe.setdefault("keep_last", refit)
    config = DefectTrainConfig(
        classes=reader.classes,
        width=width,
        size=size,
        batch_size=batch_size,
        lr=lr,
        synthetic=mode == "good_only",
        seed=seed,
        num_threads=num_threads,
        preset=augment,
        device=device,
        precision=precision,
        backbone=backbone,
        pretrained=pretrained,
        **recipe,
    )
    fit = train_defect_net(train_pool, loop_val, config, work / "checkpoints", resume=resume)
    dist.finish()  # rank 0 alone goes on: the ranks leave the process group together first
    if not dist.is_main:
        return {"rank": dist.rank, "work_dir": str(work), "train_seconds": round(fit.seconds, 1)}
    station = StationModel(fit.net, tta=config.tta).eval()
    heads, _ = predict_pool(station, val_pool, mean=MEAN, std=STD)
    val_scores = heads[:, 1:].max(axis=1)
    val_y = val_pool.labels()
    good_val = val_scores[val_y == 0]
    thr = float(np.clip(threshold_at_frr(good_val, target_false_reject), 1e-4, 1.0))
    val_frr = float((good_val >= thr).mean())
    val_metrics: dict[str, Any] = {
        "split": "val",
        "images": len(val_y),
        "defective_images": int(val_y.sum()),
        "defects": "synthetic"
        if mode == "good_only"
        else ("none held out (refit: good images only, for calibration)" if refit else "real"),
    }
    if val_y.any():
        val_metrics |= {
            "image_auroc": round(auroc(val_scores, val_y), 4),
            "recall_at_2pct_frr": round(recall_at_frr(val_scores, val_y, 0.02)[0], 4),
            "recall_at_threshold": round(float((val_scores[val_y == 1] >= thr).mean()), 4),
        }
    val_metrics["false_reject_rate_at_threshold"] = round(val_frr, 4)
    split_file = reader.root / SPLIT_FILE
    card = ModelCard(
        name=name or f"{reader.root.name}-{mode.replace('_', '-')}",
        version=created.strftime("%Y.%m.%d"),
        classes=tuple(reader.classes),
        input=InputSpec("image", size, size, 1, "GRAY", MEAN, STD),
        output=OutputSpec("probs", image_scores="image_probs"),
        inference=InferenceSpec("resize"),
        thresholds={c: round(thr, 6) for c in reader.classes[1:]},
        good_scores={
            **summarise(good_val),
            "score": "image head probability of a defect class (= maximum of the gated defect map)",
            "target_false_reject": target_false_reject,
            "false_reject_rate": round(val_frr, 4),
        },
        provenance={
            "dataset": reader.root.name,
            "dataset_sha256": files_sha256(
                [p for s in samples for p in (s.image, s.label) if p.is_file()], reader.root
            ),
            "split": {
                "file": SPLIT_FILE if split_file.is_file() else None,
                "file_sha256": hashlib.sha256(split_file.read_bytes()).hexdigest()
                if split_file.is_file()
                else None,
                "train_side_images": len(train_side),
                "validation": f"{val_fraction:.0%} of the training side's groups, seed {split_seed}"
                + (
                    f"; refit: their {refit_moved} image(s) in groups with defects trained, the good ones "
                    "calibrate"
                    if refit
                    else ""
                ),
                "validation_sha256": held_out_sha,
                "train": len(tr_idx),
                "val": len(va_idx),
                "skipped": len(reader.problems),
                "suspect_labels_left_out": len(suspects),
                "leak_warnings": leaks,
            },
            "mode": mode,
            "code_version": code,
            "created_at": created.isoformat(timespec="seconds"),
            "training": {
                **{k: v for k, v in config.to_dict().items() if k != "classes"},
                "arch": "DefectNet ("
                + (
                    "unet_small"
                    if backbone == "unet"
                    else backbone + (", ImageNet weights" if pretrained else "")
                )
                + " + image head, gated maps, flip TTA"
                + (f", mean of {config.members} members)" if config.members > 1 else ")"),
                "epochs_run": fit.epochs_run,
                "best_epoch": fit.best_epoch,
                "snapshot_epochs": [m.snapshot_epochs for m in fit.members] or fit.snapshot_epochs,
                "stopped_by": fit.stopped_by,
                "seconds": round(fit.seconds, 1),
                "trained_on": {"device": fit.device, "precision": fit.precision, "processes": fit.world_size},
            },
            "metrics": {"val": val_metrics},
        },
    )
    out_path = Path(out)
    report = export_onnx(station, card, out_path)
    result: dict[str, Any] = {
        "model": str(out_path),
        "work_dir": str(work),
        "train_seconds": round(fit.seconds, 1),
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "val": val_metrics,
        "threshold": thr,
        "export_max_abs_diff": report.max_abs_diff,
    }
    log.info("validation: %s; threshold %.4f", val_metrics, thr)
    if mode == "supervised" and not refit and 0 < int(val_y.sum()) < len(val_y):
        result["val_report"] = _validation_report(out_path, reader.root, work)
    if evaluate_split and has_split and any(s.split == evaluate_split for s in loaded):
        from qcstation.training.evaluate import evaluate_main

        ev = evaluate_main(out_path, reader.root, split=evaluate_split, out_dir=work / "eval")
        result["test"] = ev["metrics"]
        result["report"] = ev["report"]
        model = onnx.load(str(out_path))
        prov = dict(card.provenance)
        prov["metrics"] = {**prov["metrics"], evaluate_split: _card_metrics(ev["metrics"])}
        final = dataclasses.replace(card, provenance=prov)
        write_card(model, final)
        onnx.save(model, str(out_path))
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    (work / "summary.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    log.info("done in %.1f min: %s", result["total_seconds"] / 60, json.dumps(result, default=str))
    return result


def _validation_report(model: Path, root: Path, work: Path) -> str | None:
    """``qcstation evaluate --images validation.txt`` into ``work/eval-val``: the held-out parts as the
    station scores them, with the worst misses and the top good images, to look at while choosing (the
    test split is for the figures reported once). A failure is logged; the model is already written."""
    from qcstation.training.evaluate import evaluate_main

    try:
        ev = evaluate_main(
            model, root, split=None, out_dir=work / "eval-val", images=work / "checkpoints" / VALIDATION_LIST
        )
    except (DatasetError, OSError) as e:
        log.warning("no validation report: %s", e)
        return None
    m = ev["metrics"]
    log.info(
        "validation through the station: AUROC %s, recall at 1/2/5%% false rejects %s; report %s",
        m["image_auroc"],
        m["recall_at_frr"],
        ev["report"],
    )
    return str(ev["report"])


def _card_metrics(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("images", "defective_images", "image_auroc", "image_ap", "recall_at_frr", "at_card_threshold")
    return {k: m[k] for k in keys if k in m}
