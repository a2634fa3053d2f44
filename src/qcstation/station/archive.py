"""Content-addressed image archive: each image is stored once, under the sha256 of its bytes.

A reference (``ref``) is the 64-hex-digit sha256 of the file's bytes; the file lives at
``root/ab/cd/<sha256>.<ext>``. Writes go to a temporary file in the same directory and are moved into place
with ``os.replace``, so a reader never sees half an image and a crash leaves no partial file under a ref.
Refs are validated before they touch the filesystem, so no caller-supplied value can name another path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from qcstation.inspect.types import check_image

_REF_RE = re.compile(r"[0-9a-f]{64}")
_EXT_RE = re.compile(r"[a-z0-9]{1,8}")

PruneRecord = tuple[str, str, str | datetime] | tuple[str, str, str, str | datetime]
"""``(ref, verdict, decided_at)`` or ``(ref, verdict, disposition, decided_at)``."""

DEFAULT_KEEP = frozenset({"FAIL", "REVIEW", "ERROR", "HOLD", "REJECT"})
"""Verdicts and dispositions whose images :meth:`ImageArchive.prune` never removes."""


def check_ref(ref: str) -> str:
    """Return ``ref`` when it is 64 lowercase hex digits.

    Raises:
        ValueError: anything else (so that no path can be smuggled in).
    """
    if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
        raise ValueError(f"expected an image ref of 64 lowercase hex digits, got {ref!r}")
    return ref


def _norm_ext(ext: str) -> str:
    e = ext.lower().lstrip(".")
    if e == "jpeg":
        e = "jpg"
    if not _EXT_RE.fullmatch(e):
        raise ValueError(f"expected a file extension of 1-8 letters or digits, got {ext!r}")
    return e


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (files created, renamed or removed in it) durable."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:  # not on this platform (Windows): os.replace is what we can do
        return
    fd = os.open(directory, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class ArchiveUsage:
    """How much the archive holds and how much room its disk has left, in bytes."""

    files: int
    bytes: int
    disk_free: int
    disk_total: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :meth:`ImageArchive.prune` removed."""

    removed: int
    freed_bytes: int


