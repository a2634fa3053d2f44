"""The ``qcstation`` command: run the station, query and verify its records, release holds, make samples.

Every command turns the project's own errors into one red line and exit code 2; ``verify`` exits 1 when the
chain is broken. Heavy imports happen inside the commands, so ``qcstation --help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qcstation.inspect.errors import InspectError
from qcstation.station.errors import StationError

if TYPE_CHECKING:
    from qcstation.inspect.detector import Detector
    from qcstation.station.outbox import Sink as OutboxSink
    from qcstation.station.pipeline import Station, StationStats
    from qcstation.station.recipe import LoadedRecipe
    from qcstation.station.settings import Settings
    from qcstation.station.store import Store

app = typer.Typer(
    help="qcstation: line-side visual quality inspection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
batch_app = typer.Typer(help="Batches: summary and close.", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", "-d", help="data directory [env QCSTATION_DATA_DIR]")
]
StationId = Annotated[str | None, typer.Option("--station", help="station id [env QCSTATION_STATION_ID]")]
SourceOpt = Annotated[str, typer.Option("--source", "-s", help="image folder, video or camera index")]
RecipeOpt = Annotated[Path, typer.Option("--recipe", "-r", help="recipe YAML")]
BatchOpt = Annotated[str | None, typer.Option("--batch", "-b", help="batch id (default: new)")]
RateOpt = Annotated[float | None, typer.Option("--rate", help="replay rate in frames/s (folder)")]
LoopOpt = Annotated[bool, typer.Option("--loop", help="replay the folder forever")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="frames in session.run at once (default: 2 on 2+ cores; serve: 1)", min=1),
]


def _settings(data_dir: Path | None = None, station: str | None = None, **extra: Any) -> Settings:
    from pydantic import ValidationError

    from qcstation.station.errors import ConfigError
    from qcstation.station.settings import Settings

    kw: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        kw["data_dir"] = data_dir
    if station is not None:
        kw["station_id"] = station
    try:
        return Settings(**kw)
    except ValidationError as e:
        raise ConfigError(f"invalid settings:\n{e}") from e


def _open_store(settings: Settings, *, must_exist: bool = True) -> Store:
    from qcstation.station.errors import ConfigError
    from qcstation.station.store import Store

    if must_exist and settings.database_url is None and not Path(settings.store_url).exists():
        raise ConfigError(f"no store at {settings.store_url}; run `qcstation run` first or pass --data-dir")
    return Store.open(settings.store_url, settings.station_id, synchronous=settings.sqlite_synchronous)


def main() -> None:
    """Entry point of the ``qcstation`` script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code: int | str | None = 0
    try:
        app()
    except (StationError, InspectError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        code = 2
    except SystemExit as e:
        code = e.code
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # a torchrun rank (torch is loaded already)
        from qcstation.training.devices import end_process

        if isinstance(code, str):
            err.print(code, highlight=False)
        end_process(code if isinstance(code, int) else int(code is not None))
    sys.exit(code)


# -- run ----------------------------------------------------------------------------------------------------


@app.command()
def run(
    source: SourceOpt = "sample_images",
    recipe: RecipeOpt = Path("recipes/demo.yaml"),
    data_dir: DataDir = None,
    station: StationId = None,
    batch: BatchOpt = None,
    rate: RateOpt = None,
    loop: LoopOpt = False,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live status line")] = False,
) -> None:
    """Run the station: inspect every frame from SOURCE and record every decision."""
    settings = _settings(data_dir, station, intra_op_threads=threads, inference_workers=workers)
    loaded, detector = _load_model(settings, recipe)
    store = _open_store(settings, must_exist=False)
    st = _assemble(settings, store, loaded, detector, source=source, batch=batch, rate=rate, loop=loop)
    batch_id = st.batch_id

    def handle(signum: int, _frame: object) -> None:
        err.print(f"\n[yellow]{signal.Signals(signum).name}: draining and stopping (again to abort)…[/]")
        st.stop()
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    err.print(
        f"station [bold]{settings.station_id}[/] · batch [bold]{batch_id}[/] · model {detector.info.name} "
        f"{detector.info.version} · recipe {loaded.recipe.product} ({st.recipe_hash[:12]}) · source {source}",
        highlight=False,
    )
    progress = _StatusLine(enabled=not quiet)
    try:
        summary = st.run(on_progress=progress.update)
    finally:
        progress.finish(st.stats)
        store.close()
    table = Table(
        title=f"batch {summary.batch_id}: {summary.parts} parts in {summary.seconds:.1f} s "
        f"({summary.rate:.1f}/s)"
    )
    for col in ("PASS", "FAIL", "REVIEW", "ERROR", "yield", "batch"):
        table.add_column(col, justify="right")
    n = max(summary.parts, 1)
    table.add_row(
        *(str(summary.verdicts.get(v, 0)) for v in ("PASS", "FAIL", "REVIEW", "ERROR")),
        f"{summary.verdicts.get('PASS', 0) / n:.1%}",
        summary.batch_status.value,
    )
    out.print(table)
    if summary.hold is not None:
        h = summary.hold
        out.print(
            f"[bold white on red] HOLD [/] rule {h.rule}: {h.detail} — evidence {len(h.evidence)} part(s), "
            f"{len(h.suspects)} suspect(s). Release: qcstation release {summary.batch_id} "
            f"--by NAME --reason TEXT",
            highlight=False,
        )
    out.print(f"records in {settings.store_url}; verify with: qcstation verify", highlight=False)


def _load_model(settings: Settings, recipe: Path) -> tuple[LoadedRecipe, Detector]:
    """The recipe and its model, checked against each other (before anything is written)."""
    from qcstation.inspect.detector import Detector
    from qcstation.station.recipe import load_recipe

    loaded = load_recipe(recipe)
    detector = Detector.from_path(loaded.model_path, intra_op_threads=settings.intra_op_threads)
    loaded.recipe.check_classes(detector.card.classes)
    return loaded, detector


def _assemble(
    settings: Settings,
    store: Store,
    loaded: LoadedRecipe,
    detector: Detector,
    *,
    source: str,
    batch: str | None,
    rate: float | None,
    loop: bool,
    trigger: bool = False,
    serving: bool = False,
) -> Station:
    """A station from ready parts; cameras and streams reconnect with backoff and report faults.

    ``serving``: the REST API and the screen run in the same process (``serve``), which changes the default
    number of inference workers (:func:`~qcstation.station.settings.default_inference_workers`).
    """
    from qcstation.station.archive import ImageArchive
    from qcstation.station.pipeline import Station
    from qcstation.station.settings import default_inference_workers
    from qcstation.station.sources import (
        FolderSourceConfig,
        Reconnecting,
        Source,
        TriggerSource,
        source_from_uri,
    )
    from qcstation.station.types import StationFault

    config = source_from_uri(source)
    holder: list[Station] = []

    def on_fault(fault: StationFault) -> None:
        if holder:
            holder[0].on_fault(fault)

    src: Source
    if isinstance(config, FolderSourceConfig):
        src = config.model_copy(update={"rate_hz": rate, "loop": loop}).build()
    else:
        src = Reconnecting(config.build, on_fault=on_fault, name=source)
    if trigger:
        src = TriggerSource(src)
    st = Station(
        source=src,
        detector=detector,
        recipe=loaded,
        store=store,
        archive=ImageArchive(settings.images_dir),
        batch_id=batch or f"{loaded.recipe.product}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        queue_size=settings.queue_size,
        linger_s=settings.commit_linger_ms / 1000,
        inference_workers=settings.inference_workers or default_inference_workers(serving=serving),
    )
    holder.append(st)
    st.housekeeping = _housekeeper(settings, store, st)
    return st


def _housekeeper(settings: Settings, store: Store, st: Station) -> Callable[[], None]:
    """Image retention once an hour, and the disk guard whenever free space is below the setting."""
    import shutil

    from qcstation.station.backup import guard_disk

    archive = st.archive
    retention = st.recipe.images.retention_days
    last_retention = [0.0]

    def free_share(_a: object) -> float:
        du = shutil.disk_usage(archive.root if archive.root.exists() else settings.data_dir)
        return du.free / du.total if du.total else 1.0

    def run() -> None:
        now = datetime.now(UTC)
        if time.monotonic() - last_retention[0] >= 3600:
            last_retention[0] = time.monotonic()
            archive.prune(store.image_records(), now=now, retention_days=retention)
        if free_share(None) < settings.min_free_disk:
            guard_disk(
                archive,
                store.image_records,
                now=now,
                min_free=settings.min_free_disk,
                retention_days=retention,
                free_share=free_share,
            )

    return run


def _outbox_sinks(
    settings: Settings,
    store: Store,
    *,
    mqtt: str | None,
    webhook: str | None,
    secret: str | None,
    central: str | None,
) -> list[OutboxSink]:
    """The outbox destinations named on the command line or in the environment (possibly none)."""
    from qcstation.station.errors import ConfigError

    sinks: list[OutboxSink] = []
    if mqtt is not None:
        from qcstation.station.forwarders.mqtt import MqttSink

        host, _, port = mqtt.rpartition(":") if ":" in mqtt else (mqtt, "", "1883")
        if not port.isdigit():
            raise ConfigError(f"--mqtt: expected HOST[:PORT], got {mqtt!r}")
        sinks.append(
            MqttSink(host, int(port), site=settings.site, line=settings.line, station=settings.station_id)
        )
    if webhook is not None:
        from qcstation.station.forwarders.webhook import WebhookSink

        if not secret:
            raise ConfigError("--webhook needs a secret (--webhook-secret or QCSTATION_WEBHOOK_SECRET)")
        sinks.append(WebhookSink(webhook, secret, station=settings.station_id))
    if central is not None:
        from qcstation.station.forwarders.central import CentralSink

        sinks.append(CentralSink(central, store.engine, station=settings.station_id))
    return sinks


class _StatusLine:
    """A live one-line status on a terminal; a log line every few seconds otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = err.is_terminal
        self.last = 0.0

    @staticmethod
    def text(s: StationStats) -> str:
        v = s.verdicts
        y = s.yield_
        state = s.batch_status.value + (f" ({s.hold.rule})" if s.hold else "")
        fault = f" · FAULT {s.store_fault or s.source_fault}" if (s.store_fault or s.source_fault) else ""
        drift = " · SCORE DRIFT" if s.drift else ""
        return (
            f"parts {s.committed} · {s.rate:5.1f}/s · PASS {v['PASS']} FAIL {v['FAIL']} "
            f"REVIEW {v['REVIEW']} ERROR {v['ERROR']} · yield {'-' if y is None else f'{y:.1%}'} · "
            f"batch {state}{fault}{drift}"
        )

    def update(self, s: StationStats) -> None:
        if not self.enabled:
            return
        if self.tty:
            err.print("\r" + self.text(s), end="", highlight=False, soft_wrap=True)
        elif time.monotonic() - self.last > 2.0:
            self.last = time.monotonic()
            err.print(self.text(s), highlight=False)

    def finish(self, s: StationStats) -> None:
        if self.enabled:
            err.print(("\r" if self.tty else "") + self.text(s), highlight=False)


# -- records ------------------------------------------------------------------------------------------


@app.command()
def verify(data_dir: DataDir = None, station: StationId = None) -> None:
    """Walk the tamper-evidence hash chain; exit 1 and name the first broken row."""
    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        report = store.verify()
    if report.ok:
        out.print(f"[green]chain intact[/]: {report.checked} rows verified in {settings.store_url}")
        return
    out.print(f"[bold red]chain BROKEN[/]: {report.describe()}", highlight=False)
    raise typer.Exit(1)


@app.command()
def inspections(
    data_dir: DataDir = None,
    station: StationId = None,
    batch: Annotated[str | None, typer.Option("--batch", "-b")] = None,
    serial: Annotated[str | None, typer.Option("--serial")] = None,
    verdict: Annotated[str | None, typer.Option("--verdict", help="PASS, FAIL, REVIEW or ERROR")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """List inspection records (oldest first)."""
    from qcstation.station.errors import ConfigError

    if verdict is not None and verdict.upper() not in ("PASS", "FAIL", "REVIEW", "ERROR"):
        raise ConfigError(f"--verdict: expected PASS, FAIL, REVIEW or ERROR, got {verdict!r}")
    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        rows = store.inspections(
            batch_id=batch, serial=serial, verdict=verdict.upper() if verdict else None, limit=limit
        )
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps(r.to_dict(), default=str) + "\n")
        return
    table = Table()
    cols = ["time (UTC)", "serial", "verdict", "disposition", "score", "reasons"]
    if batch is None:
        cols.insert(1, "batch")
    widths = {"time (UTC)": 8, "batch": 12, "serial": 9, "verdict": 7, "disposition": 11, "score": 5}
    for col in cols:
        table.add_column(
            col,
            no_wrap=col != "reasons",
            overflow="ellipsis",
            min_width=widths.get(col, 20),
            max_width=24 if col == "batch" else None,
        )
    for r in rows:
        cells = [
            r.decided_at[11:19],
            r.serial or r.frame_id,
            r.verdict,
            r.disposition,
            "" if r.image_score is None else f"{r.image_score:.2f}",
            "; ".join(r.reasons) or (r.error or ""),
        ]
        if batch is None:
            cells.insert(1, r.batch_id)
        table.add_row(*cells)
    out.print(table)


@app.command()
def holds(
    data_dir: DataDir = None,
    station: StationId = None,
    batch: Annotated[str | None, typer.Option("--batch", "-b")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="only holds not yet released")] = False,
) -> None:
    """List batch holds with their rule, evidence and release."""
    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        rows = store.holds(batch_id=batch, open_only=open_only)
    table = Table()
    for col in ("raised_at", "batch", "rule", "detail", "evidence", "suspects", "released"):
        table.add_column(col)
    for h in rows:
        released = (
            f"{h.released_at} by {h.released_by}: {h.release_reason}" if h.released_at else "[red]HELD[/]"
        )
        table.add_row(
            h.raised_at, h.batch_id, h.rule, h.detail, str(len(h.evidence)), str(len(h.suspects)), released
        )
    out.print(table)


@app.command()
def release(
    batch_id: Annotated[str, typer.Argument(help="the held batch")],
    by: Annotated[str, typer.Option("--by", help="who releases (quality engineer)")],
    reason: Annotated[str, typer.Option("--reason", help="why the batch may go on")],
    data_dir: DataDir = None,
    station: StationId = None,
) -> None:
    """Release a batch hold, with a reason (recorded in the audit chain)."""
    from qcstation.station.errors import ReleaseError
    from qcstation.station.types import BatchStatus, HoldReleased

    if not reason.strip():
        raise ReleaseError("a release needs a reason (--reason)")
    if not by.strip():
        raise ReleaseError("a release needs the name of who releases (--by)")
    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        b = store.get_batch(batch_id)
        if b is None:
            raise ReleaseError(f"no batch {batch_id!r} in {settings.store_url}")
        if b.status != BatchStatus.HOLD:
            raise ReleaseError(f"batch {batch_id} is {b.status}, not on hold")
        store.record_hold_released(HoldReleased(batch_id, by.strip(), reason.strip(), datetime.now(UTC)))
    out.print(f"released hold on {batch_id} (by {by}: {reason})", highlight=False)


@batch_app.command("summary")
def batch_summary(batch_id: str, data_dir: DataDir = None, station: StationId = None) -> None:
    """Counts, yield, defect Pareto and hold state of a batch."""
    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        out.print_json(json.dumps(store.batch_summary(batch_id), default=str))


@batch_app.command("close")
def batch_close(
    batch_id: str,
    by: Annotated[str, typer.Option("--by")] = "operator",
    data_dir: DataDir = None,
    station: StationId = None,
) -> None:
    """Close a batch (refused while it is on hold)."""
    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        store.close_batch(batch_id, at=datetime.now(UTC), actor=by)
    out.print(f"closed {batch_id}")


@app.command()
def prune(
    days: Annotated[float, typer.Option("--days", min=0.0, help="keep images younger than this")] = 90.0,
    include_rejects: Annotated[
        bool,
        typer.Option("--include-rejects", help="also remove FAIL/REVIEW/ERROR/HOLD images past retention"),
    ] = False,
    data_dir: DataDir = None,
    station: StationId = None,
) -> None:
    """Remove archived images past retention (PASS images only, unless --include-rejects)."""
    from qcstation.station.archive import ImageArchive

    settings = _settings(data_dir, station)
    archive = ImageArchive(settings.images_dir)
    with _open_store(settings) as store:
        result = archive.prune(
            store.image_records(),
            now=datetime.now(UTC),
            retention_days=days,
            keep=() if include_rejects else _default_keep(),
        )
    usage = archive.usage()
    out.print(
        f"removed {result.removed} image(s), freed {result.freed_bytes / 1e6:.1f} MB; "
        f"archive now {usage.files} file(s), {usage.bytes / 1e6:.1f} MB; disk free "
        f"{usage.disk_free / 1e9:.1f} GB"
    )


def _default_keep() -> frozenset[str]:
    from qcstation.station.archive import DEFAULT_KEEP

    return DEFAULT_KEEP


# -- models and samples --------------------------------------------------------------------------------


@app.command("model-info")
def model_info(path: Path) -> None:
    """Load a model, check its card against its graph, and print the card."""
    from qcstation.inspect.detector import Detector

    det = Detector.from_path(path)
    out.print_json(det.card.to_json())
    out.print(f"sha256 {det.info.sha256}")


@app.command()
def samples(
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write")] = Path("sample_images"),
    seed: Annotated[int, typer.Option("--seed")] = 20261122,
    count: Annotated[int | None, typer.Option("--count", help="random set of N, not the demo")] = None,
    defect_rate: Annotated[float, typer.Option("--defect-rate", min=0.0, max=1.0)] = 0.5,
) -> None:
    """Generate synthetic part images with defect masks (the committed demo set by default)."""
    from qcstation import synth

    if count is None:
        rows = synth.generate_demo(out_dir, seed=seed)
    else:
        rows = synth.generate_dataset(out_dir, count=count, seed=seed, defect_rate=defect_rate)
    out.print(f"wrote {len(rows)} images to {out_dir}")


# -- serve and tokens (the REST API) -------------------------------------------------------------------------

token_app = typer.Typer(help="API tokens: issue, revoke, list.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@app.command()
def serve(
    source: SourceOpt = "sample_images",
    recipe: RecipeOpt = Path("recipes/demo.yaml"),
    data_dir: DataDir = None,
    station: StationId = None,
    batch: BatchOpt = None,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    rate: RateOpt = None,
    loop: LoopOpt = False,
    trigger: Annotated[
        bool, typer.Option("--trigger", help="capture only on POST /api/v1/trigger (one frame per request)")
    ] = False,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    mqtt: Annotated[
        str | None,
        typer.Option("--mqtt", help="forward results to broker HOST[:PORT]", envvar="QCSTATION_MQTT"),
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option("--webhook", help="forward results to this URL", envvar="QCSTATION_WEBHOOK_URL"),
    ] = None,
    webhook_secret: Annotated[
        str | None, typer.Option(help="webhook HMAC secret", envvar="QCSTATION_WEBHOOK_SECRET")
    ] = None,
    central: Annotated[
        str | None,
        typer.Option("--central", help="forward to a central store URL", envvar="QCSTATION_CENTRAL_URL"),
    ] = None,
) -> None:
    """Run the station and its REST API (http://HOST:PORT/api/v1) in one process; Ctrl-C stops both."""
    import uvicorn

    from qcstation.station.api import ApiConfig, create_app
    from qcstation.station.api.auth import check_bind, is_loopback
    from qcstation.station.tokens import TokenStore

    settings = _settings(data_dir, station, intra_op_threads=threads, inference_workers=workers)
    loaded, detector = _load_model(settings, recipe)
    store = _open_store(settings, must_exist=False)
    try:
        tokens = TokenStore(store)
        check_bind(host, tokens)
        st = _assemble(
            settings,
            store,
            loaded,
            detector,
            source=source,
            batch=batch,
            rate=rate,
            loop=loop,
            trigger=trigger,
            serving=True,
        )
        archive = st.archive
        api_config = ApiConfig(host=host, port=port)
        web = create_app(
            settings=settings, store=store, archive=archive, station=st, tokens=tokens, config=api_config
        )
        sinks = _outbox_sinks(
            settings, store, mqtt=mqtt, webhook=webhook, secret=webhook_secret, central=central
        )
        forwarder = None
        if sinks:
            from qcstation.station.outbox import Forwarder

            forwarder = Forwarder(store, sinks)
            forwarder.start()
        open_note = " · no tokens: read-only without a token on loopback" if not tokens.any_active() else ""
        shown = host if is_loopback(host) or ":" not in host else f"[{host}]"
        err.print(
            f"station [bold]{settings.station_id}[/] · batch [bold]{st.batch_id}[/] · model "
            f"{detector.info.name} {detector.info.version} · recipe {loaded.recipe.product} "
            f"({st.recipe_hash[:12]}) · source {source}{' (trigger)' if trigger else ''}\n"
            f"API http://{shown}:{port}/api/v1 (docs /api/v1/docs){open_note}"
            + (f"\nforwarding to {', '.join(sk.name for sk in sinks)}" if sinks else ""),
            highlight=False,
        )
        # After every native call (session.run above all) the station's threads must take the GIL back from
        # API request handling, which holds it in pure Python; a waiting thread waits up to one switch
        # interval (5 ms by default) before the holder is made to drop it. docs/bench-api.md measures this.
        switch_before = sys.getswitchinterval()
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        try:
            uvicorn.run(web, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
        finally:
            sys.setswitchinterval(switch_before)
            if forwarder is not None:
                forwarder.stop()
    finally:
        store.close()


@token_app.command("issue")
def token_issue(
    name: Annotated[str, typer.Option("--name", help="who holds it: a person, the MES, a screen")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator, quality, mes or admin")],
    data_dir: DataDir = None,
    station: StationId = None,
) -> None:
    """Issue an API token; it is printed once and only its hash is stored."""
    from qcstation.station.tokens import TokenStore

    settings = _settings(data_dir, station)
    with _open_store(settings, must_exist=False) as store:
        issued = TokenStore(store).issue(name, role, by=_cli_actor())
    err.print(
        f"issued token [bold]{issued.info.name}[/] (role {issued.info.role.value}); store it now, it is not "
        "shown again:",
        highlight=False,
    )
    sys.stdout.write(issued.secret + "\n")


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="the token's name")],
    data_dir: DataDir = None,
    station: StationId = None,
) -> None:
    """Revoke an API token; requests with it get 401 from then on."""
    from qcstation.station.tokens import TokenStore

    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        info = TokenStore(store).revoke(name, by=_cli_actor())
    out.print(f"revoked token {info.name} (role {info.role.value})", highlight=False)


@token_app.command("list")
def token_list(data_dir: DataDir = None, station: StationId = None) -> None:
    """List API tokens (never their secrets)."""
    from qcstation.station.tokens import TokenStore

    settings = _settings(data_dir, station)
    with _open_store(settings) as store:
        rows = TokenStore(store).list()
    table = Table()
    for col in ("name", "role", "created", "by", "state"):
        table.add_column(col)
    for t in rows:
        table.add_row(
            t.name,
            t.role.value,
            t.created_at,
            t.created_by,
            "active" if t.active else f"revoked {t.revoked_at}",
        )
    out.print(table)


# -- dataset export (reviewed records as training data) ------------------------------------------------------

dataset_app = typer.Typer(help="Datasets from the station's reviewed records.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


def _since(text: str | None) -> datetime | None:
    """``--since``: ISO 8601 (no zone: UTC), or a span back from now like ``7d``, ``12h``, ``30m``."""
    import re
    from datetime import timedelta

    from qcstation.station.errors import ConfigError

    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhm])\s*", text)
    if m:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(m.group(1))})
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise ConfigError(
            f"--since: expected ISO 8601 (2026-01-31T08:00Z) or a span like 7d, got {text!r}"
        ) from e
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


