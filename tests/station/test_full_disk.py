"""A real full disk under the station: a small tmpfs holds the store and the image archive.

Needs root (to mount tmpfs); skipped elsewhere with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_factory import part_image
from qcstation.inspect.detector import Detector
from qcstation.station.archive import ImageArchive
from qcstation.station.pipeline import Station
from qcstation.station.recipe import load_recipe
from qcstation.station.sources import ListSource
from qcstation.station.store import Store

GOOD = part_image((96, 96))
BAD = part_image((96, 96), blobs=((48, 48, 8),))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while os.write(fd, chunk):
                pass
    finally:
        os.close(fd)
    probe = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left") as e:
            os.write(probe, b"\0" * 65536)
    finally:
        os.close(probe)
    assert e.value.errno == errno.ENOSPC
    (directory / "probe").unlink()
    return filler


class FillsTheDisk(ListSource):
    """Frames from a list; the disk fills up just before the first frame is handed out."""

    def __init__(self, frames: list[object], disk: Path) -> None:
        super().__init__(frames)  # type: ignore[arg-type]
        self.disk = disk
        self.filler: Path | None = None

    def read(self):  # type: ignore[no-untyped-def]
        if self.filler is None:
            self.filler = fill(self.disk)
        return super().read()


class Signals:
    """A sink that remembers which records were signalled, and whether each was in the store by then."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ids: list[str] = []
        self.unstored: list[str] = []

    def on_committed(self, decision: object) -> None:
        rid = decision.record_id  # type: ignore[attr-defined]
        self.ids.append(rid)
        if self.store.get_inspection(rid) is None:
            self.unstored.append(rid)

    def on_event(self, event: object) -> None:
        pass


@pytest.mark.slow
def test_a_full_disk_stalls_the_commit_loses_nothing_and_resumes(
    small_disk: Path, tmp_path: Path, tiny_model: Path
) -> None:
    # given a station whose store and archive live on a 3 MB disk, keeping every image
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"product: widget\nmodel: {tiny_model}\nclasses: {{dark: {{min_area_px: 20}}}}\n"
        "holds: {consecutive_fails: 100}\nimages: {keep_pass_every: 1}\n"
    )
    store = Store.open(small_disk / "qc.db", "st1")
    signals = Signals(store)
    frames = [GOOD, BAD] * 10
    source = FillsTheDisk(frames, small_disk)
    station = Station(
        source=source,
        detector=Detector.from_path(tiny_model),
        recipe=load_recipe(recipe),
        store=store,
        archive=ImageArchive(small_disk / "images"),
        batch_id="B1",
        sinks=[signals],
    )
    # when the disk fills up as the station starts inspecting
    result: dict[str, object] = {}
    runner = threading.Thread(target=lambda: result.setdefault("summary", station.run()))
    runner.start()
    deadline = time.monotonic() + 20
    while station.stats.store_fault is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # then the commit fails with the disk's own error, and nothing is signalled meanwhile
    fault = station.stats.store_fault
    assert fault is not None, "the station never reported the full disk"
    assert "full" in fault.lower() or "space" in fault.lower(), fault
    assert signals.ids == []
    # when space comes back, the station catches up on its own
    assert source.filler is not None
    source.filler.unlink()
    runner.join(timeout=60)
    assert not runner.is_alive()
    try:
        # then every part is stored once, signalled only after it was stored, and the chain verifies
        assert store.count_inspections() == len(frames)
        assert len(signals.ids) == len(frames) and signals.unstored == []
        assert station.stats.store_fault is None
        rows = store.inspections(limit=100)
        assert sorted(r.verdict.value for r in rows) == ["FAIL"] * 10 + ["PASS"] * 10
        assert store.verify().ok
        # every record names its image, stored whole (content-addressed: the two distinct frames)
        refs = {r.image_ref for r in rows}
        assert None not in refs and len(refs) == 2
        assert len(list((small_disk / "images").rglob("*.png"))) == 2
    finally:
        store.close()