class ImageArchive:
    """Images stored by content hash under one root directory."""

    def __init__(self, root: Path) -> None:
        """Use ``root`` (created on the first write)."""
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ImageArchive({str(self.root)!r})"

    # -- write --------------------------------------------------------------------------------------------

    def put(self, data: bytes, ext: str) -> str:
        """Store encoded image bytes; idempotent (the same bytes give the same ref and one file).

        Args:
            data: the encoded image (PNG, JPEG, …), stored as-is.
            ext: its file extension, with or without the dot.

        Returns:
            The ref: the sha256 hex digest of ``data``.

        Raises:
            ValueError: empty data or a bad extension.
            OSError: the file cannot be written (disk full, read-only).
        """
        if not data:
            raise ValueError("expected image bytes, got none")
        e = _norm_ext(ext)
        ref = hashlib.sha256(data).hexdigest()
        directory = self._dir(ref)
        if (directory / f"{ref}.{e}").exists() or self._find(ref) is not None:
            return ref
        self._make_dirs(directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{ref[:16]}-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, directory / f"{ref}.{e}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)
        return ref

    def put_image(self, image: np.ndarray) -> str:
        """PNG-encode an image (lossless, 8 or 16 bit) and store it.

        Raises:
            FrameError: not an image the station handles.
            ValueError: OpenCV could not encode it.
            OSError: the file cannot be written.
        """
        check_image(image)
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"cannot PNG-encode an image of shape {image.shape} and dtype {image.dtype}")
        return self.put(buf.tobytes(), ".png")

    # -- read ---------------------------------------------------------------------------------------------

    def path(self, ref: str) -> Path:
        """The file of a ref.

        Raises:
            ValueError: a malformed ref.
            FileNotFoundError: no image under that ref.
        """
        found = self._find(check_ref(ref))
        if found is None:
            raise FileNotFoundError(f"no image {ref} in archive {self.root}")
        return found

    def get(self, ref: str) -> bytes:
        """The stored bytes of a ref (see :meth:`path` for errors)."""
        return self.path(ref).read_bytes()

    def folder(self, ref: str) -> Path:
        """The shard folder an image of ``ref`` is (or would be) stored in; it may not exist yet.

        Raises:
            ValueError: a malformed ref.
        """
        return self._dir(check_ref(ref))

    def __contains__(self, ref: object) -> bool:
        return isinstance(ref, str) and bool(_REF_RE.fullmatch(ref)) and self._find(ref) is not None

    # -- housekeeping -------------------------------------------------------------------------------------

    def prune(
        self,
        records: Iterable[PruneRecord],
        *,
        now: datetime,
        retention_days: float,
        keep: Collection[str] = DEFAULT_KEEP,
    ) -> PruneResult:
        """Delete images past retention whose every record may lose its image.

        An image may be shared by several records (same bytes, one file), so it is removed only when *all*
        records naming it are older than the retention period and none has a verdict or disposition in
        ``keep``. Images no record names are left alone (a commit may still be on its way).

        Args:
            records: ``(ref, verdict, decided_at)`` or ``(ref, verdict, disposition, decided_at)`` tuples,
                e.g. :meth:`qcstation.station.store.Store.image_records`; ``decided_at`` is a datetime or
                ISO-8601 text.
            now: the current time (timezone-aware).
            retention_days: images of records decided before ``now - retention_days`` may go.
            keep: verdicts and dispositions whose images are never removed.

        Returns:
            How many files were removed and the bytes freed.
        """
        if now.tzinfo is None:
            raise ValueError(f"expected a timezone-aware now, got naive {now.isoformat()}")
        if retention_days < 0:
            raise ValueError(f"expected retention_days >= 0, got {retention_days}")
        cutoff = now - timedelta(days=retention_days)
        keep_set = {k.upper() for k in keep}
        prunable: dict[str, bool] = {}
        for rec in records:
            if len(rec) == 3:
                ref, verdict, decided = rec
                labels = {str(verdict).upper()}
            elif len(rec) == 4:
                ref, verdict, disposition, decided = rec
                labels = {str(verdict).upper(), str(disposition).upper()}
            else:
                raise ValueError(f"expected (ref, verdict[, disposition], decided_at), got {rec!r}")
            ok = not (labels & keep_set) and _as_utc(decided) < cutoff
            prunable[ref] = prunable.get(ref, True) and ok
        removed = freed = 0
        for ref, ok in prunable.items():
            if not ok or not _REF_RE.fullmatch(ref):
                continue
            found = self._find(ref)
            if found is None:
                continue
            size = found.stat().st_size
            with contextlib.suppress(FileNotFoundError):
                found.unlink()
                removed += 1
                freed += size
        return PruneResult(removed, freed)

    def usage(self) -> ArchiveUsage:
        """Files and bytes in the archive, and the free and total space of its disk."""
        files = size = 0
        if self.root.is_dir():
            for dirpath, _dirs, names in os.walk(self.root):
                for name in names:
                    if name.startswith("."):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        size += os.stat(os.path.join(dirpath, name)).st_size
                        files += 1
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        disk = shutil.disk_usage(probe)
        return ArchiveUsage(files=files, bytes=size, disk_free=disk.free, disk_total=disk.total)

    # -- internals ----------------------------------------------------------------------------------------

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and the missing folders above it, durably.

        A new folder's name is an entry in its parent, which a crash can lose like any other unsynced
        write: each folder created here has its parent fsynced, so that the file fsynced inside it can
        be found after a power cut.
        """
        missing: list[Path] = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
                d.mkdir()
            fsync_dir(d.parent)

    def _dir(self, ref: str) -> Path:
        return self.root / ref[:2] / ref[2:4]

    def _find(self, ref: str) -> Path | None:
        directory = self._dir(ref)
        if not directory.is_dir():
            return None
        prefix = f"{ref}."
        with os.scandir(directory) as entries:  # not Path.glob: it compiles a pattern per call (hot path)
            for entry in entries:
                if entry.name.startswith(prefix) and not entry.name.endswith(".tmp"):
                    return directory / entry.name
        return None


def _as_utc(value: object) -> datetime:
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value)
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if dt.tzinfo is None:
        raise ValueError(f"expected a timezone-aware decided_at, got naive {dt.isoformat()}")
    return dt.astimezone(UTC)