@dataset_app.command("export")
def dataset_export(
    out_dir: Annotated[Path, typer.Option("--out", help="dataset folder to write")],
    since: Annotated[
        str | None, typer.Option("--since", help="only records reviewed since: ISO 8601 or a span (7d, 12h)")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="model whose card lists the classes (default: the recipe's)"),
    ] = None,
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="recipe YAML naming the model")] = Path(
        "recipes/demo.yaml"
    ),
    data_dir: DataDir = None,
    station: StationId = None,
) -> None:
    """Write reviewed records with kept images as an indexed_masks dataset the training package reads."""
    from qcstation.inspect.detector import Detector
    from qcstation.station.archive import ImageArchive
    from qcstation.station.recipe import load_recipe
    from qcstation.station.review import ReviewStore, export_dataset

    settings = _settings(data_dir, station)
    model_path = model if model is not None else load_recipe(recipe).model_path
    det = Detector.from_path(model_path)
    info = {"name": det.info.name, "version": det.info.version, "sha256": det.info.sha256}
    when = _since(since)
    with _open_store(settings) as store:
        summary = export_dataset(
            ReviewStore(store),
            ImageArchive(settings.images_dir),
            out_dir,
            det.card.classes,
            since=when,
            model=info,
        )
    out.print(
        f"wrote {summary.written} image(s) to {out_dir} ({summary.fail} FAIL with box masks, "
        f"{summary.passed} PASS with empty masks); classes {list(det.card.classes)}",
        highlight=False,
    )
    for record_id, why in summary.skipped[:20]:
        err.print(f"[yellow]skipped[/] {record_id}: {why}", highlight=False)
    if len(summary.skipped) > 20:
        err.print(f"[yellow]… and {len(summary.skipped) - 20} more skipped[/]", highlight=False)


