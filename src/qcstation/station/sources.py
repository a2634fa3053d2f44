"""Capture sources: where frames come from, behind one small interface.

A :class:`Source` is a context manager with ``read()``. Entering opens the hardware (or folder, or stream),
``read()`` blocks until the next :class:`~qcstation.inspect.types.Frame` and returns ``None`` once the stream
has ended for good, and leaving closes it. Two kinds of trouble are kept apart:

- a **bad image** (corrupt, truncated, empty, unreadable, too small) never raises: the source returns a
  Frame whose ``fault`` says what is wrong, so the part ends as an ERROR record downstream;
- a **lost source** (camera unplugged, stream dropped) raises :class:`SourceLost` from ``read()``, and a
  source that cannot be opened raises :class:`SourceError`. :class:`Reconnecting` turns both into station
  fault/recovery events and keeps trying.

Implementations: :class:`FolderSource` (image files), :class:`VideoSource` (video file, stream URL or camera
index, over ``cv2.VideoCapture``), :class:`TriggerSource` (one frame per trigger, "capture now") and
:class:`ListSource` (in-memory images; tests and on-demand inspection). The pydantic models
:class:`FolderSourceConfig`, :class:`VideoSourceConfig` and :class:`DeviceSourceConfig` form the
:data:`SourceConfig` union, keyed on ``type``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal, Protocol, Self, runtime_checkable

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from qcstation.inspect.errors import FrameError
from qcstation.inspect.types import Frame, check_image
from qcstation.station.errors import ConfigError, SourceError, SourceLost
from qcstation.station.types import StationFault

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File extensions :class:`FolderSource` picks up (compared case-insensitively)."""

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware UTC."""

DEFAULT_BACKOFF_S: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)


def utc_now() -> datetime:
    """The default clock: ``datetime.now(UTC)``."""
    return datetime.now(UTC)


@runtime_checkable
class Source(Protocol):
    """Where frames come from.

    Use it as a context manager: ``__enter__`` opens (raises :class:`SourceError` when it cannot),
    ``__exit__`` closes. ``read()`` blocks until the next frame and returns ``None`` once the stream has
    ended for good; it raises :class:`SourceLost` when an open source stops delivering. A bad image never
    raises: it comes back as a Frame with ``fault`` set.
    """

    @property
    def name(self) -> str:
        """A human-readable name (folder path, device, URL)."""
        ...

    def __enter__(self) -> Source: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def read(self) -> Frame | None:
        """The next frame, or None when the stream has ended for good."""
        ...


class _SourceBase:
    """Context-manager plumbing shared by the implementations: ``__enter__`` calls ``open()``."""

    name: str = ""

    def open(self) -> None:
        """Open the source. Raises SourceError when it cannot."""

    def close(self) -> None:
        """Close the source; safe to call more than once."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _not_open(self) -> SourceError:
        return SourceError(f"{type(self).__name__}({self.name}) is not open: use it in a with-block")


# -- decoding -------------------------------------------------------------------------------------------


def decode_image(data: bytes, label: str) -> tuple[np.ndarray | None, str | None]:
    """Decode encoded image bytes as they are (16-bit and 4-channel images pass through).

    Args:
        data: the encoded bytes (PNG, JPEG, BMP, TIFF, ...).
        label: how to name the image in a fault message, e.g. the file name.

    Returns:
        ``(image, None)`` when the bytes decode to an image the detector can take, else ``(None, fault)``
        with a message such as ``"part_0007.png: cannot decode (truncated or not an image)"``.
    """
    if not data:
        return None, f"{label}: empty file (0 bytes)"
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        return None, f"{label}: cannot decode ({str(e).strip().splitlines()[-1]})"
    if image is None:
        return None, f"{label}: cannot decode (truncated or not an image)"
    try:
        check_image(image)
    except FrameError as e:
        return None, f"{label}: {e}"
    return image, None


