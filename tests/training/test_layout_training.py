"""Every dataset layout, end to end: train a tiny model a few steps, export it, and get torch's verdicts back.

The exported file is loaded with the station's own :class:`~qcstation.inspect.detector.Detector`; its
verdict on every real image (a region of some class, or PASS) must be the verdict torch gives at the same
thresholds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qcstation.inspect.detector import Detector
from qcstation.training.data import SegmentationDataset, Subset, normalise, split_by_group, train_transform
from qcstation.training.defectnet import SUPERVISED_RECIPE
from qcstation.training.engine import TrainConfig, fit, model_from_checkpoint
from qcstation.training.errors import CheckpointError, DatasetError
from qcstation.training.export import export_checkpoint, load_checkpoint_model, peak_verdicts
from qcstation.training.layouts import open_dataset
from qcstation.training.nets import build_model
from training.layout_data import WRITERS

pytestmark = [pytest.mark.train, pytest.mark.slow]

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _train(root: Path, out: Path) -> Path:
    ds = SegmentationDataset.from_folder(root, size=SIZE)  # no dataset.yaml: the layout is detected
    train, val = split_by_group(ds.samples, 0.25, seed=0)
    config = TrainConfig(
        classes=ds.classes,
        arch_kwargs={"width": 8, "depth": 3},
        epochs=2,
        batch_size=4,
        lr=1e-2,
        seed=0,
        num_threads=1,
        max_steps_per_epoch=2,
    )
    net = build_model(config.arch, 1, len(ds.classes), **config.arch_kwargs)
    return fit(net, Subset(ds, train, train_transform(seed=0)), Subset(ds, val), config, out).best_checkpoint


def _station_verdict(det: Detector, image: np.ndarray) -> str:
    ids = sorted({r.class_id for r in det.inspect(image, defect_map=False).regions})
    return "+".join(det.card.classes[k] for k in ids) if ids else "PASS"


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_train_export_and_the_station_agrees_with_torch(layout: str, tmp_path: Path) -> None:
    # given a tiny model trained a few steps on a dataset in this layout
    root = WRITERS[layout](tmp_path / layout)
    checkpoint = _train(root, tmp_path / "run")
    net, ckpt = model_from_checkpoint(checkpoint)
    classes = tuple(ckpt["classes"])
    frames = [s.image for s in open_dataset(root).load((SIZE, SIZE))]
    with torch.no_grad():
        probs = torch.softmax(net(torch.stack([normalise(f, (0.5,), (0.25,)) for f in frames])), 1).numpy()
    peaks = probs.max(axis=(2, 3))
    # a threshold between the images' peaks, so some frames fail and some pass (midway between two distinct
    # middle values: a tiny model may give several images the same peak)
    distinct = np.unique(peaks[:, 1:].max(axis=1))
    assert len(distinct) >= 2, f"the tiny model gives every image the same peak {distinct}"
    threshold = float(distinct[len(distinct) // 2 - 1] + distinct[len(distinct) // 2]) / 2

    # when it is exported from the checkpoint, checked on the dataset's real images
    report = export_checkpoint(
        checkpoint, tmp_path / "m.onnx", dataset=root, size=SIZE, threshold=threshold, latency_runs=3
    )

    # then the export checked parity on real images, and the station's detector gives torch's verdicts
    assert report["parity"]["real_images"] and report["parity"]["images"] == 12
    assert report["parity"]["max_abs_diff"] < 1e-4
    assert report["latency"]["fp32"]["median_ms"] > 0
    det = Detector.from_path(tmp_path / "m.onnx")
    assert det.card.classes == classes == open_dataset(root).classes
    assert det.card.provenance["checkpoint"]["kind"] == "engine"
    assert det.card.provenance["export"]["parity"]["verdicts_identical"] == 12
    torch_verdicts = peak_verdicts(peaks, classes, det.card.thresholds)
    station = [_station_verdict(det, f) for f in frames]
    assert station == torch_verdicts
    assert "PASS" in station and any(v != "PASS" for v in station)


def test_a_defectnet_checkpoint_exports_with_its_image_head(tmp_path: Path) -> None:
    from qcstation.training.defectnet import DefectNet

    root = WRITERS["labelme"](tmp_path / "lm")
    torch.manual_seed(0)
    net = DefectNet(1, 2, width=8, depth=3)
    # tta off: this checks the checkpoint kind and the image head, not the test-time augmentation
    config = {"classes": ["good", "defect"], "width": 8, "depth": 3, "size": SIZE, "tta": False}
    torch.save({"config": config, "epoch": 3, "model": net.state_dict()}, tmp_path / "best.pt")

    report = export_checkpoint(tmp_path / "best.pt", tmp_path / "d.onnx", dataset=root, latency_runs=3)

    assert report["kind"] == "defectnet" and report["input"] == [1, SIZE, SIZE]
    assert report["parity"]["max_abs_diff"] < 1e-4 and report["parity"]["images"] == 12
    det = Detector.from_path(tmp_path / "d.onnx")
    assert det.card.output.image_scores == "image_probs"
    assert det.card.provenance["checkpoint"]["epoch"] == 3
    model = load_checkpoint_model(tmp_path / "best.pt")
    frames = [s.image for s in open_dataset(root).load((SIZE, SIZE))]
    probs, image_probs = model.probabilities(torch.stack([normalise(f, (0.5,), (0.25,)) for f in frames]))
    assert image_probs is not None
    for f, p, ip in zip(frames, probs, image_probs, strict=True):
        got, got_image, _ = det.predict(f)
        assert np.abs(got - p).max() < 1e-4 and got_image is not None and np.abs(got_image - ip).max() < 1e-4


def test_a_checkpoint_that_does_not_fit_says_what_is_wrong(tmp_path: Path) -> None:
    from qcstation.training.defectnet import DefectNet

    net = DefectNet(1, 2, width=8, depth=3)
    config = {"classes": ["good", "defect"], "width": 16, "depth": 3, "size": SIZE}
    torch.save({"config": config, "epoch": 1, "model": net.state_dict()}, tmp_path / "wide.pt")
    with pytest.raises(
        CheckpointError, match=r"wide\.pt: weights do not fit DefectNet\{'width': 16, 'depth': 3\}"
    ):
        load_checkpoint_model(tmp_path / "wide.pt")
    torch.save({"weights": net.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt is not a qcstation checkpoint"):
        load_checkpoint_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*junk\.pt"):
        load_checkpoint_model(tmp_path / "junk.pt")


def _member(ckpts: Path, k: int, **config: Any) -> Any:
    """Write an untrained DefectNet as ``ckpts/member<k>/best.pt`` the way an ensemble run does; return it."""
    from qcstation.training.defectnet import DefectNet

    cfg: dict[str, Any] = {"classes": ["good", "defect"], "width": 8, "depth": 3, "size": SIZE, "tta": True}
    cfg.update(config)
    torch.manual_seed(k)
    lc = cfg.get("local_contrast", 31)
    net = DefectNet(1, len(cfg["classes"]), width=cfg["width"], depth=cfg["depth"], local_contrast=lc).eval()
    (ckpts / f"member{k}").mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg, "epoch": k + 1, "model": net.state_dict()}, ckpts / f"member{k}" / "best.pt")
    return net


def test_an_ensembles_checkpoints_export_as_the_average_of_its_members(tmp_path: Path) -> None:
    from qcstation.training.defectnet import DefectEnsemble, StationModel

    # given a work dir whose checkpoints folder holds two members' best.pt, as an ensemble run leaves it
    root = WRITERS["labelme"](tmp_path / "lm")
    ckpts = tmp_path / "plates-run" / "checkpoints"
    nets = [_member(ckpts, k) for k in range(2)]

    # when the work dir is exported
    report = export_checkpoint(tmp_path / "plates-run", tmp_path / "e.onnx", dataset=root, latency_runs=3)

    # then the file is the flip-TTA station model of the two members' averaged probabilities
    assert report["kind"] == "defectnet-ensemble"
    assert report["members"] == [str(ckpts / f"member{k}" / "best.pt") for k in range(2)]
    assert report["parity"]["max_abs_diff"] < 1e-4 and report["parity"]["images"] == 12
    det = Detector.from_path(tmp_path / "e.onnx")
    assert det.card.name == "plates-run" and det.card.output.image_scores == "image_probs"
    prov = det.card.provenance["checkpoint"]
    assert prov["kind"] == "defectnet-ensemble" and prov["folder"] == "checkpoints" and prov["epoch"] == 2
    assert prov["members"] == [
        {
            "file": f"member{k}/best.pt",
            "sha256": hashlib.sha256((ckpts / f"member{k}" / "best.pt").read_bytes()).hexdigest(),
            "epoch": k + 1,
        }
        for k in range(2)
    ]
    frames = [s.image for s in open_dataset(root).load((SIZE, SIZE))]
    x = torch.stack([normalise(f, (0.5,), (0.25,)) for f in frames])
    with torch.no_grad():
        want, want_image = StationModel(DefectEnsemble(nets), tta=True).eval()(x)
        alone, _ = StationModel(nets[0], tta=True).eval()(x)
    got = [det.predict(f) for f in frames]
    assert np.abs(np.stack([g[0] for g in got]) - want.numpy()).max() < 1e-4
    assert np.abs(np.stack([np.asarray(g[1]) for g in got]) - want_image.numpy()).max() < 1e-4
    assert np.abs(alone.numpy() - want.numpy()).max() > 1e-3  # the second member counts
    torch_verdicts = peak_verdicts(want.numpy().max(axis=(2, 3)), det.card.classes, det.card.thresholds)
    assert [_station_verdict(det, f) for f in frames] == torch_verdicts


def test_members_with_their_own_local_contrast_scale_export_as_their_average(tmp_path: Path) -> None:
    from qcstation.training.defectnet import DefectEnsemble, StationModel

    # given an ensemble run whose members saw local contrast at different scales (member_local_contrast)
    root = WRITERS["labelme"](tmp_path / "lm")
    ckpts = tmp_path / "run" / "checkpoints"
    nets = [_member(ckpts, k, local_contrast=lc) for k, lc in enumerate((7, 0, 15))]

    # when it is exported
    report = export_checkpoint(tmp_path / "run", tmp_path / "e.onnx", dataset=root, latency_runs=1)

    # then the station runs each member with its own input channels, as torch does
    assert report["kind"] == "defectnet-ensemble" and report["parity"]["max_abs_diff"] < 1e-4
    det = Detector.from_path(tmp_path / "e.onnx")
    frames = [s.image for s in open_dataset(root).load((SIZE, SIZE))]
    x = torch.stack([normalise(f, (0.5,), (0.25,)) for f in frames])
    with torch.no_grad():
        want, want_image = StationModel(DefectEnsemble(nets), tta=True).eval()(x)
    got = [det.predict(f) for f in frames]
    assert np.abs(np.stack([g[0] for g in got]) - want.numpy()).max() < 1e-4
    assert np.abs(np.stack([np.asarray(g[1]) for g in got]) - want_image.numpy()).max() < 1e-4


def test_members_trained_with_snapshots_export_every_kept_snapshot(tmp_path: Path) -> None:
    from qcstation.training.defectnet import DefectEnsemble, DefectNet, StationModel

    # given an ensemble run whose members kept two snapshots each (their best.pt is one of them)
    ckpts = tmp_path / "run" / "checkpoints"
    nets: list[Any] = []
    for k in range(2):
        _member(ckpts, k, snapshots=2)
        for e in (3, 5):
            torch.manual_seed(10 * k + e)
            net = DefectNet(1, 2, width=8, depth=3).eval()
            cfg = {
                "classes": ["good", "defect"],
                "width": 8,
                "depth": 3,
                "size": SIZE,
                "tta": True,
                "snapshots": 2,
            }
            torch.save(
                {"config": cfg, "epoch": e, "model": net.state_dict()},
                ckpts / f"member{k}" / f"snapshot_e{e:04d}.pt",
            )
            nets.append(net)

    # when it is exported
    model = load_checkpoint_model(ckpts)

    # then the model is the mean of the four snapshots, each named in the provenance
    assert [m.path for m in model.members] == [
        ckpts / f"member{k}" / f"snapshot_e{e:04d}.pt" for k in range(2) for e in (3, 5)
    ]
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        got, got_image = model.net(x)
        want, want_image = StationModel(DefectEnsemble(nets), tta=True).eval()(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_image, want_image, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("present", "missing"),
    [((0,), "member1"), ((0, 2), "member1"), ((1,), "member0")],
)
def test_an_ensemble_with_a_missing_member_names_the_file(
    present: tuple[int, ...], missing: str, tmp_path: Path
) -> None:
    ckpts = tmp_path / "work" / "checkpoints"
    for k in present:
        _member(ckpts, k)
    (ckpts / "member1").mkdir(exist_ok=True)  # a member folder without its best.pt is missing too
    with pytest.raises(CheckpointError, match=rf"member checkpoint missing: .*{missing}/best\.pt"):
        export_checkpoint(tmp_path / "work", tmp_path / "m.onnx", latency_runs=1)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 16}, r"width 16 vs 8"),
        ({"depth": 2}, r"depth 2 vs 3"),
        (
            {"classes": ["good", "dark", "line"]},
            r"classes \['good', 'dark', 'line'\] vs \['good', 'defect'\]",
        ),
        ({"size": 2 * SIZE}, rf"size {2 * SIZE} vs {SIZE}"),
        ({"tta": False}, r"tta False vs True"),
    ],
)
def test_ensemble_members_that_differ_are_refused_naming_the_file(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    ckpts = tmp_path / "checkpoints"
    _member(ckpts, 0)
    _member(ckpts, 1, **change)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_model(ckpts)
    assert f"{ckpts / 'member1' / 'best.pt'} does not match {ckpts / 'member0' / 'best.pt'}" in str(
        info.value
    )
    assert info.match(message)


def test_a_folder_without_checkpoints_or_with_a_foreign_member_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty holds neither best\.pt nor member<k>/best\.pt"):
        load_checkpoint_model(tmp_path / "empty")
    ckpts = tmp_path / "checkpoints"
    _member(ckpts, 0)
    (ckpts / "member1").mkdir()
    torch.save({"weights": {}}, ckpts / "member1" / "best.pt")
    with pytest.raises(CheckpointError, match=r"member1/best\.pt is not a qcstation checkpoint"):
        load_checkpoint_model(ckpts)


@pytest.mark.parametrize(("layout", "mode"), [("yolo_seg", "supervised"), ("plain_images", "good_only")])
def test_qcstation_train_path_then_export_from_its_checkpoint(layout: str, mode: str, tmp_path: Path) -> None:
    # given a model trained the way `qcstation train` does (DefectNet, calibrated, exported)
    from qcstation.training.api import train_main

    root = WRITERS[layout](tmp_path / layout, count=15)
    result = train_main(
        root,
        tmp_path / "trained.onnx",
        mode=mode,  # type: ignore[arg-type]
        epochs=1,
        time_budget_min=1.0,
        size=SIZE,
        width=8,
        batch_size=4,
        val_fraction=0.34,
        num_threads=1,
        work_dir=tmp_path / "work",
        evaluate_split=None,
        augment="light",
    )
    assert torch.load(_best(tmp_path / "work" / "checkpoints"))["config"]["preset"] == "light"
    trained = Detector.from_path(result["model"])
    assert trained.card.classes == (("good", "defect") if mode == "supervised" else ("good", "anomaly"))

    # when its checkpoints are exported again (supervised: the ensemble's folder), with the trained card
    ckpts = tmp_path / "work" / "checkpoints"
    report = export_checkpoint(
        ckpts if mode == "supervised" else ckpts / "best.pt",
        tmp_path / "again.onnx",
        dataset=root,
        card_from=result["model"],
        latency_runs=3,
    )

    # then the station gets the same verdicts from both files and from torch
    again = Detector.from_path(tmp_path / "again.onnx")
    kind = "defectnet-ensemble" if mode == "supervised" else "defectnet"
    assert report["kind"] == kind and report["calibration"]["method"] == "card"
    if mode == "supervised":
        members = SUPERVISED_RECIPE["members"]
        assert report["members"] == [str(ckpts / f"member{k}" / "best.pt") for k in range(members)]
    assert again.card.thresholds == trained.card.thresholds
    assert report["parity"]["verdicts_identical"] == 15 and report["parity"]["max_abs_diff"] < 1e-4
    frames = [s.image for s in open_dataset(root).load((SIZE, SIZE))]
    station = [_station_verdict(again, f) for f in frames]
    assert station == [_station_verdict(trained, f) for f in frames]
    for f in frames:  # the same network as training exported, not merely the same verdicts
        assert np.abs(again.predict(f)[0] - trained.predict(f)[0]).max() < 1e-4
    model = load_checkpoint_model(ckpts)
    probs, _ = model.probabilities(torch.stack([normalise(f, (0.5,), (0.25,)) for f in frames]))
    assert station == peak_verdicts(probs.max(axis=(2, 3)), again.card.classes, again.card.thresholds)


def test_evaluate_reads_the_test_side_of_any_layout(tmp_path: Path) -> None:
    from qcstation.training.evaluate import evaluate_main

    root = WRITERS["yolo_seg"](tmp_path / "y", sides=True, test=True)
    checkpoint = _train(root, tmp_path / "run")
    export_checkpoint(checkpoint, tmp_path / "m.onnx", dataset=root, size=SIZE, latency_runs=3)
    ev = evaluate_main(tmp_path / "m.onnx", root, split="test", out_dir=tmp_path / "eval")
    files = sorted(r["file"] for r in ev["rows"])
    assert files == ["images/test/part_0001.png", "images/test/part_0005.png", "images/test/part_0009.png"]
    assert ev["metrics"]["images"] == 3 and ev["metrics"]["defective_images"] == 2
    # the one good image is listed with its part and drawn in the top-good grid the report shows
    (good,) = [r for r in ev["rows"] if not r["defective"]]
    (top,) = ev["metrics"]["top_good"]
    assert top["file"] == good["file"] and top["group"] == good["group"] and top["group"]
    assert ev["metrics"]["false_rejects"]["2%"]["set_by"]["file"] == top["file"]
    report = ev["report"].read_text()
    assert (tmp_path / "eval" / f"{ev['metrics']['model']}-top-good.png").is_file()
    assert f"{ev['metrics']['model']}-top-good.png" in report and top["file"] in report


def _best(ckpt: Path) -> Path:
    """A run's best.pt; supervised runs train several members, each with its own."""
    return ckpt / "best.pt" if (ckpt / "best.pt").exists() else ckpt / "member0" / "best.pt"


