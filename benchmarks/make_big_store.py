"""Build a large, valid traceability store for the API benchmark (1,000,000 inspections in a few minutes).

    python benchmarks/make_big_store.py [--data-dir /tmp/qcbench] [--station bench] [--parts 1000000]

Rows are written straight through SQLAlchemy Core ``executemany`` in big transactions, with the store's own
tables (:mod:`qcstation.station.db`) and its own :func:`qcstation.station.store.chain_hash`, so the
hash chain is the one the station writes: one chain per station across ``inspections`` and ``events``
(seq 1, 2, 3, …), ``chain_head`` updated in the last transaction. Every 97th record goes through
:class:`InspectionRecord`, so rows the API could not read fail here. ``Store.open(...).verify()`` is run
at the end and timed.

What the store looks like: ~1000 batches (``BIG-0001`` …) of ~1000 parts, each opened and closed by a
chained ``batch_opened`` / ``batch_closed`` event and a closed ``batches`` row; ~92 % PASS, ~6.5 % FAIL (with
1-3 regions), ~1.3 % REVIEW, ~0.2 % ERROR; serials ``SN-%07d`` with ~3 % re-inspections of a recent serial;
one part every ~1.5 s, ending an hour before now, so the parts the station adds come after them. The
synthetic rows have no archived image (``image_ref`` null) and nothing in the outbox (taken as delivered).

The store is reused when it exists and already holds enough inspections (``--force`` rebuilds it).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from qcstation.inspect.detector import Detector
from qcstation.station import db
from qcstation.station.recipe import load_recipe
from qcstation.station.store import InspectionRecord, Store, _dumps, chain_hash, utc_iso

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 50_000  # rows per transaction
CLASSES = (("scratch", 1), ("crack", 2), ("pit", 3), ("stain", 4))


def store_path(data_dir: Path) -> Path:
    """Where ``qcstation serve --data-dir`` keeps the SQLite store."""
    return data_dir / "qcstation.db"


def count_inspections(path: Path, station: str) -> int:
    """How many inspections of ``station`` the store holds (0 when there is no store)."""
    if not path.exists():
        return 0
    engine = sa.create_engine(sa.URL.create("sqlite", database=str(path)))
    try:
        with engine.connect() as conn:
            i = db.inspections
            return int(conn.scalar(sa.select(sa.func.count()).where(i.c.station == station)) or 0)
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def uuid7_at(ms: int, rng: random.Random) -> str:
    """A UUIDv7 whose timestamp is ``ms`` (so ids sort like the records' times, as the station's do)."""
    n = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62 | rng.getrandbits(62)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Chain:
    """The station's chain as the store builds it: seq and prev_hash, hash by ``chain_hash``."""

    def __init__(self, station: str) -> None:
        self.station = station
        self.seq = 0
        self.hash = db.GENESIS_HASH

    def link(self, row: dict[str, Any]) -> dict[str, Any]:
        row["station"] = self.station
        row["seq"] = self.seq + 1
        row["prev_hash"] = self.hash
        row["hash"] = chain_hash(row)
        self.seq += 1
        self.hash = row["hash"]
        return row


