"""The station's performance, each figure measured against its own baseline in the same process.

A shared 2-core machine gives no absolute number worth quoting: every figure here is a ratio against a
baseline measured in the same process, runs alternate (baseline, subject, baseline, …) so the noise of
other processes hits both, and medians are reported. ``qcstation bench`` runs :func:`run_bench` and prints
:func:`render`.

Figures (see docs/PERFORMANCE.md):

- throughput: the whole station (folder → decision → commit to a real SQLite store and an image archive in
  service, :func:`in_service`; each frame with bytes of its own as a camera's are: :func:`unique_frames`)
  vs a bare
  ``session.run`` loop on the same frames, pre-decoded and preprocessed, vs the naive sequential loop a user
  would write (read, decode, inspect, insert one row, commit, repeat);
- latency: capture → commit p50/p99 with the source paced at 50 % and 90 % of the bare model's rate, vs the
  model's single-frame latency (median ``session.run`` of one frame);
- tile mode on large frames: a station run (and one ``Detector.predict``) vs ``session.run`` on the same
  tiles as one batch;
- INT8 vs FP32: speed of ``session.run`` and image-level AUROC on a synthetic evaluation set;
- cold start and peak memory of ``qcstation run`` in a subprocess vs a bare process that loads the model
  with onnxruntime and runs one frame.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sqlite3
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from qcstation.inspect import metrics
from qcstation.inspect.card import CARD_KEY
from qcstation.inspect.detector import Detector
from qcstation.inspect.types import Frame
from qcstation.station.archive import ImageArchive
from qcstation.station.pipeline import Station
from qcstation.station.recipe import load_recipe
from qcstation.station.sources import IMAGE_EXTENSIONS, FolderSource
from qcstation.station.store import Store

EVAL_SEED = 424242
"""Seed of the synthetic evaluation set (not the demo images' 20261122, not the training seed 7301)."""


# -- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Frames per second of the station, the bare model and the naive loop (medians over repeats).

    The ratios are medians of per-repeat ratios: each station run against the mean of the bare runs just
    before and just after it, and against the naive run right after it, so slow drift of the machine's load
    cancels out.
    """

    frames: int
    pipeline_fps: float
    bare_fps: float
    naive_fps: float
    runs: dict[str, list[float]]
    ratios: dict[str, list[float]]
    all_cores: int | None = None
    workers: int = 1
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    """CPU time of the whole process (every thread) per frame, per run: pipeline, naive and bare."""
    cores: int = 1

    @property
    def cpu_ceiling_vs_naive(self) -> float | None:
        """The most the station could make of the naive loop here: cores × naive time / station CPU per part.

        With every core busy and nothing else running, the station commits ``cores / CPU per part`` parts a
        second; against the naive loop's rate that is its ceiling, whatever the threads do.
        """
        if not self.cpu_ms.get("pipeline"):
            return None
        return self.cores * (1e3 / self.naive_fps) / statistics.median(self.cpu_ms["pipeline"])

    @property
    def bare_all_cores_fps(self) -> float | None:
        """The bare loop with one onnxruntime thread per core (when the station runs fewer)."""
        return statistics.median(self.runs["bare_all_cores"]) if self.all_cores else None

    @property
    def vs_bare_all_cores(self) -> float | None:
        """Station throughput / bare loop on every core (median of paired ratios)."""
        return statistics.median(self.ratios["vs_bare_all_cores"]) if self.all_cores else None

    @property
    def vs_bare(self) -> float:
        """Station throughput / bare ``session.run`` throughput (median of paired ratios)."""
        return statistics.median(self.ratios["vs_bare"])

    @property
    def vs_naive(self) -> float:
        """Station throughput / naive loop throughput (median of paired ratios)."""
        return statistics.median(self.ratios["vs_naive"])


@dataclass(frozen=True)
class Latency:
    """Capture → commit latency at one paced load, vs the model's single-frame latency."""

    load: float
    rate_hz: float
    frames: int
    p50_ms: float
    p99_ms: float
    single_ms: float
    single_p99_ms: float
    runs: dict[str, list[float]]
    stage_p99_ms: dict[str, float] = field(default_factory=dict)
    """Per station stage (:attr:`~qcstation.station.pipeline.StationStats.stages_ms`), the median over the
    runs of its p99 duration: which stage the latency's tail comes from."""

    @property
    def p99_vs_single(self) -> float:
        """p99 capture → commit latency / single-frame ``session.run`` latency."""
        return self.p99_ms / self.single_ms


@dataclass(frozen=True)
class Tiles:
    """Tile mode on large frames: the station and ``Detector.predict`` vs the bare tiles as one batch.

    Attributes:
        station_ms: wall time per frame of a real station run in tile mode (read and decode the large
            file, tile, infer in chunks, stitch, judge, commit), stages overlapping.
        predict_ms: one ``Detector.predict`` call, every step on one thread (a frame's own latency).
        bare_ms: one ``session.run`` on all the frame's tiles as one batch.
    """

    frame_shape: tuple[int, int]
    tiles: int
    station_ms: float
    predict_ms: float
    bare_ms: float
    runs: dict[str, list[float]]

    @property
    def ratio(self) -> float:
        """Station time per frame / bare batched time (1.0 = no overhead)."""
        return self.station_ms / self.bare_ms

    @property
    def predict_ratio(self) -> float:
        """One-thread ``predict`` time / bare batched time."""
        return self.predict_ms / self.bare_ms


@dataclass(frozen=True)
class SoftmaxRewrite:
    """The shipped graph vs the same graph with its Softmax written out as Exp / ReduceSum / Div."""

    shipped_fps: float
    rewritten_fps: float
    max_abs_diff: float
    runs: dict[str, list[float]]

    @property
    def speedup(self) -> float:
        """Rewritten throughput / shipped throughput."""
        return self.rewritten_fps / self.shipped_fps


@dataclass(frozen=True)
class Int8:
    """The INT8 (QDQ) model vs the FP32 model: speed and image-level AUROC."""

    fp32_fps: float
    int8_fps: float
    auroc_fp32: float
    auroc_int8: float
    eval_images: int
    eval_defective: int
    calibration_frames: int
    runs: dict[str, list[float]]

    @property
    def speedup(self) -> float:
        """INT8 throughput / FP32 throughput."""
        return self.int8_fps / self.fp32_fps

    @property
    def auroc_change(self) -> float:
        """AUROC(INT8) - AUROC(FP32); negative is a loss."""
        return self.auroc_int8 - self.auroc_fp32


@dataclass(frozen=True)
class ColdStart:
    """``qcstation run`` in a fresh process vs a bare process loading the model and running one frame."""

    station_s: float
    bare_s: float
    station_rss_mb: float
    bare_rss_mb: float
    memory_frames: int
    runs: dict[str, list[float]]

    @property
    def ratio(self) -> float:
        """Station cold start / bare cold start."""
        return self.station_s / self.bare_s


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure, its baseline, their ratio and the issue's target for it."""

    figure: str
    value: str
    baseline: str
    ratio: float
    target: str
    met: bool | None


@dataclass
class Report:
    """Everything one ``qcstation bench`` measured."""

    model: str
    threads: int | None
    repeats: int
    loadavg_start: tuple[float, float, float]
    loadavg_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    workers: int = 1
    fresh_archive: bool = False
    throughput: Throughput | None = None
    latencies: list[Latency] = field(default_factory=list)
    tiles: Tiles | None = None
    softmax: SoftmaxRewrite | None = None
    int8: Int8 | None = None
    cold: ColdStart | None = None
    seconds: float = 0.0


# -- helpers --------------------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image(path: Path) -> np.ndarray:
    """Decode an image file as it is (16-bit and colour pass through)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return image


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    return float(np.percentile(np.asarray(values, np.float64), q))


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (:func:`qcstation.inspect.metrics.auroc`), refusing a one-class set.

    Raises:
        ValueError: the labels are all of one kind, or lengths differ.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    value = metrics.auroc(np.asarray(scores, np.float64), np.asarray(labels, bool))
    if np.isnan(value):
        raise ValueError("AUROC needs both defective and good images")
    return value


def _bare_loop(det: Detector, tensors: Sequence[np.ndarray], frames: int, workers: int = 1) -> float:
    """Frames per second of ``session.run`` alone over ``frames`` ready tensors.

    With ``workers`` above one, that many threads share the frames and run at once (the station's
    configuration with as many inference workers).
    """
    feed, outs = det.card.input.name, [det.card.output.name]

    def loop(k: int) -> None:
        for i in range(k, frames, workers):
            det.session.run(outs, {feed: tensors[i % len(tensors)]})

    t0 = time.perf_counter()
    if workers == 1:
        loop(0)
    else:
        threads = [threading.Thread(target=loop, args=(k,)) for k in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return frames / (time.perf_counter() - t0)


def _single_ms(det: Detector, tensor: np.ndarray, n: int) -> list[float]:
    feed, outs = det.card.input.name, [det.card.output.name]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        det.session.run(outs, {feed: tensor})
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _marked(data: bytes, suffix: str, mark: bytes) -> tuple[bytes, str]:
    """``data`` with ``mark`` in a block decoders skip: (bytes, extension). PNG and JPEG keep their format."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        body = b"tEXt" + b"qcstation-frame\x00" + mark
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:33] + chunk + data[33:], ".png"  # after the signature (8 bytes) and IHDR (25)
    if data.startswith(b"\xff\xd8"):
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(mark) + 2) + mark + data[2:], suffix  # COM
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode a {suffix} image for the bench")
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot re-encode a {suffix} image of shape {image.shape} as PNG for the bench")
    return _marked(buf.tobytes(), ".png", mark)


