"""Does choosing each member's epoch on validation pay, measured on validation images that did not choose it?

A training run's members write every epoch's validation scores (``val_scores.csv``) and the images behind
those columns (``val_images.csv``: image, group, defective). This cuts the validation groups at random into
halves A and B (stratified by whether a group holds a defect), chooses each member's epoch on A by a
criterion, and scores the ensemble of the chosen epochs (the members' mean) on B; averaged over many cuts.
The last epoch, chosen by nothing, is the reference. Validation data only: nothing here reads a test split.
It also prints the ensemble of each member's own last epoch on the whole validation split (the figure
runs 55-56 were judged on; members that ran different epoch counts are cut to the shortest in the table).

    python scripts/nested_epoch_choice.py WORK_DIR [--cuts 300] [--seed 0]

Used for docs/training-magnetic-tile.md (runs 48 and 49). numpy and the station's own metrics only.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qcstation.inspect.metrics import auroc, recall_at_frr


def partial_auroc(scores: np.ndarray, labels: np.ndarray, most_frr: float = 0.10) -> float:
    """Share of (defective, good) pairs ordered right, over the good images in the top ``most_frr``."""
    good = np.sort(scores[labels == 0])[::-1]
    top = good[: max(1, int(np.ceil(most_frr * len(good))))]
    return float((scores[labels == 1][:, None] > top[None, :]).mean())


def smoothed(curve: np.ndarray, width: int = 5) -> np.ndarray:
    """Moving average over ``width`` epochs (the ends averaged over what they have)."""
    kernel = np.ones(width)
    return np.convolve(curve, kernel, mode="same") / np.convolve(np.ones_like(curve), kernel, mode="same")


def load(work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores members x epochs x images, labels, group ids, each member's own last epoch's scores).

    The scores are cut to the epochs every member ran; the last array is members x images.
    """
    dirs = sorted(p.parent for p in work.glob("checkpoints/**/val_scores.csv"))
    if not dirs:
        raise SystemExit(f"{work}: no checkpoints/**/val_scores.csv (is this a training work dir?)")
    tables, header = [], None
    for d in dirs:
        if not (d / "val_images.csv").is_file():
            raise SystemExit(f"{d}: val_images.csv missing (written by training since 2026-12-06)")
        with (d / "val_images.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        if header is None:
            header = rows
        elif rows != header:
            raise SystemExit(f"{d}: its validation images differ from {dirs[0]}'s")
        lines = (d / "val_scores.csv").read_text(encoding="utf-8").splitlines()
        tables.append(np.array([[float(v) for v in line.split(",")[1:]] for line in lines]))
    assert header is not None
    epochs = min(len(t) for t in tables)
    scores = np.stack([t[:epochs] for t in tables])
    labels = np.array([int(r["defective"]) for r in header])
    _, groups = np.unique([r["group"] for r in header], return_inverse=True)
    return scores, labels, groups, np.stack([t[-1] for t in tables])


def nested(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, cuts: int, seed: int
) -> dict[str, np.ndarray]:
    """Per criterion, the mean (AUROC, recall at 2 %, recall at 5 %) on half B over ``cuts`` random cuts."""
    # name: (what is measured on half A per epoch, whether its curve is smoothed); None: the last epoch
    criteria: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool] | None] = {
        "the last epoch (no choice)": None,
        "validation AUROC (the default)": (auroc, False),
        "AUROC smoothed over 5 epochs": (auroc, True),
        "partial AUROC (false rejects <= 10 %)": (partial_auroc, False),
        "recall at 5 % false rejects": (lambda s, y: recall_at_frr(s, y, 0.05)[0], False),
    }
    members, epochs, _ = scores.shape
    has_defect = np.array([labels[groups == g].any() for g in range(groups.max() + 1)])
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[float, float, float]]] = {name: [] for name in criteria}
    for _ in range(cuts):
        half_a: list[int] = []
        for flag in (True, False):
            ids = rng.permutation(np.flatnonzero(has_defect == flag))
            half_a += ids[: len(ids) // 2].tolist()
        a = np.isin(groups, half_a)
        b = ~a
        curves_of: dict[object, list[np.ndarray]] = {}  # per measure: one curve per member, on half A
        for name, criterion in criteria.items():
            if criterion is None:
                chosen = [epochs - 1] * members
            else:
                measure, smooth = criterion
                if measure not in curves_of:
                    curves_of[measure] = [
                        np.array([measure(scores[m, e][a], labels[a]) for e in range(epochs)])
                        for m in range(members)
                    ]
                curves = curves_of[measure]
                if smooth:
                    curves = [smoothed(c) for c in curves]
                chosen = [int(np.argmax(c)) for c in curves]
            ens = np.mean([scores[m, chosen[m]] for m in range(members)], axis=0)[b]
            yb = labels[b]
            out[name].append(
                (auroc(ens, yb), recall_at_frr(ens, yb, 0.02)[0], recall_at_frr(ens, yb, 0.05)[0])
            )
    return {name: np.array(v).mean(axis=0) for name, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work_dir", type=Path, help="a `qcstation train --work-dir` folder")
    ap.add_argument("--cuts", type=int, default=300, help="random group halves to average over")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scores, labels, groups, last = load(args.work_dir)
    print(
        f"{scores.shape[0]} member(s), {scores.shape[1]} epochs, {len(labels)} validation images "
        f"({int(labels.sum())} defective, {groups.max() + 1} groups), {args.cuts} cuts, seed {args.seed}\n"
    )
    ens = last.mean(axis=0)
    print(
        f"the whole split, each member's own last epoch: AUROC {auroc(ens, labels):.3f}, recall at 2 % "
        f"{recall_at_frr(ens, labels, 0.02)[0]:.3f}, at 5 % {recall_at_frr(ens, labels, 0.05)[0]:.3f}\n"
    )
    print("| epochs chosen on half A by | half B: AUROC | recall at 2 % | recall at 5 % |")
    print("|---|---:|---:|---:|")
    for name, (auc, r2, r5) in nested(scores, labels, groups, args.cuts, args.seed).items():
        print(f"| {name} | {auc:.3f} | {r2:.3f} | {r5:.3f} |")


if __name__ == "__main__":
    main()
