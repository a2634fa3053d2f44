"""The mask_folders layout: class folders, same-name masks, split.json, group keys, bad files reported."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from qcstation.training.data import (
    MaskFoldersReader,
    check_leaks,
    numeric_id_groups,
    same_view_suspects,
    split_by_group,
    suspect_labels,
)

pytestmark = pytest.mark.train

SOURCE_COUNTS = {"good": 952, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}


def make_mt_like(root: Path, *, corrupt: bool = True, wrong_size: bool = True) -> Path:
    """A tiny dataset in the magnetic-tile layout: MT_Free, MT_Crack, MT_Hole with Imgs/ and masks."""
    rng = np.random.default_rng(0)
    ids = {"MT_Free": [10, 20, 900, 910, 5000], "MT_Crack": [30, 2000, 2010], "MT_Hole": [40, 5100]}
    for folder, nums in ids.items():
        d = root / folder / "Imgs"
        d.mkdir(parents=True)
        for k, n in enumerate(nums):
            img = np.clip(rng.normal(120, 10, (40, 56)), 0, 255).astype(np.uint8)
            mask = np.zeros((40, 56), np.uint8)
            if folder == "MT_Crack":
                cv2.line(mask, (5, 5), (50, 30), 255, 2)
            elif folder == "MT_Hole":
                cv2.circle(mask, (20, 20), 5, 255, -1)
            img[mask > 0] = 30
            stem = f"exp{k}_num_{n}"
            cv2.imwrite(str(d / f"{stem}.jpg"), img)
            cv2.imwrite(str(d / f"{stem}.png"), mask)
    if wrong_size:
        cv2.imwrite(str(root / "MT_Crack/Imgs/exp2_num_2010.png"), np.zeros((10, 10), np.uint8))
    if corrupt:
        (root / "MT_Free/Imgs/exp4_num_5000.jpg").write_bytes(b"not a jpeg at all")
    split = {
        "train": [f"MT_Free/Imgs/exp{k}_num_{n}.jpg" for k, n in enumerate([10, 20, 900, 910])]
        + ["MT_Crack/Imgs/exp0_num_30.jpg", "MT_Hole/Imgs/exp0_num_40.jpg"],
        "test": [
            "MT_Free/Imgs/exp4_num_5000.jpg",
            "MT_Crack/Imgs/exp1_num_2000.jpg",
            "MT_Crack/Imgs/exp2_num_2010.jpg",
            "MT_Hole/Imgs/exp1_num_5100.jpg",
        ],
    }
    (root / "split.json").write_text(json.dumps(split))
    return root


def test_reader_infers_classes_split_and_groups(tmp_path: Path) -> None:
    reader = MaskFoldersReader.open(make_mt_like(tmp_path))
    assert reader.classes == ("good", "crack", "hole")
    samples = reader.samples()
    assert len(samples) == 10
    by_name = {s.image.name: s for s in samples}
    assert reader.split_of(by_name["exp0_num_30.jpg"]) == "train"
    assert reader.split_of(by_name["exp1_num_2000.jpg"]) == "test"
    # num_ ids within 300 of each other chain into one group, across class folders
    assert by_name["exp0_num_10.jpg"].group == by_name["exp0_num_40.jpg"].group
    assert by_name["exp2_num_900.jpg"].group == by_name["exp3_num_910.jpg"].group
    assert by_name["exp0_num_10.jpg"].group != by_name["exp2_num_900.jpg"].group


def test_wrong_size_mask_and_corrupt_image_are_reported_by_name_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = MaskFoldersReader.open(make_mt_like(tmp_path))
    with caplog.at_level(logging.WARNING):
        loaded = reader.load((32, 32))
    assert len(loaded) == 8
    problems = dict((Path(f).name, why) for f, why in reader.problems)
    assert set(problems) == {"exp4_num_5000.jpg", "exp2_num_2010.jpg"}
    assert "cannot decode image" in problems["exp4_num_5000.jpg"]
    assert "10x10" in problems["exp2_num_2010.jpg"] and "56x40" in problems["exp2_num_2010.jpg"]
    assert "exp4_num_5000.jpg" in caplog.text and "exp2_num_2010.png" in caplog.text
    crack = next(s for s in loaded if s.source_class == "crack")
    assert crack.mask.max() == reader.classes.index("crack") and crack.image.shape == (32, 32)


def test_merge_and_configurable_good_folder(tmp_path: Path) -> None:
    root = make_mt_like(tmp_path, corrupt=False, wrong_size=False)
    merged = MaskFoldersReader.open(root, merge="defect")
    assert merged.classes == ("good", "defect")
    assert {int(s.mask.max()) for s in merged.load() if s.source_class != "good"} == {1}
    # naming the good folder explicitly: MT_Hole becomes "good" (no mask needed), MT_Free a defect class
    other = MaskFoldersReader.open(root, good=["MT_Hole"])
    assert other.classes == ("good", "crack", "free")


def test_group_split_keeps_groups_on_one_side(tmp_path: Path) -> None:
    samples = MaskFoldersReader.open(make_mt_like(tmp_path)).samples()
    for seed in range(5):
        train, val = split_by_group(samples, 0.4, seed)
        assert train and val
        assert not {samples[i].group for i in train} & {samples[i].group for i in val}


def test_numeric_groups_and_leak_warning(tmp_path: Path) -> None:
    groups = numeric_id_groups(["a_num_1", "b_num_250", "c_num_600", "d_num_700"], gap=300)
    assert groups == {
        "a_num_1": "num_1",
        "b_num_250": "num_1",
        "c_num_600": "num_600",
        "d_num_700": "num_600",
    }
    assert numeric_id_groups(["no_id_here"]) is None
    samples = MaskFoldersReader.open(make_mt_like(tmp_path)).samples()
    side = {s.image: ("train" if i % 2 else "test") for i, s in enumerate(samples)}
    warnings = check_leaks(samples, side)
    assert warnings and "more than one side" in warnings[0]


def test_near_duplicate_grouping_without_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    d = tmp_path / "good_parts"
    d.mkdir()
    base = cv2.GaussianBlur(rng.integers(0, 255, (48, 48)).astype(np.uint8), (0, 0), 4)
    cv2.imwrite(str(d / "a.png"), base)
    cv2.imwrite(str(d / "b.png"), np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8))
    cv2.imwrite(str(d / "c.png"), np.ascontiguousarray(base[::-1, ::-1]).astype(np.uint8))
    samples = {s.image.name: s for s in MaskFoldersReader.open(tmp_path).samples()}
    assert samples["a.png"].group == samples["b.png"].group != samples["c.png"].group


DATASETS = Path(os.environ.get("QCSTATION_DATASETS", "../shared/datasets"))


@pytest.mark.skipif(not (DATASETS / "magnetic_tile").is_dir(), reason="magnetic_tile dataset not present")
def test_dataset_info_on_magnetic_tile_matches_source_counts() -> None:
    from qcstation.training.api import dataset_info

    info = dataset_info(DATASETS / "magnetic_tile")
    assert info["per_class"] == SOURCE_COUNTS
    assert info["groups"] == 184 and info["problems"] == []
    assert not any("more than one side" in w for w in info["leak_warnings"])
    assert sum(v for k, v in info["per_split"].items() if k.startswith("test/")) == 368
    suspects = {Path(r["file"]).name: r for r in info["suspect_labels"]}
    # a free shot of a break labelled on its neighbour shot, and an uneven image with an empty mask
    assert "exp4_num_116999.jpg" in suspects["exp5_num_117030.jpg"]["reason"]
    assert suspects["exp5_num_117030.jpg"]["side"] == "train"
    assert "mask is empty" in suspects["exp4_num_352527.jpg"]["reason"]
    assert len(suspects) >= 16


def make_reshot_part(root: Path) -> Path:
    """One part shot under three lights with its crack labelled on one shot only, and decoys.

    Part num_100: exp1 (crack labelled); exp2 (the same view, brighter, labelled free: suspect); exp3 (the
    same picture 30 % narrower: a file of another size is another view); exp4 (a free shot of another
    surface). Part num_5000: a free shot of the very same view (another part: never compared). Part
    num_9000: a crack image whose mask is empty.
    """
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.normal(0, 30, (120, 160)).astype(np.float32), (0, 0), 1.5) + 120
    other = cv2.GaussianBlur(rng.normal(0, 30, (120, 160)).astype(np.float32), (0, 0), 1.5) + 120
    crack = np.zeros((120, 160), np.uint8)
    cv2.line(crack, (20, 30), (140, 90), 255, 2)
    shots = {
        "MT_Crack/exp1_num_100": (texture - 40 * (crack > 0), crack),
        "MT_Free/exp2_num_110": (1.4 * (texture - 40 * (crack > 0)) + 10, None),
        "MT_Free/exp3_num_120": (cv2.resize(texture - 40 * (crack > 0), (112, 120)), None),
        "MT_Free/exp4_num_130": (other, None),
        "MT_Free/exp2_num_5000": (texture - 40 * (crack > 0), None),
        "MT_Crack/exp1_num_9000": (other, np.zeros((120, 160), np.uint8)),
    }
    for name, (img, mask) in shots.items():
        folder, stem = name.split("/")
        d = root / folder / "Imgs"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(d / f"{stem}.png" if mask is None else d / f"{stem}.jpg"),
            np.clip(img, 0, 255).astype(np.uint8),
        )
        if mask is not None:
            cv2.imwrite(str(d / f"{stem}.png"), mask)
    return root


def test_a_free_shot_of_a_labelled_defect_and_an_empty_mask_are_suspect_labels(tmp_path: Path) -> None:
    reader = MaskFoldersReader.open(make_reshot_part(tmp_path))
    loaded = reader.load((64, 64))
    views = same_view_suspects(loaded)
    assert [(v.good.name, v.defective.name) for v in views] == [("exp2_num_110.png", "exp1_num_100.jpg")]
    assert views[0].similarity > 0.9
    suspects = {p.name: why for p, why in suspect_labels(loaded).items()}
    assert set(suspects) == {"exp2_num_110.png", "exp1_num_9000.jpg"}
    assert "same view as defective exp1_num_100.jpg" in suspects["exp2_num_110.png"]
    assert "labelled crack, but its mask is empty at 64x64" in suspects["exp1_num_9000.jpg"]
    # without the size check the narrower picture matches too
    loose = same_view_suspects(loaded, max_size_change=1.0)
    assert {v.good.name for v in loose} >= {"exp2_num_110.png", "exp3_num_120.png"}
