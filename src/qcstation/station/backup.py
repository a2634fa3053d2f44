"""Online backup and restore of the SQLite store, and the disk-usage guard of the image archive.

:func:`backup_sqlite` uses SQLite's backup API, which copies a consistent snapshot page by page while the
station keeps writing (it restarts the copy when a writer changes a page already copied).
:func:`restore_sqlite` checks the copy's hash chain before it replaces a store, and removes the old
store's WAL side files so they cannot be replayed onto the restored file. Stop the station before a restore.

:func:`guard_disk` prunes archived PASS images, oldest first, while the disk's free share is below a
threshold; FAIL/REVIEW/ERROR/HOLD/REJECT images are never touched by it (their retention is ``qcstation
prune --include-rejects``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from qcstation.station.archive import DEFAULT_KEEP, ImageArchive, PruneRecord, fsync_dir
from qcstation.station.errors import StoreError
from qcstation.station.store import Store, VerifyReport

log = logging.getLogger(__name__)

__all__ = ["GuardResult", "backup_sqlite", "guard_disk", "restore_sqlite"]


def backup_sqlite(src: Path, out: Path, *, pages: int = 4096) -> Path:
    """Copy a live SQLite store to ``out`` (written to a temporary file, then moved into place).

    Raises:
        StoreError: the store cannot be read or the copy written.
    """
    if not src.exists():
        raise StoreError(f"no store at {src}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with (
            contextlib.closing(sqlite3.connect(src, timeout=30)) as source,
            contextlib.closing(sqlite3.connect(tmp)) as dest,
        ):
            source.backup(dest, pages=pages, sleep=0.005)
            dest.execute("PRAGMA journal_mode=DELETE")
            ok = dest.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise StoreError(f"backup of {src} failed its integrity check: {ok}")
        os.replace(tmp, out)
        fsync_dir(out.parent)  # the rename is what makes it the backup: a power cut must not undo it
    except (sqlite3.Error, OSError) as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise StoreError(f"cannot back up {src} to {out}: {e}") from e
    return out


def verify_copy(path: Path) -> VerifyReport:
    """Walk the hash chain of a store file, read-only (nothing is written to it)."""
    engine = sa.create_engine(sa.URL.create("sqlite", database=str(path)))
    with Store(engine, "restore-check", display=str(path)) as s:
        return s.verify()


def restore_sqlite(backup: Path, target: Path, *, force: bool = False) -> VerifyReport:
    """Replace the store at ``target`` with ``backup`` after checking the backup's chain.

    Raises:
        StoreError: the backup is missing or its chain is broken, or ``target`` exists and not ``force``.
    """
    if not backup.exists():
        raise StoreError(f"no backup at {backup}")
    if target.exists() and not force:
        raise StoreError(f"{target} exists; pass force to replace it (stop the station first)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.restoring")
    backup_sqlite(backup, tmp)
    report = verify_copy(tmp)
    if not report.ok:
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise StoreError(f"backup {backup} does not verify: {report.describe()}")
    with contextlib.closing(sqlite3.connect(tmp)) as conn:  # fold the check's WAL into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    for side in (Path(f"{target}-wal"), Path(f"{target}-shm"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        with contextlib.suppress(FileNotFoundError):
            side.unlink()
    try:
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as e:
        raise StoreError(f"cannot put the restored store in place at {target}: {e}") from e
    return report


@dataclass(frozen=True, slots=True)
class GuardResult:
    """What :func:`guard_disk` did."""

    free_before: float
    free_after: float
    removed: int
    freed_bytes: int


def _free_share(archive: ImageArchive) -> float:
    u = archive.usage()
    return u.disk_free / u.disk_total if u.disk_total else 1.0


def guard_disk(
    archive: ImageArchive,
    records: Callable[[], Iterable[PruneRecord]],
    *,
    now: datetime,
    min_free: float,
    retention_days: float,
    floor_days: float = 0.0,
    free_share: Callable[[ImageArchive], float] = _free_share,
) -> GuardResult:
    """Prune PASS images, oldest first, until the disk's free share is at least ``min_free``.

    The cutoff starts at ``retention_days`` and halves towards ``floor_days``; at each step images older than
    the cutoff go (via :meth:`ImageArchive.prune` with the default keep set, so no FAIL/REVIEW/ERROR/HOLD/
    REJECT image is ever removed here).

    Args:
        archive: the image archive.
        records: a fresh iterable of (ref, verdict, disposition, decided_at) per call
            (``store.image_records``).
        now: the current time.
        min_free: the free share of the disk to reach, 0..1.
        retention_days: the normal PASS retention; the first cutoff.
        floor_days: never remove PASS images younger than this.
        free_share: how full the disk is (tests pass a fake).
    """
    if not 0.0 <= min_free <= 1.0:
        raise ValueError(f"expected min_free in 0..1, got {min_free}")
    before = free_share(archive)
    removed = freed = 0
    days = retention_days
    while free_share(archive) < min_free:
        r = archive.prune(records(), now=now, retention_days=days, keep=DEFAULT_KEEP)
        removed += r.removed
        freed += r.freed_bytes
        if days <= floor_days:
            break
        days = max(floor_days, days / 2 if days > 1 / 24 else 0.0)
    after = free_share(archive)
    if removed:
        log.warning(
            "disk guard: removed %d PASS image(s), %.1f MB; free %.1f%%", removed, freed / 1e6, after * 100
        )
    return GuardResult(before, after, removed, freed)
