"""The detector: one ONNX model, its card, and the pre- and post-processing around ``session.run``.

``Detector.from_path`` loads and checks everything before the first frame, so a missing, corrupt or
mismatched model stops start-up with a message that says what is wrong, instead of failing on part 1.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from qcstation.inspect.card import CARD_KEY, ModelCard, TensorInfo, check_against_graph
from qcstation.inspect.errors import FrameError, InferenceError, ModelCardError, ModelLoadError
from qcstation.inspect.postprocess import Polygon, class_scores, extract_regions, inspection_mask
from qcstation.inspect.types import Inspection, ModelInfo, check_image

log = logging.getLogger(__name__)


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo (Linux on x86), or None where it does not list them."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def int8_saturation_risk(card: ModelCard, flags: frozenset[str] | None) -> str | None:
    """Why this INT8 model may lose accuracy on this CPU, or None.

    A model quantized with full-range int8 weights (before 7-bit weights became the default of
    :func:`~qcstation.inspect.quantize.quantize_model`, or with ``reduce_range=False``) saturates in
    onnxruntime's uint8 x int8 kernels on x86 CPUs with AVX2 but without VNNI: the demo model lost 0.039
    image AUROC on one (docs/PERFORMANCE.md).
    """
    q = card.provenance.get("quantization")
    if not isinstance(q, Mapping) or "7-bit" in str(q.get("weights", "")):
        return None
    if flags is None or "avx2" not in flags or flags & {"avx512_vnni", "avx_vnni"}:
        return None
    return (
        "this INT8 model has full-range int8 weights and this CPU has AVX2 without VNNI, where they "
        "saturate and scores drift from the FP32 model's (0.039 image AUROC lost on the demo model); "
        "quantize it again with `qcstation export --int8` (7-bit weights) or run the FP32 model"
    )


DEFAULT_TILE_BATCH = 8
"""Tiles per ``session.run`` in tile mode: measured on the shipped model at 2448x2048 (99 tiles), chunks of
4-16 ran 8-10 % faster than one batch of 99 and peaked at 270-470 MB instead of 2.1 GB."""


def to_model_channels(image: np.ndarray, channels: int, order: str) -> np.ndarray:
    """Convert a frame (gray, gray+1, BGR or BGRA; uint8 or uint16) to the model's channel layout.

    Args:
        image: HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA).
        channels: 1 or 3.
        order: "GRAY", "RGB" or "BGR".

    Returns:
        HxW (one channel) or HxWx3 in the model's order, same dtype as the input.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if channels == 1:
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if order == "RGB" else image


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """A frame made ready for ``session.run`` (:meth:`Detector.prepare`).

    Attributes:
        batch: the input tensor, N x C x H x W float32 (N = 1 in resize mode, the tiles in tile mode).
        frame_shape: (height, width) of the frame.
        origins: top-left (y, x) of each tile in the padded frame; empty in resize mode.
        padded: (height, width) of the padded frame the tiles cover (tile mode).
        ms: time taken to prepare.
    """

    batch: np.ndarray
    frame_shape: tuple[int, int]
    origins: tuple[tuple[int, int], ...]
    padded: tuple[int, int]
    ms: float


@dataclass(frozen=True, slots=True, eq=False)
class Outputs:
    """The model's checked outputs for one prepared frame (:meth:`Detector.run`).

    Attributes:
        prepared: the input they answer.
        raw: one list of output arrays (probability maps, then image scores if the model has them) per
            ``session.run`` call: one call in resize mode, one per chunk of ``tile_batch`` tiles in tile mode.
        ms: time taken by ``session.run``.
    """

    prepared: Prepared
    raw: list[list[np.ndarray]]
    ms: float


