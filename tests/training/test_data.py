"""Reading indexed-mask datasets: tensors out, and clear messages for bad inputs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from qcstation.training.data import SegmentationDataset, split_by_group, train_transform
from qcstation.training.errors import DatasetError

pytestmark = pytest.mark.train

DatasetFactory = Callable[..., Path]


def test_samples_are_normalised_tensors_at_the_training_size(make_dataset: DatasetFactory) -> None:
    root = make_dataset(count=6, size=64)
    ds = SegmentationDataset.from_folder(root, size=32, mean=(0.5,), std=(0.25,))
    image, mask = ds[1]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert ds.classes == ("good", "dark", "line")
    # the disc is dark: (40/255 - 0.5) / 0.25 ~ -1.37 inside, the texture ~ +0.67
    assert float(image[0][mask == 1].mean()) < -1.0 < 0.5 < float(image[0][mask == 0].mean())
    assert ds.image_labels().tolist() == [0, 1, 1, 0, 1, 1]


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    (tmp_path / "dataset.yaml").write_text("layout: indexed_masks\nclasses: [good, dent]\n")
    with pytest.raises(DatasetError, match=r"is empty: no images"):
        SegmentationDataset.from_folder(tmp_path)


def test_missing_dataset_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"has no dataset.yaml"):
        SegmentationDataset.from_folder(tmp_path)


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.yaml").write_text("layout: coco\nclasses: [good, dent]\n")
    with pytest.raises(
        DatasetError, match=r"layout 'coco' is not supported; known layouts: \['indexed_masks'"
    ):
        SegmentationDataset.from_folder(tmp_path)


def test_mask_of_wrong_size_names_the_file(make_dataset: DatasetFactory) -> None:
    import cv2

    root = make_dataset(count=4)
    cv2.imwrite(str(root / "masks" / "part_0002.png"), np.zeros((60, 64), np.uint8))
    with pytest.raises(
        DatasetError, match=r"mask .*part_0002\.png is 64x60 \(WxH\) but its image part_0002\.png is 64x64"
    ):
        SegmentationDataset.from_folder(root)


def test_mask_with_unknown_class_index_is_refused(make_dataset: DatasetFactory) -> None:
    import cv2

    root = make_dataset(count=3)
    cv2.imwrite(str(root / "masks" / "part_0000.png"), np.full((64, 64), 7, np.uint8))
    with pytest.raises(
        DatasetError, match=r"part_0000\.png contains class index 7 but dataset.yaml lists only 3"
    ):
        SegmentationDataset.from_folder(root)


def test_image_without_mask_is_refused(make_dataset: DatasetFactory) -> None:
    root = make_dataset(count=3)
    (root / "masks" / "part_0001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) .* have no mask .*: part_0001\.png"):
        SegmentationDataset.from_folder(root)


def test_corrupted_image_is_reported_and_skipped(
    make_dataset: DatasetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_dataset(count=6)
    bad = root / "part_0003.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG
    with caplog.at_level(logging.WARNING, logger="qcstation.training.data"):
        ds = SegmentationDataset.from_folder(root)
    assert len(ds) == 5
    assert [Path(f).name for f, _ in ds.skipped] == ["part_0003.png"]
    assert "part_0003.png" in caplog.text and "cannot decode image" in caplog.text
    assert all(s.image.name != "part_0003.png" for s in ds.samples)


def test_all_images_unreadable_is_an_error(make_dataset: DatasetFactory) -> None:
    root = make_dataset(count=2)
    for p in root.glob("*.png"):
        p.write_bytes(b"not a png")
    with pytest.raises(
        DatasetError, match=r"no readable samples: all 2 were skipped \(first: .*part_0000\.png"
    ):
        SegmentationDataset.from_folder(root)


def test_split_keeps_groups_together_and_is_seeded(make_dataset: DatasetFactory) -> None:
    root = make_dataset(count=10)
    for i, name in enumerate(sorted(p.name for p in root.glob("part_*.png"))):
        # two views of each part: part_0000.png and part_0000_top.png share the group "part_0000"
        view = name.replace(".png", "_top.png")
        (root / view).write_bytes((root / name).read_bytes())
        (root / "masks" / view).write_bytes((root / "masks" / name).read_bytes())
        assert i < 10
    ds = SegmentationDataset.from_folder(root)
    train, val = split_by_group(ds.samples, 0.3, seed=1)
    assert sorted(train + val) == list(range(20))
    assert {ds.samples[i].group for i in train}.isdisjoint({ds.samples[i].group for i in val})
    assert len(val) == 6
    assert split_by_group(ds.samples, 0.3, seed=1) == (train, val)


def test_train_transform_crops_keep_image_and_mask_aligned(make_dataset: DatasetFactory) -> None:
    root = make_dataset(count=3, size=64)
    ds = SegmentationDataset.from_folder(root, size=64)
    tf = train_transform(32, defect_crop_p=1.0)
    image, mask = ds.raw(1)
    for _ in range(8):
        img2, mask2 = tf(image, mask)
        assert img2.shape == mask2.shape == (32, 32)
        assert mask2.any()  # the crop was placed on the defect
        if (mask2 == 0).any():  # the dark disc is still under its mask after flips and turns
            assert float(img2[mask2 == 1].mean()) + 60 < float(img2[mask2 == 0].mean())