# -- plant: migrations, backup/restore, the outbox forwarder ------------------------------------------------

db_app = typer.Typer(help="Store schema: migrations (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")

StoreUrl = Annotated[
    str | None,
    typer.Option("--url", help="SQLAlchemy URL or SQLite path [default: the data dir's store]"),
]


def _store_url(data_dir: Path | None, url: str | None) -> str:
    if url is not None:
        return url
    return _settings(data_dir).store_url


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    data_dir: DataDir = None,
    url: StoreUrl = None,
) -> None:
    """Upgrade the store's schema in place (an existing pre-migration store is stamped first)."""
    from qcstation.station.migrations import upgrade

    before, after = upgrade(_store_url(data_dir, url), revision)
    out.print(f"store schema: {before or 'empty'} -> {after}", highlight=False)


@db_app.command("current")
def db_current(data_dir: DataDir = None, url: StoreUrl = None) -> None:
    """Print the store's schema revision and the newest this qcstation knows."""
    from qcstation.station.migrations import current, head

    rev = current(_store_url(data_dir, url))
    newest = head()
    state = "up to date" if rev == newest else "upgrade with: qcstation db upgrade"
    out.print(f"revision {rev or 'none (empty)'} (head {newest}): {state}", highlight=False)


@app.command()
def forward(
    data_dir: DataDir = None,
    station: StationId = None,
    mqtt: Annotated[
        str | None, typer.Option("--mqtt", help="broker HOST[:PORT]", envvar="QCSTATION_MQTT")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="webhook URL", envvar="QCSTATION_WEBHOOK_URL")
    ] = None,
    webhook_secret: Annotated[
        str | None, typer.Option(help="webhook HMAC secret", envvar="QCSTATION_WEBHOOK_SECRET")
    ] = None,
    central: Annotated[
        str | None, typer.Option("--central", help="central store URL", envvar="QCSTATION_CENTRAL_URL")
    ] = None,
    backlog_alert: Annotated[float, typer.Option("--backlog-alert", help="seconds; event if older")] = 300.0,
    until_empty: Annotated[bool, typer.Option("--until-empty", help="exit when nothing is pending")] = False,
) -> None:
    """Run the outbox forwarder of one station: deliver its records to MQTT, a webhook, a central store."""
    from qcstation.station.errors import ConfigError
    from qcstation.station.outbox import Forwarder

    settings = _settings(data_dir, station)
    store = _open_store(settings)
    try:
        sinks = _outbox_sinks(
            settings, store, mqtt=mqtt, webhook=webhook, secret=webhook_secret, central=central
        )
        if not sinks:
            raise ConfigError("nothing to forward to: give --mqtt, --webhook or --central")
        fwd = Forwarder(store, sinks, backlog_alert_after=backlog_alert)

        def handle(signum: int, _frame: object) -> None:
            fwd.request_stop()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)
        err.print(f"forwarding station {settings.station_id} to {', '.join(s.name for s in sinks)}")
        fwd.run(until_empty=until_empty)
        fwd.stop()
        out.print(f"delivered {fwd.delivered}; backlog {fwd.backlog().size}")
    finally:
        store.close()


