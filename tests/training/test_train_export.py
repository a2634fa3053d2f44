"""Train a tiny model for a few steps, export it, and check the ONNX file end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qcstation.inspect.card import CARD_KEY, InputSpec, ModelCard, OutputSpec
from qcstation.inspect.detector import Detector
from qcstation.training.data import SegmentationDataset, Subset, split_by_group, train_transform
from qcstation.training.engine import TrainConfig, fit, load_checkpoint, model_from_checkpoint
from qcstation.training.errors import CheckpointError, ExportError
from qcstation.training.evaluate import evaluate_folder
from qcstation.training.export import export_onnx, read_card
from qcstation.training.nets import build_model
from qcstation.training.train import train_dataset

pytestmark = [pytest.mark.train, pytest.mark.slow]

DatasetFactory = Callable[..., Path]
SIZE = 64


def _fit(
    root: Path, out: Path, *, epochs: int = 2, width: int = 8, resume: Path | None = None
) -> tuple[object, TrainConfig]:
    ds = SegmentationDataset.from_folder(root, size=SIZE)
    train, val = split_by_group(ds.samples, 0.25, seed=0)
    config = TrainConfig(
        classes=ds.classes,
        arch_kwargs={"width": width, "depth": 3},
        epochs=epochs,
        batch_size=4,
        lr=1e-2,
        seed=0,
        num_threads=1,
        max_steps_per_epoch=3,
    )
    net = build_model(config.arch, 1, len(ds.classes), **config.arch_kwargs)
    result = fit(net, Subset(ds, train, train_transform(seed=0)), Subset(ds, val), config, out, resume=resume)
    return result, config


def _card(classes: tuple[str, ...]) -> ModelCard:
    return ModelCard(
        name="tiny",
        version="0",
        classes=classes,
        input=InputSpec("image", SIZE, SIZE, 1, "GRAY", (0.5,), (0.25,)),
        output=OutputSpec("probs"),
        thresholds={"dark": 0.5, "line": 0.6},
        provenance={"dataset": "tiny"},
    )


def test_train_export_parity_and_card(make_dataset: DatasetFactory, tmp_path: Path) -> None:
    # given a tiny model trained for a few steps
    result, config = _fit(make_dataset(count=12, size=SIZE), tmp_path / "run")
    assert (tmp_path / "run" / "log.csv").read_text().startswith("epoch,lr,train_loss,val_loss")
    net, ckpt = model_from_checkpoint(result.best_checkpoint)  # type: ignore[attr-defined]
    assert ckpt["arch"] == "unet_small" and ckpt["args"]["batch_size"] == 4 and ckpt["epoch"] >= 1

    # when exported with a card
    card = _card(config.classes)
    report = export_onnx(net, card, tmp_path / "tiny.onnx")

    # then onnxruntime loads it, the card validates against the graph, and it agrees with torch
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert read_card(session) == card
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probs"]
    assert session.get_inputs()[0].shape[1:] == [1, SIZE, SIZE]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # dynamic batch
    x = np.random.default_rng(3).normal(0.0, 1.0, (3, 1, SIZE, SIZE)).astype(np.float32)
    got = session.run(["probs"], {"image": x})[0]
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    assert got.shape == (3, 3, SIZE, SIZE)
    assert float(np.abs(got - ref).max()) < 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert report.max_abs_diff < 1e-4 and report.argmax_agreement == 1.0
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert json.loads(props[CARD_KEY])["thresholds"] == {"dark": 0.5, "line": 0.6}
    # and the station's own loader accepts it
    det = Detector.from_path(report.path)
    assert det.card == card


def test_export_refuses_a_card_that_does_not_fit_the_network(tmp_path: Path) -> None:
    net = build_model("unet_small", 1, 3, width=8, depth=3)
    card = _card(("good", "dark", "line", "extra"))
    with pytest.raises(
        ExportError, match=r"does not validate: graph tensor 'probs' has classes 3 but the model card says 4"
    ):
        export_onnx(net, card, tmp_path / "bad.onnx")


def test_resume_continues_and_refuses_another_architecture(
    make_dataset: DatasetFactory, tmp_path: Path
) -> None:
    root = make_dataset(count=8, size=SIZE)
    first, _ = _fit(root, tmp_path / "a", epochs=1)
    # resuming the same architecture carries on from epoch 1 to 2
    second, _ = _fit(root, tmp_path / "b", epochs=2, resume=first.last_checkpoint)  # type: ignore[attr-defined]
    assert second.epochs_run == 2 and len(second.history) == 2  # type: ignore[attr-defined]
    assert load_checkpoint(second.last_checkpoint)["epoch"] == 2  # type: ignore[attr-defined]
    # a checkpoint of another width cannot be resumed
    with pytest.raises(
        CheckpointError,
        match=r"cannot resume from .*last\.pt: it was trained with arch_kwargs=\{'width': 8, 'depth': 3\} "
        r"but this run has arch_kwargs=\{'width': 16, 'depth': 3\}",
    ):
        _fit(root, tmp_path / "c", epochs=2, width=16, resume=first.last_checkpoint)  # type: ignore[attr-defined]


def test_resume_from_a_file_that_is_not_a_checkpoint(make_dataset: DatasetFactory, tmp_path: Path) -> None:
    bogus = tmp_path / "weights.pt"
    torch.save({"state": 1}, bogus)
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a qcstation checkpoint"):
        _fit(make_dataset(count=8, size=SIZE), tmp_path / "r", resume=bogus)
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*missing\.pt"):
        _fit(make_dataset("ds2", count=8, size=SIZE), tmp_path / "r2", resume=tmp_path / "missing.pt")


def test_train_dataset_writes_a_calibrated_card(make_dataset: DatasetFactory, tmp_path: Path) -> None:
    root = make_dataset(count=16, size=SIZE)
    result = train_dataset(
        root,
        tmp_path / "m.onnx",
        name="tiny",
        epochs=2,
        seed=5,
        size=SIZE,
        arch_kwargs={"width": 8, "depth": 3},
        batch_size=4,
        crop=32,
        val_fraction=0.25,
        num_threads=1,
        max_steps_per_epoch=3,
        work_dir=tmp_path / "work",
        version="test",
    )
    card = Detector.from_path(result.model_path).card
    assert card.classes == ("good", "dark", "line")
    assert set(card.thresholds) == {"dark", "line"}
    assert all(0.3 <= t <= 0.95 for t in card.thresholds.values())
    assert card.good_scores["count"] >= 1
    prov = card.provenance
    assert len(prov["dataset_sha256"]) == 64
    assert prov["code_version"].startswith("qcstation ")
    assert prov["split"]["val"] == 4 and prov["split"]["train"] == 12
    assert set(prov["metrics"]["pixel_iou"]) == {"good", "dark", "line"}
    assert 0.0 <= prov["metrics"]["image_accuracy"] <= 1.0
    # and the station-side check runs over the labelled folder
    ev = evaluate_folder(result.model_path, root)
    assert ev.images == 16 and len(ev.rows) == 16
    assert 0.0 <= ev.accuracy <= 1.0
    assert set(ev.class_hits) == {"dark", "line"}
    assert ev.class_hits["dark"][1] == 5 and ev.class_hits["line"][1] == 5


def test_early_stop_waits_for_min_epochs(make_dataset: DatasetFactory, tmp_path: Path) -> None:
    ds = SegmentationDataset.from_folder(make_dataset(count=8, size=SIZE), size=SIZE)
    train, val = split_by_group(ds.samples, 0.25, seed=0)
    config = TrainConfig(
        classes=ds.classes,
        arch_kwargs={"width": 4, "depth": 2},
        epochs=6,
        batch_size=4,
        lr=1e-9,  # nothing improves after the first epoch
        seed=0,
        num_threads=1,
        patience=1,
        min_epochs=4,
        max_steps_per_epoch=1,
    )
    net = build_model(config.arch, 1, len(ds.classes), **config.arch_kwargs)
    result = fit(net, Subset(ds, train), Subset(ds, val), config, tmp_path / "run")
    assert result.epochs_run == 4 and result.best_epoch == 1
