"""scripts/nested_epoch_choice.py: the epoch choice, judged on validation images that did not make it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "nested_epoch_choice.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nested_epoch_choice", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _work_dir(root: Path, scores: np.ndarray, labels: np.ndarray, groups: list[str]) -> Path:
    """A training work dir as `qcstation train` leaves it: members' val_scores.csv and val_images.csv."""
    for m, member in enumerate(scores):
        d = root / "checkpoints" / f"member{m}"
        d.mkdir(parents=True)
        rows = [f"img{i},{g},{y}" for i, (g, y) in enumerate(zip(groups, labels, strict=True))]
        (d / "val_images.csv").write_text("image,group,defective\n" + "\n".join(rows) + "\n")
        lines = [f"{e + 1}," + ",".join(f"{v:.6g}" for v in epoch) for e, epoch in enumerate(member)]
        (d / "val_scores.csv").write_text("\n".join(lines) + "\n")
    return root


def test_a_choice_that_generalizes_beats_the_last_epoch_and_noise_does_not(
    script: ModuleType, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1, 0, 0, 0] * 12)  # 12 groups of four images, one defective each
    groups = [f"g{i // 4}" for i in range(len(labels))]
    # two members, 6 epochs of noise, except epoch 3, which ranks every defect first on every image
    scores = rng.random((2, 6, len(labels)))
    scores[:, 2] = labels * 0.5 + rng.random(len(labels)) * 0.4
    work = _work_dir(tmp_path / "w", scores, labels, groups)
    s, y, g, last = script.load(work)
    assert s.shape == (2, 6, 48) and y.tolist() == labels.tolist() and g.max() == 11
    assert np.allclose(last, scores[:, -1], atol=1e-5)
    result = script.nested(s, y, g, cuts=20, seed=0)
    assert result["validation AUROC (the default)"][0] == pytest.approx(1.0)
    assert result["recall at 5 % false rejects"][1] == pytest.approx(1.0)
    assert result["the last epoch (no choice)"][0] < 0.8  # noise, chosen by nothing


def test_a_work_dir_without_the_image_list_is_refused_with_its_name(
    script: ModuleType, tmp_path: Path
) -> None:
    work = _work_dir(tmp_path / "w", np.zeros((1, 2, 4)), np.array([1, 0, 0, 0]), ["a", "a", "b", "b"])
    (work / "checkpoints" / "member0" / "val_images.csv").unlink()
    with pytest.raises(SystemExit, match=r"val_images\.csv missing"):
        script.load(work)
    with pytest.raises(SystemExit, match="no checkpoints"):
        script.load(tmp_path / "empty")


def test_members_of_unequal_length_are_cut_to_the_shortest_but_keep_their_own_last_epoch(
    script: ModuleType, tmp_path: Path
) -> None:
    labels = np.array([1, 0, 0, 0])
    work = _work_dir(tmp_path / "w", np.zeros((2, 3, 4)), labels, ["a", "a", "b", "b"])
    # member 1 ran two epochs more than member 0, the last of them its own
    extra = "4,0.1,0.2,0.3,0.4\n5,0.9,0.8,0.7,0.6\n"
    with (work / "checkpoints" / "member1" / "val_scores.csv").open("a") as f:
        f.write(extra)
    s, _, _, last = script.load(work)
    assert s.shape == (2, 3, 4)
    assert last.tolist() == [[0.0] * 4, [0.9, 0.8, 0.7, 0.6]]
