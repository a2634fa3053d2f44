"""Check an exported model the way a station uses it: through the runtime's Detector, on a labelled folder.

The decision is the station's simplest rule: a part fails when the detector reports any region (any
class at or above its card threshold). Ground truth is "the mask has defect pixels".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from qcstation.inspect.detector import Detector
from qcstation.training.data import READERS, read_dataset_config
from qcstation.training.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class FolderEvaluation:
    """Image-level results of a model on a labelled folder.

    Attributes:
        images: images evaluated.
        accuracy: share judged right (FAIL for defective, PASS for good).
        false_rejects: good images that failed.
        misses: defective images that passed.
        class_hits: per defect class, (images where the detector reported that class, images having it).
        latency_ms: median detector time per frame (pre-processing + inference + post-processing).
        rows: per image: file, truth, verdict, image score, reported classes.
    """

    images: int
    accuracy: float
    false_rejects: list[str]
    misses: list[str]
    class_hits: dict[str, tuple[int, int]]
    latency_ms: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def evaluate_folder(model: str | Path | Detector, folder: str | Path) -> FolderEvaluation:
    """Run a model over a labelled dataset folder and judge each image PASS/FAIL.

    Args:
        model: an ``.onnx`` path or a loaded detector.
        folder: a dataset folder with ``dataset.yaml`` whose classes match the model's.

    Returns:
        The image-level figures.

    Raises:
        DatasetError: the folder cannot be read, its classes differ from the model's, or an image cannot
            be decoded.
    """
    det = model if isinstance(model, Detector) else Detector.from_path(model)
    root = Path(folder)
    config = read_dataset_config(root)
    reader = READERS[config["layout"]](root, config["classes"], config)
    if tuple(reader.classes) != det.card.classes:
        raise DatasetError(
            f"{root} has classes {list(reader.classes)} but the model has {list(det.card.classes)}"
        )
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    hits = {c: [0, 0] for c in det.card.defect_classes}
    for sample in reader.samples():
        image = cv2.imread(str(sample.image), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DatasetError(f"cannot decode image {sample.image}")
        mask = reader.read_mask(sample, image.shape[:2])
        if mask is None:
            raise DatasetError(f"cannot decode mask {sample.label}")
        inspection = det.inspect(image)
        times.append(sum(inspection.timings_ms.values()))
        truth = {det.card.classes[k] for k in np.unique(mask) if k > 0}
        found = {r.class_name for r in inspection.regions}
        for c in truth:
            hits[c][1] += 1
            hits[c][0] += int(c in found)
        rows.append(
            {
                "file": sample.image.name,
                "truth": "FAIL" if truth else "PASS",
                "verdict": "FAIL" if found else "PASS",
                "defects": sorted(truth),
                "found": sorted(found),
                "image_score": round(inspection.image_score, 4),
            }
        )
    if not rows:
        raise DatasetError(f"{root} has no images")
    right = [r["truth"] == r["verdict"] for r in rows]
    result = FolderEvaluation(
        images=len(rows),
        accuracy=float(np.mean(right)),
        false_rejects=[r["file"] for r in rows if r["truth"] == "PASS" and r["verdict"] == "FAIL"],
        misses=[r["file"] for r in rows if r["truth"] == "FAIL" and r["verdict"] == "PASS"],
        class_hits={c: (h[0], h[1]) for c, h in hits.items()},
        latency_ms=float(np.median(times)),
        rows=rows,
    )
    log.info(
        "%s on %s: accuracy %.3f (%d images), false rejects %s, misses %s",
        det.card.name,
        root,
        result.accuracy,
        result.images,
        result.false_rejects,
        result.misses,
    )
    return result


# -- image-level evaluation of a mask-folders split through the station's Detector -------------------------

FRR_POINTS = (0.01, 0.02, 0.05)


def evaluate_main(
    model: str | Path,
    dataset: str | Path,
    *,
    split: str | None = "test",
    out_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    worst: int = 12,
    images: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate an exported model on one side of a dataset (any layout), exactly as the station scores it.

    Every image goes through :meth:`qcstation.inspect.Detector.inspect` at its native size; the image score
    is the detector's ``image_score`` and a region is what the detector reports at the card's thresholds.

    Args:
        model: the ``.onnx`` file.
        dataset: the dataset folder (or its name under ``$QCSTATION_DATASETS``).
        split: the split side to evaluate (``split.json`` or the layout's own; None: every image).
        out_dir: where ``report.md``, ``metrics.json``, ``scores.csv``, the plots and the worst-misses grid
            go (default: a new temporary folder).
        figures_dir: where the plots go (default: ``out_dir``); the worst-misses grid (it shows dataset
            images) always stays in ``out_dir``.
        worst: defective images with the lowest scores to show in the grid.
        images: a file listing the images to evaluate, one path relative to the dataset per line, such as
            a training run's ``checkpoints/validation.txt``: the report on the held-out images a run chose
            its epochs and thresholds on, where an engineer may look at the misses without touching the
            test split. With ``split`` as well, the listed images on that side.

    Returns:
        ``{"metrics": {...}, "report": path of report.md, "rows": per-image rows}``.

    Raises:
        DatasetError: no image on that side, or no good or no defective image among them; an ``images``
            list naming files the dataset does not hold (or none on ``split``).
    """
    import json
    import tempfile

    from qcstation.inspect.metrics import (
        auroc,
        average_precision,
        pixel_ap_iou,
        pr_curve,
        recall_at_frr,
        roc_curve,
    )
    from qcstation.training.api import resolve_dataset
    from qcstation.training.layouts import open_dataset
    from qcstation.training.plots import histogram_plot, line_plot, overlay_grid

    det = Detector.from_path(model)
    reader = open_dataset(resolve_dataset(dataset))
    samples = [s for s in reader.samples() if split is None or reader.split_of(s) == split]
    if images is not None:
        samples = _listed_samples(samples, reader.root, Path(images), split)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="qcstation-eval-"))
    figs = Path(figures_dir) if figures_dir is not None else out
    out.mkdir(parents=True, exist_ok=True)
    loaded = reader.load(None, samples)
    if not loaded:
        raise DatasetError(f"{reader.root}: no readable images on split side {split!r}")
    thr = max(det.thresholds().values())
    rows: list[dict[str, Any]] = []
    hist_pos: dict[str, np.ndarray] = {}
    hist_neg = np.zeros(256, np.int64)
    regions_hit: dict[str, list[int]] = {}
    images_hit: dict[str, list[int]] = {}
    maps: dict[str, np.ndarray] = {}
    times: list[float] = []
    for s in loaded:
        insp = det.inspect(s.image)
        times.append(sum(insp.timings_ms.values()))
        dmap = insp.defect_map
        assert dmap is not None
        truth = s.mask > 0
        small = cv2.resize(
            truth.astype(np.uint8), (dmap.shape[1], dmap.shape[0]), interpolation=cv2.INTER_NEAREST
        )
        cls = s.source_class
        hist_neg += np.bincount(dmap[small == 0].ravel(), minlength=256)
        if cls != "good":
            hist_pos.setdefault(cls, np.zeros(256, np.int64))
            hist_pos[cls] += np.bincount(dmap[small > 0].ravel(), minlength=256)
            pred = cv2.resize(dmap, (s.image.shape[1], s.image.shape[0]), interpolation=cv2.INTER_LINEAR)
            pred_bin = pred >= thr * 255.0
            n, labels = cv2.connectedComponents(truth.astype(np.uint8))
            rh = regions_hit.setdefault(cls, [0, 0])
            for k in range(1, n):
                rh[1] += 1
                rh[0] += int(pred_bin[labels == k].any())
            ih = images_hit.setdefault(cls, [0, 0])
            ih[1] += 1
            ih[0] += int(bool(insp.regions))
        maps[s.sample.image.name] = _thumbnail(dmap)  # the grids draw at 200 px: bounded memory per image
        rows.append(
            {
                "file": str(s.sample.image.relative_to(reader.root)),
                "class": cls,
                "group": s.sample.group,
                "defective": int(cls != "good"),
                "score": insp.image_score,
                "verdict": "FAIL" if insp.regions else "PASS",
            }
        )
    y = np.array([r["defective"] for r in rows])
    score = np.array([r["score"] for r in rows], np.float64)
    if y.min() == y.max():
        which = f"the images listed in {images}" if images is not None else f"split side {split!r}"
        raise DatasetError(f"{which} need good and defective images for image-level figures")
    recall = {f"{int(f * 100)}%": round(recall_at_frr(score, y, f)[0], 4) for f in FRR_POINTS}
    pixel: dict[str, dict[str, float | None]] = {}
    all_pos = sum(hist_pos.values(), np.zeros(256, np.int64))
    tbin = int(np.ceil(thr * 255.0))
    for cls, hp in [("all", all_pos), *sorted(hist_pos.items())]:
        ap, iou = pixel_ap_iou(hp, hist_neg, tbin)
        pixel[cls] = {"ap": _r4(ap), "iou": _r4(iou)}
    verdict_bad = np.array([r["verdict"] == "FAIL" for r in rows])
    metrics: dict[str, Any] = {
        "split": split,
        "image_list": str(images) if images is not None else None,
        "images": len(rows),
        "defective_images": int(y.sum()),
        "image_auroc": round(auroc(score, y), 4),
        "image_ap": round(average_precision(score, y), 4),
        "recall_at_frr": recall,
        "at_card_threshold": {
            "threshold": round(thr, 6),
            "recall": round(float(verdict_bad[y == 1].mean()), 4),
            "false_reject_rate": round(float(verdict_bad[y == 0].mean()), 4),
        },
        "per_class": {
            c: {
                "images": images_hit[c][1],
                "image_recall": round(images_hit[c][0] / images_hit[c][1], 4),
                "regions": regions_hit[c][1],
                "region_recall": round(regions_hit[c][0] / max(1, regions_hit[c][1]), 4),
                "image_auroc_vs_good": round(
                    auroc(
                        score[(y == 0) | (np.array([r["class"] for r in rows]) == c)],
                        y[(y == 0) | (np.array([r["class"] for r in rows]) == c)],
                    ),
                    4,
                ),
            }
            for c in sorted(images_hit)
        },
        "false_rejects": _false_rejects(rows, score, y),
        "top_good": [
            {"file": r["file"], "group": r["group"], "score": round(r["score"], 6)}
            for r in sorted((r for r in rows if not r["defective"]), key=lambda r: -r["score"])[:worst]
        ],
        "pixel": pixel,
        "latency_ms_median": round(float(np.median(times)), 2),
        "model": det.card.name,
        "model_sha256": det.info.sha256,
    }
    fpr, tpr, _ = roc_curve(score, y)
    rec, prec = pr_curve(score, y)
    tag = det.card.name
    plots = {
        "roc": line_plot(
            figs / f"{tag}-roc.png",
            [(f"AUROC {metrics['image_auroc']:.3f}", fpr, tpr)],
            title=f"{tag}: ROC ({split})",
            xlabel="false-reject rate",
            ylabel="recall",
            diagonal=True,
        ),
        "pr": line_plot(
            figs / f"{tag}-pr.png",
            [(f"AP {metrics['image_ap']:.3f}", rec, prec)],
            title=f"{tag}: precision-recall ({split})",
            xlabel="recall",
            ylabel="precision",
        ),
        "hist": histogram_plot(
            figs / f"{tag}-scores.png",
            [("good", score[y == 0]), ("defective", score[y == 1])],
            title=f"{tag}: image scores ({split})",
            marker=thr,
        ),
    }
    misses = sorted((r for r in rows if r["defective"]), key=lambda r: r["score"])[:worst]
    by_name = {s.sample.image.name: s for s in loaded}
    tiles = []
    for r in misses:
        s = by_name[Path(r["file"]).name]
        tiles.append((s.image, s.mask > 0, maps[s.sample.image.name], f"{s.source_class} {r['score']:.3f}"))
    grid = overlay_grid(out / f"{tag}-worst-misses.png", tiles)
    good_tiles = []
    for r in metrics["top_good"]:
        s = by_name[Path(r["file"]).name]
        good_tiles.append((s.image, s.mask > 0, maps[s.sample.image.name], f"good {r['score']:.3f}"))
    good_grid = overlay_grid(out / f"{tag}-top-good.png", good_tiles)
    with (out / "scores.csv").open("w", encoding="utf-8") as f:
        f.write("file,class,defective,score,verdict\n")
        for r in rows:
            f.write(f"{r['file']},{r['class']},{r['defective']},{r['score']:.6f},{r['verdict']}\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    report = out / "report.md"
    report.write_text(_markdown(metrics, plots, grid, misses, out, good_grid), encoding="utf-8")
    log.info("evaluation of %s on %s/%s: %s", model, reader.root, split, json.dumps(metrics))
    return {
        "metrics": metrics,
        "report": report,
        "rows": rows,
        "plots": {k: str(v) for k, v in plots.items()},
    }


def _listed_samples(samples: list[Any], root: Path, listing: Path, split: str | None) -> list[Any]:
    """The samples ``listing`` names (paths relative to ``root``, one per line), in the listing's order."""
    from qcstation.training.errors import DatasetError

    try:
        names = [n.strip() for n in listing.read_text(encoding="utf-8").splitlines() if n.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the image list {listing}: {e}") from e
    if not names:
        raise DatasetError(f"the image list {listing} names no image")
    by_name = {s.image.relative_to(root).as_posix(): s for s in samples}
    missing = [n for n in names if n not in by_name]
    if missing:
        where = f"on split side {split!r} of {root}" if split is not None else f"in {root}"
        raise DatasetError(
            f"{len(missing)} of the {len(names)} images listed in {listing} are not {where}, e.g. "
            + ", ".join(missing[:3])
        )
    return [by_name[n] for n in names]


def _r4(x: float) -> float | None:
    return None if x != x else round(float(x), 4)


def _thumbnail(dmap: np.ndarray, side: int = 256) -> np.ndarray:
    """A defect map no larger than ``side`` on its long edge (tile-mode maps are full frames)."""
    scale = side / max(dmap.shape[:2])
    if scale >= 1.0:
        return dmap
    size = (max(1, round(dmap.shape[1] * scale)), max(1, round(dmap.shape[0] * scale)))
    return cv2.resize(dmap, size, interpolation=cv2.INTER_AREA)


def _false_rejects(rows: list[dict[str, Any]], score: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Per false-reject point: the good images rejected, how many physical parts (groups) they are, and
    the good image whose score sets the threshold (the highest-scored good image that passes).

    Several photographs of one part count as several images in the rate, so one part the model gets
    wrong can set a low false-reject point on its own; this says when it does.
    """
    from qcstation.inspect.metrics import recall_at_frr

    good = sorted((r for r in rows if not r["defective"]), key=lambda r: -r["score"])
    out: dict[str, Any] = {}
    for f in FRR_POINTS:
        _, thr = recall_at_frr(score, y, f)
        rejected = [r for r in good if r["score"] >= thr]
        passing = good[len(rejected)] if len(rejected) < len(good) else None
        out[f"{int(f * 100)}%"] = {
            "good_rejected": len(rejected),
            "parts_rejected": len({r["group"] for r in rejected}),
            "set_by": None if passing is None else {"file": passing["file"], "group": passing["group"]},
        }
    return out


def _markdown(
    m: dict[str, Any],
    plots: dict[str, Path],
    grid: Path,
    misses: list[dict[str, Any]],
    out: Path,
    good_grid: Path,
) -> str:
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(out))
        except ValueError:
            return str(p)

    lines = [
        f"# Evaluation of {m['model']} on "
        + (f"split {m['split']}" if m["split"] is not None else "every split side")
        + (f", the images listed in {m['image_list']}" if m.get("image_list") else ""),
        "",
        f"{m['images']} images, {m['defective_images']} defective; station scores (Detector.inspect).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| image AUROC | {m['image_auroc']} |",
        f"| image AP | {m['image_ap']} |",
        *[f"| recall at {k} false rejects | {v} |" for k, v in m["recall_at_frr"].items()],
        f"| at the card threshold {m['at_card_threshold']['threshold']} | "
        f"recall {m['at_card_threshold']['recall']}, "
        f"false rejects {m['at_card_threshold']['false_reject_rate']} |",
        f"| median latency | {m['latency_ms_median']} ms |",
        "",
        "| defect class | images | image recall | regions | region recall | AUROC vs good | pixel AP "
        "| pixel IoU |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {c} | {v['images']} | {v['image_recall']} | {v['regions']} | {v['region_recall']} | "
            f"{v['image_auroc_vs_good']} | {m['pixel'][c]['ap']} | {m['pixel'][c]['iou']} |"
            for c, v in m["per_class"].items()
        ],
        f"| all | {m['defective_images']} | {m['at_card_threshold']['recall']} | | | {m['image_auroc']} | "
        f"{m['pixel']['all']['ap']} | {m['pixel']['all']['iou']} |",
        "",
        f"![ROC]({rel(plots['roc'])}) ![PR]({rel(plots['pr'])}) ![scores]({rel(plots['hist'])})",
        "",
        f"Worst misses (lowest-scored defective; green: true mask, red: defect map): ![misses]({rel(grid)})",
        "",
        *[f"- {r['file']}: {r['score']:.4f}" for r in misses],
        "",
        "Highest-scored good images (the false rejects at low rates; one physical part = one group): "
        f"![good]({rel(good_grid)})",
        "",
        "| false-reject point | good images rejected | parts (groups) rejected | threshold set by |",
        "|---|---|---|---|",
        *[
            f"| {k} | {v['good_rejected']} | {v['parts_rejected']} | "
            + ("" if v["set_by"] is None else f"{v['set_by']['file']} (group {v['set_by']['group']})")
            + " |"
            for k, v in m["false_rejects"].items()
        ],
        "",
        *[f"- {r['file']} (group {r['group']}): {r['score']:.4f}" for r in m["top_good"]],
    ]
    return "\n".join(lines) + "\n"