def unique_frames(images: Path, count: int, dst: Path, *, tag: str = "") -> Path:
    """Write ``count`` frames into ``dst``: the folder's images in turn, each with bytes of its own.

    A camera never sends the same bytes twice; a folder replayed in a loop does, and the station's
    content-addressed archive stores repeated bytes once, so replayed frames would skip the file writes and
    fsyncs a line pays for every kept image. Each copy carries its frame number in a block decoders skip (a
    PNG tEXt chunk, a JPEG comment), so its pixels, and the verdict, are the original's; other formats are
    re-encoded as PNG first. ``tag`` goes into every mark, so that frames made for another run over the same
    archive differ from these too.

    Returns:
        ``dst``.
    """
    files = image_files(images)
    if not files:
        raise ValueError(f"no images in {images}")
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = files[i % len(files)]
        data, ext = _marked(src.read_bytes(), src.suffix.lower(), f"{tag}{i}".encode())
        (dst / f"f{i:06d}_{src.stem}{ext}").write_bytes(data)
    return dst


class _Counted(FolderSource):
    """A looping folder source that ends after ``limit`` frames."""

    def __init__(self, path: Path, limit: int, rate_hz: float | None = None) -> None:
        super().__init__(path, loop=True, rate_hz=rate_hz)
        self.limit = limit
        self.count = 0

    def read(self) -> Frame | None:
        """The next frame, or None after ``limit`` frames."""
        if self.count >= self.limit:
            return None
        self.count += 1
        return super().read()