class Detector:
    """Runs one self-describing ONNX segmentation model on frames.

    Build it with :meth:`from_path`. It is safe to call :meth:`inspect` from several threads (onnxruntime
    sessions are thread-safe and the detector keeps no per-frame state).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        card: ModelCard,
        *,
        sha256: str,
        path: Path,
        tile_batch: int = DEFAULT_TILE_BATCH,
    ) -> None:
        """Take a ready session and its validated card (use :meth:`from_path` to make both).

        Args:
            session: an onnxruntime session of the model.
            card: the model's card, already checked against the graph.
            sha256: sha256 of the model file.
            path: where the model was loaded from.
            tile_batch: tiles per ``session.run`` in tile mode. Small chunks bound the activation memory
                (onnxruntime allocates activations for the whole batch) and run as fast as one large batch.
        """
        if tile_batch < 1:
            raise ValueError(f"expected tile_batch >= 1, got {tile_batch}")
        self.tile_batch = tile_batch
        self.session = session
        self.card = card
        self.path = path
        self.info = ModelInfo(card.name, card.version, sha256)
        spec = card.input
        scale = np.array([1.0 / s for s in spec.std], np.float32)
        self._scale = scale.reshape(-1, 1, 1)
        self._offset = (np.array(spec.mean, np.float32) * scale).reshape(-1, 1, 1)
        self._outputs = [card.output.name] + ([card.output.image_scores] if card.output.image_scores else [])
        self._mask_cache: dict[tuple[int, int, Any], np.ndarray | None] = {}

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        allow_spinning: bool = False,
        warmup: bool = True,
        tile_batch: int = DEFAULT_TILE_BATCH,
    ) -> Detector:
        """Load a model file, validate its card against its graph, and warm it up.

        Args:
            path: the ``.onnx`` file.
            providers: onnxruntime execution providers in order of preference (default: CPU).
            intra_op_threads: threads inside one operator (None: onnxruntime's default, one per core).
            inter_op_threads: threads across operators (None: onnxruntime's default).
            allow_spinning: let idle onnxruntime threads spin-wait for work. Off by default: a station
                runs capture, decisions and commits beside the model, and spinning threads take their cores.
            warmup: run one blank input so the first frame is not slow and a model that cannot run fails now.
            tile_batch: tiles per ``session.run`` in tile mode (see :meth:`__init__`).

        Returns:
            A ready detector.

        Raises:
            ModelLoadError: the file is missing, unreadable, not ONNX, or cannot run.
            ModelCardError: the card is missing, malformed, or does not match the graph.
        """
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError as e:
            raise ModelLoadError(f"model file not found: {p}") from e
        except OSError as e:
            raise ModelLoadError(f"cannot read model file {p}: {e.strerror or e}") from e
        if not data:
            raise ModelLoadError(f"model file {p} is empty (0 bytes)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            opts.inter_op_num_threads = inter_op_threads
        spin = "1" if allow_spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        missing = [pr for pr in wanted if pr not in available]
        if missing:
            raise ModelLoadError(
                f"onnxruntime execution provider(s) {missing} are not available here; available: {available}"
            )
        try:
            session = ort.InferenceSession(data, sess_options=opts, providers=wanted)
        except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidProtobuf errors
            raise ModelLoadError(f"{p} is not a loadable ONNX model: {_first_line(e)}") from e
        meta = session.get_modelmeta().custom_metadata_map
        if CARD_KEY not in meta:
            raise ModelCardError(
                f"{p} has no model card (ONNX metadata key '{CARD_KEY}'); export models with "
                "`qcstation export` so they describe themselves"
            )
        try:
            card = ModelCard.from_json(meta[CARD_KEY])
            check_against_graph(
                card,
                [TensorInfo(t.name, tuple(t.shape), t.type) for t in session.get_inputs()],
                [TensorInfo(t.name, tuple(t.shape), t.type) for t in session.get_outputs()],
            )
        except ModelCardError as e:
            raise ModelCardError(f"{p}: {e}") from e
        det = cls(session, card, sha256=hashlib.sha256(data).hexdigest(), path=p, tile_batch=tile_batch)
        if warmup:
            try:
                det.predict(np.zeros((card.input.height, card.input.width), np.uint8))
            except InferenceError as e:
                raise ModelLoadError(f"{p} loads but cannot run: {e}") from e
        log.info("loaded model %s %s (%s…) from %s", card.name, card.version, det.info.sha256[:12], p)
        risk = int8_saturation_risk(card, cpu_flags())
        if risk is not None:
            log.warning("%s: %s", p, risk)
        return det

    # -- pre-processing -------------------------------------------------------------------------------

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        """HxW or HxWxC integer image -> C x H x W float32, normalised by the card."""
        peak = 65535.0 if image.dtype == np.uint16 else 255.0
        x = image.astype(np.float32)
        x = x[np.newaxis] if x.ndim == 2 else x.transpose(2, 0, 1)
        x *= self._scale / peak
        x -= self._offset
        return x

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Resize-mode input tensor (1 x C x H x W float32) for a frame.

        Raises:
            FrameError: the frame is not an image the detector can take.
        """
        check_image(image)
        spec = self.card.input
        img = to_model_channels(image, spec.channels, spec.channel_order)
        h, w = img.shape[:2]
        if (h, w) != (spec.height, spec.width):
            interp = cv2.INTER_AREA if h > spec.height or w > spec.width else cv2.INTER_LINEAR
            img = cv2.resize(img, (spec.width, spec.height), interpolation=interp)
        return self._normalise(img)[np.newaxis]

    def tiles(self, image: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]], tuple[int, int]]:
        """Tile-mode input: native-resolution tiles with overlap, as one batch.

        Returns:
            (N x C x T x T tensor, top-left (y, x) of each tile in the padded frame, padded (H, W)).
        """
        check_image(image)
        spec = self.card.input
        tile = self.card.inference.tile_size or spec.height
        stride = tile - self.card.inference.overlap
        img = to_model_channels(image, spec.channels, spec.channel_order)
        h, w = img.shape[:2]
        ph, pw = max(h, tile), max(w, tile)
        if (ph, pw) != (h, w):
            img = cv2.copyMakeBorder(img, 0, ph - h, 0, pw - w, cv2.BORDER_REFLECT_101)
        ys = _starts(ph, tile, stride)
        xs = _starts(pw, tile, stride)
        x = self._normalise(img)
        origins = [(y, xx) for y in ys for xx in xs]
        batch = np.stack([x[:, y : y + tile, xx : xx + tile] for y, xx in origins])
        return np.ascontiguousarray(batch), origins, (ph, pw)

    # -- inference ------------------------------------------------------------------------------------

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            out = self.session.run(self._outputs, {self.card.input.name: batch})
        except Exception as e:  # onnxruntime's errors are not typed
            raise InferenceError(f"onnxruntime failed on input {batch.shape}: {_first_line(e)}") from e
        probs = np.asarray(out[0])
        if probs.shape[0] != batch.shape[0] or probs.shape[1] != len(self.card.classes):
            raise InferenceError(
                f"model output '{self.card.output.name}' has shape {probs.shape}, "
                f"expected ({batch.shape[0]}, {len(self.card.classes)}, H, W)"
            )
        if not np.isfinite(probs).all():
            raise InferenceError("model output contains NaN or infinity")
        return [probs] + [np.asarray(o) for o in out[1:]]

    def prepare(self, image: np.ndarray) -> Prepared:
        """Everything before ``session.run``: checks, channel conversion, resize or tiling, normalisation.

        The station calls this on its capture thread, so the inference thread only runs the model.

        Raises:
            FrameError: the frame cannot be inspected.
        """
        if not isinstance(image, np.ndarray):
            raise FrameError(f"expected a numpy array, got {type(image).__name__}")
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        if self.card.inference.mode == "resize":
            batch = self.preprocess(image)
            return Prepared(batch, (h, w), (), (h, w), (time.perf_counter() - t0) * 1e3)
        batch, origins, padded = self.tiles(image)
        return Prepared(batch, (h, w), tuple(origins), padded, (time.perf_counter() - t0) * 1e3)

    def run(self, prepared: Prepared) -> Outputs:
        """``session.run`` on a prepared input, and nothing else.

        Raises:
            InferenceError: onnxruntime failed or returned something the card does not describe.
        """
        t0 = time.perf_counter()
        batch, step = prepared.batch, self.tile_batch if prepared.origins else len(prepared.batch)
        out = [self._run(batch[i : i + step]) for i in range(0, len(batch), step)]
        return Outputs(prepared, out, (time.perf_counter() - t0) * 1e3)

    def maps(self, outputs: Outputs) -> tuple[np.ndarray, np.ndarray | None]:
        """Probability maps of one frame from the model's outputs (tiles stitched back in tile mode).

        Returns:
            (C x h x w probabilities — model resolution in resize mode, frame resolution in tile mode;
            image-level class probabilities (C,) or None).
        """
        chunks, prep = outputs.raw, outputs.prepared
        if not prep.origins:
            out = chunks[0]
            return out[0][0], (out[1][0] if len(out) > 1 else None)
        tile = prep.batch.shape[2]
        ph, pw = prep.padded
        acc = np.zeros((chunks[0][0].shape[1], ph, pw), np.float32)
        hits = np.zeros((ph, pw), np.float32)
        origins = iter(prep.origins)
        for out in chunks:
            for probs in out[0]:
                y, x = next(origins)
                acc[:, y : y + tile, x : x + tile] += probs
                hits[y : y + tile, x : x + tile] += 1.0
        acc /= hits
        h, w = prep.frame_shape
        heads = [out[1].max(axis=0) for out in chunks if len(out) > 1]
        return acc[:, :h, :w], (np.max(heads, axis=0) if heads else None)

    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
        """Probability maps for one frame (:meth:`prepare`, :meth:`run` and :meth:`maps` in one call).

        Returns:
            (C x h x w probabilities — model resolution in resize mode, frame resolution in tile mode;
            image-level class probabilities (C,) or None; timings in ms).

        Raises:
            FrameError: the frame cannot be inspected.
            InferenceError: onnxruntime failed or returned something the card does not describe.
        """
        outputs = self.run(self.prepare(image))
        t0 = time.perf_counter()
        probs, image_scores = self.maps(outputs)
        stitch = (time.perf_counter() - t0) * 1e3
        return probs, image_scores, {"preprocess": outputs.prepared.ms, "infer": outputs.ms + stitch}

    def thresholds(self, overrides: Mapping[str, float | None] | None = None) -> dict[str, float]:
        """Effective per-class thresholds: the card's calibrated defaults, overridden where given."""
        out = {c: self.card.threshold(c) for c in self.card.defect_classes}
        for k, v in (overrides or {}).items():
            if k not in out:
                raise ModelCardError(f"threshold for unknown class '{k}'; the model has {list(out)}")
            if v is not None:
                out[k] = float(v)
        return out

    def inspect(
        self,
        image: np.ndarray,
        *,
        thresholds: Mapping[str, float] | None = None,
        mm_per_px: float | None = None,
        roi: Sequence[Polygon] = (),
        ignore: Sequence[Polygon] = (),
        defect_map: bool = True,
    ) -> Inspection:
        """Inspect one frame: probability maps, then regions and scores inside the inspected area.

        The same as :meth:`finish` of :meth:`run` of :meth:`prepare`; the station calls the three steps on
        different threads.

        Args:
            image: the frame (gray/BGR/BGRA, uint8/uint16).
            thresholds: per-class thresholds (default: the card's).
            mm_per_px: frame pixel size, for region areas in mm².
            roi: polygons (frame fractions) to inspect; empty: the whole frame.
            ignore: polygons (frame fractions) never inspected.
            defect_map: also return the uint8 map of the highest defect probability (for overlays); the
                station's hot path leaves it out.

        Returns:
            The inspection, with timings.

        Raises:
            FrameError: the frame cannot be inspected.
            InferenceError: inference failed.
        """
        return self.finish(
            self.run(self.prepare(image)),
            thresholds=thresholds,
            mm_per_px=mm_per_px,
            roi=roi,
            ignore=ignore,
            defect_map=defect_map,
        )

    def finish(
        self,
        outputs: Outputs,
        *,
        thresholds: Mapping[str, float] | None = None,
        mm_per_px: float | None = None,
        roi: Sequence[Polygon] = (),
        ignore: Sequence[Polygon] = (),
        defect_map: bool = True,
    ) -> Inspection:
        """Everything after ``session.run``: stitching, regions, class and image scores.

        Args:
            outputs: what :meth:`run` returned for the frame.
            thresholds, mm_per_px, roi, ignore, defect_map: as for :meth:`inspect`.

        Returns:
            The inspection, with timings (preprocess, infer, postprocess in ms).
        """
        t0 = time.perf_counter()
        probs, image_head = self.maps(outputs)
        h, w = outputs.prepared.frame_shape
        mh, mw = probs.shape[1:]
        key = (mh, mw, (tuple(map(tuple, roi)), tuple(map(tuple, ignore))))
        if key not in self._mask_cache:
            self._mask_cache[key] = inspection_mask((mh, mw), roi, ignore)
        mask = self._mask_cache[key]
        thr = dict(thresholds) if thresholds is not None else self.thresholds()
        classes = self.card.classes
        scores = class_scores(probs, classes, mask)
        regions = extract_regions(
            probs, classes, thr, scale=(w / mw, h / mh), mm_per_px=mm_per_px, mask=mask, peaks=scores
        )
        if image_head is not None and mask is None:
            image_score = float(np.clip(image_head[1:].max(), 0.0, 1.0))
        else:
            image_score = max(scores.values(), default=0.0)
        dmap = (np.clip(probs[1:].max(axis=0), 0.0, 1.0) * 255).astype(np.uint8) if defect_map else None
        timings = {
            "preprocess": outputs.prepared.ms,
            "infer": outputs.ms,
            "postprocess": (time.perf_counter() - t0) * 1e3,
        }
        return Inspection(
            regions=tuple(regions),
            class_scores=scores,
            image_score=image_score,
            timings_ms=timings,
            model=self.info,
            frame_shape=(h, w),
            defect_map=dmap,
        )

    def bare_input(self, image: np.ndarray) -> np.ndarray:
        """The exact tensor ``session.run`` gets for a frame (for benchmarks against the bare model)."""
        return self.preprocess(image) if self.card.inference.mode == "resize" else self.tiles(image)[0]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
