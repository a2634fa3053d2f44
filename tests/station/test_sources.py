"""Capture sources: real files written with OpenCV, hand-written fakes for clocks and flaky hardware."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import BaseModel

from qcstation.inspect.types import Frame
from qcstation.station.errors import ConfigError, SourceError, SourceLost
from qcstation.station.sources import (
    DeviceSourceConfig,
    FolderSource,
    FolderSourceConfig,
    ListSource,
    Reconnecting,
    Source,
    SourceConfig,
    TriggerSource,
    VideoSource,
    VideoSourceConfig,
    decode_image,
    parse_source_config,
    sniff_extension,
    source_from_uri,
)
from qcstation.station.types import StationFault

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


# -- fakes ----------------------------------------------------------------------------------------------


class FakeClock:
    """Wall clock, monotonic clock and sleep in one; sleeping advances both and is recorded."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.advance(seconds)


class FlakySource:
    """A camera that follows a shared :class:`FlakyPlan`: it fails to open while ``open_failures`` last,
    and after ``frames_per_session`` frames per opening is lost while ``read_failures`` last."""

    def __init__(self, plan: FlakyPlan) -> None:
        self.plan = plan
        self.name = "flaky-cam"
        self.opened = False
        self.served = 0

    def __enter__(self) -> FlakySource:
        self.plan.opens += 1
        if self.plan.open_failures > 0:
            self.plan.open_failures -= 1
            raise SourceError("flaky-cam: device not found")
        self.opened = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.opened = False
        self.plan.closes += 1

    def read(self) -> Frame | None:
        assert self.opened, "read() on a closed fake"
        if self.plan.read_failures > 0 and self.served >= self.plan.frames_per_session:
            self.plan.read_failures -= 1
            raise SourceLost("flaky-cam: grab failed")
        if self.plan.total >= self.plan.end_after:
            return None
        self.served += 1
        self.plan.total += 1
        return Frame(frame_id=str(self.plan.total), captured_at=T0, image=np.zeros((8, 8), np.uint8))


class FlakyPlan:
    """Shared state of all FlakySource instances a factory builds."""

    def __init__(
        self,
        *,
        open_failures: int = 0,
        read_failures: int = 0,
        frames_per_session: int = 0,
        end_after: int = 99,
    ) -> None:
        self.open_failures = open_failures
        self.read_failures = read_failures
        self.frames_per_session = frames_per_session
        self.end_after = end_after
        self.opens = 0
        self.closes = 0
        self.total = 0

    def factory(self) -> Source:
        return FlakySource(self)


