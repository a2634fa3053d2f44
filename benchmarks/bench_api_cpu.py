"""The API's CPU time per request for the four reads of ``bench_api.py``, in-process, without HTTP or clients.

    python benchmarks/bench_api_cpu.py [--parts 20000] [--requests 400] [--rounds 5] [--profile list]
        [--variant NAME:PYTHONPATH=<tree>/src ...]

``bench_api.py`` measures latency and the station's rate under load, which moves with everything else the
machine does. This measures the one figure the API controls, its CPU per request, with ``time.process_time()``
(CPU of this process, every thread: the event loop and the thread pool's store reads), not wall time, so a
busy machine changes it little. It:

1. builds a small store like the benchmark's (``make_big_store.build``; ``--parts`` in 20 batches) in a
   temporary directory, with one ``mes`` token;
2. makes the read-only app (``create_app(station=None)``, as ``bench_api.py --split`` does) and calls it as an
   ASGI app from one asyncio loop, with the bearer token, one request at a time: no socket, no HTTP parser,
   no client library in the figure (uvicorn's share is the same whatever the app does);
3. per round, sends ``--requests`` requests of each kind (``list``: a page of 50 of a random batch,
   ``list_next``: the page after it by cursor, ``serial``: a serial's history, ``one``: one result) and
   reports the median over the rounds of the CPU ms per request, after a warm-up of 50 requests per kind;
4. hashes the warm-up's response bodies (the same requests in every child) and says whether every variant
   answered byte for byte the same.

``--variant NAME:PYTHONPATH=<tree>/src`` (repeatable) measures other code (e.g. a ``git archive`` of an
older commit) in a child process per variant and round, in turn (A B A B …), over the same store, and
prints each variant's figures and their ratio to the first variant's. Without ``--variant`` the code of this
checkout is measured. ``--profile KIND`` prints a cProfile of that kind's requests instead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import os
import pstats
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

KINDS = ("list", "list_next", "serial", "one")
STATION = "bench"


def make_store(data_dir: Path, parts: int) -> None:
    """A store like ``make_big_store.py`` builds, ``parts`` inspections in 20 batches."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_big_store

    make_big_store.build(make_big_store.store_path(data_dir), STATION, parts=parts, batches=20)


def targets(db_path: Path, n: int, seed: int = 7) -> dict[str, list[str]]:
    """Random result ids, their serials, and the batches, read straight from SQLite."""
    rng = random.Random(seed)
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        top = con.execute("SELECT max(seq) FROM inspections WHERE station = ?", (STATION,)).fetchone()[0]
        ids: list[str] = []
        serials: list[str] = []
        while len(ids) < n:
            row = con.execute(
                "SELECT id, serial FROM inspections WHERE station = ? AND seq = ?",
                (STATION, rng.randint(1, top)),
            ).fetchone()
            if row is not None:
                ids.append(row[0])
                serials.append(row[1] or "SN-0000001")
        batches = [r[0] for r in con.execute("SELECT batch_id FROM batches WHERE station = ?", (STATION,))]
    finally:
        con.close()
    return {"ids": ids, "serials": serials, "batches": batches}


class Caller:
    """Calls an ASGI app with GET requests, one at a time, and keeps the body."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())]

    async def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": urlencode(params or {}).encode(),
            "root_path": "",
            "headers": self.headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        status = 0
        body: list[bytes] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body":
                body.append(msg.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(body)


async def one_kind(
    call: Caller, kind: str, t: dict[str, list[str]], n: int, rng: random.Random, digest: Any = None
) -> None:
    """``n`` requests of ``kind``; every answer must be a 200; the bodies go into ``digest`` when given."""
    v1 = "/api/v1"
    for _ in range(n):
        if kind in ("list", "list_next"):
            k = rng.randrange(len(t["batches"]))
            params: dict[str, Any] = {"limit": 50, "batch": t["batches"][k]}
            if kind == "list_next":  # the page after the batch's first page (fetched before the timing)
                params["cursor"] = t["cursors"][k]
            status, body = await call.get(f"{v1}/inspections", params)
        elif kind == "serial":
            status, body = await call.get(f"{v1}/serials/{rng.choice(t['serials'])}/history")
        else:
            status, body = await call.get(f"{v1}/inspections/{rng.choice(t['ids'])}")
        if status != 200:
            raise SystemExit(f"{kind}: HTTP {status}: {body[:300]!r}")
        if digest is not None:
            digest.update(body)


async def measure(
    data_dir: Path, token: str, t: dict[str, list[str]], n: int, profile: str | None
) -> dict[str, Any]:
    """CPU ms per request of each kind (one round), after a warm-up; a digest of the warm-up's bodies."""
    from qcstation.station.api import ApiConfig, create_app
    from qcstation.station.archive import ImageArchive
    from qcstation.station.settings import Settings
    from qcstation.station.store import Store
    from qcstation.station.tokens import TokenStore

    settings = Settings(data_dir=data_dir, station_id=STATION)
    store = Store.open(settings.store_url, STATION)
    app = create_app(
        settings=settings,
        store=store,
        archive=ImageArchive(settings.images_dir),
        station=None,
        tokens=TokenStore(store),
        config=ApiConfig(),
    )
    call = Caller(app, token)
    rng = random.Random(11)
    out: dict[str, Any] = {}
    try:
        async with app.router.lifespan_context(app):
            # the next_cursor of each batch's first page, as list_next follows them
            t = dict(t)
            t["cursors"] = []
            for b in t["batches"]:
                _, body = await call.get("/api/v1/inspections", {"limit": 50, "batch": b})
                t["cursors"].append(json.loads(body)["next_cursor"])
            digest = hashlib.sha256()
            for kind in KINDS:  # warm-up (imports, caches, the pool's connections), its bodies hashed
                await one_kind(call, kind, t, 50, rng, digest)
            out["bodies"] = digest.hexdigest()[:16]
            for kind in KINDS:
                if profile == kind:
                    prof = cProfile.Profile()
                    prof.enable()
                c0 = time.process_time()
                await one_kind(call, kind, t, n, rng)
                out[kind] = (time.process_time() - c0) / n * 1e3
                if profile == kind:
                    prof.disable()
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
                    pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    finally:
        store.close()
    return out


