"""The REST API under 50 concurrent clients while the station runs, over a store of 1,000,000 inspections.

    python benchmarks/bench_api.py [--clients 50] [--phase-s 30] [--paced-rps 2] [--repeats 1]
        [--variant NAME:KEY=VALUE,... ...] [--rounds 1] [--no-single]

What it does, in one run:

1. builds (or reuses) a store of >= 1,000,000 inspections under ``--data-dir`` (``make_big_store.py``);
2. issues an API token with role ``mes`` into that store (``qcstation token issue``; revoked at the end), so
   every request is authenticated as an MES client would be;
3. starts ``qcstation serve --source <frames> --loop`` (demo recipe, ``models/qc-demo.onnx``, one uvicorn
   worker, station and API in one process) on a free loopback port over that store; the station appends to
   it as fast as it can (no ``--rate``), so its rate is its capacity on this machine. The frames are
   ``sample_images/`` written anew for each server with bytes of their own (``bench.unique_frames``), so the
   content-addressed archive writes every kept image as it would on a line; ``--replay-samples`` replays
   ``sample_images/`` itself, as runs before 2026-11-29 20:00 did (repeated bytes are archived once);
4. runs phases back to back: ``idle`` (no API load), ``single`` (one client, closed loop: each endpoint's
   service time without queueing), ``idle``, then ``unpaced`` (closed loop: every client sends its next
   request as soon as the last one answered, so 50 are in flight), ``idle``, ``paced`` (open loop: each
   client sends ``--paced-rps`` requests/s, a realistic MES/screen load), ``idle``; ``--repeats`` times;
5. each client loops over: a list page (``/inspections?limit=50&batch=<random batch>``), the next page of it
   (``cursor=next_cursor``), a serial's history (``/serials/<random existing serial>/history``) and one
   result (``/inspections/<random existing id>``), timing each request from send to the last body byte;
6. the station's rate is the number of inspections it committed in the phase's window (read from the store's
   chain, not through the loaded API), divided by the window; a load phase is compared with the mean of the
   idle phases around it.

The ids, serials and batches asked for are drawn from the built store only (``BIG-…`` batches), never from
parts earlier runs added (see :func:`pick_targets`).

``--variant NAME:KEY=VALUE,…`` (repeatable) runs the whole plan once per server configuration, given as the
server's environment (``QCSTATION_SWITCH_INTERVAL_MS=1``, ``QCSTATION_API_WORKER_THREADS=4``, or
``PYTHONPATH=<another checkout>/src`` for other code); ``--rounds N`` runs the variants in turn N times
(A B A B …), a fresh server each time, so that a machine whose load drifts affects every variant alike.

``--split`` is the what-if of a proposed fix: the same phases with the station alone in ``qcstation run`` and
the API in a second, read-only process over the same store.

Reported: p50/p95/p99/max per endpoint and mode, achieved requests/s, errors, the station's rate per phase
and loaded/idle ratios (medians over repeats), the load average and the server's CPU use per phase. The
load generator runs in this process (asyncio + aiohttp; ``--client httpx`` for the library of the earlier
runs), on the same 2 cores: its CPU is reported too. ``QCBENCH_CLIENT=httpx`` in a variant compares the two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from make_big_store import ensure  # benchmarks/ is on sys.path when this file is run as a script
from qcstation.station.bench import unique_frames

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ENDPOINTS = ("list", "list_next", "serial", "one")
Fetch = Callable[[str, dict[str, Any] | None], Awaitable[tuple[int | str, bytes]]]
FRAMES_PER_S = 140  # frames written per second of a server's plan: above the station's rate with two workers
MAX_REQUESTS_PER_CLIENT = 100_000  # a bound on every client loop, besides its deadline


# -- machine ----------------------------------------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages."""
    a, b, c = os.getloadavg()
    return round(a, 2), round(b, 2), round(c, 2)


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- what the clients ask for -----------------------------------------------------------------------------


@dataclass
class Targets:
    """Existing ids, serials and batches picked at random from the store before the run."""

    ids: list[str]
    serials: list[str]
    batches: list[str]


