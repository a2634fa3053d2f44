"""``qcstation bench`` in quick mode on a tiny model: the table's structure, and every figure positive and
finite. The figures themselves are not asserted against targets here: a test machine is not the line."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from model_factory import part_image
from qcstation.inspect.detector import Detector
from qcstation.station import bench
from qcstation.station.bench import BenchConfig


@pytest.fixture
def setup(tiny_model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A recipe for the tiny model and a folder of six part images (two with a dark blob)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        blobs = ((40, 60, 10),) if i % 3 == 0 else ()
        cv2.imwrite(str(images / f"part_{i:04d}.png"), part_image((96, 96), blobs=blobs))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "product": "widget",
                "model": str(tiny_model),
                "classes": {"dark": {"min_area_px": 20}},
                "images": {"keep_pass_every": 0},
            }
        )
    )
    return recipe, images


def test_auroc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(40), 1)  # rounded: plenty of ties
    labels = rng.random(40) < 0.4
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in scores[labels] for n in scores[~labels]]
    assert bench.auroc(scores.tolist(), labels.tolist()) == pytest.approx(float(np.mean(pairs)))
    assert bench.auroc([0.1, 0.9], [False, True]) == 1.0
    with pytest.raises(ValueError, match="both"):
        bench.auroc([0.1, 0.2], [True, True])


def test_quick_bench_fills_every_row_with_finite_positive_figures(setup: tuple[Path, Path]) -> None:
    recipe, images = setup
    # when the quick bench runs on the tiny model
    report = bench.run_bench(BenchConfig.quick(recipe, images))
    # then every measurement is there, positive and finite
    t = report.throughput
    assert t is not None
    assert t.frames == 24
    for v in (t.pipeline_fps, t.bare_fps, t.naive_fps, t.vs_bare, t.vs_naive):
        assert v > 0 and math.isfinite(v)
    assert {k: len(v) for k, v in t.cpu_ms.items()} == {"pipeline": 1, "naive": 1, "bare": 2}
    assert all(v > 0 and math.isfinite(v) for vs in t.cpu_ms.values() for v in vs)
    assert [lat.load for lat in report.latencies] == [0.5, 0.9]
    for lat in report.latencies:
        assert 0 < lat.p50_ms <= lat.p99_ms and math.isfinite(lat.p99_ms)
        assert lat.single_ms > 0 and lat.rate_hz == pytest.approx(lat.load * t.bare_fps)
        # the tail is broken down by the stage a part spent it in
        assert set(lat.stage_p99_ms) == {"preprocess", "infer", "postprocess", "decide", "commit"}
        assert all(0 <= v <= lat.p99_ms * 1.01 for v in lat.stage_p99_ms.values())
    assert report.tiles is not None
    assert report.tiles.frame_shape == (1024, 1024) and report.tiles.tiles > 1
    assert report.tiles.station_ms > 0 and report.tiles.predict_ms > 0 and report.tiles.bare_ms > 0
    sm = report.softmax
    assert sm is not None
    assert sm.shipped_fps > 0 and sm.rewritten_fps > 0 and sm.max_abs_diff < 1e-5
    q = report.int8
    assert q is not None
    assert q.eval_images == 24 and 0 < q.eval_defective < 24
    assert 0.0 <= q.auroc_fp32 <= 1.0 and 0.0 <= q.auroc_int8 <= 1.0
    assert q.fp32_fps > 0 and q.int8_fps > 0
    c = report.cold
    assert c is not None
    assert c.station_s > 0 and c.bare_s > 0
    assert c.bare_rss_mb > 0 and c.station_rss_mb > 0
    assert bench.finite(report)
    # and the table has one row per figure, with the load average above it
    rows = bench.rows(report)
    assert len(rows) == 12
    assert any(r.figure.startswith("ceiling vs naive") for r in rows)
    assert all(r.target for r in rows)
    text = bench.render(report)
    assert "load average" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
    assert all(line.count("|") == 7 for line in table)


def test_throughput_measures_the_bare_model_on_every_core_beside_the_stations_threads(
    setup: tuple[Path, Path], tiny_model: Path
) -> None:
    recipe, images = setup
    det = Detector.from_path(tiny_model, intra_op_threads=1)
    wide = Detector.from_path(tiny_model, intra_op_threads=2)
    # when the throughput is measured with a second, all-cores detector for the bare loop
    t = bench.measure_throughput(det, recipe, images, frames=12, repeats=2, all_cores=wide)
    # then that bare loop ran alternating with the others (before, between and after the station runs)
    assert len(t.runs["bare_all_cores"]) == len(t.runs["bare"]) == 3
    assert len(t.runs["pipeline"]) == len(t.ratios["vs_bare_all_cores"]) == 2
    assert t.bare_all_cores_fps is not None and t.bare_all_cores_fps > 0
    paired = [t.runs["pipeline"][i] / np.mean(t.runs["bare_all_cores"][i : i + 2]) for i in range(2)]
    assert t.vs_bare_all_cores == pytest.approx(float(np.median(paired)))
    # and the table shows it as its own row against the same target
    report = bench.Report(model="tiny", threads=1, repeats=2, loadavg_start=(0.0, 0.0, 0.0))
    report.throughput = t
    names = [r.figure for r in bench.rows(report)]
    assert any("all" in n and "cores" in n for n in names)


def test_bare_loop_with_workers_runs_every_frame_once_on_as_many_threads(tiny_model: Path) -> None:
    import threading

    det = Detector.from_path(tiny_model, intra_op_threads=1)
    real = det.session
    seen: list[tuple[str, int]] = []

    class Counting:
        def run(self, outs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            (x,) = feed.values()
            seen.append((threading.current_thread().name, int(x[0, 0, 0, 0])))
            return real.run(outs, feed)

    det.session = Counting()  # type: ignore[assignment]
    shape = (1, det.card.input.channels, det.card.input.height, det.card.input.width)
    tensors = [np.full(shape, i, np.float32) for i in range(10)]
    # when 10 frames go through the bare loop as three workers
    fps = bench._bare_loop(det, tensors, 10, workers=3)
    # then every frame ran exactly once, from three threads, and the rate is finite
    assert sorted(v for _, v in seen) == list(range(10))
    assert len({t for t, _ in seen}) == 3
    assert fps > 0 and math.isfinite(fps)


def test_throughput_with_workers_runs_the_station_and_its_bare_baseline_with_them(
    setup: tuple[Path, Path], tiny_model: Path
) -> None:
    recipe, images = setup
    det = Detector.from_path(tiny_model, intra_op_threads=1)
    t = bench.measure_throughput(det, recipe, images, frames=12, repeats=1, workers=2)
    assert t.workers == 2 and t.pipeline_fps > 0 and t.bare_fps > 0
    report = bench.Report(model="tiny", threads=1, repeats=1, workers=2, loadavg_start=(0.0, 0.0, 0.0))
    report.throughput = t
    assert "2 loops at once" in bench.rows(report)[0].baseline
    assert "inference workers 2" in bench.render(report)


def test_unique_frames_differ_in_bytes_and_decode_to_the_original_pixels(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    gray = part_image((64, 80), blobs=((20, 30, 6),))
    cv2.imwrite(str(src / "a.png"), gray)
    cv2.imwrite(str(src / "b.png"), gray.astype(np.uint16) * 257)  # 16-bit
    cv2.imwrite(str(src / "c.jpg"), gray)
    cv2.imwrite(str(src / "d.bmp"), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    originals = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in bench.image_files(src)]
    # when nine frames are made from four images
    out = bench.unique_frames(src, 9, tmp_path / "out")
    files = bench.image_files(out)
    # then every frame has bytes of its own
    assert len(files) == 9
    assert len({f.read_bytes() for f in files}) == 9
    # and decodes to the pixels of the image it came from (the BMP as a PNG, JPEG as JPEG)
    for i, f in enumerate(files):
        expected = originals[i % 4]
        got = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert got is not None and got.dtype == expected.dtype
        assert np.array_equal(got, expected)
    assert [f.suffix for f in files[:4]] == [".png", ".png", ".jpg", ".png"]


def test_bench_station_runs_archive_every_kept_frame_as_a_new_image(
    setup: tuple[Path, Path], tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, images = setup
    refs: list[str] = []
    put = bench.ImageArchive.put

    def counting(self: bench.ImageArchive, data: bytes, ext: str) -> str:
        ref = put(self, data, ext)
        refs.append(ref)
        return ref

    monkeypatch.setattr(bench.ImageArchive, "put", counting)
    det = Detector.from_path(tiny_model, intra_op_threads=1)
    # when the bench's station replays six images (two defective) as 18 frames
    bench._station_run(det, recipe, images, 18)
    # then each archived frame was a new image, as a camera's frames are, not the same six files again
    assert len(refs) >= 6
    assert len(set(refs)) == len(refs)


def test_the_ceiling_vs_naive_is_cores_times_the_naive_time_over_the_stations_cpu_per_part() -> None:
    # a naive loop at 50 fps (20 ms a part) and a station that burns 16 ms of CPU a part on 2 cores:
    # at best 2000 / 16 = 125 parts/s, 2.5 x the naive loop
    runs = {"pipeline": [100.0], "naive": [50.0], "bare": [150.0]}
    cpu = {"pipeline": [15.0, 16.0, 17.0], "naive": [14.0], "bare": [12.0]}
    t = bench.Throughput(200, 100.0, 150.0, 50.0, runs, {}, None, 2, cpu, 2)
    assert t.cpu_ceiling_vs_naive == pytest.approx(2.5)
    assert bench.Throughput(200, 100.0, 150.0, 50.0, runs, {}).cpu_ceiling_vs_naive is None


def test_bench_station_runs_use_an_archive_in_service_unless_asked_for_a_fresh_one(
    setup: tuple[Path, Path], tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, images = setup
    created: list[Path] = []
    make_dirs = bench.ImageArchive._make_dirs

    def recording(self: bench.ImageArchive, directory: Path) -> None:
        if not directory.is_dir():
            created.append(directory)
        make_dirs(self, directory)

    monkeypatch.setattr(bench.ImageArchive, "_make_dirs", recording)
    det = Detector.from_path(tiny_model, intra_op_threads=1)
    # when the bench's station archives its frames into an archive in service
    bench._station_run(det, recipe, images, 12)
    # then every shard folder was there before the station stored an image in it
    assert created == []
    # and asked for a new archive, the station creates the folders itself, as a new station does
    bench._station_run(det, recipe, images, 12, fresh_archive=True)
    assert len(created) >= 4


def test_in_service_creates_the_shard_folder_of_every_frame(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(5):
        (frames / f"f{i}.png").write_bytes(f"frame {i}".encode())
    archive = bench.ImageArchive(tmp_path / "archive")
    # when an archive is put in service for these frames
    made = bench.in_service(archive, frames)
    # then the folder each frame's image will be stored in exists already
    assert made == 5
    for i in range(5):
        data = f"frame {i}".encode()
        assert archive.folder(hashlib.sha256(data).hexdigest()).is_dir()
        assert archive.path(archive.put(data, ".png")).parent == archive.folder(
            hashlib.sha256(data).hexdigest()
        )
    with pytest.raises(ValueError, match="64 lowercase hex"):
        archive.folder("../etc")