def sniff_extension(data: bytes) -> str:
    """The file extension that fits encoded image bytes, from their magic number (".bin" if unknown).

    Args:
        data: encoded image bytes.

    Returns:
        ".png", ".jpg", ".bmp", ".tif", ".webp" or ".bin".
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"BM"):
        return ".bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


def _frame_from_bytes(
    data: bytes,
    *,
    label: str,
    frame_id: str,
    captured_at: datetime,
    ext: str,
    serial: str | None,
    source: str,
) -> Frame:
    image, fault = decode_image(data, label)
    if image is None:
        # the undecodable bytes travel with the fault, so the ERROR record's evidence is archived as it came
        return Frame(
            frame_id=frame_id,
            captured_at=captured_at,
            fault=fault,
            serial=serial,
            source=source,
            encoded=data or None,
            encoded_ext=ext,
        )
    return Frame(
        frame_id=frame_id,
        captured_at=captured_at,
        image=image,
        serial=serial,
        source=source,
        encoded=data,
        encoded_ext=ext,
    )


def _frame_from_array(
    image: np.ndarray, *, frame_id: str, captured_at: datetime, serial: str | None, source: str
) -> Frame:
    try:
        check_image(image)
    except FrameError as e:
        return Frame(
            frame_id=frame_id, captured_at=captured_at, fault=f"{frame_id}: {e}", serial=serial, source=source
        )
    return Frame(frame_id=frame_id, captured_at=captured_at, image=image, serial=serial, source=source)


# -- folder ---------------------------------------------------------------------------------------------


class FolderSource(_SourceBase):
    """Image files from one folder, in name order, optionally paced and looped.

    Only files whose extension is one of :data:`IMAGE_EXTENSIONS` (any case) and whose name matches
    ``pattern`` are read; sub-folders (e.g. ``masks/``) are not descended into. The file bytes are kept in
    ``Frame.encoded`` so the archive stores the original file, not a re-encoding.

    Frame ids are the file names; on the second and later passes of a looped folder they get a ``#<pass>``
    suffix ("part_0001.png#2") so they stay unique within the run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        pattern: str = "*",
        rate_hz: float | None = None,
        loop: bool = False,
        serial_from_name: bool = True,
        clock: Clock = utc_now,
        sleep: Callable[[float], object] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Describe the folder; nothing is touched until the source is opened.

        Args:
            path: the image folder.
            pattern: a shell-style pattern the file names must also match (e.g. "part_*").
            rate_hz: frames per second to replay at; None reads as fast as the consumer takes them.
            loop: start again from the first file after the last, forever.
            serial_from_name: use the file stem as the part's serial number.
            clock: gives ``captured_at``.
            sleep: waits between frames when ``rate_hz`` is set (injectable for tests).
            monotonic: the pacing clock (injectable for tests).

        Raises:
            ValueError: ``rate_hz`` is not positive.
        """
        if rate_hz is not None and not rate_hz > 0:
            raise ValueError(f"expected rate_hz > 0 or None, got {rate_hz}")
        self.path = Path(path)
        self.name = str(self.path)
        self.pattern = pattern
        self.rate_hz = rate_hz
        self.loop = loop
        self.serial_from_name = serial_from_name
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._files: list[Path] | None = None
        self._index = 0
        self._pass = 0
        self._next_at: float | None = None

    def list_files(self) -> list[Path]:
        """The image files this source would read, in order.

        Returns:
            Paths sorted by file name.

        Raises:
            SourceError: the folder does not exist or is not a folder.
        """
        if not self.path.exists():
            raise SourceError(f"image folder {self.path}/ does not exist")
        if not self.path.is_dir():
            raise SourceError(f"expected an image folder, got a file: {self.path}")
        try:
            entries = list(self.path.iterdir())
        except OSError as e:
            raise SourceError(f"cannot list image folder {self.path}/: {e.strerror or e}") from e
        files = [
            p
            for p in entries
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and fnmatch.fnmatchcase(p.name, self.pattern)
            and p.is_file()
        ]
        return sorted(files, key=lambda p: p.name)

    def open(self) -> None:
        """List the folder.

        Raises:
            SourceError: the folder is missing, not a folder, or holds no matching image.
        """
        files = self.list_files()
        if not files:
            looked_for = ", ".join(f"*{ext}" for ext in IMAGE_EXTENSIONS)
            also = "" if self.pattern == "*" else f" matching {self.pattern!r}"
            raise SourceError(f"no images in {self.path}/ (looked for {looked_for}{also})")
        self._files = files
        self._index = 0
        self._pass = 0
        self._next_at = None
        log.info("folder source %s: %d image(s)%s", self.path, len(files), ", looping" if self.loop else "")

    def close(self) -> None:
        """Forget the file list."""
        self._files = None

    def read(self) -> Frame | None:
        """The next file as a Frame (with ``fault`` set when it cannot be used).

        Returns:
            The frame, or None after the last file when not looping.

        Raises:
            SourceError: the source is not open.
        """
        if self._files is None:
            raise self._not_open()
        if self._index >= len(self._files):
            if not self.loop:
                return None
            self._index = 0
            self._pass += 1
        file = self._files[self._index]
        self._index += 1
        self._pace()
        frame_id = file.name if self._pass == 0 else f"{file.name}#{self._pass + 1}"
        serial = file.stem if self.serial_from_name else None
        captured_at = self._clock()
        try:
            data = file.read_bytes()
        except OSError as e:
            return Frame(
                frame_id=frame_id,
                captured_at=captured_at,
                fault=f"{file.name}: unreadable: {e.strerror or e}",
                serial=serial,
                source=self.name,
            )
        return _frame_from_bytes(
            data,
            label=file.name,
            frame_id=frame_id,
            captured_at=captured_at,
            ext=file.suffix.lower(),
            serial=serial,
            source=self.name,
        )

    def _pace(self) -> None:
        if self.rate_hz is None:
            return
        period = 1.0 / self.rate_hz
        if self._next_at is not None:
            delay = self._next_at - self._monotonic()
            if delay > 0:
                self._sleep(delay)
        now = self._monotonic()
        # Late frames restart the schedule from now instead of bursting to catch up.
        self._next_at = (now if self._next_at is None else max(self._next_at, now)) + period


# -- video ----------------------------------------------------------------------------------------------


class VideoSource(_SourceBase):
    """Frames from ``cv2.VideoCapture``: a video file, a stream URL (rtsp/http/...) or a camera index.

    Frame ids are a running number ("1", "2", ...) kept across reopening the same instance. The end of a
    video *file* returns None; a failed grab on a stream or camera raises :class:`SourceLost` (or, with
    ``reconnect=False``, ends the stream with None).
    """

    def __init__(
        self,
        uri: str | int,
        *,
        reconnect: bool = True,
        timeout_s: float = 10.0,
        clock: Clock = utc_now,
    ) -> None:
        """Describe the capture; nothing is opened until the source is entered.

        Args:
            uri: a video file path, a stream URL, or a camera index.
            reconnect: on a live stream or camera, raise SourceLost when a grab fails (so that
                :class:`Reconnecting` reopens it); False ends the stream instead.
            timeout_s: open and read timeout for stream URLs.
            clock: gives ``captured_at``.
        """
        self.uri = uri
        self.reconnect = reconnect
        self.timeout_s = timeout_s
        self._clock = clock
        self.is_live = isinstance(uri, int) or "://" in uri
        self.name = f"camera {uri}" if isinstance(uri, int) else str(uri)
        self._cap: Any = None
        self._count = 0

    def open(self) -> None:
        """Open the capture.

        Raises:
            SourceError: the file does not exist, or OpenCV cannot open the file, URL or device.
        """
        if isinstance(self.uri, str) and not self.is_live and not Path(self.uri).is_file():
            raise SourceError(f"video file {self.uri} does not exist")
        if isinstance(self.uri, str) and self.is_live:
            ms = int(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(self.uri, cv2.CAP_ANY, params)
        else:
            cap = cv2.VideoCapture(self.uri)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.name} (OpenCV VideoCapture refused it)")
        self._cap = cap
        log.info("video source %s opened", self.name)

    def close(self) -> None:
        """Release the capture."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self) -> Frame | None:
        """Grab and decode the next frame.

        Returns:
            The frame, or None at the end of a file (or of a live stream when ``reconnect`` is False).

        Raises:
            SourceLost: a grab failed on a live stream or camera (``reconnect=True``).
            SourceError: the source is not open.
        """
        if self._cap is None:
            raise self._not_open()
        ok, image = self._cap.read()
        if not ok or image is None:
            if not self.is_live:
                log.info("video source %s: end of file after %d frame(s)", self.name, self._count)
                return None
            if self.reconnect:
                raise SourceLost(f"{self.name}: no frame from the stream (grab failed)")
            log.warning("video source %s: grab failed, ending the stream", self.name)
            return None
        self._count += 1
        return _frame_from_array(
            image, frame_id=str(self._count), captured_at=self._clock(), serial=None, source=self.name
        )