class StationRun(NamedTuple):
    """One bench run of a real station."""

    fps: float
    latencies_ms: list[float]
    cpu_ms: float
    """CPU time of the whole process (every thread) per committed part during the run."""
    stages_ms: dict[str, list[float]]
    """Each stage's duration per part (the station's own timings)."""


def in_service(archive: ImageArchive, frames: Path) -> int:
    """Create the shard folders the images of ``frames`` will be archived in; returns how many.

    A station in service has them: its archive spreads images over 65,536 folders (two levels of 256), and
    once most exist a kept image costs the fsyncs of its file and folder, where a new archive also creates
    and fsyncs one or two folders for nearly every image in its first hours. The bench measures the station
    a line lives with (``fresh_archive`` measures the new one).
    """
    made = set()
    for path in frames.iterdir():
        folder = archive.folder(hashlib.sha256(path.read_bytes()).hexdigest())
        folder.mkdir(parents=True, exist_ok=True)
        made.add(folder)
    return len(made)


def _station_run(
    det: Detector,
    recipe: Path,
    images: Path,
    frames: int,
    rate_hz: float | None = None,
    workers: int = 1,
    *,
    fresh_archive: bool = False,
) -> StationRun:
    """Run a real station (SQLite store and archive in a temp dir) over ``frames`` frames.

    The frames are :func:`unique_frames` of ``images``, written before the run starts. The archive is one in
    service (:func:`in_service`) unless ``fresh_archive``.
    """
    loaded = load_recipe(recipe)
    with tempfile.TemporaryDirectory(prefix="qc-bench-") as tmp:
        frames_dir = unique_frames(images, frames, Path(tmp) / "frames")
        archive = ImageArchive(Path(tmp) / "images")
        if not fresh_archive:
            in_service(archive, frames_dir)
        store = Store.open(str(Path(tmp) / "bench.db"), "bench")
        try:
            st = Station(
                source=_Counted(frames_dir, frames, rate_hz),
                detector=det,
                recipe=loaded,
                store=store,
                archive=archive,
                batch_id="BENCH",
                inference_workers=workers,
            )
            cpu0 = time.process_time()
            summary = st.run()
            cpu = time.process_time() - cpu0
        finally:
            store.close()
    if summary.parts != frames:
        raise RuntimeError(f"the station recorded {summary.parts} of {frames} frames")
    stages = {k: list(v) for k, v in st.stats.stages_ms.items()}
    return StationRun(summary.rate, list(st.stats.latencies_ms), cpu * 1e3 / frames, stages)


def _naive_loop(det: Detector, files: Sequence[Path], frames: int, db: Path) -> tuple[float, float]:
    """What a user would write: read, decode, inspect, insert one row, commit; one frame at a time.

    Returns:
        (frames per second, ms of CPU per frame).
    """
    con = sqlite3.connect(db)
    try:
        con.execute(
            "CREATE TABLE IF NOT EXISTS inspections (id INTEGER PRIMARY KEY, file TEXT, at REAL, "
            "verdict TEXT, score REAL, regions TEXT)"
        )
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(frames):
            path = files[i % len(files)]
            insp = det.inspect(read_image(path))
            regions = json.dumps([(r.class_name, r.area_px) for r in insp.regions])
            con.execute(
                "INSERT INTO inspections (file, at, verdict, score, regions) VALUES (?, ?, ?, ?, ?)",
                (path.name, time.time(), "FAIL" if insp.regions else "PASS", insp.image_score, regions),
            )
            con.commit()
        return frames / (time.perf_counter() - t0), (time.process_time() - cpu0) * 1e3 / frames
    finally:
        con.close()


# -- the measurements -----------------------------------------------------------------------------------


