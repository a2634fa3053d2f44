"""Resuming an interrupted DefectNet run (``qcstation train --resume``)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qcstation.training.defectnet import DefectEnsemble, DefectTrainConfig, Pool, train_defect_net
from qcstation.training.errors import CheckpointError

pytestmark = [pytest.mark.train, pytest.mark.slow]


def tiny_pool(n: int, size: int, seed: int) -> Pool:
    """Noisy gray squares, every other one with a dark defect and its mask."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for k in range(n):
        img = np.clip(rng.normal(150, 8, (size, size)), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if k % 2:
            y, x = rng.integers(6, size - 6, 2)
            img[y - 3 : y + 3, x - 3 : x + 3] = 40
            mask[y - 3 : y + 3, x - 3 : x + 3] = 1
        images.append(img)
        masks.append(mask)
    return Pool(images, masks, [f"img{k}" for k in range(n)])


BASE = DefectTrainConfig(
    classes=("good", "defect"), width=8, depth=2, size=32, batch_size=4, max_epochs=1, seed=0, num_threads=1
)


def test_a_run_continues_where_it_stopped(tmp_path: Path) -> None:
    # given a run stopped after its first epoch (as by a power cut after last.pt was written)
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    first = train_defect_net(train, val, BASE, tmp_path / "ckpt")
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    assert last["epoch"] == 1 and last["step"] == 4 and "opt" in last
    # when it is resumed with room for two more epochs
    more = replace(BASE, max_epochs=3)
    fit = train_defect_net(train, val, more, tmp_path / "ckpt2", resume=tmp_path / "ckpt")
    # then it runs epochs 2 and 3 only, on from the saved step, keeping the first epoch's history
    assert fit.epochs_run == 3 and [r["epoch"] for r in fit.history] == [1, 2, 3]
    assert fit.history[0] == first.history[0]
    assert torch.load(tmp_path / "ckpt2" / "last.pt", weights_only=False)["step"] == 12
    assert (tmp_path / "ckpt2" / "best.pt").is_file()
    with (tmp_path / "ckpt2" / "log.csv").open() as f:
        assert [int(float(r["epoch"])) for r in csv.DictReader(f)] == [2, 3]


def test_an_ensemble_resumes_every_member(tmp_path: Path) -> None:
    # given an ensemble whose members see local contrast at their own scales (one none at all)
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    two = replace(BASE, members=2, num_threads=2, member_local_contrast=(7, 0))
    train_defect_net(train, val, two, tmp_path / "ckpt")
    # when it is resumed for one more epoch
    fit = train_defect_net(
        train, val, replace(two, max_epochs=2), tmp_path / "ckpt", resume=tmp_path / "ckpt"
    )
    # then every member goes on from its own checkpoint, with its own input channels
    assert isinstance(fit.net, DefectEnsemble)
    assert [m.epochs_run for m in fit.members] == [2, 2]
    assert [net.local_contrast for net in fit.net.members] == [7, 0]
    assert [net.stem[0].in_channels for net in fit.net.members] == [2, 1]  # type: ignore[index]
    saved = [torch.load(tmp_path / "ckpt" / f"member{k}" / "last.pt", weights_only=False) for k in (0, 1)]
    assert [s["config"]["local_contrast"] for s in saved] == [7, 0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"width": 16}, "trained with width=8, this run has width=16"),
        ({"classes": ("good", "scratch", "crack")}, "classes"),
        ({"size": 48}, "size=32"),
        ({"local_contrast": 15}, "trained with local_contrast=31, this run has local_contrast=15"),
    ],
)
def test_resuming_another_architecture_is_refused(
    tmp_path: Path, change: dict[str, object], match: str
) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    train_defect_net(train, val, BASE, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=match):
        train_defect_net(train, val, replace(BASE, **change), tmp_path / "b", resume=tmp_path / "ckpt")  # type: ignore[arg-type]


def test_resuming_from_weights_only_or_nothing_says_what_to_use(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    train_defect_net(train, val, BASE, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"weights only .* resume from the run's last\.pt"):
        train_defect_net(train, val, BASE, tmp_path / "b", resume=tmp_path / "ckpt" / "best.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        train_defect_net(train, val, BASE, tmp_path / "b", resume=tmp_path / "nothing")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        train_defect_net(train, val, BASE, tmp_path / "b", resume=tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match=r"ensemble of 2 .* no .*member0"):
        train_defect_net(train, val, replace(BASE, members=2), tmp_path / "b", resume=tmp_path / "ckpt")