class Generator:
    """Realistic records for one station, in chain order."""

    def __init__(self, *, station: str, parts: int, batches: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.parts = parts
        self.batches = batches
        self.chain = Chain(station)
        loaded = load_recipe(ROOT / "recipes" / "demo.yaml")
        self.product = loaded.recipe.product
        self.recipe_hash = loaded.recipe.content_hash
        info = Detector.from_path(loaded.model_path).info
        self.model = (info.name, info.version, info.sha256)
        self.t = datetime.now(UTC) - timedelta(hours=1) - timedelta(seconds=1.5 * parts + 60 * batches)
        self.next_serial = 1
        self.recent: list[str] = []

    def _serial(self) -> str:
        if self.recent and self.rng.random() < 0.03:  # re-inspection of a recent part
            return self.rng.choice(self.recent)
        s = f"SN-{self.next_serial:07d}"
        self.next_serial += 1
        self.recent.append(s)
        if len(self.recent) > 2000:
            del self.recent[:1000]
        return s

    def _event(self, kind: str, batch_id: str, data: dict[str, Any]) -> dict[str, Any]:
        ms = int(self.t.timestamp() * 1000)
        row = {
            "id": uuid7_at(ms, self.rng),
            "kind": kind,
            "batch_id": batch_id,
            "at": utc_iso(self.t),
            "actor": "station",
            "reason": None,
            "data": _dumps(data),
        }
        return self.chain.link(row)

    def _inspection(self, batch_id: str, n: int) -> dict[str, Any]:
        rng = self.rng
        self.t += timedelta(seconds=rng.uniform(0.8, 2.2))
        captured = self.t
        decided = captured + timedelta(milliseconds=rng.uniform(30.0, 60.0))
        u = rng.random()
        verdict, disposition = "PASS", "ACCEPT"
        if u > 0.92:
            verdict, disposition = ("FAIL", "REJECT") if u < 0.985 else ("REVIEW", "HOLD")
            if u > 0.998:
                verdict, disposition = "ERROR", "REJECT"
        regions: list[dict[str, Any]] = []
        reasons: list[str] = []
        error = None
        if verdict in ("FAIL", "REVIEW"):
            for _ in range(rng.randint(1, 3)):
                name, cid = rng.choice(CLASSES)
                x, y, w, h = rng.randint(0, 240), rng.randint(0, 240), rng.randint(1, 16), rng.randint(1, 16)
                area = float(rng.randint(6, max(7, w * h)))
                regions.append(
                    {
                        "area_mm2": round(area * 0.01, 6),
                        "area_px": area,
                        "bbox": [x, y, w, h],
                        "centroid": [round(x + w / 2, 2), round(y + h / 2, 2)],
                        "class_id": cid,
                        "class_name": name,
                        "score": round(rng.uniform(0.45, 0.99), 6),
                    }
                )
            worst = max(regions, key=lambda r: r["score"])
            reasons.append(
                f"{worst['class_name']}: 1 region >= 0.4 and >= 6 px (worst score {worst['score']:.4f}, "
                f"{int(worst['area_px'])} px, {worst['area_mm2']:.1f} mm²)"
            )
        elif verdict == "ERROR":
            error = f"frame-{n}: camera frame incomplete"
            reasons.append(error)
        scores = {
            "crack": round(rng.uniform(0, 0.05), 6),
            "pit": round(rng.uniform(0, 0.05), 6),
            "scratch": round(rng.uniform(0, 0.3), 6),
            "stain": round(rng.uniform(0, 0.2), 6),
        }
        for r in regions:
            scores[r["class_name"]] = max(scores[r["class_name"]], r["score"])
        infer = round(rng.uniform(25.0, 40.0), 6)
        pre, post = round(rng.uniform(0.1, 0.3), 6), round(rng.uniform(0.4, 8.0), 6)
        ms = int(decided.timestamp() * 1000)
        row = {
            "id": uuid7_at(ms, rng),
            "batch_id": batch_id,
            "product": self.product,
            "recipe_hash": self.recipe_hash,
            "serial": self._serial(),
            "frame_id": f"frame-{n:08d}",
            "source": "camera:line-1",
            "captured_at": utc_iso(captured),
            "decided_at": utc_iso(decided),
            "model_name": self.model[0],
            "model_version": self.model[1],
            "model_sha256": self.model[2],
            "verdict": verdict,
            "disposition": disposition,
            "reasons": _dumps(reasons),
            "regions": _dumps(regions),
            "class_scores": _dumps(scores),
            "image_score": None if verdict == "ERROR" else max(scores.values()),
            "image_ref": None,
            "timings": _dumps(
                {
                    "decide": round(pre + infer + post + 1.0, 6),
                    "infer": infer,
                    "postprocess": post,
                    "preprocess": pre,
                }
            ),
            "error": error,
        }
        if verdict == "ERROR":
            row["regions"], row["class_scores"] = "[]", "{}"
        return self.chain.link(row)

    def rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """("inspections" | "events" | "batches", row) in chain order."""
        n = 0
        for b in range(self.batches):
            batch_id = f"BIG-{b + 1:04d}"
            size = self.parts // self.batches + (1 if b < self.parts % self.batches else 0)
            self.t += timedelta(seconds=60)  # changeover
            opened = utc_iso(self.t)
            yield (
                "events",
                self._event(
                    "batch_opened",
                    batch_id,
                    {"planned_qty": size, "product": self.product, "recipe_hash": self.recipe_hash},
                ),
            )
            for _ in range(size):
                n += 1
                yield "inspections", self._inspection(batch_id, n)
            self.t += timedelta(seconds=1)
            yield "events", self._event("batch_closed", batch_id, {"parts": size})
            yield (
                "batches",
                {
                    "station": self.chain.station,
                    "batch_id": batch_id,
                    "product": self.product,
                    "recipe_hash": self.recipe_hash,
                    "status": "CLOSED",
                    "planned_qty": size,
                    "opened_at": opened,
                    "closed_at": utc_iso(self.t),
                    "opened_by": "mes:bench",
                },
            )


def build(path: Path, station: str, *, parts: int, batches: int, seed: int = 1) -> float:
    """Write the store at ``path`` (which must not exist); returns the seconds it took."""
    t0 = time.perf_counter()
    # The schema, the pragmas and the chain head at seq 0, as the station makes them.
    Store.open(path, station).close()
    engine = sa.create_engine(sa.URL.create("sqlite", database=str(path)))
    gen = Generator(station=station, parts=parts, batches=batches, seed=seed)
    tables = {"inspections": db.inspections, "events": db.events, "batches": db.batches}
    pending: dict[str, list[dict[str, Any]]] = {k: [] for k in tables}
    written = 0
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("PRAGMA synchronous=OFF")
        conn.exec_driver_sql("PRAGMA cache_size=-262144")  # 256 MB while building
        conn.commit()

        def flush() -> None:
            with conn.begin():
                for name, rows in pending.items():
                    if rows:
                        conn.execute(tables[name].insert(), rows)
                        rows.clear()
                h = db.chain_head
                conn.execute(
                    sa.update(h).where(h.c.station == station).values(seq=gen.chain.seq, hash=gen.chain.hash)
                )

        for kind, row in gen.rows():
            if kind == "inspections":
                if written % 97 == 0:  # the API's reader accepts what we write
                    InspectionRecord.from_row(row)
                written += 1
            pending[kind].append(row)
            if len(pending["inspections"]) >= CHUNK:
                flush()
                print(f"  {written:>9,} inspections  {time.perf_counter() - t0:6.1f} s", flush=True)
        flush()
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return time.perf_counter() - t0


def ensure(data_dir: Path, station: str, *, parts: int, batches: int, force: bool = False) -> Path:
    """The store under ``data_dir``, built when missing (or too small, or ``force``)."""
    path = store_path(data_dir)
    have = count_inspections(path, station)
    if have >= parts and not force:
        print(f"reusing {path}: {have:,} inspections of station {station}")
        return path
    if path.exists():
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"building {path}: {parts:,} inspections in {batches} batches, station {station}")
    seconds = build(path, station, parts=parts, batches=batches)
    size = path.stat().st_size / 1e9
    print(f"built in {seconds:.1f} s ({parts / seconds:,.0f} rows/s), {size:.2f} GB")
    return path


def verify(path: Path, station: str) -> None:
    """Run ``Store.verify`` on the store and print its time."""
    t0 = time.perf_counter()
    with Store.open(path, station) as store:
        report = store.verify()
    print(f"verify: {report.describe()} in {time.perf_counter() - t0:.1f} s")
    report.raise_if_broken()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/qcbench"))
    ap.add_argument("--station", default="bench")
    ap.add_argument("--parts", type=int, default=1_000_000)
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--force", action="store_true", help="rebuild even when a big enough store exists")
    ap.add_argument("--no-verify", action="store_true", help="skip Store.verify()")
    args = ap.parse_args()
    path = ensure(args.data_dir, args.station, parts=args.parts, batches=args.batches, force=args.force)
    if not args.no_verify:
        verify(path, args.station)


if __name__ == "__main__":
    main()