def measure_throughput(
    det: Detector,
    recipe: Path,
    images: Path,
    *,
    frames: int,
    repeats: int,
    all_cores: Detector | None = None,
    workers: int = 1,
    fresh_archive: bool = False,
) -> Throughput:
    """Station vs bare ``session.run`` vs naive loop, alternating, ``repeats`` runs of ``frames`` each.

    ``all_cores``: the same model with one onnxruntime thread per core, when the station's detector runs
    fewer; its bare loop is measured beside the others (the model's limit on this machine).
    ``workers``: the station's inference workers; the bare loop runs as many at once. The naive loop is
    one frame at a time, whatever the station does. The process's CPU time per frame is kept for the
    station, the naive loop and the bare loop (:attr:`Throughput.cpu_ceiling_vs_naive`).
    """
    files = image_files(images)
    tensors = [det.bare_input(read_image(p)) for p in files]
    _bare_loop(det, tensors, min(frames, 20))  # warm-up
    bares = {"bare": det} | ({"bare_all_cores": all_cores} if all_cores is not None else {})
    runs: dict[str, list[float]] = {k: [] for k in [*bares, "pipeline", "naive"]}
    cpu: dict[str, list[float]] = {"pipeline": [], "naive": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="qc-bench-naive-") as tmp:
        for r in range(repeats + 1):  # bare(s), station, naive, bare(s), station, naive, …, bare(s)
            for name, d in bares.items():
                cpu0 = time.process_time()
                runs[name].append(_bare_loop(d, tensors, frames, workers if name == "bare" else 1))
                if name == "bare":
                    cpu["bare"].append((time.process_time() - cpu0) * 1e3 / frames)
            if r == repeats:
                break
            station = _station_run(det, recipe, images, frames, workers=workers, fresh_archive=fresh_archive)
            runs["pipeline"].append(station.fps)
            cpu["pipeline"].append(station.cpu_ms)
            fps, cpu_ms = _naive_loop(det, files, frames, Path(tmp) / f"naive{r}.db")
            runs["naive"].append(fps)
            cpu["naive"].append(cpu_ms)
    p, n = runs["pipeline"], runs["naive"]
    ratios = {f"vs_{k}": [p[i] / ((runs[k][i] + runs[k][i + 1]) / 2) for i in range(repeats)] for k in bares}
    ratios["vs_naive"] = [p[i] / n[i] for i in range(repeats)]
    med = {k: statistics.median(v) for k, v in runs.items()}
    n_cores = os.cpu_count() or 1
    cores = None if all_cores is None else n_cores
    return Throughput(
        frames, med["pipeline"], med["bare"], med["naive"], runs, ratios, cores, workers, cpu, n_cores
    )


def measure_latency(
    det: Detector,
    recipe: Path,
    images: Path,
    *,
    bare_fps: float,
    load: float,
    frames: int,
    repeats: int,
    single_n: int = 50,
    workers: int = 1,
    fresh_archive: bool = False,
) -> Latency:
    """Capture → commit p50/p99 with the source paced at ``load`` × ``bare_fps``, vs one ``session.run``.

    The single-frame latency is measured right before each paced run, in the same process.
    """
    tensor = det.bare_input(read_image(image_files(images)[0]))
    rate = load * bare_fps
    runs: dict[str, list[float]] = {"single_ms": [], "single_p99_ms": [], "p50_ms": [], "p99_ms": []}
    stage_p99s: dict[str, list[float]] = {}
    for _ in range(repeats):
        single = _single_ms(det, tensor, single_n)
        runs["single_ms"].append(statistics.median(single))
        runs["single_p99_ms"].append(percentile(single, 99))
        run = _station_run(
            det, recipe, images, frames, rate_hz=rate, workers=workers, fresh_archive=fresh_archive
        )
        runs["p50_ms"].append(percentile(run.latencies_ms, 50))
        runs["p99_ms"].append(percentile(run.latencies_ms, 99))
        for stage, ms in run.stages_ms.items():
            stage_p99s.setdefault(stage, []).append(percentile(ms, 99))
    med = {k: statistics.median(v) for k, v in runs.items()}
    stages = {k: statistics.median(v) for k, v in stage_p99s.items()}
    runs.update({f"{k}_p99_ms": v for k, v in stage_p99s.items()})  # every run, for the record
    return Latency(
        load,
        rate,
        frames,
        med["p50_ms"],
        med["p99_ms"],
        med["single_ms"],
        med["single_p99_ms"],
        runs,
        stages,
    )


