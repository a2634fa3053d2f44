"""Whole station pipeline vs a bare ``session.run`` loop over the same frames, in one process.

    python benchmarks/bench_pipeline.py [--frames 600] [--repeats 3] [--threads N] [--workers N]

The bare loop is the physical limit for this model on this machine at the station's configuration: the
frames are decoded and preprocessed beforehand and only ``session.run`` is timed, in as many loops at once as
the station has inference workers. The pipeline does everything a station does per part: read and decode
the file, preprocess, infer, post-process, judge, batch monitor, archive images, commit to SQLite with the
hash chain. Runs alternate (bare, pipeline, naive, bare, …) so machine noise hits both; medians of paired
ratios are reported. ``qcstation bench`` measures this and every other figure of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qcstation.inspect.detector import Detector
from qcstation.station.bench import measure_throughput
from qcstation.station.recipe import load_recipe
from qcstation.station.settings import default_inference_workers, default_intra_op_threads

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=default_intra_op_threads(),
        help="onnxruntime intra-op threads per run (default: the station's, cores - 1)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=default_inference_workers(),
        help="frames in session.run at once (default: the station's)",
    )
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "demo.yaml")
    ap.add_argument("--images", type=Path, default=ROOT / "sample_images")
    args = ap.parse_args()

    det = Detector.from_path(load_recipe(args.recipe).model_path, intra_op_threads=args.threads)
    t = measure_throughput(
        det, args.recipe, args.images, frames=args.frames, repeats=args.repeats, workers=args.workers
    )
    print(
        f"model {det.info.name} {det.info.version} ({det.card.input.height}x{det.card.input.width}, "
        f"{det.card.inference.mode}), {args.frames} frames x {args.repeats} repeats, "
        f"threads={args.threads}, workers={args.workers}"
    )
    for name in ("bare", "pipeline", "naive"):
        runs = [round(x, 1) for x in t.runs[name]]
        print(f"{name:9s}: median {getattr(t, name + '_fps'):7.1f} frames/s  runs {runs}")
    paired = [round(r, 3) for r in t.ratios["vs_bare"]]
    print(f"pipeline_fps / bare_model_fps = {t.vs_bare:.3f}  (paired ratios {paired})")
    print(f"pipeline_fps / naive_fps      = {t.vs_naive:.3f}")


if __name__ == "__main__":
    main()
