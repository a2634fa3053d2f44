"""The training commands as a quality engineer runs them: clear messages, real datasets when present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.train

SHARED = Path(
    os.environ.get("QCSTATION_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets")
)


def qc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qcstation.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_train_on_a_missing_dataset_says_so(tmp_path: Path) -> None:
    res = qc("train", str(tmp_path / "nowhere"), "--out", "m.onnx", cwd=tmp_path)
    assert res.returncode == 2
    assert "nowhere" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_train_refuses_an_unknown_mode(tmp_path: Path) -> None:
    res = qc("train", "x", "--out", "m.onnx", "--mode", "magic", cwd=tmp_path)
    assert res.returncode == 2
    assert "supervised or good_only" in res.stderr


def test_evaluate_a_missing_model_says_so(tmp_path: Path) -> None:
    res = qc("evaluate", str(tmp_path / "none.onnx"), str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2
    assert "none.onnx" in res.stderr


@pytest.mark.skipif(
    not (SHARED / "magnetic_tile").is_dir(), reason="the magnetic tile dataset is not beside us"
)
def test_dataset_info_on_the_real_dataset_matches_its_source_note(tmp_path: Path) -> None:
    res = qc("dataset", "info", str(SHARED / "magnetic_tile"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["images"] == 1344
    assert report["per_class"] == {
        "good": 952,
        "blowhole": 115,
        "break": 85,
        "crack": 57,
        "fray": 32,
        "uneven": 103,
    }


@pytest.mark.slow
def test_train_takes_the_input_size_and_network_width_from_the_command_line(tmp_path: Path) -> None:
    import torch

    from qcstation.inspect.detector import Detector
    from training.test_defectnet import make_spots_dataset

    # given a small mask-folder dataset and a line whose parts want a 48 px input and a narrow network
    root = make_spots_dataset(tmp_path / "data")
    args = ["train", str(root), "--out", "m.onnx", "--epochs", "1", "--evaluate", "none"]
    sized = ["--size", "48", "--width", "8", "--batch-size", "4", "--lr", "0.001"]
    res = qc(*args, *sized, "--work-dir", "w", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # then the station's model takes 48 x 48 frames, and every member trained as asked
    card = Detector.from_path(tmp_path / "m.onnx").card
    assert (card.input.height, card.input.width) == (48, 48)
    configs = [
        torch.load(tmp_path / "w" / "checkpoints" / f"member{k}" / "last.pt", weights_only=False)["config"]
        for k in range(3)
    ]
    assert {(c["width"], c["size"], c["batch_size"], c["lr"]) for c in configs} == {(8, 48, 4, 0.001)}


def test_train_refuses_an_input_too_small_to_downsample(tmp_path: Path) -> None:
    res = qc("train", str(tmp_path), "--out", "m.onnx", "--size", "8", cwd=tmp_path)
    assert res.returncode == 2
    assert "--size" in res.stderr and "Traceback" not in res.stderr


def test_train_refuses_a_width_for_an_encoder_that_has_its_own(tmp_path: Path) -> None:
    res = qc(
        "train", str(tmp_path), "--out", "m.onnx", "--backbone", "resnet18", "--width", "24", cwd=tmp_path
    )
    assert res.returncode == 2
    assert "--width sets the unet's channels; the resnet18 encoder has its own" in res.stderr
