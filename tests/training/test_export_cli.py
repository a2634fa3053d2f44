"""`qcstation export` and `qcstation dataset info` as a quality engineer runs them, on every kind of input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from qcstation.inspect.detector import Detector
from qcstation.training.data import SegmentationDataset, Subset, split_by_group
from qcstation.training.engine import TrainConfig, fit
from qcstation.training.nets import build_model
from training.layout_data import frame, write_voc, write_yolo

pytestmark = [pytest.mark.train, pytest.mark.slow]

SIZE = 64


def qc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "qcstation.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """(a tiny engine checkpoint trained 2 steps on a VOC dataset, that dataset)."""
    torch.set_num_threads(1)
    root = write_voc(tmp_path / "voc")
    ds = SegmentationDataset.from_folder(root, size=SIZE)
    train, val = split_by_group(ds.samples, 0.25, seed=0)
    config = TrainConfig(
        classes=ds.classes,
        arch_kwargs={"width": 8, "depth": 3},
        epochs=1,
        batch_size=4,
        num_threads=1,
        max_steps_per_epoch=2,
    )
    net = build_model(config.arch, 1, len(ds.classes), **config.arch_kwargs)
    return fit(net, Subset(ds, train), Subset(ds, val), config, tmp_path / "run").best_checkpoint, root


def test_export_a_checkpoint_with_parity_latency_and_int8(
    checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, root = checkpoint
    res = qc(
        "export",
        str(ckpt),
        "--out",
        "out/m.onnx",
        "--dataset",
        str(root),
        "--size",
        str(SIZE),
        "--int8",
        "--latency-runs",
        "3",
        "--threads",
        "1",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["parity"]["real_images"] and report["parity"]["images"] == 12
    assert report["parity"]["max_abs_diff"] < 1e-4
    assert report["parity"]["verdicts_identical"] + len(report["parity"]["borderline"]) == 12
    assert report["calibration"]["good_images"] == 4 and set(report["thresholds"]) == {"dark", "line"}
    assert report["latency"]["fp32"]["median_ms"] > 0 and report["latency"]["intra_op_threads"] == 1
    q = report["int8"]
    assert q["max_abs_diff_vs_fp32"] < 0.05 and 0 <= q["verdicts_changed"] <= 12
    assert set(q["image_auroc"]) == {"fp32", "int8", "change"}
    assert q["image_auroc"]["change"] == pytest.approx(
        q["image_auroc"]["int8"] - q["image_auroc"]["fp32"], abs=1e-4
    )
    assert "wrote out/m.onnx: parity on 12 real images" in res.stderr and "INT8" in res.stderr
    fp32 = Detector.from_path(tmp_path / "out" / "m.onnx")
    int8 = Detector.from_path(tmp_path / "out" / "m-int8.onnx")
    assert fp32.card.provenance["export"]["parity"]["images"] == 12
    assert fp32.card.provenance["dataset"] == "voc" and fp32.card.input.height == SIZE
    assert int8.card.provenance["int8_check"]["images"] == 12
    assert int8.card.provenance["quantization"]["format"] == "QDQ"


def test_export_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weights": {}}, tmp_path / "w.pt")
    res = qc("export", str(tmp_path / "w.pt"), "--out", "m.onnx", cwd=tmp_path)
    assert res.returncode == 2
    assert "w.pt is not a qcstation checkpoint" in res.stderr and "Traceback" not in res.stderr
    res = qc("export", str(tmp_path / "none.pt"), "--out", "m.onnx", cwd=tmp_path)
    assert res.returncode == 2 and "checkpoint not found" in res.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_export_an_ensemble_runs_work_dir_and_refuse_it_with_a_member_missing(tmp_path: Path) -> None:
    from qcstation.training.defectnet import DefectNet

    # given a work dir holding an ensemble run's two member checkpoints
    root = write_voc(tmp_path / "voc")
    config = {"classes": ["good", "dark", "line"], "width": 8, "depth": 3, "size": SIZE, "tta": True}
    for k in range(2):
        torch.manual_seed(k)
        (tmp_path / "work" / "checkpoints" / f"member{k}").mkdir(parents=True)
        torch.save(
            {"config": config, "epoch": 1, "model": DefectNet(1, 3, width=8, depth=3).state_dict()},
            tmp_path / "work" / "checkpoints" / f"member{k}" / "best.pt",
        )

    # when `qcstation export` is given the work dir, it exports the ensemble and checks it
    res = qc("export", "work", "--out", "m.onnx", "--dataset", str(root), "--latency-runs", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["kind"] == "defectnet-ensemble" and len(report["members"]) == 2
    assert report["parity"]["max_abs_diff"] < 1e-4 and report["parity"]["images"] == 12
    assert "wrote m.onnx (ensemble of 2 members): parity on 12 real images" in res.stderr
    assert (
        Detector.from_path(tmp_path / "m.onnx").card.provenance["checkpoint"]["kind"] == "defectnet-ensemble"
    )

    # and with a member's best.pt gone it exits 2 naming that file, writing nothing
    (tmp_path / "work" / "checkpoints" / "member1" / "best.pt").unlink()
    res = qc("export", "work", "--out", "n.onnx", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "member checkpoint missing" in res.stderr and "member1/best.pt" in res.stderr
    assert not (tmp_path / "n.onnx").exists()


def test_dataset_info_reports_bad_files_by_name(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "y")
    (root / "images" / "part_0003.png").write_bytes(b"broken")
    (root / "labels" / "part_0001.txt").write_text("0 0.8 0.8 1.4 0.8 1.4 1.1\n")
    (root / "labels" / "part_0002.txt").write_text("one two three\n")
    res = qc("dataset", "info", str(root), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["layout"] == "yolo_seg" and report["classes"] == ["good", "dark", "line"]
    assert report["images"] == 10
    assert report["per_class"] == {"dark": 4, "good": 3, "line": 3}
    assert report["size"] == {"width": [SIZE, SIZE, SIZE], "height": [SIZE, SIZE, SIZE]}
    assert report["mean_mask_coverage"]["dark"] > 0
    problems = {Path(p["file"]).name: p["reason"] for p in report["problems"]}
    assert problems["part_0003.png"] == "cannot decode image (corrupt, truncated or not an image)"
    assert problems["part_0001.txt"] == f"label points outside the {SIZE}x{SIZE} (WxH) image were clipped"
    assert problems["part_0002.txt"].startswith("malformed label file, image part_0002.png skipped: line 1")


def test_dataset_info_on_an_empty_folder_or_an_unknown_class(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = qc("dataset", "info", str(tmp_path / "empty"), cwd=tmp_path)
    assert res.returncode == 2 and "is empty or not recognised" in res.stderr
    assert "Traceback" not in res.stderr
    root = write_voc(tmp_path / "voc")
    (root / "dataset.yaml").write_text("layout: voc\nclasses: [good, dark]\n")
    res = qc("dataset", "info", str(root), "--layout", "voc", cwd=tmp_path)
    assert res.returncode == 2
    assert "not in the label map ['good', 'dark']: 'line' (in part_0002.xml" in res.stderr


def test_train_on_a_plain_image_folder_without_good_only_says_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(root / f"p{i}.png"), frame(rng, SIZE, 0)[0])
    res = qc("train", str(root), "--out", "m.onnx", "--time-budget", "0.1", "--epochs", "1", cwd=tmp_path)
    assert res.returncode == 2
    assert "good-only mode" in res.stderr and "Traceback" not in res.stderr


def test_train_refuses_an_unknown_augmentation_preset(tmp_path: Path) -> None:
    res = qc("train", str(tmp_path), "--out", "m.onnx", "--augment", "wild", cwd=tmp_path)
    assert res.returncode == 2
    assert "'wild' is neither a preset (light, default, heavy) nor an existing YAML file" in res.stderr
    assert "Traceback" not in res.stderr


def test_train_resume_from_nothing_is_a_clear_error(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "yolo")
    res = qc(
        "train",
        str(root),
        "--out",
        "m.onnx",
        "--epochs",
        "1",
        "--resume",
        str(tmp_path / "gone"),
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert "cannot resume" in res.stderr and "Traceback" not in res.stderr