# -- in-memory list -------------------------------------------------------------------------------------


class ListSource(_SourceBase):
    """Frames from a list of arrays, encoded image bytes, or ready Frames.

    Arrays get ``captured_at`` from the clock and ids "1", "2", ... (unless ``frame_ids`` is given); bytes
    are decoded as :class:`FolderSource` decodes files and kept in ``Frame.encoded``; Frames pass through
    unchanged. A bad array or undecodable bytes become a fault frame, never an exception.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray | Frame | bytes],
        *,
        name: str = "list",
        serials: Sequence[str | None] | None = None,
        frame_ids: Sequence[str] | None = None,
        loop: bool = False,
        clock: Clock = utc_now,
    ) -> None:
        """Hold the items; they are turned into frames one by one on ``read()``.

        Args:
            images: arrays (HxW or HxWxC, uint8/uint16), encoded image bytes, or Frames.
            name: the source's name, copied into ``Frame.source``.
            serials: one serial (or None) per item; ignored for Frames.
            frame_ids: one frame id per item; ignored for Frames.
            loop: start again from the first item after the last (ids get a "#<pass>" suffix).
            clock: gives ``captured_at``.

        Raises:
            ValueError: ``serials`` or ``frame_ids`` does not have one entry per item.
            TypeError: an item is not an array, bytes or a Frame.
        """
        for label, seq in (("serials", serials), ("frame_ids", frame_ids)):
            if seq is not None and len(seq) != len(images):
                raise ValueError(f"expected {len(images)} {label}, one per image, got {len(seq)}")
        for i, item in enumerate(images):
            if not isinstance(item, np.ndarray | Frame | bytes):
                raise TypeError(
                    f"expected an array, bytes or a Frame at index {i}, got {type(item).__name__}"
                )
        self.name = name
        self.loop = loop
        self._items = list(images)
        self._serials = list(serials) if serials is not None else [None] * len(self._items)
        self._ids = (
            list(frame_ids) if frame_ids is not None else [str(i + 1) for i in range(len(self._items))]
        )
        self._clock = clock
        self._index = 0
        self._pass = 0
        self._open = False

    def open(self) -> None:
        """Start from the first item."""
        self._open = True
        self._index = 0
        self._pass = 0

    def close(self) -> None:
        """Stop reading."""
        self._open = False

    def read(self) -> Frame | None:
        """The next item as a Frame.

        Returns:
            The frame, or None after the last item when not looping.

        Raises:
            SourceError: the source is not open.
        """
        if not self._open:
            raise self._not_open()
        if self._index >= len(self._items):
            if not self.loop or not self._items:
                return None
            self._index = 0
            self._pass += 1
        i = self._index
        self._index += 1
        item = self._items[i]
        if isinstance(item, Frame):
            return item
        frame_id = self._ids[i] if self._pass == 0 else f"{self._ids[i]}#{self._pass + 1}"
        if isinstance(item, bytes):
            return _frame_from_bytes(
                item,
                label=frame_id,
                frame_id=frame_id,
                captured_at=self._clock(),
                ext=sniff_extension(item),
                serial=self._serials[i],
                source=self.name,
            )
        return _frame_from_array(
            item, frame_id=frame_id, captured_at=self._clock(), serial=self._serials[i], source=self.name
        )


# -- trigger --------------------------------------------------------------------------------------------


class TriggerSource(_SourceBase):
    """One frame from an inner source per trigger ("capture now", a PLC or light-barrier signal).

    ``trigger()`` may be called from any thread; requests queue up in order. ``read()`` blocks until a
    request arrives, reads one frame from the inner source and returns it with the request's serial.
    ``stop()`` makes a waiting (and every later) ``read()`` return None.
    """

    def __init__(self, inner: Source) -> None:
        """Wrap ``inner``, which is opened and closed together with this source.

        Args:
            inner: where the frames come from (a camera, a folder, a :class:`ListSource`, ...).
        """
        self.inner = inner
        self.name = f"trigger({inner.name})"
        self._cond = threading.Condition()
        self._pending: deque[str | None] = deque()
        self._stopped = False
        self._open = False

    def trigger(self, serial: str | None = None) -> None:
        """Queue a request for one frame. Thread-safe; ignored after :meth:`stop`.

        Args:
            serial: the part's serial number, set on the frame (None keeps the inner frame's serial).
        """
        with self._cond:
            if self._stopped:
                log.warning("trigger source %s: trigger after stop ignored", self.name)
                return
            self._pending.append(serial)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """How many triggers are waiting to be served."""
        with self._cond:
            return len(self._pending)

    def stop(self) -> None:
        """Make ``read()`` return None, now and from then on; pending triggers are dropped."""
        with self._cond:
            self._stopped = True
            self._pending.clear()
            self._cond.notify_all()

    def open(self) -> None:
        """Open the inner source.

        Raises:
            SourceError: the inner source cannot be opened.
        """
        self.inner.__enter__()
        self._open = True

    def close(self) -> None:
        """Close the inner source."""
        if self._open:
            self._open = False
            self.inner.__exit__(None, None, None)

    def read(self) -> Frame | None:
        """Wait for a trigger, then read one frame from the inner source.

        Returns:
            The frame (with the trigger's serial), or None after :meth:`stop` or when the inner source ended.

        Raises:
            SourceLost: the inner source was lost.
            SourceError: the source is not open.
        """
        if not self._open:
            raise self._not_open()
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            serial = self._pending.popleft()
        frame = self.inner.read()
        if frame is None or serial is None:
            return frame
        return replace(frame, serial=serial)


# -- reconnecting ---------------------------------------------------------------------------------------


class Reconnecting:
    """Keeps a source alive: reopens it with backoff when it is lost, and reports fault and recovery.

    When the inner source fails to open (:class:`SourceError`) or is lost while reading
    (:class:`SourceLost`), one ``StationFault(kind="source", recovered=False)`` is reported for the outage;
    the source is closed and rebuilt from ``factory`` after ``backoff_s[0]``, ``backoff_s[1]``, ... seconds
    (the last value repeats) until it delivers a frame again, which reports
    ``StationFault(kind="source", recovered=True)``. Recovery is reported on the first frame rather than on
    a successful open, so a camera that opens but sends nothing stays in fault. ``read()`` returns None
    after :meth:`stop` or when the inner stream ends for good (end of a video file).
    """

    def __init__(
        self,
        factory: Callable[[], Source],
        *,
        on_fault: Callable[[StationFault], None],
        backoff_s: Sequence[float] = DEFAULT_BACKOFF_S,
        sleep: Callable[[float], object] | None = None,
        clock: Clock = utc_now,
        name: str | None = None,
    ) -> None:
        """Set up; the inner source is built and opened on ``__enter__``.

        Args:
            factory: builds a fresh (unopened) source, e.g. ``config.build``.
            on_fault: receives fault and recovery events (called from the reading thread).
            backoff_s: waits before each reopening attempt; the last value repeats.
            sleep: waits between attempts; the default waits on an event that :meth:`stop` sets, so
                stopping does not sit out a long backoff.
            clock: stamps the fault events.
            name: the source's name until the first inner source is built (then the inner's name).

        Raises:
            ValueError: ``backoff_s`` is empty or has a negative value.
        """
        if not backoff_s or any(b < 0 for b in backoff_s):
            raise ValueError(f"expected a non-empty backoff_s of values >= 0, got {tuple(backoff_s)}")
        self._factory = factory
        self._on_fault = on_fault
        self.backoff_s = tuple(float(b) for b in backoff_s)
        self._stop_event = threading.Event()
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._stop_event.wait
        self._clock = clock
        self._name = name
        self._inner: Source | None = None
        self._open = False
        self._down_since: datetime | None = None
        self._attempts = 0

    @property
    def name(self) -> str:
        """The inner source's name (or the given name before the first one is built)."""
        return self._name or "reconnecting source"

    @property
    def faulted(self) -> bool:
        """True while an outage is in progress (fault reported, recovery not yet)."""
        return self._down_since is not None

    def stop(self) -> None:
        """Make ``read()`` return None; interrupts a backoff wait when the default sleep is used."""
        self._stop_event.set()

    def __enter__(self) -> Self:
        self._open = True
        self._connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self._close_inner()

    def read(self) -> Frame | None:
        """The next frame from the inner source, reconnecting as long as it takes.

        Returns:
            The frame, or None after :meth:`stop` or when the inner stream ended for good.

        Raises:
            SourceError: this source is not open.
        """
        if not self._open:
            raise SourceError(f"Reconnecting({self.name}) is not open: use it in a with-block")
        while not self._stop_event.is_set():
            inner = self._inner
            if inner is None:
                delay = self.backoff_s[min(self._attempts, len(self.backoff_s) - 1)]
                self._attempts += 1
                log.info("source %s: reconnect attempt %d in %.1f s", self.name, self._attempts, delay)
                self._sleep(delay)
                if self._stop_event.is_set():
                    break
                self._connect()
                continue
            try:
                frame = inner.read()
            except SourceLost as e:
                self._failed(e)
                self._close_inner()
                continue
            if frame is not None and self._down_since is not None:
                self._recovered()
            return frame
        return None

    def _connect(self) -> None:
        try:
            source = self._factory()
            self._name = source.name
            source.__enter__()
        except SourceError as e:
            self._failed(e)
            return
        self._inner = source

    def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        try:
            inner.__exit__(None, None, None)
        except Exception:  # closing a lost device may fail too; the reopen matters, not this
            log.warning("source %s: error while closing", self.name, exc_info=True)

    def _failed(self, error: SourceError) -> None:
        if self._down_since is not None:
            log.warning("source %s: still down (attempt %d): %s", self.name, self._attempts, error)
            return
        now = self._clock()
        self._down_since = now
        log.error("source %s lost: %s", self.name, error)
        self._report(StationFault(kind="source", detail=f"{self.name}: {error}", at=now, recovered=False))

    def _recovered(self) -> None:
        now = self._clock()
        assert self._down_since is not None
        down_s = (now - self._down_since).total_seconds()
        detail = f"{self.name}: recovered after {self._attempts} reconnect attempt(s), down {down_s:.1f} s"
        log.info("source %s", detail)
        self._down_since = None
        self._attempts = 0
        self._report(StationFault(kind="source", detail=detail, at=now, recovered=True))

    def _report(self, fault: StationFault) -> None:
        try:
            self._on_fault(fault)
        except Exception:  # a broken listener must not stop the capture
            log.exception("source %s: on_fault handler failed", self.name)