def pick_targets(db_path: Path, station: str, n: int = 5000, seed: int = 7) -> Targets:
    """Random existing result ids, serials (from those ids' rows) and batches, read straight from SQLite.

    Only from the built store (``make_big_store.py``: seq up to the last ``BIG-`` batch's close, batches
    ``BIG-…``), never from parts earlier benchmark runs added: those loop over the same sample files, so their
    serials (``part_0001`` …) gather hundreds of results each, a history of ~700 KB that grows with every run.
    """
    rng = random.Random(seed)
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        top = con.execute(
            "SELECT max(seq) FROM events "
            "WHERE station = ? AND kind = 'batch_closed' AND batch_id LIKE 'BIG-%'",
            (station,),
        ).fetchone()[0]
        ids: list[str] = []
        serials: list[str] = []
        for _ in range(n * 3):
            if len(ids) >= n:
                break
            row = con.execute(
                "SELECT id, serial FROM inspections WHERE station = ? AND seq = ?",
                (station, rng.randint(1, top)),
            ).fetchone()
            if row is not None:  # seq of an event: try another
                ids.append(row[0])
                if row[1] is not None:
                    serials.append(row[1])
        batches = [
            r[0]
            for r in con.execute(
                "SELECT batch_id FROM batches WHERE station = ? AND batch_id LIKE 'BIG-%'", (station,)
            )
        ]
    finally:
        con.close()
    return Targets(ids, serials, batches)


# -- load ---------------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Latencies (ms) per endpoint of requests sent inside the measured window."""

    window: tuple[float, float] = (0.0, 0.0)
    ms: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    errors: dict[str, int] = field(default_factory=dict)
    late: int = 0  # paced requests sent more than one interval behind schedule

    def add(self, endpoint: str, sent: float, ms: float, status: int | str) -> None:
        if not self.window[0] <= sent < self.window[1]:
            return
        if status == 200:
            self.ms[endpoint].append(ms)
        else:
            key = f"{endpoint}:{status}"
            self.errors[key] = self.errors.get(key, 0) + 1


@contextlib.asynccontextmanager
async def http_session(kind: str, base: str, headers: dict[str, str]) -> AsyncIterator[Fetch]:
    """One keep-alive connection to ``base``, as ``fetch(url, params) -> (status, body bytes)``.

    ``kind`` is the client library: ``aiohttp`` (the default: its HTTP parser is C, about a third of
    httpx's CPU per request here, which matters when the clients share the station's two cores) or
    ``httpx`` (what the runs before 2026-11-29 used).
    """
    if kind == "httpx":
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10.0, limits=limits) as c:

            async def fetch_httpx(url: str, params: dict[str, Any] | None) -> tuple[int | str, bytes]:
                try:
                    r = await c.get(url, params=params)
                except httpx.HTTPError as e:
                    return type(e).__name__, b""
                return r.status_code, r.content

            yield fetch_httpx
    elif kind == "aiohttp":
        conn = aiohttp.TCPConnector(limit=1, force_close=False)
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(base, headers=headers, connector=conn, timeout=timeout) as sess:

            async def fetch_aiohttp(url: str, params: dict[str, Any] | None) -> tuple[int | str, bytes]:
                try:
                    async with sess.get(url, params=params) as r:
                        return r.status, await r.read()
                except (aiohttp.ClientError, TimeoutError) as e:
                    return type(e).__name__, b""

            yield fetch_aiohttp
    else:
        raise ValueError(f"unknown client library {kind!r} (aiohttp or httpx)")


