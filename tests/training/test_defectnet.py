"""DefectNet with its image head: a few steps, export with image_scores, same verdicts in the station."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qcstation.inspect.card import InputSpec, ModelCard, OutputSpec
from qcstation.inspect.detector import Detector
from qcstation.training.anomaly import paste_defect, smooth_noise_mask, synthesize_anomaly
from qcstation.training.data import MaskFoldersReader
from qcstation.training.defectnet import (
    BatchMaker,
    DefectEnsemble,
    DefectNet,
    DefectTrainConfig,
    Pool,
    StationModel,
    box_mean,
    group_folds,
    load_snapshot,
    predict_pool,
    random_crop,
    synthetic_validation,
    train_defect_net,
)
from qcstation.training.errors import ModelBuildError, TrainingError
from qcstation.training.export import export_onnx

pytestmark = [pytest.mark.train, pytest.mark.slow]


def tiny_pool(n: int, size: int, seed: int, defective: Callable[[int], bool] = lambda k: k % 2 == 1) -> Pool:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for k in range(n):
        img = np.clip(rng.normal(150, 8, (size, size)), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if defective(k):
            y, x = rng.integers(6, size - 6, 2)
            img[y - 3 : y + 3, x - 3 : x + 3] = 40
            mask[y - 3 : y + 3, x - 3 : x + 3] = 1
        images.append(img)
        masks.append(mask)
    return Pool(images, masks, [f"img{k}" for k in range(n)])


def tiny_config(**kw: Any) -> DefectTrainConfig:
    """A two-class DefectNet of width 8, depth 2 at 32 px, batches of 4; ``kw`` sets the rest."""
    return DefectTrainConfig(classes=("good", "defect"), width=8, depth=2, size=32, batch_size=4, **kw)


@pytest.mark.parametrize(("shape", "k"), [((2, 1, 40, 56), 31), ((1, 2, 9, 7), 5), ((1, 1, 3, 3), 31)])
def test_box_mean_equals_border_clipped_average_pooling(shape: tuple[int, ...], k: int) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 1
    pooled = F.avg_pool2d(x, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False)
    pooled = F.avg_pool2d(pooled, (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)
    assert torch.allclose(box_mean(x, k), pooled, atol=1e-5)


def test_box_mean_refuses_an_even_window() -> None:
    with pytest.raises(ValueError, match="odd"):
        box_mean(torch.zeros(1, 1, 8, 8), 4)


def test_gated_maps_peak_at_the_image_score() -> None:
    torch.manual_seed(0)
    model = StationModel(DefectNet(1, 3, width=8, depth=2), tta=True).eval()
    with torch.no_grad():
        probs, img = model(torch.randn(2, 1, 32, 32))
    assert probs.shape == (2, 3, 32, 32) and img.shape == (2, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 32, 32))
    torch.testing.assert_close(probs[:, 1:].amax(dim=(1, 2, 3)), img[:, 1:].amax(dim=1))


def test_few_steps_export_and_station_verdicts_match_torch(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    config = tiny_config(max_epochs=2, seed=0, num_threads=1)
    fit = train_defect_net(train, val, config, tmp_path / "ckpt")
    assert fit.epochs_run == 2 and (tmp_path / "ckpt" / "best.pt").is_file()
    assert_station_matches_torch(StationModel(fit.net).eval(), val, 32, tmp_path / "tiny.onnx")


def assert_station_matches_torch(model: StationModel, val: Pool, size: int, out: Path) -> np.ndarray:
    """Export ``model`` with a median threshold; the station's scores and verdicts must be torch's."""
    heads, _ = predict_pool(model, val)
    thr = float(np.median(heads[:, 1]))
    card = ModelCard(
        name="tiny",
        version="1",
        classes=("good", "defect"),
        input=InputSpec("image", size, size, 1, "GRAY", (0.5,), (0.25,)),
        output=OutputSpec("probs", image_scores="image_probs"),
        thresholds={"defect": thr},
    )
    report = export_onnx(model, card, out)
    assert report.max_abs_diff < 1e-4
    det = Detector.from_path(out)
    for k, image in enumerate(val.images):
        insp = det.inspect(image)
        assert insp.image_score == pytest.approx(float(heads[k, 1]), abs=1e-4)
        assert bool(insp.regions) == (heads[k, 1] >= thr)
    return heads


def test_dihedral_tta_is_invariant_to_turns_and_the_ensemble_averages_members() -> None:
    torch.manual_seed(0)
    members = [DefectNet(1, 2, width=8, depth=2, pool_topk=0.05) for _ in range(2)]
    model = StationModel(DefectEnsemble(members), tta=True, rotations=True).eval()
    assert len(model.transforms()) == 8
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        probs, img = model(x)
        probs_t, img_t = model(torch.rot90(x, 1, dims=(2, 3)))
        singles = [StationModel(m, tta=True, rotations=True).eval()(x)[1] for m in members]
    torch.testing.assert_close(img_t, img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.rot90(probs, 1, dims=(2, 3)), probs_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(img, (singles[0] + singles[1]) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs[:, 1:].amax(dim=(1, 2, 3)), img[:, 1:].amax(dim=1))


def test_two_members_train_in_parallel_and_export_as_one_graph(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    config = tiny_config(max_epochs=1, ema_decay=0.9, members=2, num_threads=2)
    fit = train_defect_net(train, val, config, tmp_path / "ckpt")
    assert isinstance(fit.net, DefectEnsemble) and len(fit.members) == 2
    assert (tmp_path / "ckpt" / "member1" / "best.pt").is_file()
    model = StationModel(fit.net, rotations=True).eval()
    heads, _ = predict_pool(model, val)
    card = ModelCard(
        name="tiny",
        version="1",
        classes=("good", "defect"),
        input=InputSpec("image", 32, 32, 1, "GRAY", (0.5,), (0.25,)),
        output=OutputSpec("probs", image_scores="image_probs"),
        thresholds={"defect": float(np.median(heads[:, 1]))},
    )
    assert export_onnx(model, card, tmp_path / "tiny.onnx").max_abs_diff < 1e-4
    det = Detector.from_path(tmp_path / "tiny.onnx")
    assert det.inspect(val.images[0]).image_score == pytest.approx(float(heads[0, 1]), abs=1e-4)


def grouped_pool(parts: int, size: int, seed: int) -> Pool:
    """``parts`` physical parts photographed three times each; every other part defective."""
    pool = tiny_pool(parts * 3, size, seed, defective=lambda k: (k // 3) % 2 == 1)
    pool.groups = [f"part{k // 3}" for k in range(parts * 3)]
    return pool


def test_group_folds_keep_a_part_in_one_fold_and_defects_in_every_fold() -> None:
    pool = grouped_pool(10, 16, 0)
    folds = group_folds(pool, 3, seed=4)
    assert sorted(i for f in folds for i in f) == list(range(30))
    for f in folds:
        groups = {pool.groups[i] for i in f}
        assert all(pool.groups[j] not in groups for g in folds if g is not f for j in g)
        assert set(pool.labels()[f]) == {0, 1}
    assert group_folds(pool, 3, seed=4) == folds and group_folds(pool, 3, seed=5) != folds
    with pytest.raises(TrainingError, match="5 defective and 5 good"):
        group_folds(pool, 6, seed=0)
    with pytest.raises(TrainingError, match="at least 2 folds"):
        group_folds(pool, 1, seed=0)


def test_cross_fitted_members_each_hold_out_a_fold_and_score_it_out_of_fold(tmp_path: Path) -> None:
    train = grouped_pool(10, 32, 0)
    config = tiny_config(max_epochs=1, members=2, folds=3, split_seed=1, num_threads=2)
    empty = Pool([], [])
    fit = train_defect_net(train, empty, config, tmp_path / "ckpt")
    folds = group_folds(train, 3, seed=1)
    oof = fit.out_of_fold
    assert oof is not None and isinstance(fit.net, DefectEnsemble) and len(fit.net.members) == 2
    # folds 0 and 1 were held out by members 0 and 1; fold 2 trained both and has no out-of-fold score
    assert oof.names == [train.names[i] for i in folds[0] + folds[1]]
    assert list(oof.fold) == [0] * len(folds[0]) + [1] * len(folds[1])
    assert list(oof.labels) == list(train.labels()[folds[0] + folds[1]])
    for k in (0, 1):
        member = fit.net.members[k]
        assert isinstance(member, DefectNet)
        heads, _ = predict_pool(StationModel(member).eval(), train.subset(folds[k]))
        np.testing.assert_allclose(oof.scores[oof.fold == k], heads, atol=1e-6)
        log = (tmp_path / "ckpt" / f"member{k}" / "log.csv").read_text().splitlines()
        assert len(log) == 2  # one epoch, validated on its own fold
    with pytest.raises(TrainingError, match="at least as many folds as members"):
        train_defect_net(train, empty, replace(config, folds=2, members=3), tmp_path / "bad")


def test_snapshots_keep_the_best_epochs_and_average_them(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    config = tiny_config(max_epochs=5, snapshots=3, num_threads=1)
    out = tmp_path / "ckpt"
    fit = train_defect_net(train, val, config, out)
    # the three best epochs by validation AUROC (ties: the earlier epoch), and only they, are on disk
    ranked = sorted(fit.history, key=lambda r: (-r["val_auroc"], r["epoch"]))
    expected = sorted(int(r["epoch"]) for r in ranked[:3])
    assert fit.snapshot_epochs == expected
    assert sorted(p.name for p in out.glob("snapshot_e*.pt")) == [f"snapshot_e{e:04d}.pt" for e in expected]
    assert fit.best_epoch in expected
    # one score line per epoch, one score per validation image
    lines = (out / "val_scores.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, 6))
    assert all(len(line.split(",")) == 1 + len(val.images) for line in lines)
    # and val_images.csv names those columns: image, group (the name without groups) and label, in order
    named = (out / "val_images.csv").read_text().splitlines()
    assert named[0] == "image,group,defective"
    assert named[1:] == [f"img{k},img{k},{k % 2}" for k in range(len(val.images))]
    # the kept network is the mean of the snapshots' probabilities
    assert isinstance(fit.net, DefectEnsemble) and len(fit.net.members) == 3
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        _, img = StationModel(fit.net, tta=False).eval()(x)
        singles = [StationModel(load_snapshot(out, e, config), tta=False).eval()(x)[1] for e in expected]
    torch.testing.assert_close(img, sum(singles) / 3, atol=1e-5, rtol=1e-5)


def test_hard_good_sampling_draws_the_good_images_the_network_scores_as_defective() -> None:
    pool = tiny_pool(20, 24, seed=3)  # 10 good (even indices), 10 defective
    maker = BatchMaker(pool, 10, defect_share=0.0, hard_good=1.0, seed=0)
    maker()
    # when the network scores the last batch's good images: one of them 0.9, the rest 0
    first = maker.drawn_good[0][1]
    maker.good_scores[:] = 0.0
    probs = np.zeros(10)
    for pos, k in maker.drawn_good:
        probs[pos] = 0.9 if k == first else 0.0
    maker.score_good(probs)
    assert maker.good_scores[first] == pytest.approx(0.9) and maker.good_scores.sum() == pytest.approx(0.9)
    # then the next batches are nearly all that image (weight 0.9 against 1e-3 for each other one)
    drawn = [k for _ in range(20) for _, k in (maker(), maker.drawn_good)[1]]
    assert len(drawn) == 200 and drawn.count(first) / len(drawn) > 0.95
    # and without hard_good the same scores change nothing: good images are drawn uniformly
    plain = BatchMaker(pool, 10, defect_share=0.0, seed=0)
    plain.good_scores[:] = 0.0
    plain.good_scores[first] = 0.9
    drawn = [k for _ in range(20) for _, k in (plain(), plain.drawn_good)[1]]
    assert drawn.count(first) / len(drawn) < 0.25


def test_synthetic_anomaly_mask_is_exactly_what_was_drawn() -> None:
    rng = np.random.default_rng(3)
    base = np.clip(rng.normal(120, 15, (64, 80)), 0, 255).astype(np.uint8)
    other = np.clip(rng.normal(60, 30, (50, 50)), 0, 255).astype(np.uint8)
    for _ in range(30):
        out, mask = synthesize_anomaly(base, [other], rng)
        assert out.shape == base.shape and mask.shape == base.shape and mask.dtype == bool
        assert mask.any()
        np.testing.assert_array_equal(out != base, mask)


def test_pasted_defect_keeps_its_contrast_place_and_class_on_another_good_image() -> None:
    rng = np.random.default_rng(4)
    good = np.clip(rng.normal(180, 4, (64, 64)), 0, 255).astype(np.uint8)  # a bright tile
    donor = np.clip(rng.normal(100, 4, (64, 64)), 0, 255).astype(np.uint8)  # a darker one ...
    donor[20:30, 40:50] = 40  # ... with a hole 60 gray levels darker than its surroundings
    donor_mask = np.zeros((64, 64), np.uint8)
    donor_mask[20:30, 40:50] = 3  # class 3
    out, mask = paste_defect(good, donor, donor_mask, rng)
    np.testing.assert_array_equal(mask, donor_mask)  # same place, same class
    hole, around = out[20:30, 40:50].astype(float), out[5:15, 5:15].astype(float)
    assert around.mean() == pytest.approx(180, abs=3)  # far from the defect: the good image untouched
    np.testing.assert_array_equal(out[:10], good[:10])
    assert around.mean() - hole.mean() == pytest.approx(60, abs=4)  # the hole keeps its contrast
    # the rim is blended: no pixel just outside the region jumps to the donor's gray level
    rim = out[18:32, 38:52].astype(float).copy()
    rim[2:12, 2:12] = np.nan
    assert np.nanmin(rim) > 140
    # a donor without a defect pastes nothing; shapes must agree
    same, empty = paste_defect(good, donor, np.zeros_like(donor_mask), rng)
    np.testing.assert_array_equal(same, good)
    assert not empty.any()
    with pytest.raises(ValueError, match="one shape"):
        paste_defect(good, donor[:32], donor_mask, rng)


def test_paste_share_puts_real_defects_on_good_images() -> None:
    # good tiles bright (220), defective tiles dark (60) with a hole 50 gray levels darker still
    rng = np.random.default_rng(3)
    images, masks = [], []
    for k in range(20):
        img = np.clip(rng.normal(220 if k % 2 == 0 else 60, 3, (24, 24)), 0, 255).astype(np.uint8)
        mask = np.zeros((24, 24), np.uint8)
        if k % 2:
            img[8:14, 9:15] -= 50
            mask[8:14, 9:15] = 1
        images.append(img)
        masks.append(mask)
    pool = Pool(images, masks, [f"img{k}" for k in range(20)])

    def backgrounds(paste_share: float) -> list[float]:
        maker = BatchMaker(
            pool,
            200,
            defect_share=1.0,
            synthetic_share=0.0,
            paste_share=paste_share,
            preset="light",
            seed=1,
        )
        x, m = maker()
        x = x.numpy()[:, 0] * 0.25 + 0.5  # undo the normalisation: 0..1
        assert all(int(mm.sum()) > 0 for mm in m)  # every draw is a defect with its label
        for img, mm in zip(x, m.numpy().astype(bool), strict=True):  # the labelled pixels are the darker
            assert img[mm].mean() < img[~mm].mean() - 0.05
        return [float(np.median(img[~mm])) for img, mm in zip(x, m.numpy().astype(bool), strict=True)]

    bright = [b > 0.58 for b in backgrounds(0.5)]  # 220 / 255 = 0.86, 60 / 255 = 0.24 (± lighting)
    assert 0.3 < np.mean(bright) < 0.7  # about half the real defects now sit on a good tile
    assert not any(b > 0.58 for b in backgrounds(0.0))  # without paste_share, none
    # a defect on the frame's border (a piece of the outline missing) is never pasted
    for m in pool.masks[1::2]:
        m[:] = 0
        m[0:4, 9:15] = 1
    for img in pool.images[1::2]:
        img[0:4, 9:15] = 10
    assert not any(b > 0.58 for b in backgrounds(1.0))


def test_random_crop_of_a_defective_image_holds_a_defect_pixel_anywhere_in_the_window() -> None:
    rng = np.random.default_rng(0)
    image = np.arange(40 * 48, dtype=np.int32).reshape(40, 48)  # every pixel its own value
    mask = np.zeros((40, 48), np.uint8)
    mask[30, 5] = 2  # one defect pixel near a corner
    places = set()
    for _ in range(1000):
        img, m = random_crop(image, mask, 16, rng)
        assert img.shape == m.shape == (16, 16)
        assert int(m.sum()) == 2  # the defect is in every crop, with its class
        top, left = divmod(int(img[0, 0]), 48)
        np.testing.assert_array_equal(img, image[top : top + 16, left : left + 16])  # image and mask agree
        np.testing.assert_array_equal(m, mask[top : top + 16, left : left + 16])
        places.add((30 - top, 5 - left))
    # every window that holds the defect and fits the image is drawn: rows 15-24, columns 0-5
    assert places == {(r, c) for r in range(6, 16) for c in range(6)}
    good = np.zeros((40, 48), np.uint8)
    tops = {divmod(int(random_crop(image, good, 16, rng)[0][0, 0]), 48)[0] for _ in range(200)}
    assert min(tops) < 5 and max(tops) > 19  # a good image's window is anywhere in it
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(image, mask, 41, rng)


def test_crop_config_is_checked() -> None:
    with pytest.raises(ModelBuildError, match="multiple of 4 below size 32"):
        tiny_config(crop=18)
    with pytest.raises(ModelBuildError, match="multiple of 4 below size 32"):
        tiny_config(crop=32)
    with pytest.raises(ModelBuildError, match="crop_share"):
        tiny_config(crop=16, crop_share=1.5)
    assert tiny_config(crop=16).crop == 16


def test_training_runs_on_crops_first_then_on_whole_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    seen: list[tuple[int, bool]] = []  # (side of the batch, training?)
    forward = DefectNet.forward_both

    def spy(self: DefectNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((x.shape[-1], self.training))
        return forward(self, x)

    monkeypatch.setattr(DefectNet, "forward_both", spy)
    config = tiny_config(max_epochs=4, seed=0, num_threads=1, crop=16, crop_share=0.5, defect_share=1.0)
    fit = train_defect_net(train, val, config, tmp_path / "ckpt")
    sides = [side for side, training in seen if training]
    assert fit.epochs_run == 4 and len(sides) == 4 * (16 // 4)
    assert sides == [16] * (len(sides) // 2) + [32] * (len(sides) // 2)  # half the steps on crops, then whole
    maker = BatchMaker(train, 24, defect_share=1.0, preset="light", seed=0)
    maker.crop = 16
    _, m = maker()
    assert m.shape == (24, 16, 16) and all(int(mm.sum()) > 0 for mm in m)  # defective draws stay defective


def test_noise_mask_is_irregular_and_bounded() -> None:
    rng = np.random.default_rng(5)
    for _ in range(10):
        m = smooth_noise_mask((96, 96), rng)
        assert 0 < m.mean() <= 0.2


def test_good_only_validation_pairs_every_good_image_with_an_anomaly() -> None:
    pool = tiny_pool(6, 32, 2)
    good = Pool([i for i, m in zip(pool.images, pool.masks, strict=True) if not m.any()], [], [])
    good.masks = [np.zeros_like(i) for i in good.images]
    val = synthetic_validation(good, 0)
    assert val.labels().tolist() == [0, 0, 0, 1, 1, 1]


def make_spots_dataset(root: Path, size: int = 40, spot_offset: int = 500) -> Path:
    """MT-like folders: MT_Free and MT_Spot (a dark square), one tile per num_ id 1000 apart, split.json.

    ``spot_offset``: the spot images' ids past their good namesakes'; under the 300 of the id grouping, each
    good image shares its group with a spot image (every group then has a defect)."""
    rng = np.random.default_rng(7)
    split: dict[str, list[str]] = {"train": [], "test": []}
    for folder in ("MT_Free", "MT_Spot"):
        d = root / folder / "Imgs"
        d.mkdir(parents=True)
        for k in range(12):
            img = np.clip(rng.normal(150, 8, (size, size + 8)), 0, 255).astype(np.uint8)
            mask = np.zeros(img.shape, np.uint8)
            if folder == "MT_Spot":
                y, x = rng.integers(8, size - 8, 2)
                img[y - 4 : y + 4, x - 4 : x + 4] = 40
                mask[y - 4 : y + 4, x - 4 : x + 4] = 255
            stem = f"exp1_num_{k * 1000 + (spot_offset if folder == 'MT_Spot' else 0)}"
            cv2.imwrite(str(d / f"{stem}.png"), mask)
            cv2.imwrite(str(d / f"{stem}.jpg"), img)
            split["test" if k >= 9 else "train"].append(f"{folder}/Imgs/{stem}.jpg")
    (root / "split.json").write_text(json.dumps(split))
    return root


def train_tiny(root: Path, out: Path, work_dir: Path, **kw: Any) -> dict[str, Any]:
    """``train_main`` for one epoch of a tiny network at 32 px on one thread (a test's few seconds)."""
    from qcstation.training.api import train_main

    tiny: dict[str, Any] = {"epochs": 1, "size": 32, "width": 8, "batch_size": 4, "val_fraction": 0.4}
    return train_main(root, out, num_threads=1, work_dir=work_dir, **tiny, **kw)


def test_train_main_on_a_tiny_mask_folders_dataset(tmp_path: Path) -> None:
    root = make_spots_dataset(tmp_path / "data")
    for mode in ("supervised", "good_only"):
        out = tmp_path / f"{mode}.onnx"
        result = train_tiny(root, out, tmp_path / mode, mode=mode, seed=1)
        det = Detector.from_path(out)
        prov = det.card.provenance
        assert len(prov["dataset_sha256"]) == 64 and prov["split"]["file"] == "split.json"
        assert prov["metrics"]["test"]["images"] == 6 and "image_auroc" in prov["metrics"]["test"]
        assert det.card.output.image_scores == "image_probs" and det.card.good_scores["count"] >= 1
        assert det.card.classes == (("good", "defect") if mode == "supervised" else ("good", "anomaly"))
        # the default budget is the mode's: the supervised recipe's 44 min, good-only's 35 min
        assert prov["training"]["time_budget_min"] == (44.0 if mode == "supervised" else 35.0)
        summary = json.loads((tmp_path / mode / "summary.json").read_text())
        assert summary["model"] == result["model"] == str(out)
        # supervised by default refits: every held-out image is good; good-only validation is synthetic
        held_out = (tmp_path / mode / "checkpoints" / "validation.txt").read_text().split()
        assert held_out and all(p.startswith("MT_Free/") for p in held_out)
        # both keep their last epoch: the refit has no real defects held out, good-only's are synthetic
        assert prov["training"]["keep_last"] is True
        assert ("refit" in prov["split"]["validation"]) is (mode == "supervised")
        image = MaskFoldersReader.open(root).load()[0].image
        assert 0.0 <= det.inspect(image).image_score <= 1.0


def test_images_whose_labels_the_data_contradicts_are_left_out_and_listed(tmp_path: Path) -> None:
    from qcstation.training.api import SUSPECTS_LIST

    root = make_spots_dataset(tmp_path / "data")
    split = json.loads((root / "split.json").read_text())
    # given a free shot of the same view as a labelled spot (the spot shows), and a spot with an empty mask
    spot = cv2.imread(str(root / "MT_Spot/Imgs/exp1_num_500.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "MT_Free/Imgs/exp2_num_510.jpg"), np.clip(spot * 1.3 + 5, 0, 255).astype(np.uint8))
    cv2.imwrite(str(root / "MT_Spot/Imgs/exp2_num_1510.jpg"), spot)
    cv2.imwrite(str(root / "MT_Spot/Imgs/exp2_num_1510.png"), np.zeros_like(spot))
    split["train"] += ["MT_Free/Imgs/exp2_num_510.jpg", "MT_Spot/Imgs/exp2_num_1510.jpg"]
    (root / "split.json").write_text(json.dumps(split))
    # when asked to, training leaves them out, lists them with the reason and counts them in the card
    train_tiny(root, tmp_path / "a.onnx", tmp_path / "a", evaluate_split=None, drop_suspects=True)
    listed = (tmp_path / "a" / "checkpoints" / SUSPECTS_LIST).read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [
        "MT_Free/Imgs/exp2_num_510.jpg",
        "MT_Spot/Imgs/exp2_num_1510.jpg",
    ]
    assert "same view as defective exp1_num_500.jpg" in listed[0] and "mask is empty" in listed[1]
    used = Detector.from_path(tmp_path / "a.onnx").card.provenance["split"]
    assert used["suspect_labels_left_out"] == 2 and used["train"] + used["val"] == 18
    # and by default they are trained on as they are
    train_tiny(root, tmp_path / "b.onnx", tmp_path / "b", evaluate_split=None)
    kept = Detector.from_path(tmp_path / "b.onnx").card.provenance["split"]
    assert kept["suspect_labels_left_out"] == 0 and kept["train"] + kept["val"] == 20
    assert (tmp_path / "b" / "checkpoints" / SUSPECTS_LIST).read_text() == ""


def test_the_validation_carve_out_follows_split_seed_and_a_resume_must_keep_it(tmp_path: Path) -> None:
    from qcstation.training.api import VALIDATION_LIST
    from qcstation.training.errors import DatasetError

    root = make_spots_dataset(tmp_path / "data")

    def train(name: str, **kw: Any) -> tuple[str, str]:
        train_tiny(root, tmp_path / f"{name}.onnx", tmp_path / name, evaluate_split=None, **kw)
        listed = (tmp_path / name / "checkpoints" / VALIDATION_LIST).read_text()
        card = Detector.from_path(tmp_path / f"{name}.onnx").card
        return listed, card.provenance["split"]["validation_sha256"]

    # when two runs differ in their seed only
    a, a_sha = train("a", seed=1)
    b, b_sha = train("b", seed=2)
    # then they held out the same images, listed beside the checkpoints and hashed into the card
    assert a == b and a_sha == b_sha
    assert len(a.splitlines()) >= 2 and all(line.startswith("MT_") for line in a.splitlines())
    # and another split seed holds out other images
    c, c_sha = train("c", seed=1, split_seed=5)
    assert c != a and c_sha != a_sha
    # and resuming run a with that other split is refused, naming the reason
    with pytest.raises(DatasetError, match=r"cannot resume .* other validation images"):
        train("d", seed=1, split_seed=5, resume=tmp_path / "a")


def test_keep_last_keeps_the_last_epoch_whatever_validation_says(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    # given a run that keeps its last epoch
    config = tiny_config(max_epochs=3, seed=0, num_threads=1, keep_last=True)
    fit = train_defect_net(train, val, config, tmp_path / "ckpt")
    # then the kept network is the last epoch's: best.pt and last.pt hold the same weights
    assert fit.epochs_run == 3 and fit.best_epoch == 3
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    assert best["epoch"] == 3
    for key, value in best["model"].items():
        torch.testing.assert_close(value, last["model"][key])
        torch.testing.assert_close(value, fit.net.state_dict()[key])
    # and it cannot be combined with keeping several validation-chosen snapshots
    with pytest.raises(TrainingError, match="keep_last"):
        train_defect_net(train, val, replace(config, snapshots=2), tmp_path / "bad")


def test_keep_last_scores_validation_now_and_then_and_on_the_last_epoch(tmp_path: Path) -> None:
    from qcstation.training.defectnet import MONITOR_EVERY

    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    epochs = MONITOR_EVERY + 2
    # given a run that keeps its last epoch, and one that chooses on validation
    kept = train_defect_net(
        train, val, tiny_config(max_epochs=epochs, num_threads=1, keep_last=True), tmp_path / "kept"
    )
    chosen = train_defect_net(train, val, tiny_config(max_epochs=epochs, num_threads=1), tmp_path / "chosen")
    # then the keeping run logs every epoch but scores validation on the first, every MONITOR_EVERY-th
    # and the last only; the choosing run scores every epoch
    scored = [int(r["epoch"]) for r in kept.history if not math.isnan(r["val_auroc"])]
    assert [int(r["epoch"]) for r in kept.history] == list(range(1, epochs + 1))
    assert scored == [1, 1 + MONITOR_EVERY, epochs]
    assert all(not math.isnan(r["val_auroc"]) for r in chosen.history) and len(chosen.history) == epochs
    logged = (tmp_path / "kept" / "log.csv").read_text().splitlines()
    assert len(logged) == epochs + 1 and logged[2].split(",")[3] == "nan"
    scores_rows = (tmp_path / "kept" / "val_scores.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in scores_rows] == scored
    # and the kept network's validation figure is the last epoch's, measured
    assert kept.best_epoch == epochs and kept.best_auroc == kept.history[-1]["val_auroc"]


def test_a_refit_trains_every_defective_group_and_calibrates_on_held_out_good_images(tmp_path: Path) -> None:
    from qcstation.training.api import VALIDATION_LIST

    root = make_spots_dataset(tmp_path / "data")
    # given the same split trained plainly and with the default, which refits in supervised mode
    plain = train_tiny(root, tmp_path / "plain.onnx", tmp_path / "plain", evaluate_split=None, refit=False)
    refit = train_tiny(root, tmp_path / "refit.onnx", tmp_path / "refit", evaluate_split=None)
    held_plain = (tmp_path / "plain" / "checkpoints" / VALIDATION_LIST).read_text().splitlines()
    held_refit = (tmp_path / "refit" / "checkpoints" / VALIDATION_LIST).read_text().splitlines()
    # then the plain run held out both kinds; the refit only the good ones, and trained the defective ones
    assert any("MT_Spot" in p for p in held_plain) and any("MT_Free" in p for p in held_plain)
    assert held_refit == [p for p in held_plain if p.startswith("MT_Free/")]
    prov = Detector.from_path(tmp_path / "refit.onnx").card.provenance
    moved = len(held_plain) - len(held_refit)
    assert prov["split"]["val"] == len(held_refit) and prov["split"]["train"] == 18 - len(held_refit)
    assert f"refit: their {moved} image(s)" in prov["split"]["validation"]
    assert prov["training"]["keep_last"] is True
    # and the validation figures say no defect was held out, with the false-reject rate it calibrated to
    assert "image_auroc" in plain["val"] and "image_auroc" not in refit["val"]
    assert refit["val"]["defective_images"] == 0 and "refit" in refit["val"]["defects"]
    assert 0.0 <= refit["val"]["false_reject_rate_at_threshold"] <= 0.5
    # and only the plain run scored its held-out images through the station, a report to look at misses on
    scored = (tmp_path / "plain" / "eval-val" / "scores.csv").read_text().splitlines()[1:]
    assert sorted(line.split(",")[0] for line in scored) == sorted(held_plain)
    assert plain["val_report"] == str(tmp_path / "plain" / "eval-val" / "report.md")
    assert "val_report" not in refit


def test_the_default_falls_back_to_choosing_epochs_where_every_held_out_group_has_a_defect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from qcstation.training.api import VALIDATION_LIST
    from qcstation.training.errors import DatasetError

    # given a dataset whose every group holds a good and a defective photograph
    root = make_spots_dataset(tmp_path / "data", spot_offset=100)
    # when it is trained with the default
    with caplog.at_level("WARNING", logger="qcstation.training.api"):
        result = train_tiny(root, tmp_path / "m.onnx", tmp_path / "w", evaluate_split=None)
    # then it says why it did not refit, and validated on the real held-out defects (choosing the epoch)
    assert "no good image is left out" in caplog.text and "choosing the members' epochs" in caplog.text
    held = (tmp_path / "w" / "checkpoints" / VALIDATION_LIST).read_text().splitlines()
    assert any("MT_Spot" in p for p in held) and any("MT_Free" in p for p in held)
    assert result["val"]["defects"] == "real" and "image_auroc" in result["val"]
    prov = Detector.from_path(tmp_path / "m.onnx").card.provenance
    assert prov["training"]["keep_last"] is False and "refit" not in prov["split"]["validation"]
    # and asking for the refit there is refused with the reason, before any training
    with pytest.raises(DatasetError, match="no good image is left out"):
        train_tiny(root, tmp_path / "m2.onnx", tmp_path / "w2", evaluate_split=None, refit=True)
    # and good-only training never refits (its validation defects are synthetic)
    with pytest.raises(DatasetError, match="refit is for supervised"):
        train_tiny(root, tmp_path / "m3.onnx", tmp_path / "w3", mode="good_only", refit=True)


def test_a_refit_needs_a_good_group_held_out(tmp_path: Path) -> None:
    from qcstation.training.api import refit_split
    from qcstation.training.errors import DatasetError

    loaded = MaskFoldersReader.open(make_spots_dataset(tmp_path / "data")).load((32, 32))
    spots = [k for k, s in enumerate(loaded) if s.mask.any()]
    goods = [k for k, s in enumerate(loaded) if not s.mask.any()]
    train, held = refit_split(loaded, goods[2:], goods[:2] + spots[:3])
    assert train == sorted(goods[2:] + spots[:3]) and held == goods[:2]
    with pytest.raises(DatasetError, match="no good image is left out"):
        refit_split(loaded, goods, spots[:3])


def test_pairwise_rank_loss_charges_good_images_that_outscore_defective_ones() -> None:
    from qcstation.training.defectnet import pairwise_rank_loss

    labels = torch.tensor([0, 0, 1, 2])
    # given defects scored far above every good image, then the same scores with one good image on top
    ordered = torch.tensor([[4.0, -4.0, -4.0], [3.0, -3.0, -3.0], [-3.0, 4.0, -4.0], [-3.0, -4.0, 5.0]])
    misordered = ordered.clone()
    misordered[1] = torch.tensor([-6.0, 6.0, -6.0])
    assert pairwise_rank_loss(ordered, labels).item() < 1e-3
    # then only the misordered batch costs, and its gradient pushes that good image down
    logits = misordered.clone().requires_grad_(True)
    loss = pairwise_rank_loss(logits, labels)
    loss.backward()
    assert loss.item() > 1.0
    assert logits.grad is not None and logits.grad[1, 0] < 0 < logits.grad[1, 1]
    # and a batch without both kinds adds nothing but keeps the graph
    alone = pairwise_rank_loss(ordered[:2].clone().requires_grad_(True), labels[:2])
    assert alone.item() == 0.0 and alone.requires_grad


def test_training_with_the_rank_term_records_it_and_learns(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    config = tiny_config(max_epochs=2, seed=0, num_threads=1, rank_loss_weight=1.0)
    fit = train_defect_net(train, val, config, tmp_path / "ckpt")
    assert fit.epochs_run == 2 and all(np.isfinite(h["train_loss"]) for h in fit.history)
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["config"]["rank_loss_weight"] == 1.0


def test_block_mask_hides_whole_blocks_at_the_asked_ratio() -> None:
    from qcstation.training.defectnet import block_mask

    hidden = block_mask(64, 40, 8, 0.5, np.random.default_rng(0))
    assert hidden.shape == (64, 1, 40, 40)
    blocks = hidden.reshape(64, 1, 5, 8, 5, 8)
    # each 8 x 8 block is hidden or shown whole, and about half of them are hidden
    assert torch.equal(blocks.amin((3, 5)), blocks.amax((3, 5)))
    assert 0.4 < float(hidden.mean()) < 0.6


def test_inpainting_warm_up_refuses_a_step_budget_below_one(tmp_path: Path) -> None:
    from qcstation.training.defectnet import inpaint_pretrain

    net = DefectNet(1, 2, width=8, depth=2)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        inpaint_pretrain(net, tiny_pool(4, 32, 0), tiny_config(), 1.0, tmp_path, steps=0)
    assert not (tmp_path / "inpaint.csv").exists()


def test_inpainting_warm_up_learns_to_fill_hidden_blocks_then_supervised_training_goes_on(
    tmp_path: Path,
) -> None:
    from qcstation.training.defectnet import inpaint_pretrain

    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    config = tiny_config(max_epochs=2, seed=0, num_threads=1)
    torch.manual_seed(0)
    net = DefectNet(1, 2, width=8, depth=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # a step budget, not a time one: the same 400 steps however fast or loaded the machine is
    rows = inpaint_pretrain(net, train, config, 4.0, tmp_path, block=8, steps=400)
    assert sum(int(r["steps"]) for r in rows) == 400 and len(rows) == 100
    assert (tmp_path / "inpaint.csv").is_file()
    # the hidden blocks are filled in better at the end (mean of the last ten passes) than at the start
    assert np.mean([r["loss"] for r in rows[-10:]]) < 0.6 * rows[0]["loss"]
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    # in the loop: the warm-up's share of the budget comes first, the supervised epochs get the rest
    warm = replace(config, inpaint_pretrain=0.5, time_budget_min=0.1, max_epochs=10_000)
    fit = train_defect_net(train, val, warm, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "inpaint.csv").is_file() and fit.epochs_run >= 1
    assert 2.5 < fit.seconds < 5.0
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["config"]["inpaint_pretrain"] == 0.5


def test_inpainting_warm_up_is_for_the_unet_alone(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    config = tiny_config(max_epochs=1, num_threads=1, backbone="resnet18", inpaint_pretrain=0.2)
    with pytest.raises(TrainingError, match="unet backbone only"):
        train_defect_net(tiny_pool(8, 32, 0), tiny_pool(8, 32, 1), config, tmp_path)


def test_each_member_gets_its_seed_and_its_local_contrast_scale() -> None:
    cfg = DefectTrainConfig(classes=("good", "defect"), members=3, seed=5, member_local_contrast=(15, 63))
    members = [cfg.member(k, num_threads=1) for k in range(3)]
    assert [m.seed for m in members] == [5, 6, 7]
    assert [m.local_contrast for m in members] == [15, 63, 15]  # cycled
    assert all(m.members == 1 and m.member_local_contrast == () and m.num_threads == 1 for m in members)
    plain = DefectTrainConfig(classes=("good", "defect"), members=2, local_contrast=0)
    assert [plain.member(k).local_contrast for k in range(2)] == [0, 0]


@pytest.mark.parametrize("change", [{"local_contrast": 30}, {"member_local_contrast": (31, -1)}])
def test_an_even_or_negative_local_contrast_window_is_refused_before_training(change: dict[str, Any]) -> None:
    with pytest.raises(ModelBuildError, match="local-contrast window must be odd"):
        tiny_config(**change)


def test_label_smoothing_changes_the_image_loss_and_is_recorded(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 32, 0), tiny_pool(8, 32, 1)
    losses = {}
    for ls in (0.0, 0.2):
        config = tiny_config(max_epochs=1, seed=0, num_threads=1, label_smoothing=ls)
        fit = train_defect_net(train, val, config, tmp_path / f"ckpt{ls}")
        losses[ls] = fit.history[0]["train_loss"]
        saved = torch.load(tmp_path / f"ckpt{ls}" / "last.pt", weights_only=False)["config"]
        assert saved["label_smoothing"] == ls
    # same seed, same batches and weights at the start: only the image head's target differs
    assert np.isfinite(losses[0.2]) and losses[0.2] != pytest.approx(losses[0.0], rel=1e-6)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_label_smoothing_outside_zero_to_one_is_refused(value: float) -> None:
    with pytest.raises(ModelBuildError, match="label_smoothing must be in"):
        tiny_config(label_smoothing=value)


def test_good_only_trains_its_recipe_s_epochs_and_keeps_the_last(tmp_path: Path) -> None:
    # given good-only training with no epoch count (a budget of a few seconds stops this one)
    import torch

    from qcstation.training.api import train_main
    from qcstation.training.defectnet import GOOD_ONLY_RECIPE

    root = make_spots_dataset(tmp_path / "data")
    tiny: dict[str, Any] = {"size": 32, "width": 8, "batch_size": 4, "val_fraction": 0.4, "num_threads": 1}
    train_main(
        root, tmp_path / "g.onnx", mode="good_only", time_budget_min=0.05, work_dir=tmp_path / "g", **tiny
    )
    # then the network was trained for the recipe's epochs with the last one kept, not the best by the
    # (synthetic) validation; an engineer's --epochs still wins
    config = torch.load(tmp_path / "g" / "checkpoints" / "last.pt", weights_only=False)["config"]
    assert (config["max_epochs"], config["keep_last"]) == (GOOD_ONLY_RECIPE["max_epochs"], True) == (40, True)
    train_main(root, tmp_path / "h.onnx", mode="good_only", epochs=2, work_dir=tmp_path / "h", **tiny)
    config = torch.load(tmp_path / "h" / "checkpoints" / "last.pt", weights_only=False)["config"]
    assert (config["max_epochs"], config["keep_last"]) == (2, True)