# -- configuration --------------------------------------------------------------------------------------


class FolderSourceConfig(BaseModel):
    """An image folder, replayed in name order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["folder"] = "folder"
    path: Path
    rate_hz: float | None = Field(default=None, gt=0)
    loop: bool = False
    pattern: str = "*"
    serial_from_name: bool = True

    def build(self, *, clock: Clock = utc_now) -> FolderSource:
        """A :class:`FolderSource` for this folder (not yet opened).

        Args:
            clock: gives ``captured_at``.

        Returns:
            The source.
        """
        return FolderSource(
            self.path,
            pattern=self.pattern,
            rate_hz=self.rate_hz,
            loop=self.loop,
            serial_from_name=self.serial_from_name,
            clock=clock,
        )


class VideoSourceConfig(BaseModel):
    """A video file or a stream URL (rtsp://, http://, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["video"] = "video"
    uri: str = Field(min_length=1)
    reconnect: bool = True
    timeout_s: float = Field(default=10.0, gt=0)

    def build(self, *, clock: Clock = utc_now) -> VideoSource:
        """A :class:`VideoSource` for this file or URL (not yet opened).

        Args:
            clock: gives ``captured_at``.

        Returns:
            The source.
        """
        return VideoSource(self.uri, reconnect=self.reconnect, timeout_s=self.timeout_s, clock=clock)


class DeviceSourceConfig(BaseModel):
    """A camera by its OpenCV device index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["device"] = "device"
    index: int = Field(ge=0)
    reconnect: bool = True

    def build(self, *, clock: Clock = utc_now) -> VideoSource:
        """A :class:`VideoSource` for this camera (not yet opened).

        Args:
            clock: gives ``captured_at``.

        Returns:
            The source.
        """
        return VideoSource(self.index, reconnect=self.reconnect, clock=clock)


SourceConfig = Annotated[
    FolderSourceConfig | VideoSourceConfig | DeviceSourceConfig, Field(discriminator="type")
]
"""Any source configuration, told apart by its ``type`` ("folder", "video", "device")."""

_SOURCE_CONFIG: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


def parse_source_config(data: Mapping[str, Any]) -> SourceConfig:
    """Validate a source configuration (e.g. the ``source:`` block of a settings file).

    Args:
        data: a mapping with a ``type`` key and that type's fields.

    Returns:
        The matching config model.

    Raises:
        ConfigError: the data does not describe a valid source.
    """
    try:
        return _SOURCE_CONFIG.validate_python(data)
    except ValidationError as e:
        raise ConfigError(f"invalid source configuration: {e}") from e


def source_from_uri(text: str) -> SourceConfig:
    """Guess a source configuration from a command-line value.

    An existing folder is a folder source; a single image file is a folder source reading just that file;
    a whole number is a camera index; a URL or another existing file is a video source.

    Args:
        text: what the user typed after ``--source``.

    Returns:
        The config.

    Raises:
        ConfigError: the text is none of these.
    """
    text = text.strip()
    if not text:
        raise ConfigError("expected a source (image folder, video file/URL or camera index), got ''")
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSourceConfig(path=path)
    if text.isdigit():
        return DeviceSourceConfig(index=int(text))
    if "://" in text:
        return VideoSourceConfig(uri=text)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return FolderSourceConfig(path=path.parent, pattern=_escape_pattern(path.name))
        return VideoSourceConfig(uri=str(path))
    raise ConfigError(
        f"source {text!r} is not an existing image folder, a video file, a stream URL or a camera index"
    )


def _escape_pattern(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