@app.command()
def backup(
    out_path: Annotated[Path, typer.Argument(help="backup file to write")],
    data_dir: DataDir = None,
) -> None:
    """Back up the SQLite store online (consistent while the station writes)."""
    from qcstation.station.backup import backup_sqlite

    settings = _settings(data_dir)
    if settings.database_url is not None:
        from qcstation.station.errors import ConfigError

        raise ConfigError("backup copies the embedded SQLite store; back up PostgreSQL with pg_dump")
    backup_sqlite(Path(settings.store_url), out_path)
    out.print(f"backed up {settings.store_url} to {out_path}", highlight=False)


@app.command()
def restore(
    backup_path: Annotated[Path, typer.Argument(help="backup file made by `qcstation backup`")],
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing store")] = False,
) -> None:
    """Restore the SQLite store from a backup whose hash chain verifies (stop the station first)."""
    from qcstation.station.backup import restore_sqlite

    settings = _settings(data_dir)
    report = restore_sqlite(backup_path, Path(settings.store_url), force=force)
    out.print(f"restored {settings.store_url}: {report.describe()}", highlight=False)


@app.command()
def bench(
    frames: Annotated[int, typer.Option("--frames", help="frames per throughput run", min=1)] = 200,
    repeats: Annotated[int, typer.Option("--repeats", help="alternating runs per figure", min=1)] = 5,
    images: Annotated[Path, typer.Option("--images", help="image folder to replay")] = Path("sample_images"),
    recipe: RecipeOpt = Path("recipes/demo.yaml"),
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="a few frames, one repeat (a smoke test)")] = False,
    fresh_archive: Annotated[
        bool,
        typer.Option(
            "--fresh-archive",
            help="station runs start with a new, empty image archive (a new station's first hours) "
            "instead of one in service",
        ),
    ] = False,
) -> None:
    """Measure the station against its own baselines (same process, alternating runs, medians)."""
    from dataclasses import replace

    from qcstation.station.bench import BenchConfig, render, render_runs, run_bench
    from qcstation.station.settings import default_inference_workers

    settings = _settings(intra_op_threads=threads, inference_workers=workers)
    t, w = settings.intra_op_threads, settings.inference_workers or default_inference_workers()
    if quick:
        cfg = BenchConfig.quick(recipe, images, threads=t, workers=w)
    else:
        cfg = BenchConfig(recipe, images, frames=frames, repeats=repeats, threads=t, workers=w)
    cfg = replace(cfg, fresh_archive=fresh_archive)
    report = run_bench(cfg, progress=lambda what: err.print(f"[dim]measuring {what}…[/]"))
    typer.echo(render(report))
    typer.echo("\nruns behind the medians:\n" + render_runs(report))


