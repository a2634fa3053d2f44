"""Whole station pipeline vs a bare ``session.run`` loop over the same frames, in one process.

    python benchmarks/bench_pipeline.py [--frames 600] [--repeats 3] [--threads N]

The bare loop is the physical limit for this model on this machine: the frames are decoded and preprocessed
beforehand and only ``session.run`` is timed. The pipeline does everything a station does per part: read and
decode the file, preprocess, infer, post-process, judge, batch monitor, archive images, commit to SQLite with
the hash chain. Runs alternate (bare, pipeline, bare, …) so machine noise hits both; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from qcstation.inspect.detector import Detector
from qcstation.station.archive import ImageArchive
from qcstation.station.pipeline import Station
from qcstation.station.recipe import load_recipe
from qcstation.station.settings import default_intra_op_threads
from qcstation.station.sources import FolderSource
from qcstation.station.store import Store

ROOT = Path(__file__).resolve().parents[1]


class _Limited(FolderSource):
    """A looping folder source that ends after ``limit`` frames."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(path, loop=True)
        self.limit = limit
        self.n = 0

    def read(self):  # type: ignore[no-untyped-def]
        if self.n >= self.limit:
            return None
        self.n += 1
        return super().read()


def bare_fps(det: Detector, tensors: list[np.ndarray], frames: int) -> float:
    feed = det.card.input.name
    outs = [det.card.output.name]
    t0 = time.perf_counter()
    for i in range(frames):
        det.session.run(outs, {feed: tensors[i % len(tensors)]})
    return frames / (time.perf_counter() - t0)


def pipeline_fps(det: Detector, recipe_path: Path, images: Path, frames: int) -> float:
    loaded = load_recipe(recipe_path)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db", "bench")
        st = Station(
            source=_Limited(images, frames),
            detector=det,
            recipe=loaded,
            store=store,
            archive=ImageArchive(Path(tmp) / "images"),
            batch_id="BENCH",
        )
        summary = st.run()
        store.close()
    assert summary.parts == frames, f"pipeline recorded {summary.parts} of {frames} frames"
    return summary.rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=default_intra_op_threads(),
        help="onnxruntime intra-op threads (default: the station's, cores - 1)",
    )
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "demo.yaml")
    ap.add_argument("--images", type=Path, default=ROOT / "sample_images")
    args = ap.parse_args()

    loaded = load_recipe(args.recipe)
    det = Detector.from_path(loaded.model_path, intra_op_threads=args.threads)
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    tensors = [det.bare_input(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in files]
    bare_fps(det, tensors, 20)  # warm-up
    bare, pipe = [], []
    for _ in range(args.repeats):
        bare.append(bare_fps(det, tensors, args.frames))
        pipe.append(pipeline_fps(det, args.recipe, args.images, args.frames))
    b, p = statistics.median(bare), statistics.median(pipe)
    print(
        f"model {det.info.name} {det.info.version} ({det.card.input.height}x{det.card.input.width}, "
        f"{det.card.inference.mode}), {args.frames} frames x {args.repeats} repeats, "
        f"threads={args.threads or 'default'}"
    )
    print(f"bare session.run   : median {b:7.1f} frames/s  runs {[round(x, 1) for x in bare]}")
    print(f"whole pipeline     : median {p:7.1f} frames/s  runs {[round(x, 1) for x in pipe]}")
    print(f"pipeline_fps / bare_model_fps = {p / b:.3f}")


if __name__ == "__main__":
    main()