class FakeCapture:
    """Stands in for cv2.VideoCapture: returns the given frames, then failed grabs."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = list(frames)
        self.released = False

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.frames:
            return True, self.frames.pop(0)
        return False, None

    def release(self) -> None:
        self.released = True


# -- helpers --------------------------------------------------------------------------------------------


def gray(h: int = 16, w: int = 16, value: int = 128) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def write_image(path: Path, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(path.suffix.lower().replace(".jpeg", ".jpg"), image)
    assert ok
    data = buf.tobytes()
    path.write_bytes(data)
    return data


def read_all(source: Source, limit: int = 100) -> list[Frame]:
    frames: list[Frame] = []
    with source as src:
        while (frame := src.read()) is not None:
            frames.append(frame)
            assert len(frames) <= limit, "source did not end"
    return frames


# -- FolderSource ---------------------------------------------------------------------------------------


def test_folder_reads_images_in_name_order_and_ignores_other_files(tmp_path: Path) -> None:
    # given a folder with images of every supported extension (any case), other files and a masks/ folder
    names = ["c.png", "a.JPG", "b.jpeg", "d.bmp", "e.tif", "f.TIFF"]
    written = {n: write_image(tmp_path / n, gray(value=10 * i)) for i, n in enumerate(names)}
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text("file,label\n")
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "masks" / "a.png", gray())
    (tmp_path / "g.gif").write_bytes(b"GIF89a")
    clock = FakeClock()

    # when it is read to the end
    frames = read_all(FolderSource(tmp_path, clock=clock))

    # then exactly the images come back, sorted by name, with their bytes, extension, serial and time
    assert [f.frame_id for f in frames] == ["a.JPG", "b.jpeg", "c.png", "d.bmp", "e.tif", "f.TIFF"]
    assert all(f.ok for f in frames)
    assert [f.serial for f in frames] == ["a", "b", "c", "d", "e", "f"]
    assert [f.encoded_ext for f in frames] == [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"]
    assert all(f.encoded == written[f.frame_id] for f in frames)
    assert all(f.captured_at == T0 and f.source == str(tmp_path) for f in frames)
    assert frames[2].image is not None and int(frames[2].image[0, 0]) == 0  # c.png, value 10*0


def test_folder_pattern_and_serial_from_name_off(tmp_path: Path) -> None:
    for n in ("part_1.png", "part_2.png", "ref.png"):
        write_image(tmp_path / n, gray())

    frames = read_all(FolderSource(tmp_path, pattern="part_*", serial_from_name=False))

    assert [f.frame_id for f in frames] == ["part_1.png", "part_2.png"]
    assert all(f.serial is None for f in frames)


def test_folder_missing_or_without_images_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"), FolderSource(tmp_path / "nope"):
        pass
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no images in .*\(looked for \*\.png, \*\.jpg") as info:
        FolderSource(tmp_path).__enter__()
    assert info.value.code == "source"
    with pytest.raises(SourceError, match="expected an image folder, got a file"):
        FolderSource(tmp_path / "readme.txt").__enter__()


def test_folder_read_before_open_raises(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", gray())
    with pytest.raises(SourceError, match="not open"):
        FolderSource(tmp_path).read()


@pytest.mark.parametrize(
    ("name", "content", "fault"),
    [
        ("part_0007.png", "random", "part_0007.png: cannot decode (truncated or not an image)"),
        ("part_0007.png", "truncated_png", "part_0007.png: cannot decode (truncated or not an image)"),
        ("part_0007.jpg", "truncated_jpg", "part_0007.jpg: cannot decode (truncated or not an image)"),
        ("part_0008.png", "empty", "part_0008.png: empty file (0 bytes)"),
        ("part_0009.png", "tiny", "part_0009.png: expected an image at least 8x8 pixels, got shape (3, 3)"),
    ],
)
def test_folder_bad_image_becomes_a_fault_frame(tmp_path: Path, name: str, content: str, fault: str) -> None:
    # given a good image followed by a bad one
    write_image(tmp_path / "part_0001.png", gray())
    rng = np.random.default_rng(7)
    big = rng.integers(0, 255, (64, 64, 3), np.uint8)
    if content == "random":
        (tmp_path / name).write_bytes(rng.bytes(2000))
    elif content == "truncated_png":
        data = cv2.imencode(".png", big)[1].tobytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    elif content == "truncated_jpg":
        data = cv2.imencode(".jpg", big)[1].tobytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    elif content == "empty":
        (tmp_path / name).write_bytes(b"")
    else:
        assert cv2.imwrite(str(tmp_path / name), gray(3, 3))

    # when read
    frames = read_all(FolderSource(tmp_path))

    # then the bad file is a frame with a fault (never an exception) and the serial is kept
    assert len(frames) == 2 and frames[0].ok
    bad = frames[1]
    assert not bad.ok and bad.image is None
    # the bytes that could not be decoded are kept as evidence for the ERROR record (none for an empty file)
    assert bad.encoded == ((tmp_path / name).read_bytes() or None)
    assert bad.fault == fault
    assert bad.serial == Path(name).stem and bad.frame_id == name


def test_folder_file_gone_after_open_is_an_unreadable_fault(tmp_path: Path) -> None:
    write_image(tmp_path / "part_0009.png", gray())
    with FolderSource(tmp_path) as src:
        (tmp_path / "part_0009.png").unlink()
        frame = src.read()
    assert frame is not None
    assert frame.fault == "part_0009.png: unreadable: No such file or directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files regardless of mode")
def test_folder_permission_denied_is_an_unreadable_fault(tmp_path: Path) -> None:
    path = tmp_path / "part_0009.png"
    write_image(path, gray())
    path.chmod(0)
    try:
        frames = read_all(FolderSource(tmp_path))
    finally:
        path.chmod(0o644)
    assert frames[0].fault == "part_0009.png: unreadable: Permission denied"


def test_folder_os_error_while_reading_is_an_unreadable_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root ignores file modes, so the refusal is simulated at the one call the source makes
    write_image(tmp_path / "part_0009.png", gray())
    write_image(tmp_path / "part_0010.png", gray())
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "part_0009.png":
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    frames = read_all(FolderSource(tmp_path))
    assert frames[0].fault == "part_0009.png: unreadable: Permission denied"
    assert frames[1].ok


def test_folder_passes_16_bit_and_4_channel_images_through(tmp_path: Path) -> None:
    deep = np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80  # values up to ~61k
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 200
    rgba[5:10, 5:10, 2] = 255
    assert cv2.imwrite(str(tmp_path / "a_deep.png"), deep)
    assert cv2.imwrite(str(tmp_path / "b_rgba.png"), rgba)

    a, b = read_all(FolderSource(tmp_path))

    assert a.image is not None and a.image.dtype == np.uint16
    np.testing.assert_array_equal(a.image, deep)
    assert b.image is not None and b.image.shape == (20, 30, 4)
    np.testing.assert_array_equal(b.image, rgba)


def test_folder_rate_paces_reads_without_bursting_after_a_late_consumer(tmp_path: Path) -> None:
    for i in range(5):
        write_image(tmp_path / f"p{i}.png", gray())
    clock = FakeClock()
    src = FolderSource(tmp_path, rate_hz=10, clock=clock, sleep=clock.sleep, monotonic=clock.monotonic)

    with src:
        src.read()  # first frame at once
        assert clock.sleeps == []
        src.read()  # waits one period
        assert clock.sleeps == [0.1]
        clock.advance(0.04)  # the consumer took 40 ms
        src.read()
        assert clock.sleeps == [0.1, 0.06]
        clock.advance(0.5)  # the consumer stalled for 5 periods
        src.read()  # late: no wait ...
        assert clock.sleeps == [0.1, 0.06]
        src.read()  # ... and no burst: the next one is a full period later
        assert clock.sleeps == [0.1, 0.06, 0.1]


def test_folder_loop_repeats_with_unique_ids_and_without_loop_ends(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", gray())
    write_image(tmp_path / "b.png", gray())

    with FolderSource(tmp_path, loop=True) as src:
        ids = [f.frame_id for f in (src.read() for _ in range(5)) if f is not None]
    assert ids == ["a.png", "b.png", "a.png#2", "b.png#2", "a.png#3"]

    with FolderSource(tmp_path) as src:
        assert src.read() is not None and src.read() is not None
        assert src.read() is None
        assert src.read() is None


def test_folder_source_rejects_a_non_positive_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate_hz > 0"):
        FolderSource(tmp_path, rate_hz=0)


# -- VideoSource ----------------------------------------------------------------------------------------


def test_video_file_round_trip(tmp_path: Path) -> None:
    # given a short MJPG .avi with five frames of rising brightness
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    clock = FakeClock()

    # when read to the end
    frames = read_all(VideoSource(str(path), clock=clock))

    # then every frame comes back in order with a running number, and the end of the file is None
    assert [f.frame_id for f in frames] == ["1", "2", "3", "4", "5"]
    assert all(f.image is not None and f.image.shape == (48, 64, 3) for f in frames)
    means = [float(f.image.mean()) for f in frames if f.image is not None]
    assert means == sorted(means) and means[0] < 5 and means[-1] > 150
    assert all(f.captured_at == T0 and f.serial is None and f.source == str(path) for f in frames)


def test_video_missing_file_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"), VideoSource(str(tmp_path / "none.avi")):
        pass


def test_video_unopenable_file_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "junk.avi"
    path.write_bytes(b"this is not a video")
    with pytest.raises(SourceError, match="cannot open"), VideoSource(str(path)):
        pass


def test_video_failed_grab_on_a_live_source_raises_source_lost() -> None:
    src = VideoSource(0)  # a camera index: live
    cap = FakeCapture([np.zeros((16, 16, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)])
    src._cap = cap

    first = src.read()
    tiny = src.read()
    with pytest.raises(SourceLost, match="grab failed"):
        src.read()
    src.close()

    assert first is not None and first.ok and first.frame_id == "1" and first.source == "camera 0"
    assert tiny is not None and tiny.fault is not None and "at least 8x8" in tiny.fault
    assert cap.released


def test_video_live_source_without_reconnect_ends_on_a_failed_grab() -> None:
    src = VideoSource("rtsp://camera.local/stream", reconnect=False)
    src._cap = FakeCapture([])
    assert src.is_live
    assert src.read() is None


# -- ListSource -----------------------------------------------------------------------------------------


def test_list_source_takes_arrays_bytes_and_frames() -> None:
    png = cv2.imencode(".png", gray(value=7))[1].tobytes()
    ready = Frame(frame_id="given", captured_at=T0 - timedelta(days=1), image=gray())
    clock = FakeClock()

    frames = read_all(
        ListSource(
            [gray(), png, ready, b"garbage", gray(2, 2)],
            name="upload",
            serials=["SN1", "SN2", None, None, "SN5"],
            clock=clock,
        )
    )

    assert [f.frame_id for f in frames] == ["1", "2", "given", "4", "5"]
    assert [f.serial for f in frames] == ["SN1", "SN2", None, None, "SN5"]
    assert frames[1].encoded == png and frames[1].encoded_ext == ".png"
    assert frames[1].image is not None and int(frames[1].image[0, 0]) == 7
    assert frames[2] is ready
    assert frames[3].fault == "4: cannot decode (truncated or not an image)"
    assert frames[4].fault is not None and "at least 8x8" in frames[4].fault
    assert frames[0].captured_at == T0 and frames[0].source == "upload"


def test_list_source_checks_its_arguments_and_needs_opening() -> None:
    with pytest.raises(ValueError, match="expected 2 serials"):
        ListSource([gray(), gray()], serials=["a"])
    with pytest.raises(TypeError, match="at index 1"):
        ListSource([gray(), "nope"])  # type: ignore[list-item]
    with pytest.raises(SourceError, match="not open"):
        ListSource([gray()]).read()


def test_list_source_loop_and_frame_ids() -> None:
    with ListSource([gray(), gray()], frame_ids=["x", "y"], loop=True) as src:
        ids = [f.frame_id for f in (src.read() for _ in range(3)) if f is not None]
    assert ids == ["x", "y", "x#2"]


@pytest.mark.parametrize(
    ("ext", "expected"), [(".png", ".png"), (".jpg", ".jpg"), (".bmp", ".bmp"), (".tif", ".tif")]
)
def test_sniff_extension(ext: str, expected: str) -> None:
    assert sniff_extension(cv2.imencode(ext, gray())[1].tobytes()) == expected


def test_sniff_extension_unknown_and_decode_empty() -> None:
    assert sniff_extension(b"hello") == ".bin"
    assert decode_image(b"", "x.png") == (None, "x.png: empty file (0 bytes)")


# -- TriggerSource --------------------------------------------------------------------------------------


def test_trigger_source_reads_one_frame_per_trigger_with_its_serial() -> None:
    inner = ListSource([gray(value=v) for v in range(10)], name="cam")
    src = TriggerSource(inner)
    got: list[Frame | None] = []

    def reader() -> None:
        while True:
            frame = src.read()
            got.append(frame)
            if frame is None:
                return

    with src:
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(0.05)
        assert got == []  # blocks until a trigger arrives

        src.trigger("SN-1")
        src.trigger(None)
        src.trigger("SN-3")
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        src.stop()
        thread.join(timeout=5)

    assert not thread.is_alive()
    assert [f.serial if f else "END" for f in got] == ["SN-1", None, "SN-3", "END"]
    assert [f.frame_id for f in got if f] == ["1", "2", "3"]
    assert src.name == "trigger(cam)"
    src.trigger("late")  # ignored after stop
    assert src.pending == 0


def test_trigger_source_from_many_threads_serves_every_trigger() -> None:
    src = TriggerSource(ListSource([gray()] * 40))

    def fire(k: int) -> None:
        for i in range(10):
            src.trigger(f"T{k}-{i}")

    workers = [threading.Thread(target=fire, args=(k,)) for k in range(4)]
    with src:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        serials = {f.serial for f in (src.read() for _ in range(40)) if f is not None}
    assert len(serials) == 40


def test_trigger_source_returns_none_when_the_inner_source_ends() -> None:
    src = TriggerSource(ListSource([gray()]))
    with src:
        src.trigger("a")
        src.trigger("b")
        assert src.read() is not None
        assert src.read() is None


# -- Reconnecting ---------------------------------------------------------------------------------------


def test_reconnecting_reports_one_fault_then_recovery_with_backoff() -> None:
    # given a camera that is missing for six attempts, then works
    plan = FlakyPlan(open_failures=6, end_after=3)
    clock = FakeClock()
    events: list[StationFault] = []
    src = Reconnecting(plan.factory, on_fault=events.append, sleep=clock.sleep, clock=clock)

    # when read
    frames = read_all(src)

    # then it waited by the backoff (the last value repeats), reported the outage once and its end once
    assert clock.sleeps == [0.5, 1.0, 2.0, 5.0, 10.0, 10.0]
    assert [f.frame_id for f in frames] == ["1", "2", "3"]
    assert [(e.kind, e.recovered) for e in events] == [("source", False), ("source", True)]
    assert events[0].at == T0 and "device not found" in events[0].detail
    assert events[1].at == T0 + timedelta(seconds=28.5)
    assert "6 reconnect attempt(s)" in events[1].detail and "down 28.5 s" in events[1].detail
    assert src.name == "flaky-cam" and not src.faulted
    assert plan.opens == 7


def test_reconnecting_reopens_a_lost_source_and_resets_backoff_after_recovery() -> None:
    # given a camera that is lost after every second frame, twice
    plan = FlakyPlan(read_failures=2, frames_per_session=2, end_after=6)
    clock = FakeClock()
    events: list[StationFault] = []
    src = Reconnecting(plan.factory, on_fault=events.append, backoff_s=(1, 3), sleep=clock.sleep, clock=clock)

    frames = read_all(src)

    assert [f.frame_id for f in frames] == ["1", "2", "3", "4", "5", "6"]
    assert [e.recovered for e in events] == [False, True, False, True]
    assert all("grab failed" in e.detail for e in events if not e.recovered)
    assert clock.sleeps == [1.0, 1.0]  # the backoff starts over after each recovery
    assert plan.opens == 3 and plan.closes == 3  # the lost ones closed before reopening, the last on exit


def test_reconnecting_recovers_only_when_a_frame_arrives() -> None:
    # given a camera that opens but is lost at once, three times in a row
    plan = FlakyPlan(read_failures=3, frames_per_session=0, end_after=1)
    clock = FakeClock()
    events: list[StationFault] = []
    src = Reconnecting(plan.factory, on_fault=events.append, sleep=clock.sleep, clock=clock)

    frames = read_all(src)

    assert len(frames) == 1
    assert [e.recovered for e in events] == [False, True]
    assert clock.sleeps == [0.5, 1.0, 2.0]  # opening alone did not reset the backoff


def test_reconnecting_stop_interrupts_the_backoff_and_read_returns_none() -> None:
    plan = FlakyPlan(open_failures=10**6)
    events: list[StationFault] = []
    src = Reconnecting(plan.factory, on_fault=events.append, backoff_s=(60,))
    result: list[Frame | None] = ["unset"]  # type: ignore[list-item]

    with src:
        thread = threading.Thread(target=lambda: result.__setitem__(0, src.read()), daemon=True)
        thread.start()
        time.sleep(0.05)
        started = time.monotonic()
        src.stop()
        thread.join(timeout=5)

    assert not thread.is_alive() and time.monotonic() - started < 2
    assert result == [None]
    assert [e.recovered for e in events] == [False]


def test_reconnecting_survives_a_broken_fault_listener() -> None:
    plan = FlakyPlan(open_failures=1, end_after=1)
    clock = FakeClock()

    def broken(_: StationFault) -> None:
        raise RuntimeError("listener bug")

    frames = read_all(Reconnecting(plan.factory, on_fault=broken, sleep=clock.sleep, clock=clock))

    assert len(frames) == 1


def test_reconnecting_checks_backoff_and_needs_opening() -> None:
    with pytest.raises(ValueError, match="backoff_s"):
        Reconnecting(FlakyPlan().factory, on_fault=lambda _: None, backoff_s=())
    with pytest.raises(SourceError, match="not open"):
        Reconnecting(FlakyPlan().factory, on_fault=lambda _: None).read()


# -- configuration --------------------------------------------------------------------------------------


class _Settings(BaseModel):
    source: SourceConfig


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"type": "folder", "path": "sample_images", "rate_hz": 5, "loop": True}, FolderSourceConfig),
        ({"type": "video", "uri": "rtsp://10.0.0.5/stream"}, VideoSourceConfig),
        ({"type": "device", "index": 1}, DeviceSourceConfig),
    ],
)
def test_source_config_is_chosen_by_type(data: dict[str, Any], kind: type[BaseModel]) -> None:
    assert isinstance(parse_source_config(data), kind)
    assert isinstance(_Settings.model_validate({"source": data}).source, kind)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "ftp", "uri": "x"}, "does not match any of the expected tags"),
        ({"uri": "x"}, "Unable to extract tag"),
        ({"type": "folder", "path": "x", "rate_hz": 0}, "greater than 0"),
        ({"type": "device", "index": -1}, "greater than or equal to 0"),
        ({"type": "video", "uri": "x", "fps": 3}, "Extra inputs are not permitted"),
    ],
)
def test_source_config_refuses_bad_data(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_source_config(data)


def test_source_configs_build_their_sources(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = FolderSourceConfig(path=tmp_path, rate_hz=2, loop=True).build(clock=clock)
    assert isinstance(folder, FolderSource) and folder.rate_hz == 2 and folder.loop
    video = VideoSourceConfig(uri="rtsp://x/y", reconnect=False).build()
    assert isinstance(video, VideoSource) and video.uri == "rtsp://x/y" and not video.reconnect
    device = DeviceSourceConfig(index=2).build()
    assert isinstance(device, VideoSource) and device.uri == 2
    factory: Callable[[], Source] = FolderSourceConfig(
        path=tmp_path
    ).build  # usable as a Reconnecting factory
    assert isinstance(factory(), FolderSource)


def test_every_source_satisfies_the_protocol(tmp_path: Path) -> None:
    sources: list[object] = [
        FolderSource(tmp_path),
        VideoSource(0),
        ListSource([]),
        TriggerSource(ListSource([])),
        Reconnecting(FlakyPlan().factory, on_fault=lambda _: None),
    ]
    assert all(isinstance(s, Source) for s in sources)


def test_source_from_uri(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00")
    single = images / "part[1].png"
    write_image(single, gray())
    write_image(images / "part1.png", gray())

    assert source_from_uri(str(images)) == FolderSourceConfig(path=images)
    assert source_from_uri("0") == DeviceSourceConfig(index=0)
    assert source_from_uri(" 12 ") == DeviceSourceConfig(index=12)
    assert source_from_uri("rtsp://10.0.0.5:554/live") == VideoSourceConfig(uri="rtsp://10.0.0.5:554/live")
    assert source_from_uri("http://cam/mjpg") == VideoSourceConfig(uri="http://cam/mjpg")
    assert source_from_uri(str(clip)) == VideoSourceConfig(uri=str(clip))

    one = source_from_uri(str(single))
    assert isinstance(one, FolderSourceConfig) and one.path == images
    assert [f.frame_id for f in read_all(one.build())] == ["part[1].png"]

    with pytest.raises(ConfigError, match="not an existing image folder"):
        source_from_uri(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="expected a source"):
        source_from_uri("  ")
