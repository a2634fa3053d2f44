"""Tests of the content-addressed image archive."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from qcstation.inspect.errors import FrameError
from qcstation.station.archive import ImageArchive, PruneRecord, check_ref
from qcstation.station.store import Store, utc_iso
from qcstation.station.types import Disposition, Verdict
from station.factories_store import PRODUCT, RECIPE_HASH, Factory

NOW = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture
def archive(tmp_path: Path) -> ImageArchive:
    return ImageArchive(tmp_path / "images")


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_get_by_content_hash(archive: ImageArchive) -> None:
    data = b"\x89PNG fake image bytes"
    ref = archive.put(data, ".png")
    assert ref == hashlib.sha256(data).hexdigest()
    assert archive.path(ref) == archive.root / ref[:2] / ref[2:4] / f"{ref}.png"
    assert archive.get(ref) == data
    assert ref in archive


def test_put_is_idempotent_and_leaves_no_temporary_files(archive: ImageArchive) -> None:
    ref1 = archive.put(b"same", "png")
    ref2 = archive.put(b"same", ".PNG")
    ref3 = archive.put(b"other", ".jpeg")
    assert ref1 == ref2 != ref3
    assert [p.name for p in files(archive.root)] == sorted([f"{ref1}.png", f"{ref3}.jpg"])
    assert archive.path(ref3).suffix == ".jpg"


@pytest.mark.parametrize(
    "image",
    [
        np.arange(32 * 24, dtype=np.uint8).reshape(32, 24),
        np.arange(32 * 24 * 3, dtype=np.uint8).reshape(32, 24, 3),
        (np.arange(16 * 16, dtype=np.uint16) * 200).reshape(16, 16),
    ],
    ids=["gray8", "bgr8", "gray16"],
)
def test_put_image_is_lossless_png(archive: ImageArchive, image: np.ndarray) -> None:
    ref = archive.put_image(image)
    assert archive.path(ref).suffix == ".png"
    back = cv2.imdecode(np.frombuffer(archive.get(ref), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back is not None
    assert back.dtype == image.dtype and np.array_equal(back, image)
    assert archive.put_image(image.copy()) == ref


def test_put_image_refuses_what_is_not_an_image(archive: ImageArchive) -> None:
    with pytest.raises(FrameError, match="dtype float32"):
        archive.put_image(np.zeros((16, 16), np.float32))


@pytest.mark.parametrize(("data", "ext"), [(b"", ".png"), (b"x", "../x"), (b"x", ".p/ng"), (b"x", "")])
def test_put_refuses_bad_input(archive: ImageArchive, data: bytes, ext: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        archive.put(data, ext)
    assert not archive.root.exists()


@pytest.mark.parametrize(
    "ref",
    [
        "../../etc/passwd",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "ab/" + "c" * 61,
        "",
        "a" * 64 + ".png",
    ],
)
def test_bad_refs_never_reach_the_filesystem(archive: ImageArchive, ref: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        archive.path(ref)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        archive.get(ref)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        check_ref(ref)
    assert ref not in archive


def test_missing_ref(archive: ImageArchive) -> None:
    with pytest.raises(FileNotFoundError, match="no image"):
        archive.get("0" * 64)


def test_new_folders_are_made_durable_in_their_parents(
    archive: ImageArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qcstation.station.archive as archive_module

    synced: list[Path] = []
    real = archive_module.fsync_dir

    def record(directory: Path) -> None:
        synced.append(Path(directory))
        real(directory)

    monkeypatch.setattr(archive_module, "fsync_dir", record)
    ref = archive.put(b"first image", ".png")
    # each folder the write created is an entry of its parent, synced after it; then the file's own folder
    shard = archive.root / ref[:2] / ref[2:4]
    assert synced == [archive.root.parent, archive.root, archive.root / ref[:2], shard]

    synced.clear()
    ref2 = archive.put(b"second image", ".png")
    top = archive.root / ref2[:2]
    assert ref2[:2] != ref[:2]  # (these two bytes strings land in different top folders)
    assert synced == [archive.root, top, top / ref2[2:4]]  # only what is new has its parent synced

    synced.clear()
    archive.put(b"first image", ".png")
    assert synced == []  # an image already held writes nothing


def test_put_fails_with_oserror_when_the_root_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError):
        ImageArchive(blocker / "images").put(b"x", ".png")


def test_prune_keeps_rejects_recent_and_shared_images(archive: ImageArchive) -> None:
    old, recent = NOW - timedelta(days=100), NOW - timedelta(days=10)
    refs = {
        name: archive.put(name.encode(), ".png")
        for name in ("old_pass", "old_fail", "new_pass", "shared", "hold")
    }
    orphan = archive.put(b"orphan", ".png")
    records: list[PruneRecord] = [
        (refs["old_pass"], "PASS", old),
        (refs["old_fail"], "FAIL", utc_iso(old)),
        (refs["new_pass"], "PASS", recent),
        (refs["shared"], "PASS", old),
        (refs["shared"], "REVIEW", old),  # the same bytes also belong to a REVIEW part
        (refs["hold"], "PASS", "HOLD", utc_iso(old)),
    ]
    result = archive.prune(records, now=NOW, retention_days=90)
    assert result.removed == 1 and result.freed_bytes == len(b"old_pass")
    assert refs["old_pass"] not in archive
    assert all(refs[n] in archive for n in ("old_fail", "new_pass", "shared", "hold"))
    assert orphan in archive
    # pruning again changes nothing
    assert archive.prune(records, now=NOW, retention_days=90).removed == 0


def test_prune_with_custom_keep_and_zero_retention(archive: ImageArchive) -> None:
    ref = archive.put(b"a fail", ".png")
    assert (
        archive.prune([(ref, "FAIL", NOW - timedelta(seconds=1))], now=NOW, retention_days=0, keep=()).removed
        == 1
    )
    assert ref not in archive


def test_prune_refuses_naive_times(archive: ImageArchive) -> None:
    with pytest.raises(ValueError, match="naive"):
        archive.prune([], now=datetime(2025, 1, 1), retention_days=1)
    ref = archive.put(b"x", ".png")
    with pytest.raises(ValueError, match="naive"):
        archive.prune([(ref, "PASS", datetime(2025, 1, 1))], now=NOW, retention_days=1)


def test_prune_fed_by_the_store(tmp_path: Path, archive: ImageArchive) -> None:
    f = Factory(start=NOW - timedelta(days=200), step=timedelta(days=30))
    decisions = [
        f.decision(),
        f.decision(Verdict.FAIL),
        f.decision(),
        f.decision(Verdict.PASS, disposition=Disposition.HOLD),
    ]
    decisions += [f.decision(), f.decision()]  # days -50 and -20: within retention
    refs = {d.record_id: archive.put(d.record_id.encode(), ".png") for d in decisions}
    with Store.open(tmp_path / "q.db", "st-1") as store:
        store.commit(decisions, product=PRODUCT, recipe_hash=RECIPE_HASH, image_refs=refs)
        result = archive.prune(store.image_records(), now=NOW, retention_days=90)
    kept = [refs[d.record_id] in archive for d in decisions]
    assert kept == [False, True, False, True, True, True]
    assert result.removed == 2


def test_usage(archive: ImageArchive) -> None:
    empty = archive.usage()
    assert empty.files == 0 and empty.bytes == 0 and empty.disk_total > 0
    archive.put(b"12345", ".png")
    archive.put(b"678", ".jpg")
    u = archive.usage()
    assert (u.files, u.bytes) == (2, 8) and 0 < u.disk_free <= u.disk_total