def test_evaluate_on_a_listed_set_of_images_such_as_a_runs_validation_list(tmp_path: Path) -> None:
    from qcstation.training.evaluate import evaluate_main

    root = WRITERS["yolo_seg"](tmp_path / "y", sides=True, test=True)
    checkpoint = _train(root, tmp_path / "run")
    export_checkpoint(checkpoint, tmp_path / "m.onnx", dataset=root, size=SIZE, latency_runs=3)
    every = evaluate_main(tmp_path / "m.onnx", root, split=None, out_dir=tmp_path / "all")["rows"]
    train_side = [r for r in every if r["file"].startswith("images/train/")]
    good = next(r["file"] for r in train_side if not r["defective"])
    bad = next(r["file"] for r in train_side if r["defective"])
    listed = [bad, "images/test/part_0005.png", good]
    listing = tmp_path / "validation.txt"
    listing.write_text("".join(f"{n}\n" for n in listed) + "\n")
    ev = evaluate_main(tmp_path / "m.onnx", root, split=None, out_dir=tmp_path / "eval", images=listing)
    assert [r["file"] for r in ev["rows"]] == listed
    assert ev["metrics"]["images"] == 3 and ev["metrics"]["image_list"] == str(listing)
    assert f"the images listed in {listing}" in ev["report"].read_text()
    # the list and a split side together: the listed images must be on that side
    with pytest.raises(DatasetError, match=r"2 of the 3 images listed .* not on split side 'test'"):
        evaluate_main(tmp_path / "m.onnx", root, split="test", images=listing)
    listing.write_text("images/test/part_0005.png\n")
    with pytest.raises(DatasetError, match=r"the images listed in .* need good and defective images"):
        evaluate_main(tmp_path / "m.onnx", root, split=None, images=listing)
    listing.write_text("images/train/no_such_part.png\n")
    with pytest.raises(DatasetError, match="no_such_part"):
        evaluate_main(tmp_path / "m.onnx", root, split=None, images=listing)
    listing.write_text("\n")
    with pytest.raises(DatasetError, match="names no image"):
        evaluate_main(tmp_path / "m.onnx", root, split=None, images=listing)