def child(args: argparse.Namespace) -> None:
    """One round in this process; prints a JSON line of CPU ms per request."""
    t = json.loads(Path(args.targets).read_text())
    print(
        json.dumps(asyncio.run(measure(args.data_dir, args.token, t, args.requests, args.profile))),
        flush=True,
    )


def issue_token(data_dir: Path) -> str:
    from qcstation.station.settings import Settings
    from qcstation.station.store import Store
    from qcstation.station.tokens import TokenStore

    store = Store.open(Settings(data_dir=data_dir, station_id=STATION).store_url, STATION)
    try:
        return TokenStore(store).issue("bench-cpu", "mes", by="bench").secret
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=400, help="requests of each kind per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variant", action="append", default=[], help="NAME:PYTHONPATH=<tree>/src")
    ap.add_argument("--profile", choices=KINDS, help="print a cProfile of one kind's requests (one round)")
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)  # child
    ap.add_argument("--token", help=argparse.SUPPRESS)  # child
    ap.add_argument("--targets", help=argparse.SUPPRESS)  # child
    args = ap.parse_args()
    if args.data_dir is not None:
        child(args)
        return

    variants: list[tuple[str, dict[str, str]]] = []
    for v in args.variant or ["this checkout:"]:
        name, _, env = v.partition(":")
        variants.append((name, dict(kv.split("=", 1) for kv in env.split(",") if kv)))
    with tempfile.TemporaryDirectory(prefix="qc-apicpu-") as tmp:
        data_dir = Path(tmp)
        print(f"building a store of {args.parts:,} inspections in {tmp} ...", flush=True)
        make_store(data_dir, args.parts)
        token = issue_token(data_dir)
        tfile = data_dir / "targets.json"
        tfile.write_text(json.dumps(targets(data_dir / "qcstation.db", 2000)))
        base = [
            sys.executable,
            __file__,
            "--data-dir",
            str(data_dir),
            "--token",
            token,
            "--targets",
            str(tfile),
        ]
        base += ["--requests", str(args.requests)]
        if args.profile:
            subprocess.run(
                [*base, "--profile", args.profile], check=True, env={**os.environ, **variants[0][1]}
            )
            return
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
        for r in range(args.rounds):
            for name, env in variants:
                out = subprocess.run(
                    base, check=True, capture_output=True, text=True, env={**os.environ, **env}
                ).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1]))
                res = results[name][-1]
                print(f"round {r + 1} {name}: " + "  ".join(f"{k} {res[k]:.2f}" for k in KINDS), flush=True)
    print(f"\nCPU ms per request, median of {args.rounds} rounds of {args.requests} requests per kind:")
    print(f"{'variant':<24}" + "".join(f"{k:>11}" for k in (*KINDS, "mean")))
    first: dict[str, float] | None = None
    for name, _ in variants:
        med = {k: statistics.median(x[k] for x in results[name]) for k in KINDS}
        med["mean"] = statistics.fmean(med[k] for k in KINDS)
        print(f"{name:<24}" + "".join(f"{med[k]:>11.2f}" for k in (*KINDS, "mean")))
        if first is None:
            first = med
        else:
            ratios = "".join(f"{med[k] / first[k]:>11.2f}" for k in (*KINDS, "mean"))
            print(f"{'  ratio to ' + variants[0][0]:<24}{ratios}")
    digests = {x["bodies"] for name, _ in variants for x in results[name]}
    print("response bodies of the warm-up requests: " + ("identical" if len(digests) == 1 else "DIFFER"))


if __name__ == "__main__":
    main()
