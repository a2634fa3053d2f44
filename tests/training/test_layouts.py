"""Dataset layouts: YOLO segmentation, labelme, VOC, plain images — detection, masks, splits, bad labels."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from qcstation.training.data import SegmentationDataset, check_leaks, read_dataset_config
from qcstation.training.errors import DatasetError
from qcstation.training.layouts import assign_groups, class_counts, detect_layout, open_dataset
from training.layout_data import (
    WRITERS,
    frame,
    labelme_json,
    voc_xml,
    write_labelme,
    write_mask_folders,
    write_voc,
    write_yolo,
)

pytestmark = pytest.mark.train

DatasetFactory = Callable[..., Path]

SIZE = 64


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_every_layout_is_detected_and_reads_the_same_labels(layout: str, tmp_path: Path) -> None:
    # given the same 12 frames written in a layout, and as class folders with exact masks
    root = WRITERS[layout](tmp_path / layout)
    truth = {
        s.sample.image.stem: s
        for s in open_dataset(write_mask_folders(tmp_path / "truth")).load((SIZE, SIZE))
    }

    # when it is opened without a dataset.yaml
    assert detect_layout(root) == layout
    ds = open_dataset(root)
    loaded = ds.load((SIZE, SIZE))

    # then the classes are inferred, every frame is read, and the labels match the drawn defects
    assert ds.layout == layout and ds.problems == []
    assert len(loaded) == 12
    if layout == "plain_images":
        assert ds.classes == ("good", "anomaly")
        assert not any(s.mask.any() for s in loaded)
        return
    assert ds.classes == ("good", "dark", "line")
    for s in loaded:
        want = truth[s.sample.image.stem]
        assert s.source_class == want.source_class
        if want.source_class == "good":
            assert not s.mask.any()
            continue
        a, b = s.mask > 0, want.mask > 0
        iou = (a & b).sum() / (a | b).sum()
        # VOC keeps only the box of a disc (its area is 4/pi of the disc's), the others the outline
        assert iou > (0.7 if layout == "voc" else 0.85), (s.sample.image.name, iou)
        assert set(np.unique(s.mask[a])) == {ds.classes.index(want.source_class)}
    counts = class_counts(loaded, ds.classes)
    assert counts["good"]["images"] == 4 and counts["dark"]["images"] == 4 and counts["line"]["images"] == 4
    assert counts["dark"]["pixels"] > 0


def test_the_torch_dataset_reads_a_detected_layout_without_dataset_yaml(tmp_path: Path) -> None:
    root = write_labelme(tmp_path / "lm")
    config = read_dataset_config(root)
    assert config["layout"] == "labelme" and config["classes"] == ["good", "dark", "line"]
    ds = SegmentationDataset.from_folder(root, size=32)
    assert len(ds) == 12 and ds.classes == ("good", "dark", "line")
    assert ds.class_pixel_counts()[1:].min() > 0


def test_merge_maps_every_defect_class_to_one(tmp_path: Path) -> None:
    ds = open_dataset(write_voc(tmp_path / "voc"), merge="defect")
    loaded = ds.load()
    assert ds.classes == ("good", "defect")
    assert {int(v) for s in loaded for v in np.unique(s.mask)} == {0, 1}
    assert {s.source_class for s in loaded} == {"good", "dark", "line"}


def test_yolo_sides_and_boxes(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "y", sides=True)
    (root / "labels" / "train" / "part_0001.txt").write_text("1 0.5 0.5 0.25 0.125\n")  # a box, class line
    ds = open_dataset(root)
    loaded = {s.sample.image.stem: s for s in ds.load()}
    assert {s.split for s in loaded.values()} == {"train", "val"}
    assert loaded["part_0000"].split == "val" and loaded["part_0001"].split == "train"
    box = loaded["part_0001"].mask
    ys, xs = np.nonzero(box)
    assert set(np.unique(box[box > 0])) == {2}
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (24, 40, 28, 36)


def test_voc_imagesets_give_the_split(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "voc")
    main = root / "ImageSets" / "Main"
    main.joinpath("train.txt").write_text("\n".join(f"part_{i:04d}" for i in range(8)) + "\n")
    main.joinpath("test.txt").write_text("\n".join(f"part_{i:04d}" for i in range(8, 12)) + "\n")
    sides = {s.sample.image.stem: s.split for s in open_dataset(root).load()}
    assert sides["part_0000"] == "train" and sides["part_0011"] == "test"


# -- bad labels: clipped, reported by file name, skipped; never the whole dataset ------------------------


def test_labels_outside_the_image_are_clipped_and_reported_by_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    y = write_yolo(tmp_path / "y")
    (y / "labels" / "part_0001.txt").write_text("0 0.9 0.9 1.3 0.9 1.3 1.2 0.9 1.2\n")
    lm = write_labelme(tmp_path / "lm")
    shape = {"label": "dark", "points": [[-10, -10], [20, -5], [20, 20], [-4, 20]], "shape_type": "polygon"}
    (lm / "part_0001.json").write_text(labelme_json("part_0001", SIZE, [shape]))
    voc = write_voc(tmp_path / "voc")
    (voc / "Annotations" / "part_0001.xml").write_text(voc_xml("part_0001", SIZE, [("dark", 50, 50, 90, 70)]))

    caplog.set_level(logging.WARNING)
    for root, label in (
        (y, "labels/part_0001.txt"),
        (lm, "part_0001.json"),
        (voc, "Annotations/part_0001.xml"),
    ):
        ds = open_dataset(root)
        loaded = {s.sample.image.stem: s for s in ds.load()}
        assert len(loaded) == 12  # kept, clipped
        mask = loaded["part_0001"].mask
        assert mask.any() and mask.shape == (SIZE, SIZE)
        assert ds.problems == [
            (str(root / label), f"label points outside the {SIZE}x{SIZE} (WxH) image were clipped")
        ]
    assert "part_0001.json: label points outside" in caplog.text
    # the clipped polygon covers the image corner it reached into
    lm_mask = open_dataset(lm).load()[1].mask
    assert lm_mask[0, 0] == 1 and lm_mask[19, 19] == 1 and lm_mask[30, 30] == 0


@pytest.mark.parametrize(
    ("layout", "label", "text", "reason"),
    [
        ("yolo_seg", "labels/part_0001.txt", "0 0.1 zero 0.3\n", r"line 1: expected '<class> x1 y1"),
        ("yolo_seg", "labels/part_0002.txt", "1 0.1 0.2 0.3\n", r"line 1: 3 coordinates"),
        ("labelme", "part_0001.json", "{not json", r"not a labelme file"),
        (
            "labelme",
            "part_0002.json",
            json.dumps({"imagePath": "part_0002.png"}),
            r"not a labelme file: shapes",
        ),
        ("voc", "Annotations/part_0001.xml", "<annotation><object>", r"not valid XML"),
        (
            "voc",
            "Annotations/part_0002.xml",
            voc_xml("part_0002", SIZE, [("line", 1, 1, 5, 5)]).replace("<xmax>5</xmax>", "<xmax>five</xmax>"),
            r"object 0 \(line\): bounding box is not four numbers",
        ),
    ],
)
def test_a_malformed_label_file_is_reported_by_name_and_skipped(
    layout: str, label: str, text: str, reason: str, tmp_path: Path
) -> None:
    root = WRITERS[layout](tmp_path / layout)
    (root / label).write_text(text)
    ds = open_dataset(root)
    loaded = ds.load()
    assert len(loaded) == 11
    assert Path(label).stem not in {s.sample.image.stem for s in loaded}
    [(file, why)] = ds.problems
    assert file == str(root / label)
    assert "malformed label file" in why and f"image {Path(label).stem}.png skipped" in why
    assert __import__("re").search(reason, why), why


def test_a_class_unknown_to_the_label_map_is_a_clear_error(tmp_path: Path) -> None:
    lm = write_labelme(tmp_path / "lm")
    (lm / "dataset.yaml").write_text("layout: labelme\nclasses: [good, dark]\n")
    with pytest.raises(
        DatasetError,
        match=r"label files name classes that are not in the label map \['good', 'dark'\]: "
        r"'line' \(in part_0002\.json, part_0005\.json, part_0008\.json and 1 more\) — add them to 'classes'",
    ):
        open_dataset(lm).samples()
    y = write_yolo(tmp_path / "y")
    (y / "labels" / "part_0001.txt").write_text("7 0.1 0.1 0.2 0.1 0.2 0.2\n")
    with pytest.raises(DatasetError, match=r"'YOLO class id 7' \(in part_0001\.txt\)"):
        SegmentationDataset.from_folder(y, size=32)


def test_a_label_made_for_another_image_size_is_refused(tmp_path: Path) -> None:
    lm = write_labelme(tmp_path / "lm")
    shape = {"label": "dark", "points": [[1, 1], [9, 1], [9, 9]], "shape_type": "polygon"}
    (lm / "part_0001.json").write_text(labelme_json("part_0001", 128, [shape]))
    with pytest.raises(
        DatasetError,
        match=r"label .*part_0001\.json is for a 128x128 \(WxH\) image but its image part_0001\.png is 64x64",
    ):
        SegmentationDataset.from_folder(lm, size=32)
    ds = open_dataset(lm)  # the training/reporting path reports it and carries on
    assert len(ds.load()) == 11
    assert any("part_0001.json is for a 128x128" in why for _, why in ds.problems)


def test_a_corrupt_image_is_reported_by_name(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "voc")
    (root / "JPEGImages" / "part_0004.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = open_dataset(root)
    assert len(ds.load()) == 11
    assert ds.problems == [
        (
            str(root / "JPEGImages" / "part_0004.png"),
            "cannot decode image (corrupt, truncated or not an image)",
        )
    ]


def test_an_empty_or_unknown_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"dataset .*empty is empty or not recognised: no images"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"dataset folder not found: .*nowhere"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(
        DatasetError, match=r"layout 'coco' is not supported; known layouts: \['indexed_masks', 'labelme'"
    ):
        open_dataset(write_voc(tmp_path / "voc"), layout="coco")
    (tmp_path / "y" / "images").mkdir(parents=True)
    (tmp_path / "y" / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "y" / "images" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"YOLO layout without class names; add a data.yaml with 'names"):
        open_dataset(tmp_path / "y")


# -- groups and leaks -----------------------------------------------------------------------------------


def test_near_duplicates_and_views_share_a_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "parts"
    root.mkdir()
    paths = []
    for name in ("a", "b", "c"):
        img, _ = frame(rng, SIZE, 1)
        paths.append(root / f"{name}.png")
        cv2.imwrite(str(paths[-1]), img)
    # "a" shot again with a little sensor noise, and "c" from another side (a view suffix)
    shot = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE).astype(np.int16)
    again = shot + 6 + rng.integers(-1, 2, (SIZE, SIZE))  # brighter, and the sensor's noise
    cv2.imwrite(str(root / "a_again.png"), np.clip(again, 0, 255).astype(np.uint8))
    img, _ = frame(rng, SIZE, 2)
    cv2.imwrite(str(root / "part_0007_top.png"), img)
    img, _ = frame(rng, SIZE, 0)
    cv2.imwrite(str(root / "part_0007_side.png"), img)
    images = sorted(root.glob("*.png"))
    groups = assign_groups(images, root, {})
    by = {p.name: g for p, g in groups.items()}
    assert by["a.png"] == by["a_again.png"]
    assert by["part_0007_top.png"] == by["part_0007_side.png"]
    assert len({by["a.png"], by["b.png"], by["c.png"], by["part_0007_top.png"]}) == 4
    # a group pattern, when given, is the key
    pattern = assign_groups(images, root, {"group_pattern": r"^(part_\d+)"})
    assert pattern[root / "part_0007_top.png"] == "part_0007" and pattern[root / "b.png"] == "b"
    with pytest.raises(DatasetError, match=r"group_pattern '\(' is not a regular expression"):
        assign_groups(images, root, {"group_pattern": "("})


def test_a_split_that_puts_one_part_on_both_sides_is_flagged(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "y", sides=True)
    (root / "dataset.yaml").write_text(r"layout: yolo_seg" + "\ngroup_pattern: 'part_\\d\\d\\d'\n")
    ds = open_dataset(root)
    samples = ds.samples()
    assert {s.group for s in samples} == {"part_000", "part_001"}
    loaded = ds.load(None, samples)
    warnings_ = check_leaks(samples, {s.sample.image: s.split for s in loaded if s.split})
    assert warnings_ == [
        "1 group(s) have images on more than one side of the split (e.g. part_000): "
        "the split may leak one part into both sides"
    ]


def test_a_relative_dataset_path_and_windows_image_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_labelme(tmp_path / "lm")
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "sub" / "a.png"), frame(np.random.default_rng(5), SIZE, 0)[0])
    text = labelme_json(
        "a", SIZE, [{"label": "dark", "points": [[2, 2], [9, 2], [9, 9]], "shape_type": "polygon"}]
    )
    (root / "json").mkdir()
    (root / "json" / "a.json").write_text(text.replace('"a.png"', '"..\\\\sub\\\\a.png"'))
    (root / "json" / "b.json").write_text(text.replace('"a.png"', '"../../elsewhere.png"'))
    monkeypatch.chdir(tmp_path)
    ds = open_dataset("lm")
    loaded = {s.sample.image.as_posix(): s for s in ds.load()}
    assert "lm/sub/a.png" in loaded and loaded["lm/sub/a.png"].mask[5, 7] == 1
    assert len(loaded) == 13
    assert ds.problems == [
        (
            "lm/json/b.json",
            "label file without its image (imagePath missing, not found or outside the dataset); skipped",
        )
    ]


def test_indexed_masks_are_recognised_and_need_their_class_names(make_dataset: DatasetFactory) -> None:
    root = make_dataset(count=6)
    ds = open_dataset(root)  # its dataset.yaml names the layout and classes
    assert ds.layout == "indexed_masks" and ds.classes == ("good", "dark", "line")
    assert [s.source_class for s in ds.load()] == ["good", "dark", "line"] * 2
    (root / "dataset.yaml").unlink()
    assert detect_layout(root) == "indexed_masks"  # not a folder of plain images with a masks/ folder
    with pytest.raises(DatasetError, match=r"layout indexed_masks needs 'classes' in dataset.yaml"):
        open_dataset(root)