def tile_variant(src: Path, dst: Path, overlap: int = 32) -> Path:
    """The same graph and weights with a card in tile mode (tile = the model's input size).

    Args:
        src: a model with a fixed square input size (e.g. the shipped 256x256 resize-mode model).
        dst: where to write the copy.
        overlap: tile overlap in pixels (reduced to under half the tile when the tile is small).

    Returns:
        ``dst``.
    """
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props[CARD_KEY])
    tile = int(card["input"]["height"])
    card["inference"] = {"mode": "tile", "tile_size": tile, "overlap": min(overlap, tile // 2 - 1)}
    props[CARD_KEY] = json.dumps(card, sort_keys=True)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def measure_tiles(
    model: Path,
    recipe: Path,
    image: np.ndarray,
    *,
    shape: tuple[int, int],
    repeats: int,
    frames: int = 4,
    threads: int | None = None,
) -> Tiles:
    """Tile mode at native resolution vs ``session.run`` on one frame's tiles as one batch, alternating.

    Args:
        model: a fixed-size model; a tile-mode copy of it is made in a temp dir.
        recipe: the recipe the station runs with (its classes must be the model's).
        image: a frame resized to ``shape`` (so the large frame has real part texture).
        shape: the large frame's (height, width), e.g. (2048, 2448).
        repeats: alternating runs of each.
        frames: large frames per station run (PNG files it reads and decodes like any folder source).
        threads: onnxruntime intra-op threads.
    """
    with tempfile.TemporaryDirectory(prefix="qc-bench-tile-") as tmp:
        det = Detector.from_path(tile_variant(model, Path(tmp) / "tile.onnx"), intra_op_threads=threads)
        frame = cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        folder = Path(tmp) / "frames"
        folder.mkdir()
        cv2.imwrite(str(folder / "large.png"), frame)
        batch = det.tiles(frame)[0]
        feed, outs = det.card.input.name, [det.card.output.name]
        det.session.run(outs, {feed: batch})  # warm-up at the batch size (arena growth)
        det.predict(frame)
        runs: dict[str, list[float]] = {"bare_ms": [], "station_ms": [], "predict_ms": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            det.session.run(outs, {feed: batch})
            runs["bare_ms"].append((time.perf_counter() - t0) * 1e3)
            runs["station_ms"].append(1e3 / _station_run(det, recipe, folder, frames).fps)
            t0 = time.perf_counter()
            det.predict(frame)
            runs["predict_ms"].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return Tiles(shape, int(batch.shape[0]), med["station_ms"], med["predict_ms"], med["bare_ms"], runs)


def decompose_softmax(src: Path, dst: Path) -> Path:
    """Write ``src`` with each Softmax node replaced by ``exp(x - max) / sum(exp(x - max))`` on its axis.

    Same weights, same card, same outputs (to float rounding). onnxruntime runs a Softmax over the channel
    axis of an N x C x H x W tensor as H*W tiny rows of C values; the element-wise form is one pass each.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    graph = model.graph
    nodes = []
    for k, node in enumerate(graph.node):
        if node.op_type != "Softmax":
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        x, y, p = node.input[0], node.output[0], f"softmax{k}_"
        graph.initializer.append(helper.make_tensor(p + "axes", TensorProto.INT64, [1], [axis]))
        if opset >= 18:
            rmax = helper.make_node("ReduceMax", [x, p + "axes"], [p + "max"], keepdims=1)
        else:
            rmax = helper.make_node("ReduceMax", [x], [p + "max"], axes=[axis], keepdims=1)
        nodes += [
            rmax,
            helper.make_node("Sub", [x, p + "max"], [p + "sub"]),
            helper.make_node("Exp", [p + "sub"], [p + "exp"]),
            helper.make_node("ReduceSum", [p + "exp", p + "axes"], [p + "sum"], keepdims=1),
            helper.make_node("Div", [p + "exp", p + "sum"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def measure_softmax(
    det: Detector, images: Path, *, frames: int, repeats: int, threads: int | None = None
) -> SoftmaxRewrite:
    """``session.run`` of the shipped graph vs the graph with Softmax written out, alternating."""
    with tempfile.TemporaryDirectory(prefix="qc-bench-softmax-") as tmp:
        alt = Detector.from_path(
            decompose_softmax(det.path, Path(tmp) / "softmax.onnx"), intra_op_threads=threads
        )
    tensors = [det.bare_input(read_image(p)) for p in image_files(images)[:20]]
    feed, outs = det.card.input.name, [det.card.output.name]
    diff = max(
        float(np.abs(det.session.run(outs, {feed: t})[0] - alt.session.run(outs, {feed: t})[0]).max())
        for t in tensors[:5]
    )
    runs: dict[str, list[float]] = {"shipped": [], "rewritten": []}
    for _ in range(repeats):
        runs["shipped"].append(_bare_loop(det, tensors, frames))
        runs["rewritten"].append(_bare_loop(alt, tensors, frames))
    return SoftmaxRewrite(
        statistics.median(runs["shipped"]), statistics.median(runs["rewritten"]), diff, runs
    )


def op_profile(model: Path, tensor: np.ndarray, runs: int = 30) -> dict[str, float]:
    """Share of onnxruntime kernel time per operator type over ``runs`` runs of one input (profiling on)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="qc-bench-prof-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(runs):
            sess.run(None, {name: tensor})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + float(e["dur"])
    total = sum(per_op.values()) or 1.0
    return {k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


def _labelled_eval_set(folder: Path, count: int, seed: int) -> list[tuple[Path, bool]]:
    from qcstation.synth import generate_dataset

    generate_dataset(folder, count, seed)
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as fh:
        return [(folder / row["file"], bool(row["defects"])) for row in csv.DictReader(fh)]


def measure_int8(
    det: Detector,
    calibration: Path,
    *,
    eval_count: int,
    frames: int,
    repeats: int,
    threads: int | None = None,
    seed: int = EVAL_SEED,
) -> Int8:
    """Quantize the detector's model (calibrated on ``calibration`` frames) and compare it with FP32.

    Speed: alternating bare ``session.run`` loops on the same tensors. Quality: image-level AUROC
    (``Inspection.image_score``) on ``eval_count`` synthetic images of seed ``seed``, labels from labels.csv.
    """
    from qcstation.inspect.quantize import quantize_model

    calib = [read_image(p) for p in image_files(calibration)]
    with tempfile.TemporaryDirectory(prefix="qc-bench-int8-") as tmp:
        q = quantize_model(det.path, Path(tmp) / "int8.onnx", calib, calibration_label=str(calibration))
        qdet = Detector.from_path(q.path, intra_op_threads=threads)
        labelled = _labelled_eval_set(Path(tmp) / "eval", eval_count, seed)
        images = [read_image(p) for p, _ in labelled]
    labels = [y for _, y in labelled]
    tensors = [det.bare_input(im) for im in images[:20]]
    _bare_loop(qdet, tensors, min(frames, 20))  # warm-up
    runs: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(repeats):
        runs["fp32"].append(_bare_loop(det, tensors, frames))
        runs["int8"].append(_bare_loop(qdet, tensors, frames))
    auc = {
        name: auroc([d.inspect(im).image_score for im in images], labels)
        for name, d in (("fp32", det), ("int8", qdet))
    }
    return Int8(
        fp32_fps=statistics.median(runs["fp32"]),
        int8_fps=statistics.median(runs["int8"]),
        auroc_fp32=auc["fp32"],
        auroc_int8=auc["int8"],
        eval_images=len(labels),
        eval_defective=sum(labels),
        calibration_frames=q.frames,
        runs=runs,
    )


def _spawn(argv: Sequence[str], log: Path) -> tuple[float, float]:
    """Run a process to its end: (wall seconds from spawn to exit, peak resident memory in MB).

    Peak memory is the child's VmHWM from /proc, polled every 10 ms until it exits. Not ``ru_maxrss``
    from ``wait4``: Linux hands a spawned child its parent's peak (the benchmark's own, after tile mode),
    so that figure would be the larger of the two processes, not the station's.

    Raises:
        RuntimeError: it exited with a non-zero status (its output's tail is in the message).
    """
    peak_kb = 0
    with log.open("wb") as fh:
        actions = [(os.POSIX_SPAWN_DUP2, fh.fileno(), 1), (os.POSIX_SPAWN_DUP2, fh.fileno(), 2)]
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], list(argv), dict(os.environ), file_actions=actions)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            peak_kb = max(peak_kb, _vm_hwm_kb(pid))
            time.sleep(0.01)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv[:4])} … failed:\n{tail}")
    return wall, peak_kb / 1024.0