async def client(
    i: int,
    base: str,
    headers: dict[str, str],
    targets: Targets,
    rec: Recorder,
    *,
    deadline: float,
    paced_rps: float | None,
    kind: str,
) -> None:
    """One API client with its own keep-alive connection, looping until ``deadline``."""
    rng = random.Random(1000 + i)
    interval = 1.0 / paced_rps if paced_rps else 0.0
    next_at = time.perf_counter() + rng.uniform(0.0, interval)
    async with http_session(kind, base, headers) as fetch:

        async def get(endpoint: str, url: str, params: dict[str, Any] | None = None) -> bytes | None:
            nonlocal next_at
            if interval:
                now = time.perf_counter()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                elif now - next_at > interval:  # fell behind: count it, do not burst to catch up
                    rec.late += 1
                    next_at = now
                next_at += interval
            t0 = time.perf_counter()
            status, body = await fetch(url, params)
            rec.add(endpoint, t0, (time.perf_counter() - t0) * 1e3, status)
            return body if status == 200 else None

        for _ in range(MAX_REQUESTS_PER_CLIENT // 4):
            if time.perf_counter() >= deadline:
                break
            batch = rng.choice(targets.batches)
            body = await get("list", "/api/v1/inspections", {"limit": 50, "batch": batch})
            cursor = json.loads(body).get("next_cursor") if body is not None else None
            if cursor and time.perf_counter() < deadline:  # the same filter, one page further
                await get("list_next", "/api/v1/inspections", {"limit": 50, "batch": batch, "cursor": cursor})
            if time.perf_counter() >= deadline:
                break
            await get("serial", f"/api/v1/serials/{rng.choice(targets.serials)}/history")
            if time.perf_counter() >= deadline:
                break
            await get("one", f"/api/v1/inspections/{rng.choice(targets.ids)}")


# -- the server and the station's rate ----------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn drains, the station stops), then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Server:
    """``qcstation serve`` in a subprocess over the big store.

    With ``split``, the what-if of the proposed fix: the station alone in ``qcstation run`` and the API in its
    own read-only process (``create_app`` with no station, served by uvicorn), both on the same store.
    """

    def __init__(
        self,
        data_dir: Path,
        station: str,
        port: int,
        log_path: Path,
        threads: int | None,
        *,
        split: bool,
        source: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        batch = f"BENCH-{time.strftime('%Y%m%d-%H%M%S')}"
        common = ["--source", str(source), "--loop", "--recipe", "recipes/demo.yaml"]
        common += ["--data-dir", str(data_dir), "--station", station, "--batch", batch]
        if threads:
            common += ["--threads", str(threads)]
        qcs = str(VENV_BIN / "qcstation")
        self.split = split
        self.base = f"http://127.0.0.1:{port}"
        self.log = log_path.open("w")
        if split:
            more = ["--station", station, "--port", str(port)]
            self.cmds = [
                [qcs, "run", *common, "--quiet"],
                [sys.executable, str(Path(__file__)), "--serve-readonly", "--data-dir", str(data_dir), *more],
            ]
        else:
            self.cmds = [[qcs, "serve", *common, "--port", str(port)]]
        self.env = dict(env or {})
        full_env = {**os.environ, **self.env}
        self.procs = [
            subprocess.Popen(c, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
            for c in self.cmds
        ]

    @property
    def command(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return (env + " " if env else "") + "  +  ".join(" ".join(c) for c in self.cmds)

    def cpu_s(self) -> float:
        """CPU seconds of the station and API process(es)."""
        return sum(proc_cpu_s(p.pid) for p in self.procs)

    async def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds until the API answers (``/ready``: store and station; ``/health`` for the split API)."""
        path = "/api/v1/health" if self.split else "/api/v1/ready"
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=self.base, timeout=2.0) as c:
            while time.perf_counter() - t0 < timeout_s:
                for p in self.procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"{p.args} exited with {p.returncode}; see {self.log.name}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(path)).status_code == 200:
                        return time.perf_counter() - t0
                await asyncio.sleep(0.5)
        raise RuntimeError(f"the API is not ready after {timeout_s} s; see {self.log.name}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            _stop(p)
        self.log.close()


def serve_readonly(data_dir: Path, station: str, port: int) -> None:
    """The API alone over the store, no station (``create_app(station=None)``), one uvicorn worker.

    ``QCBENCH_API_NICE=N`` in the environment lowers this process's priority by N (the what-if of an API
    process that gives way to the station's under CPU contention).
    """
    import uvicorn

    os.nice(int(os.environ.get("QCBENCH_API_NICE", "0")))

    from qcstation.station.api import ApiConfig, create_app
    from qcstation.station.archive import ImageArchive
    from qcstation.station.settings import Settings
    from qcstation.station.store import Store
    from qcstation.station.tokens import TokenStore

    settings = Settings(data_dir=data_dir, station_id=station)
    store = Store.open(settings.store_url, station)
    app = create_app(
        settings=settings,
        store=store,
        archive=ImageArchive(settings.images_dir),
        station=None,
        tokens=TokenStore(store),
        config=ApiConfig(host="127.0.0.1", port=port),
    )
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        store.close()


class PartsCounter:
    """Parts the station committed, read from the store (a read-only SQLite connection of this process).

    Not through ``GET /status``: under load that request waits behind the others, which would shift the
    window. WAL readers never block the station's writer.
    """

    def __init__(self, db_path: Path, station: str) -> None:
        self.station = station
        self.con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)

    def head(self) -> tuple[float, int]:
        """(when, the chain head's seq)."""
        row = self.con.execute("SELECT seq FROM chain_head WHERE station = ?", (self.station,)).fetchone()
        return time.perf_counter(), int(row[0])

    def inspections_between(self, seq0: int, seq1: int) -> int:
        """Inspections in the chain after seq0 up to seq1 (events, such as holds, are not parts)."""
        row = self.con.execute(
            "SELECT count(*) FROM inspections WHERE station = ? AND seq > ? AND seq <= ?",
            (self.station, seq0, seq1),
        ).fetchone()
        return int(row[0])


@dataclass
class Phase:
    """One measured window."""

    mode: str  # idle | unpaced | paced
    seconds: float
    parts: int
    load: tuple[float, float, float]
    server_cpu: float  # CPU-seconds of the serve process per wall second (2.0 = both cores)
    bench_cpu: float  # the same for this load generator
    rec: Recorder | None = None

    @property
    def rate(self) -> float:
        return self.parts / self.seconds


async def run_phase(
    mode: str,
    server: Server,
    counter: PartsCounter,
    headers: dict[str, str],
    targets: Targets,
    *,
    clients: int,
    seconds: float,
    settle_s: float,
    paced_rps: float,
    client_kind: str,
) -> Phase:
    """Settle, then measure the station's rate (and the clients' latencies) over ``seconds``."""
    rec = Recorder() if mode != "idle" else None
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    end = start + settle_s + seconds
    if rec is not None:
        rec.window = (start + settle_s, end)
        tasks = [
            asyncio.create_task(
                client(
                    i,
                    server.base,
                    headers,
                    targets,
                    rec,
                    deadline=end,
                    paced_rps=paced_rps if mode == "paced" else None,
                    kind=client_kind,
                )
            )
            for i in range(1 if mode == "single" else clients)
        ]
    await asyncio.sleep(settle_s)
    t0, s0 = counter.head()
    cpu0, me0, l0 = server.cpu_s(), time.process_time(), os.getloadavg()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    t1, s1 = counter.head()
    cpu1, me1 = server.cpu_s(), time.process_time()
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    la = tuple(round((a + b) / 2, 2) for a, b in zip(l0, os.getloadavg(), strict=True))
    return Phase(
        mode,
        t1 - t0,
        counter.inspections_between(s0, s1),
        la,  # type: ignore[arg-type]
        round((cpu1 - cpu0) / (t1 - t0), 2),
        round((me1 - me0) / (t1 - t0), 2),
        rec,
    )


# -- report -------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def report(phases: list[Phase], args: argparse.Namespace, ready_s: float, targets: Targets) -> dict[str, Any]:
    """Print the tables; return everything as a dict (for ``--json``)."""
    print(f"\nphases ({args.phase_s:.0f} s each, {args.settle_s:.0f} s settle before each):")
    print(f"  {'mode':8} {'parts/s':>8} {'req/s':>7} {'serve CPU':>9} {'bench CPU':>9}  load avg 1/5/15")
    for p in phases:
        n = sum(len(v) for v in p.rec.ms.values()) if p.rec else 0
        print(
            f"  {p.mode:8} {p.rate:8.2f} {n / p.seconds:7.1f} {p.server_cpu:9.2f} {p.bench_cpu:9.2f}  "
            f"{p.load[0]:.2f} {p.load[1]:.2f} {p.load[2]:.2f}"
        )
    out: dict[str, Any] = {"ready_s": ready_s, "modes": {}, "phases": []}
    for p in phases:
        out["phases"].append(
            {
                "mode": p.mode,
                "rate": round(p.rate, 3),
                "seconds": round(p.seconds, 2),
                "parts": p.parts,
                "load": p.load,
                "server_cpu": p.server_cpu,
                "bench_cpu": p.bench_cpu,
            }
        )
    for mode in ("single", "unpaced", "paced"):
        ratios = []
        for k, p in enumerate(phases):
            if p.mode != mode:
                continue
            around = [
                q.rate
                for q in (phases[k - 1], phases[k + 1] if k + 1 < len(phases) else None)
                if q is not None and q.mode == "idle"
            ]
            if around:
                ratios.append(p.rate / statistics.mean(around))
        loaded = [p for p in phases if p.mode == mode]
        if not loaded:
            continue
        ms: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
        errors: dict[str, int] = {}
        for p in loaded:
            assert p.rec is not None
            for e in ENDPOINTS:
                ms[e] += p.rec.ms[e]
            for k2, v in p.rec.errors.items():
                errors[k2] = errors.get(k2, 0) + v
        secs = sum(p.seconds for p in loaded)
        what = {
            "single": "one client, closed loop: the service time without queueing",
            "unpaced": f"closed loop, {args.clients} clients, {args.clients} in flight",
            "paced": f"open loop, {args.clients} clients x {args.paced_rps:g} req/s",
        }[mode]
        print(f"\n{mode} ({what}; {len(loaded)} x {args.phase_s:.0f} s):")
        print(f"  {'endpoint':10} {'n':>7} {'req/s':>7} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  (ms)")
        rows = {}
        for e in ENDPOINTS:
            v = ms[e]
            row = {
                "n": len(v),
                "rps": round(len(v) / secs, 1),
                "p50": pct(v, 0.5),
                "p95": pct(v, 0.95),
                "p99": pct(v, 0.99),
                "max": max(v) if v else float("nan"),
            }
            rows[e] = row
            print(
                f"  {e:10} {row['n']:7d} {row['rps']:7.1f} {row['p50']:8.1f} {row['p95']:8.1f} "
                f"{row['p99']:8.1f} {row['max']:8.1f}"
            )
        allv = [x for e in ENDPOINTS for x in ms[e]]
        print(
            f"  {'all':10} {len(allv):7d} {len(allv) / secs:7.1f} {pct(allv, 0.5):8.1f} "
            f"{pct(allv, 0.95):8.1f} {pct(allv, 0.99):8.1f} {max(allv) if allv else float('nan'):8.1f}"
        )
        late = sum(p.rec.late for p in loaded if p.rec is not None)
        if errors or late:
            print(f"  errors {errors or 'none'}; paced requests sent > 1 interval late: {late}")
        idle = statistics.median(p.rate for p in phases if p.mode == "idle")
        med = statistics.median(ratios) if ratios else float("nan")
        print(
            f"  station: idle {idle:.2f} parts/s (median), under load "
            f"{statistics.median(p.rate for p in loaded):.2f}; loaded/idle (neighbouring idle phases) "
            f"median {med:.3f} -> cost {1 - med:.1%}  runs {[round(r, 3) for r in ratios]}"
        )
        out["modes"][mode] = {
            "endpoints": rows,
            "errors": errors,
            "late": late,
            "ratios": ratios,
            "ratio_median": med,
            "idle_rate": idle,
            "loaded_rate": statistics.median(p.rate for p in loaded),
            "load": statistics.median(p.load[0] for p in loaded),
            "server_cpu": statistics.median(p.server_cpu for p in loaded),
            "idle_server_cpu": statistics.median(p.server_cpu for p in phases if p.mode == "idle"),
        }
    print(
        f"\ntargets drawn from the store: {len(targets.ids)} ids, {len(targets.serials)} serials, "
        f"{len(targets.batches)} batches; server ready in {ready_s:.1f} s"
    )
    return out


# -- main ---------------------------------------------------------------------------------------------------


def issue_token(data_dir: Path, station: str) -> tuple[str, str]:
    """(name, secret) of a new ``mes`` token, issued with the CLI into the store."""
    name = f"bench-mes-{int(time.time())}"
    r = subprocess.run(
        [
            str(VENV_BIN / "qcstation"),
            "token",
            "issue",
            "--name",
            name,
            "--role",
            "mes",
            "--data-dir",
            str(data_dir),
            "--station",
            station,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return name, r.stdout.strip().splitlines()[-1]


def revoke_token(data_dir: Path, station: str, name: str) -> None:
    subprocess.run(
        [
            str(VENV_BIN / "qcstation"),
            "token",
            "revoke",
            name,
            "--data-dir",
            str(data_dir),
            "--station",
            station,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` -> (name, environment of the server)."""
    name, _, rest = text.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"expected KEY=VALUE in variant {text!r}, got {item!r}")
        env[key] = value
    return name or "default", env


async def run_server(
    name: str,
    env: dict[str, str],
    args: argparse.Namespace,
    counter: PartsCounter,
    headers: dict[str, str],
    targets: Targets,
) -> tuple[list[Phase], float, str]:
    """Start one server, run the phase plan against it, stop it: (phases, seconds to ready, command)."""
    port = args.port or free_port()
    log = args.data_dir / (f"serve-{name}.log" if name != "default" else "serve.log")
    client_kind = env.get("QCBENCH_CLIENT", args.client)
    plan = ["idle"] + ([] if args.no_single else ["single", "idle"])
    for _ in range(args.repeats):
        plan += ["unpaced", "idle", "paced", "idle"]
    frames_dir = args.data_dir / f"frames-{name}"
    shutil.rmtree(frames_dir, ignore_errors=True)
    if args.replay_samples or env.get("QCBENCH_REPLAY") == "1":
        source = ROOT / "sample_images"
    else:  # frames the archive has never held, enough for the whole plan at FRAMES_PER_S
        seconds = 30 + args.warmup_s + len(plan) * (args.settle_s + args.phase_s)
        tag = f"{name}-{time.time_ns()}-"
        source = unique_frames(ROOT / "sample_images", int(seconds * FRAMES_PER_S), frames_dir, tag=tag)
    server = Server(
        args.data_dir, args.station, port, log, args.threads, split=args.split, source=source, env=env
    )
    print(f"server [{name}]: {server.command}  (load average {loadavg()})", flush=True)
    phases: list[Phase] = []
    try:
        ready_s = await server.wait_ready()
        if args.warmup_s > 0:  # the station's first parts and the first reads warm caches and the page cache
            await run_phase(
                "unpaced",
                server,
                counter,
                headers,
                targets,
                clients=args.clients,
                seconds=args.warmup_s,
                settle_s=0.0,
                paced_rps=args.paced_rps,
                client_kind=client_kind,
            )
        for mode in plan:
            p = await run_phase(
                mode,
                server,
                counter,
                headers,
                targets,
                clients=args.clients,
                seconds=args.phase_s,
                settle_s=args.settle_s,
                paced_rps=args.paced_rps,
                client_kind=client_kind,
            )
            phases.append(p)
            n = sum(len(v) for v in p.rec.ms.values()) if p.rec else 0
            print(
                f"  {mode:8} {p.rate:6.2f} parts/s  {n / p.seconds:6.1f} req/s  "
                f"serve CPU {p.server_cpu:.2f}  load {p.load[0]:.2f}",
                flush=True,
            )
    finally:
        server.stop()
        shutil.rmtree(frames_dir, ignore_errors=True)
    return phases, ready_s, server.command


def summary_table(results: dict[str, dict[str, Any]]) -> None:
    """One line per variant and load mode: req/s, p50/p99 per endpoint, the station's rate and cost."""
    print(
        "\nsummary (ms; station parts/s: median idle -> median loaded, cost = 1 - median loaded/idle; "
        "CPU: the serve process's CPU-s/s, idle -> loaded; API ms/req: the loaded CPU less the station's at "
        "its idle CPU per part, per request):"
    )
    head = " ".join(f"{e + ' p50/p99':>17}" for e in ENDPOINTS)
    print(
        f"  {'variant':14} {'mode':8} {'req/s':>6} {head} {'station':>13} {'cost':>6} {'CPU':>11} "
        f"{'API ms/req':>10} {'load':>5}"
    )
    for name, res in results.items():
        for mode, m in res["modes"].items():
            eps = " ".join(
                f"{m['endpoints'][e]['p50']:8.1f}/{m['endpoints'][e]['p99']:<8.1f}" for e in ENDPOINTS
            )
            rps = sum(m["endpoints"][e]["rps"] for e in ENDPOINTS)
            per_part = m["idle_server_cpu"] / m["idle_rate"] if m["idle_rate"] else float("nan")
            api_ms = (m["server_cpu"] - m["loaded_rate"] * per_part) / rps * 1e3 if rps else float("nan")
            print(
                f"  {name:14} {mode:8} {rps:6.1f} {eps} {m['idle_rate']:5.1f} -> {m['loaded_rate']:5.1f} "
                f"{1 - m['ratio_median']:6.1%} {m['idle_server_cpu']:4.2f} -> {m['server_cpu']:4.2f} "
                f"{api_ms:10.1f} {m['load']:5.2f}"
            )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    db_path = ensure(args.data_dir, args.station, parts=args.parts, batches=1000)
    targets = pick_targets(db_path, args.station)
    headers: dict[str, str] = {}
    token_name = None
    if not args.anonymous:
        token_name, secret = issue_token(args.data_dir, args.station)
        headers["Authorization"] = f"Bearer {secret}"
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    print(f"machine: {os.cpu_count()} cores, load average {loadavg()}")
    who = "anonymous viewer (no token)" if args.anonymous else f"bearer token {token_name} (role mes)"
    print(f"auth: {who}; variants {[n for n, _ in variants]} x {args.rounds} round(s), in turn")
    phases: dict[str, list[Phase]] = {n: [] for n, _ in variants}
    ready: dict[str, float] = {}
    commands: dict[str, str] = {}
    counter = PartsCounter(db_path, args.station)
    try:
        for _ in range(args.rounds):
            for name, env in variants:
                got, ready[name], commands[name] = await run_server(
                    name, env, args, counter, headers, targets
                )
                phases[name] += got
    finally:
        if token_name:
            revoke_token(args.data_dir, args.station, token_name)
    results: dict[str, dict[str, Any]] = {}
    for name, _ in variants:
        print(f"\n=== {name}: {commands[name]}")
        results[name] = report(phases[name], args, ready[name], targets)
        results[name]["command"] = commands[name]
    summary_table(results)
    return results if len(variants) > 1 else results[variants[0][0]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/qcbench"), help="store (reused), serve.log")
    ap.add_argument("--station", default="bench")
    ap.add_argument("--parts", type=int, default=1_000_000, help="inspections in the store, at least")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--phase-s", type=float, default=30.0, help="measured seconds per phase")
    ap.add_argument("--settle-s", type=float, default=3.0, help="unmeasured seconds before each phase")
    ap.add_argument("--warmup-s", type=float, default=10.0, help="unmeasured load before the first phase")
    ap.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="the clients' HTTP library (a variant's QCBENCH_CLIENT overrides it)",
    )
    ap.add_argument("--paced-rps", type=float, default=2.0, help="requests/s per client in the paced phase")
    ap.add_argument("--repeats", type=int, default=1, help="unpaced/paced phase pairs per server")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a server configuration (environment of qcstation serve); repeat to compare, e.g. "
        "--variant s5:QCSTATION_SWITCH_INTERVAL_MS=5 --variant s1:QCSTATION_SWITCH_INTERVAL_MS=1",
    )
    ap.add_argument("--rounds", type=int, default=1, help="the variants run in turn this many times")
    ap.add_argument("--no-single", action="store_true", help="leave out the one-client phase")
    ap.add_argument("--port", type=int, default=0, help="0: a free loopback port")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads of the station")
    ap.add_argument("--anonymous", action="store_true", help="no token: anonymous viewer on loopback")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument(
        "--split", action="store_true", help="what-if: station (qcstation run) and API in separate processes"
    )
    ap.add_argument(
        "--replay-samples",
        action="store_true",
        help="feed the station sample_images/ in a loop (repeated bytes: the archive writes each image "
        "once); a variant's QCBENCH_REPLAY=1 does it for that variant",
    )
    ap.add_argument("--serve-readonly", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_readonly:
        serve_readonly(args.data_dir, args.station, args.port)
        return
    if not 1 <= args.clients <= 500 or not 1.0 <= args.phase_s <= 600.0 or not 1 <= args.repeats <= 10:
        ap.error("clients 1..500, phase-s 1..600, repeats 1..10")
    if not 1 <= args.rounds <= 10:
        ap.error("rounds 1..10")
    try:
        names = [parse_variant(v)[0] for v in args.variant]
    except ValueError as e:
        ap.error(str(e))
    if len(set(names)) != len(names):
        ap.error(f"variant names must differ, got {names}")
    result = asyncio.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