# -- training ------------------------------------------------------------------------------------------


def _training(what: str) -> None:
    """Refuse a training command clearly when the ``train`` extra is not installed."""
    import importlib.util

    from qcstation.station.errors import ConfigError

    missing = [
        m for m in ("torch", "torchvision", "albumentations", "onnx") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ConfigError(
            f"`qcstation {what}` needs the train extra ({', '.join(missing)} not installed): "
            "pip install 'qcstation[train]'"
        )


def _training_errors() -> tuple[type[Exception], ...]:
    from qcstation.training.errors import TrainingError

    return (TrainingError,)


LAYOUT_HELP = (
    "dataset layout: mask_folders, yolo_seg, labelme, voc, plain_images (good images alone), "
    "indexed_masks (default: dataset.yaml's, else detected)"
)


@app.command()
def train(
    dataset: Annotated[
        str,
        typer.Argument(
            help="dataset folder (or a name under $QCSTATION_DATASETS); 'synth' for "
            "the project's own generated parts"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the .onnx file to write")],
    mode: Annotated[
        str, typer.Option("--mode", help="supervised (defect labels) or good_only")
    ] = "supervised",
    layout: Annotated[str | None, typer.Option("--layout", help=LAYOUT_HELP)] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget", min=0.1, help="minutes of training (default: 44 supervised, 35 good_only)"
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            help="stop after this many epochs (default: the budget alone supervised; 40 good_only)",
        ),
    ] = None,
    size: Annotated[
        int,
        typer.Option(
            "--size", min=32, help="side of the square model input in pixels; frames are resized to it"
        ),
    ] = 256,
    width: Annotated[
        int, typer.Option("--width", min=4, help="first-stage channels of the U-Net (capacity and cost)")
    ] = 16,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="images per training step")] = 12,
    lr: Annotated[
        float, typer.Option("--lr", min=1e-6, max=1.0, help="AdamW peak learning rate (cosine schedule)")
    ] = 2e-3,
    seed: Annotated[int, typer.Option("--seed", help="seed of the initial weights and augmentation")] = 0,
    split_seed: Annotated[
        int, typer.Option("--split-seed", help="seed of the validation carve-out (the same for every --seed)")
    ] = 0,
    evaluate_split: Annotated[
        str, typer.Option("--evaluate", help="split to report on after training, or none")
    ] = ("test"),
    augment: Annotated[
        str,
        typer.Option(
            "--augment", help="augmentation preset (light, default, heavy) or a YAML file that overrides one"
        ),
    ] = "default",
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="checkpoints, log.csv and reports (default: a new temp folder)"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="an interrupted run's work dir (or its last.pt): go on from there"),
    ] = None,
    drop_suspect_labels: Annotated[
        bool,
        typer.Option(
            "--drop-suspect-labels",
            help="leave out of training and validation the images whose labels the data contradicts "
            "(`qcstation dataset info` lists them)",
        ),
    ] = False,
    device: Annotated[
        str,
        typer.Option("--device", help="auto (a GPU when one is visible, else the CPU), cpu, cuda or cuda:N"),
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="auto (mixed precision on a GPU, fp32 on the CPU), fp32, bf16 (fast on CPUs with native "
            "bfloat16) or fp16 (GPU)",
        ),
    ] = "auto",
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            help="unet (trained from scratch, the default) or a torchvision encoder: resnet18, resnet34, "
            "resnet50",
        ),
    ] = "unet",
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained",
            help="start the --backbone from torchvision's ImageNet weights (downloaded once into the torch "
            "hub cache; offline, says which file to copy there)",
        ),
    ] = False,
    refit: Annotated[
        bool | None,
        typer.Option(
            "--refit/--no-refit",
            help="held-out groups with defects train too; only good images stay out, to calibrate on, "
            "and the members keep their last epoch (no validation AUROC then). Default: on in supervised "
            "mode where a held-out group is defect-free (else the epochs are chosen on the held-out "
            "defects, with a warning), off in good-only mode",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a defect model, calibrate it on validation, export it as a self-describing ONNX file.

    Several GPUs: start it with torchrun, one process per GPU, e.g.
    `torchrun --standalone --nproc_per_node=4 -m qcstation.cli train ...`; rank 0 writes the model.
    """
    from qcstation.station.errors import ConfigError

    _training("train")
    if mode not in ("supervised", "good_only"):
        raise ConfigError(f"--mode: expected supervised or good_only, got {mode!r}")
    if width != 16 and backbone != "unet":
        raise ConfigError(f"--width sets the unet's channels; the {backbone} encoder has its own")
    try:
        from qcstation.training.augment import is_preset, load_config

        if not is_preset(augment):
            load_config(augment)  # a bad file fails here, before any data is read
        if dataset == "synth":
            from qcstation.training.train import train_synthetic

            res = train_synthetic(out, samples=900, epochs=epochs or 40, seed=seed or 7301)
            out.parent.mkdir(parents=True, exist_ok=True)
            print(json.dumps({"model": str(out), "summary": str(res)[:2000]}, default=str))
            return
        from qcstation.training.api import resolve_dataset, train_main
        from qcstation.training.layouts import detect_layout

        found = layout or detect_layout(resolve_dataset(dataset))
        if found == "plain_images" and mode != "good_only":
            raise ConfigError(
                f"{dataset} holds good images alone (layout plain_images): there are no defect labels to "
                "learn from; train it in good-only mode (--mode good_only)"
            )
        result = train_main(
            dataset,
            out,
            mode=mode,  # type: ignore[arg-type]
            layout=layout,
            epochs=epochs,
            time_budget_min=time_budget,
            size=size,
            width=width,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            split_seed=split_seed,
            evaluate_split=None if evaluate_split == "none" else evaluate_split,
            augment=augment,
            work_dir=work_dir,
            resume=resume,
            drop_suspects=drop_suspect_labels,
            device=device,
            precision=precision,
            backbone=backbone,
            pretrained=pretrained,
            refit=refit,
        )
    except _training_errors() as e:
        raise ConfigError(str(e)) from e
    if "rank" in result:  # a torchrun process other than rank 0: rank 0 reports
        return
    out_ = {k: v for k, v in result.items() if k in ("model", "minutes", "validation", "test", "report")}
    sys.stdout.write(json.dumps(out_ or result, default=str, indent=2) + "\n")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="the .onnx model")],
    dataset: Annotated[str, typer.Argument(help="dataset folder (or a name under $QCSTATION_DATASETS)")],
    split: Annotated[
        str | None, typer.Option("--split", help="split.json side, or all (default: test; all with --images)")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="report folder")] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="only the images this file lists (one dataset-relative path per line), e.g. a training "
            "run's checkpoints/validation.txt: look at the misses without touching the test split",
        ),
    ] = None,
) -> None:
    """Image-level AUROC/AP, recall at 1/2/5 % false rejects, region and pixel figures, plots and a report."""
    from qcstation.station.errors import ConfigError

    _training("evaluate")
    from qcstation.training.evaluate import evaluate_main

    side = split or ("all" if images is not None else "test")
    try:
        result = evaluate_main(
            model, dataset, split=None if side == "all" else side, out_dir=out_dir, images=images
        )
    except _training_errors() as e:
        raise ConfigError(str(e)) from e
    sys.stdout.write(json.dumps(result["metrics"], default=str, indent=2) + "\n")
    out.print(f"report: {result['report']}", highlight=False)


@app.command("calibrate")
def calibrate(
    model: Annotated[Path, typer.Argument(help="the .onnx model")],
    dataset: Annotated[
        str,
        typer.Argument(help="good parts from the line: any dataset layout or a plain folder of images"),
    ],
    target: Annotated[
        float, typer.Option("--target-frr", help="share of good parts the line may reject, e.g. 0.02")
    ] = 0.02,
    split: Annotated[str, typer.Option("--split", help="split.json side, or all")] = "all",
    confidence: Annotated[float, typer.Option("--confidence", help="of the false-reject upper bound")] = 0.95,
    min_threshold: Annotated[
        float, typer.Option("--min-threshold", help="no threshold below this, where good parts never score")
    ] = 0.3,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", help="apply this recipe's roi and ignore areas"),
    ] = None,
    write: Annotated[
        Path | None, typer.Option("--out", help="write the recipe fragment (YAML) to this file")
    ] = None,
) -> None:
    """Thresholds for a false-reject target, set on the line's own good parts, with an honest upper bound."""
    from qcstation.station.errors import ConfigError

    _training("calibrate")
    from qcstation.training.recalibrate import recalibrate_main

    try:
        result = recalibrate_main(
            model,
            dataset,
            split=None if split == "all" else split,
            target_false_reject=target,
            confidence=confidence,
            min_threshold=min_threshold,
            recipe=recipe,
        )
    except _training_errors() as e:
        raise ConfigError(str(e)) from e
    for p in result["problems"]:
        err.print(f"skipped {p['file']}: {p['reason']}", highlight=False)
    for w in result["warnings"]:
        err.print(f"warning: {w}", highlight=False)
    shown = {k: v for k, v in result.items() if k != "recipe"}
    sys.stdout.write(json.dumps(shown, default=str, indent=2) + "\n")
    if write is not None:
        try:
            write.write_text(result["recipe"], encoding="utf-8")
        except OSError as e:
            sys.stdout.write(result["recipe"])  # the calibration is not lost with the file
            raise ConfigError(f"cannot write {write}: {e}; the recipe fragment is on stdout") from e
        out.print(f"recipe fragment: {write}", highlight=False)
    else:
        sys.stdout.write(result["recipe"])


@dataset_app.command("info")
def dataset_info_cmd(
    dataset: Annotated[str, typer.Argument(help="dataset folder (or a name under $QCSTATION_DATASETS)")],
    layout: Annotated[str | None, typer.Option("--layout", help=LAYOUT_HELP)] = None,
) -> None:
    """Counts per class and split, image sizes, label coverage, and every unreadable file by name."""
    from qcstation.station.errors import ConfigError

    _training("dataset info")
    from qcstation.training.api import dataset_info

    try:
        report = dataset_info(dataset, layout=layout)
    except _training_errors() as e:
        raise ConfigError(str(e)) from e
    sys.stdout.write(json.dumps(report, default=str, indent=2) + "\n")


@app.command("export")
def export_model(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="training checkpoint (.pt), e.g. <work>/checkpoints/best.pt, or a run's checkpoints "
            "folder or work dir (an ensemble run's: its member<k>/best.pt averaged, as trained)"
        ),
    ],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="the .onnx file to write")],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            help="real images for the parity check, calibration and INT8 (folder or name; any layout)",
        ),
    ] = None,
    layout: Annotated[str | None, typer.Option("--layout", help=LAYOUT_HELP)] = None,
    size: Annotated[
        int | None, typer.Option("--size", min=8, help="input side (default: the checkpoint's)")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="model name in the card")] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", min=0.0, max=1.0, help="one threshold for every defect class"),
    ] = None,
    card_from: Annotated[
        Path | None,
        typer.Option(
            "--card-from", help="exported model of the same run: take its thresholds and provenance"
        ),
    ] = None,
    target_false_reject: Annotated[
        float, typer.Option("--target-false-reject", min=0.0, max=0.5, help="calibration target")
    ] = 0.02,
    int8: Annotated[bool, typer.Option("--int8", help="also write <out>-int8.onnx and compare it")] = False,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="images for parity and INT8")] = 48,
    latency_runs: Annotated[int, typer.Option("--latency-runs", min=1)] = 30,
    threads: ThreadsOpt = None,
) -> None:
    """Export a training checkpoint (or an ensemble run's) as ONNX with its card; parity, latency, INT8."""
    from qcstation.station.errors import ConfigError

    _training("export")
    from qcstation.training.export import export_checkpoint

    try:
        report = export_checkpoint(
            checkpoint,
            out_path,
            dataset=dataset,
            layout=layout,
            size=size,
            name=name,
            threshold=threshold,
            card_from=card_from,
            target_false_reject=target_false_reject,
            max_images=max_images,
            int8=int8,
            latency_runs=latency_runs,
            threads=threads,
        )
    except _training_errors() as e:
        raise ConfigError(str(e)) from e
    sys.stdout.write(json.dumps(report, default=str, indent=2) + "\n")
    parity = report["parity"]
    lat = report["latency"]["fp32"]
    line = (
        f"wrote {report['model']}"
        + (f" (ensemble of {len(report['members'])} members)" if "members" in report else "")
        + f": parity on {parity['images']} "
        f"{'real' if parity['real_images'] else 'synthetic'} images, "
        f"max |diff| {parity['max_abs_diff']:.2e}, "
        f"verdicts identical {parity['verdicts_identical']}/{parity['images']}; "
        f"latency {lat['median_ms']:.1f} ms (median)"
    )
    if "int8" in report:
        q = report["int8"]
        line += (
            f"; INT8 {q['model']}: max |diff| {q['max_abs_diff_vs_fp32']:.2e}, "
            f"{q['verdicts_changed']} verdict(s) changed, latency {q['latency']['median_ms']:.1f} ms"
        )
        if "image_auroc" in q:
            line += f", image AUROC {q['image_auroc']['fp32']} -> {q['image_auroc']['int8']}"
    err.print(line, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    main()