def _vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a running process in KiB (0 once it is gone or not yet readable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


_BARE_PROCESS = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [1 if not isinstance(d, int) else d for d in i.shape]
s.run(None, {i.name: np.zeros(shape, np.float32)})
"""


def measure_cold_start(
    model: Path, recipe: Path, images: Path, *, repeats: int, memory_frames: int | None = None
) -> ColdStart:
    """``qcstation run --quiet`` on a one-image folder in a fresh process vs a bare onnxruntime process.

    Cold start is the subprocess's wall time from spawn to exit: an upper bound of process start → first
    committed decision (it also includes printing the summary and closing the store). Peak memory is the
    VmHWM (polled) of a station run over ``memory_frames`` frames of ``images`` (all of them by default; the
    folder is replayed in a loop when more are asked for); the bare baseline's is that of its one-frame run.
    """
    py = sys.executable
    runs: dict[str, list[float]] = {"station_s": [], "bare_s": [], "station_mb": [], "bare_mb": []}
    files = image_files(images)
    with tempfile.TemporaryDirectory(prefix="qc-bench-cold-") as tmp_s:
        tmp = Path(tmp_s)
        one = tmp / "one"
        one.mkdir()
        (one / files[0].name).write_bytes(files[0].read_bytes())

        def station(source: Path, data: str, extra: Sequence[str] = ()) -> list[str]:
            return [
                py,
                "-m",
                "qcstation.cli",
                "run",
                "--source",
                str(source),
                "--recipe",
                str(recipe),
                "--data-dir",
                str(tmp / data),
                "--quiet",
                *extra,
            ]

        for r in range(repeats):
            wall, mb = _spawn([py, "-c", _BARE_PROCESS, str(model)], tmp / "bare.log")
            runs["bare_s"].append(wall)
            runs["bare_mb"].append(mb)
            wall, _ = _spawn(station(one, f"cold{r}"), tmp / "station.log")
            runs["station_s"].append(wall)
        n = memory_frames or len(files)
        folder = images
        if n > len(files):
            folder = tmp / "many"
            folder.mkdir()
            for i in range(n):
                (folder / f"f{i:05d}{files[i % len(files)].suffix}").symlink_to(files[i % len(files)])
        _, mb = _spawn(station(folder, "memory"), tmp / "memory.log")
        runs["station_mb"].append(mb)
    return ColdStart(
        station_s=statistics.median(runs["station_s"]),
        bare_s=statistics.median(runs["bare_s"]),
        station_rss_mb=max(runs["station_mb"]),
        bare_rss_mb=max(runs["bare_mb"]),
        memory_frames=n,
        runs=runs,
    )


# -- the whole bench ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What ``qcstation bench`` measures and how much of it."""

    recipe: Path
    images: Path
    frames: int = 200
    repeats: int = 5
    latency_frames: int = 200
    loads: tuple[float, ...] = (0.5, 0.9)
    tile_shape: tuple[int, int] | None = (2048, 2448)
    tile_frames: int = 4
    eval_count: int = 200
    threads: int | None = None
    workers: int = 1
    fresh_archive: bool = False
    """Throughput and latency with a new, empty image archive, not one in service (:func:`in_service`)."""

    @classmethod
    def quick(cls, recipe: Path, images: Path, threads: int | None = None, workers: int = 1) -> BenchConfig:
        """Small enough for a test: a few frames, one repeat, a 1024x1024 tile frame, 24 eval images."""
        return cls(
            recipe,
            images,
            frames=24,
            repeats=1,
            latency_frames=24,
            tile_shape=(1024, 1024),
            tile_frames=2,
            eval_count=24,
            threads=threads,
            workers=workers,
        )


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda _m: None) -> Report:
    """Run every measurement of ``cfg`` in turn and return the report."""
    t_start = time.monotonic()
    loaded = load_recipe(cfg.recipe)
    det = Detector.from_path(loaded.model_path, intra_op_threads=cfg.threads)
    rep = Report(
        model=f"{det.info.name} {det.info.version} ({det.card.input.height}x{det.card.input.width} "
        f"{det.card.inference.mode}, {det.info.sha256[:12]})",
        threads=cfg.threads,
        repeats=cfg.repeats,
        workers=cfg.workers,
        fresh_archive=cfg.fresh_archive,
        loadavg_start=os.getloadavg(),
    )
    progress("throughput")
    cores = os.cpu_count() or 1
    all_cores = (
        Detector.from_path(loaded.model_path, intra_op_threads=cores)
        if cfg.threads is not None and cfg.threads < cores
        else None
    )
    rep.throughput = measure_throughput(
        det,
        cfg.recipe,
        cfg.images,
        frames=cfg.frames,
        repeats=cfg.repeats,
        all_cores=all_cores,
        workers=cfg.workers,
        fresh_archive=cfg.fresh_archive,
    )
    for load in cfg.loads:
        progress(f"latency at {load:.0%}")
        rep.latencies.append(
            measure_latency(
                det,
                cfg.recipe,
                cfg.images,
                bare_fps=rep.throughput.bare_fps,
                load=load,
                frames=cfg.latency_frames,
                repeats=cfg.repeats,
                workers=cfg.workers,
                fresh_archive=cfg.fresh_archive,
            )
        )
    if cfg.tile_shape is not None:
        progress("tile mode")
        first = read_image(image_files(cfg.images)[0])
        rep.tiles = measure_tiles(
            loaded.model_path,
            cfg.recipe,
            first,
            shape=cfg.tile_shape,
            repeats=max(cfg.repeats, 3),
            frames=cfg.tile_frames,
            threads=cfg.threads,
        )
    progress("softmax rewrite")
    rep.softmax = measure_softmax(
        det, cfg.images, frames=min(cfg.frames, 100), repeats=cfg.repeats, threads=cfg.threads
    )
    progress("int8")
    rep.int8 = measure_int8(
        det,
        cfg.images,
        eval_count=cfg.eval_count,
        frames=min(cfg.frames, 200),
        repeats=cfg.repeats,
        threads=cfg.threads,
    )
    progress("cold start")
    rep.cold = measure_cold_start(loaded.model_path, cfg.recipe, cfg.images, repeats=cfg.repeats)
    rep.loadavg_end = os.getloadavg()
    rep.seconds = time.monotonic() - t_start
    return rep


