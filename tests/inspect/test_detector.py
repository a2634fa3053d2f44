"""The detector runtime against real onnxruntime sessions of tiny models the tests build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from model_factory import part_image
from qcstation.inspect import Detector, FrameError, ModelCardError, ModelLoadError
from qcstation.inspect.card import CARD_KEY
from qcstation.inspect.overlay import draw_overlay


def test_finds_a_dark_blob_where_it_is(tiny_model: Path) -> None:
    # given a bright part with one dark 20x20 blob centred at (40, 80)
    det = Detector.from_path(tiny_model)
    image = part_image((128, 128), blobs=((40, 80, 10),))
    # when inspected
    insp = det.inspect(image)
    # then exactly one region is reported, in frame coordinates
    assert len(insp.regions) == 1
    r = insp.regions[0]
    assert r.class_name == "dark"
    x, y, w, h = r.bbox
    assert abs(x - 30) <= 2 and abs(y - 70) <= 2
    assert abs(w - 20) <= 2 and abs(h - 20) <= 2
    assert r.area_px == pytest.approx(400, rel=0.15)
    assert r.centroid == pytest.approx((40, 80), abs=2)
    assert r.score > 0.99
    assert insp.image_score == pytest.approx(r.score)
    assert insp.class_scores["dark"] == pytest.approx(r.score)
    assert set(insp.timings_ms) == {"preprocess", "infer", "postprocess"}
    assert insp.model.sha256 == det.info.sha256
    assert len(det.info.sha256) == 64


def test_clean_part_has_no_region(tiny_model: Path) -> None:
    insp = Detector.from_path(tiny_model).inspect(part_image())
    assert insp.regions == ()
    assert insp.image_score < 0.01


def test_area_in_mm2_uses_scale(tiny_model: Path) -> None:
    insp = Detector.from_path(tiny_model).inspect(part_image(blobs=((60, 60, 10),)), mm_per_px=0.1)
    r = insp.regions[0]
    assert r.area_mm2 == pytest.approx(r.area_px * 0.01)


@pytest.mark.parametrize(
    ("image", "what"),
    [
        (part_image().astype(np.uint16) * 257, "16-bit gray"),
        (cv2.cvtColor(part_image(), cv2.COLOR_GRAY2BGR), "8-bit BGR"),
        (cv2.cvtColor(part_image(), cv2.COLOR_GRAY2BGRA), "8-bit BGRA (alpha dropped)"),
        (part_image()[:, :, np.newaxis], "HxWx1"),
    ],
)
def test_frame_formats_are_normalised_alike(tiny_model: Path, image: np.ndarray, what: str) -> None:
    # given the same scene in different pixel formats, with a blob drawn in each
    det = Detector.from_path(tiny_model)
    blob = image.copy()
    blob[20:40, 20:40] = 0
    # then they all find the same one region
    insp = det.inspect(blob)
    assert len(insp.regions) == 1, what
    assert insp.regions[0].bbox == pytest.approx((20, 20, 20, 20), abs=2), what


def test_colour_model_takes_gray_frames(make_model) -> None:  # type: ignore[no-untyped-def]
    det = Detector.from_path(make_model(channels=3))
    insp = det.inspect(part_image(blobs=((30, 30, 8),)))
    assert len(insp.regions) == 1


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((4, 4), np.uint8), "at least 8x8"),
        (np.zeros((32, 32), np.float32), "uint8 or uint16"),
        (np.zeros((32, 32, 2), np.uint8), "C in 1, 3, 4"),
        (np.zeros((32, 32, 3, 1), np.uint8), "HxW or HxWxC"),
    ],
)
def test_bad_frames_are_refused_with_a_reason(tiny_model: Path, image: np.ndarray, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        Detector.from_path(tiny_model).inspect(image)


def test_roi_and_ignore_restrict_what_is_inspected(tiny_model: Path) -> None:
    det = Detector.from_path(tiny_model)
    image = part_image((128, 128), blobs=((20, 20, 8), (100, 100, 8)))
    left_top = [[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]]
    # ROI covering the top-left quarter sees only the first blob
    roi = det.inspect(image, roi=left_top)
    assert [r.centroid[0] < 64 for r in roi.regions] == [True]
    # ignoring the same quarter sees only the second
    ign = det.inspect(image, ignore=left_top)
    assert [r.centroid[0] > 64 for r in ign.regions] == [True]
    assert ign.class_scores["dark"] > 0.99


def test_thresholds_come_from_card_and_can_be_overridden(make_model) -> None:  # type: ignore[no-untyped-def]
    det = Detector.from_path(make_model(card_overrides={"thresholds": {"dark": 0.8}}))
    assert det.thresholds() == {"dark": 0.8}
    assert det.thresholds({"dark": 0.3}) == {"dark": 0.3}
    with pytest.raises(ModelCardError, match="unknown class 'nope'"):
        det.thresholds({"nope": 0.3})


def test_tile_mode_stitches_native_resolution(make_model) -> None:  # type: ignore[no-untyped-def]
    # given a 32px tile model and a 100x150 frame with blobs near tile seams and the far corner
    det = Detector.from_path(make_model(size=32, mode="tile", overlap=8))
    image = part_image((100, 150), blobs=((24, 24, 4), (145, 95, 4), (70, 50, 6)))
    batch, _origins, padded = det.tiles(image)
    assert batch.shape[1:] == (1, 32, 32)
    assert padded == (100, 150)
    # then maps cover the whole frame at native size and every blob is found once
    probs, _, _ = det.predict(image)
    assert probs.shape == (2, 100, 150)
    insp = det.inspect(image)
    cents = sorted((round(r.centroid[0]), round(r.centroid[1])) for r in insp.regions)
    assert len(cents) == 3
    assert cents[0] == pytest.approx((24, 24), abs=2)


def test_tile_chunks_give_the_same_maps_as_one_batch(make_model) -> None:  # type: ignore[no-untyped-def]
    # given the same tile model run one tile per session.run, in chunks of 5, and as one batch
    path = make_model(size=32, mode="tile", overlap=8, image_head=True)
    image = part_image((100, 150), blobs=((24, 24, 4), (145, 95, 4)))
    results = [Detector.from_path(path, tile_batch=n).predict(image)[:2] for n in (1, 5, 1000)]
    # then the stitched maps and the image head agree to float rounding
    for probs, head in results[1:]:
        np.testing.assert_allclose(probs, results[0][0], atol=1e-6)
        assert head is not None and results[0][1] is not None
        np.testing.assert_allclose(head, results[0][1], atol=1e-6)
    with pytest.raises(ValueError, match="tile_batch >= 1"):
        Detector.from_path(path, tile_batch=0)


def test_tile_mode_pads_a_frame_smaller_than_a_tile(make_model) -> None:  # type: ignore[no-untyped-def]
    det = Detector.from_path(make_model(size=32, mode="tile", overlap=4))
    probs, _, _ = det.predict(part_image((20, 24)))
    assert probs.shape == (2, 20, 24)


@pytest.mark.parametrize(
    ("kw", "shape"),
    [({}, (128, 128)), ({"size": 32, "mode": "tile", "overlap": 8}, (100, 150))],
    ids=["resize", "tile"],
)
def test_prepare_run_finish_is_inspect_in_three_steps(make_model, kw, shape) -> None:  # type: ignore[no-untyped-def]
    # given a frame with two blobs (the station prepares, runs and finishes it on three threads)
    det = Detector.from_path(make_model(**kw))
    image = part_image(shape, blobs=((24, 24, 5), (70, 60, 6)))
    # when it is inspected in one call and in three steps
    whole = det.inspect(image)
    prepared = det.prepare(image)
    outputs = det.run(prepared)
    steps = det.finish(outputs)
    # then both give the same regions and scores, and the steps time themselves
    assert prepared.frame_shape == shape
    assert bool(prepared.origins) == (kw.get("mode") == "tile")
    assert [(r.class_name, r.bbox, r.area_px) for r in steps.regions] == [
        (r.class_name, r.bbox, r.area_px) for r in whole.regions
    ]
    assert len(steps.regions) == 2
    assert steps.image_score == pytest.approx(whole.image_score)
    assert steps.timings_ms["preprocess"] == prepared.ms and steps.timings_ms["infer"] == outputs.ms


def test_prepare_refuses_a_bad_frame_before_the_model_runs(tiny_model: Path) -> None:
    det = Detector.from_path(tiny_model)
    with pytest.raises(FrameError, match="expected a numpy array"):
        det.prepare(b"not an image")  # type: ignore[arg-type]
    with pytest.raises(FrameError):
        det.prepare(np.zeros((4, 4, 2), np.uint8))


def test_image_head_output_is_used(make_model) -> None:  # type: ignore[no-untyped-def]
    det = Detector.from_path(make_model(image_head=True))
    insp = det.inspect(part_image(blobs=((30, 30, 5),)))
    assert insp.image_score > 0.99


def test_overlay_draws_on_a_copy(tiny_model: Path) -> None:
    det = Detector.from_path(tiny_model)
    image = part_image(blobs=((40, 40, 10),))
    out = draw_overlay(image, det.inspect(image))
    assert out.shape == (128, 128, 3)
    assert out.dtype == np.uint8
    assert not np.array_equal(out[:, :, 0], out[:, :, 2])  # coloured marks were drawn
    assert image.max() == 220  # the frame itself is untouched


# -- a broken model never starts ----------------------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model file not found: .*nope\.onnx"):
        Detector.from_path(tmp_path / "nope.onnx")


def test_empty_model_file(tmp_path: Path) -> None:
    (tmp_path / "e.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        Detector.from_path(tmp_path / "e.onnx")


def test_corrupt_model_file(tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    tiny_model.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        Detector.from_path(tiny_model)


def test_model_without_card(tiny_model: Path) -> None:
    m = onnx.load(str(tiny_model))
    del m.metadata_props[:]
    onnx.save(m, str(tiny_model))
    with pytest.raises(ModelCardError, match="has no model card"):
        Detector.from_path(tiny_model)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"classes": ["good", "a", "b"], "thresholds": {}}, "classes 2 but the model card says 3"),
        (
            {
                "input": {
                    "name": "image",
                    "height": 32,
                    "width": 64,
                    "channels": 1,
                    "channel_order": "GRAY",
                    "mean": [0],
                    "std": [1],
                }
            },
            "height 64 but the model card says 32",
        ),
        (
            {
                "input": {
                    "name": "image",
                    "height": 64,
                    "width": 64,
                    "channels": 3,
                    "channel_order": "RGB",
                    "mean": [0, 0, 0],
                    "std": [1, 1, 1],
                }
            },
            "channels 1 but the model card says 3",
        ),
        (
            {
                "input": {
                    "name": "pixels",
                    "height": 64,
                    "width": 64,
                    "channels": 1,
                    "channel_order": "GRAY",
                    "mean": [0],
                    "std": [1],
                }
            },
            "names input 'pixels'",
        ),
        ({"output": {"name": "scores"}}, "names output 'scores'"),
        ({"schema_version": 99}, "schema_version 99 is not supported"),
        ({"thresholds": {"dark": 1.5}}, r"thresholds.dark': expected a number in \(0, 1\]"),
        ({"thresholds": {"ghost": 0.5}}, "thresholds.ghost"),
        ({"classes": ["good"]}, "at least 2"),
        ({"name": None}, "missing field 'name'"),
        ({"inference": {"mode": "tile", "tile_size": 32, "overlap": 0}}, "tile_size 32 differs"),
    ],
)
def test_card_that_contradicts_the_graph_is_refused(make_model, override, match) -> None:  # type: ignore[no-untyped-def]
    path = make_model(card_overrides=override)
    with pytest.raises(ModelCardError, match=match):
        Detector.from_path(path)


def test_card_that_is_not_json(tiny_model: Path) -> None:
    m = onnx.load(str(tiny_model))
    onnx.helper.set_model_props(m, {CARD_KEY: "{not json"})
    onnx.save(m, str(tiny_model))
    with pytest.raises(ModelCardError, match="not valid JSON"):
        Detector.from_path(tiny_model)


def test_card_round_trips(tiny_model: Path, card_of) -> None:  # type: ignore[no-untyped-def]
    card = card_of(tiny_model)
    again = type(card).from_json(card.to_json())
    assert again == card
    assert json.loads(card.to_json())["classes"] == ["good", "dark"]


def test_unavailable_provider_is_named(tiny_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="TensorrtExecutionProvider"):
        Detector.from_path(tiny_model, providers=["TensorrtExecutionProvider"])


def test_thread_count_is_configurable(tiny_model: Path) -> None:
    det = Detector.from_path(tiny_model, intra_op_threads=1, inter_op_threads=1)
    assert det.inspect(part_image()).regions == ()


def test_runtime_never_imports_torch_or_the_station() -> None:
    code = (
        "import sys, qcstation.inspect, qcstation.inspect.detector, qcstation.inspect.overlay;"
        "bad=[m for m in ('torch','torchvision','qcstation.station','qcstation.training')"
        " if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
