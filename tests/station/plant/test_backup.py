"""Online backup while the station writes, restore with a chain check, and the disk guard."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from qcstation.station.archive import ImageArchive
from qcstation.station.backup import backup_sqlite, guard_disk, restore_sqlite
from qcstation.station.errors import StoreError
from qcstation.station.store import Store
from station.factories_store import PRODUCT, RECIPE_HASH, T0, Factory
from station.test_store import open_b1


def test_backup_while_writing_then_restore_verifies(tmp_path: Path) -> None:
    src = tmp_path / "live" / "qcstation.db"
    store = Store.open(src, "st-1")
    open_b1(store)
    f = Factory()
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            ds = [f.decision() for _ in range(20)]
            store.commit(ds, product=PRODUCT, recipe_hash=RECIPE_HASH, image_refs={})

    t = threading.Thread(target=write)
    t.start()
    try:
        for k in range(3):
            backup_sqlite(src, tmp_path / f"b{k}.db", pages=16)
    finally:
        stop.set()
        t.join()
    store.close()
    target = tmp_path / "restored" / "qcstation.db"
    report = restore_sqlite(tmp_path / "b2.db", target)
    assert report.ok
    assert report.checked > 0
    with Store.open(target, "st-1") as s:
        assert s.verify().ok
        assert s.count_inspections() > 0
    with pytest.raises(StoreError, match="exists"):
        restore_sqlite(tmp_path / "b2.db", target)


def test_backup_and_restore_sync_the_folder_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qcstation.station.backup as backup_module

    synced: list[Path] = []
    monkeypatch.setattr(backup_module, "fsync_dir", lambda d: synced.append(Path(d)))
    with Store.open(tmp_path / "live.db", "st-1") as s:
        open_b1(s)
    backup_sqlite(tmp_path / "live.db", tmp_path / "backups" / "b.db")
    assert synced == [tmp_path / "backups"]
    synced.clear()
    restore_sqlite(tmp_path / "backups" / "b.db", tmp_path / "restored" / "qcstation.db")
    # the check copy is a backup of its own (into the target's folder), then the rename into place
    assert synced == [tmp_path / "restored", tmp_path / "restored"]


def test_a_tampered_backup_is_refused(tmp_path: Path) -> None:
    import sqlite3

    with Store.open(tmp_path / "a.db", "st-1") as s:
        open_b1(s)
        ds = [Factory().decision()]
        s.commit(ds, product=PRODUCT, recipe_hash=RECIPE_HASH, image_refs={})
    backup_sqlite(tmp_path / "a.db", tmp_path / "b.db")
    with sqlite3.connect(tmp_path / "b.db") as c:
        c.execute("update inspections set verdict = 'FAIL'")
    with pytest.raises(StoreError, match="does not verify"):
        restore_sqlite(tmp_path / "b.db", tmp_path / "c.db")
    assert not (tmp_path / "c.db").exists()


def test_cli_backup_and_restore(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from qcstation.cli import app

    with Store.open(tmp_path / "d" / "qcstation.db", "st-1") as s:
        open_b1(s)
    r = CliRunner().invoke(app, ["backup", str(tmp_path / "bk.db"), "-d", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["restore", str(tmp_path / "bk.db"), "-d", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert "chain intact: 1 rows verified for station(s) st-1" in " ".join(r.output.split())


def test_disk_guard_prunes_oldest_pass_first_and_never_rejects(tmp_path: Path) -> None:
    archive = ImageArchive(tmp_path / "img")
    now = T0 + timedelta(days=100)
    rows = []
    ages = [("PASS", 90), ("PASS", 30), ("PASS", 5), ("FAIL", 90), ("REVIEW", 60)]
    for k, (verdict, age) in enumerate(ages):
        ref = archive.put_image(np.full((8, 8), k * 10, np.uint8))
        disposition = "ACCEPT" if verdict == "PASS" else "REJECT"
        rows.append((ref, verdict, disposition, now - timedelta(days=age)))
    files = {"n": 5}

    def free(_a: ImageArchive) -> float:  # a disk whose free share grows with each removed file
        files["n"] = archive.usage().files
        return 0.9 - 0.1 * files["n"]

    kw = {"now": now, "retention_days": 60.0, "floor_days": 1.0, "free_share": free}
    result = guard_disk(archive, lambda: rows, min_free=0.55, **kw)  # type: ignore[arg-type]
    left = {r[1] + str((now - r[3]).days) for r in rows if r[0] in archive}
    assert left == {"PASS5", "FAIL90", "REVIEW60"}  # PASS 90 d then 30 d went; rejects stay
    assert result.removed == 2
    result = guard_disk(archive, lambda: rows, min_free=0.99, **kw)  # type: ignore[arg-type]
    assert {r[1] for r in rows if r[0] in archive} == {"FAIL", "REVIEW"}  # even under pressure