# -- the table ------------------------------------------------------------------------------------------


def rows(rep: Report) -> list[Row]:
    """The table's rows, each figure beside its baseline, with the issue's target."""
    out: list[Row] = []
    t = rep.throughput
    if t is not None:
        out.append(
            Row(
                "throughput: station vs bare session.run, the station's threads",
                f"{t.pipeline_fps:.1f} fps (paired ratios {_span(t.ratios['vs_bare'])})",
                f"{t.bare_fps:.1f} fps bare" + (f", {t.workers} loops at once" if t.workers > 1 else ""),
                t.vs_bare,
                "≥ 0.95",
                t.vs_bare >= 0.95,
            )
        )
        if t.all_cores and t.bare_all_cores_fps is not None and t.vs_bare_all_cores is not None:
            out.append(
                Row(
                    f"throughput: station vs bare session.run on all {t.all_cores} cores",
                    f"{t.pipeline_fps:.1f} fps (paired ratios {_span(t.ratios['vs_bare_all_cores'])})",
                    f"{t.bare_all_cores_fps:.1f} fps bare, {t.all_cores} threads",
                    t.vs_bare_all_cores,
                    "≥ 0.95",
                    t.vs_bare_all_cores >= 0.95,
                )
            )
        out.append(
            Row(
                "throughput: station vs naive loop",
                f"{t.pipeline_fps:.1f} fps (paired ratios {_span(t.ratios['vs_naive'])})",
                f"{t.naive_fps:.1f} fps naive",
                t.vs_naive,
                "≥ 2",
                t.vs_naive >= 2.0,
            )
        )
        ceiling = t.cpu_ceiling_vs_naive
        if ceiling is not None:
            cpu = {k: statistics.median(v) for k, v in t.cpu_ms.items()}
            out.append(
                Row(
                    "ceiling vs naive: cores × naive ms per part / station CPU ms per part",
                    f"station {cpu['pipeline']:.1f} ms CPU per part (bare model {cpu['bare']:.1f}, "
                    f"naive loop {cpu['naive']:.1f})",
                    f"{1e3 / t.naive_fps:.1f} ms per part naive, {t.cores} cores",
                    ceiling,
                    "— (bounds the row above)",
                    None,
                )
            )
    for lat in rep.latencies:
        target = "≤ 2" if lat.load == 0.5 else "—"
        out.append(
            Row(
                f"latency capture→commit at {lat.load:.0%} ({lat.rate_hz:.1f} Hz): p99 vs one frame",
                f"p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms"
                + (
                    " (p99 by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in lat.stage_p99_ms.items()) + ")"
                    if lat.stage_p99_ms
                    else ""
                ),
                f"one session.run: median {lat.single_ms:.1f} ms (its own p99 {lat.single_p99_ms:.1f} ms)",
                lat.p99_vs_single,
                target,
                lat.p99_vs_single <= 2.0 if lat.load == 0.5 else None,
            )
        )
    if rep.tiles is not None:
        ti = rep.tiles
        h, w = ti.frame_shape
        out.append(
            Row(
                f"tile mode {w}x{h} ({ti.tiles} tiles): station per frame vs bare batch",
                f"{ti.station_ms:.0f} ms",
                f"{ti.bare_ms:.0f} ms bare batch",
                ti.ratio,
                "≤ 1.10",
                ti.ratio <= 1.10,
            )
        )
        out.append(
            Row(
                f"tile mode {w}x{h}: one predict call on one thread vs bare batch",
                f"{ti.predict_ms:.0f} ms",
                f"{ti.bare_ms:.0f} ms bare batch",
                ti.predict_ratio,
                "—",
                None,
            )
        )
    if rep.softmax is not None:
        sm = rep.softmax
        out.append(
            Row(
                f"shipped graph with Softmax written out (max Δp {sm.max_abs_diff:.1e}) vs as shipped",
                f"{sm.rewritten_fps:.1f} fps",
                f"{sm.shipped_fps:.1f} fps as shipped",
                sm.speedup,
                "— (proposal)",
                None,
            )
        )
    if rep.int8 is not None:
        q = rep.int8
        out.append(
            Row(
                "INT8 vs FP32 speed (session.run)",
                f"{q.int8_fps:.1f} fps",
                f"{q.fp32_fps:.1f} fps FP32",
                q.speedup,
                "≥ 1.5",
                q.speedup >= 1.5,
            )
        )
        out.append(
            Row(
                f"INT8 vs FP32 image AUROC ({q.eval_images} images, {q.eval_defective} defective)",
                f"{q.auroc_int8:.4f}",
                f"{q.auroc_fp32:.4f} FP32",
                q.auroc_change,
                "change ≥ -0.01",
                q.auroc_change >= -0.01,
            )
        )
    if rep.cold is not None:
        c = rep.cold
        out.append(
            Row(
                "cold start: `qcstation run`, 1 image, spawn→exit",
                f"{c.station_s:.2f} s",
                f"{c.bare_s:.2f} s bare ort process",
                c.ratio,
                "≤ 3 s",
                c.station_s <= 3.0,
            )
        )
        out.append(
            Row(
                f"peak memory: `qcstation run`, {c.memory_frames} frames",
                f"{c.station_rss_mb:.0f} MB",
                f"{c.bare_rss_mb:.0f} MB bare ort process",
                c.station_rss_mb / c.bare_rss_mb,
                "≤ 600 MB",
                c.station_rss_mb <= 600.0,
            )
        )
    return out


def render(rep: Report) -> str:
    """The report as a Markdown table with its context (model, load average, repeats)."""
    la0 = " ".join(f"{x:.2f}" for x in rep.loadavg_start)
    la1 = " ".join(f"{x:.2f}" for x in rep.loadavg_end)
    lines = [
        f"model {rep.model}; onnxruntime intra-op threads {rep.threads or 'default'}; "
        f"inference workers {rep.workers}; "
        f"image archive {'new and empty' if rep.fresh_archive else 'in service (shard folders exist)'}; "
        f"{os.cpu_count()} cores; medians of {rep.repeats} alternating run(s); {rep.seconds:.0f} s in all",
        f"load average (1/5/15 min) at start {la0}, at end {la1}",
        "",
        "| figure | measured | baseline (same process) | ratio | target | met |",
        "|---|---|---|---:|---|---|",
    ]
    for r in rows(rep):
        met = "—" if r.met is None else ("yes" if r.met else "NO")
        ratio = f"{r.ratio:+.4f}" if "AUROC" in r.figure else f"{r.ratio:.2f}"
        lines.append(f"| {r.figure} | {r.value} | {r.baseline} | {ratio} | {r.target} | {met} |")
    return "\n".join(lines)


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def render_runs(rep: Report) -> str:
    """Every run behind the table's medians, one line per measurement (for the record)."""
    parts: list[tuple[str, dict[str, list[float]]]] = []
    if rep.throughput is not None:
        parts.append(("throughput fps", rep.throughput.runs))
        if rep.throughput.cpu_ms:
            parts.append(("CPU ms per part", rep.throughput.cpu_ms))
    parts += [(f"latency {lat.load:.0%} ms", lat.runs) for lat in rep.latencies]
    if rep.tiles is not None:
        parts.append(("tile ms", rep.tiles.runs))
    if rep.softmax is not None:
        parts.append(("softmax rewrite fps", rep.softmax.runs))
    if rep.int8 is not None:
        parts.append(("int8 fps", rep.int8.runs))
    if rep.cold is not None:
        parts.append(("cold start s / MB", rep.cold.runs))
    return "\n".join(
        f"- {name}: " + "; ".join(f"{k} {[round(v, 2) for v in vs]}" for k, vs in runs.items())
        for name, runs in parts
    )


def finite(rep: Report) -> bool:
    """True when every ratio in the table is a finite number (tests use it)."""
    return all(math.isfinite(r.ratio) for r in rows(rep))
