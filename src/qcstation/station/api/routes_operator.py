"""Routes for people at and around the line: holds, on-demand inspection, trigger, live stream, status."""

from __future__ import annotations

import asyncio
import math
import statistics
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import StreamingResponse
from uuid6 import uuid7

from qcstation.inspect.types import Frame
from qcstation.station.api.deps import (
    Ctx,
    HoldRaiser,
    HoldReleaser,
    Inspector,
    Reader,
    Triggerer,
)
from qcstation.station.api.errors import ApiError, not_found
from qcstation.station.api.schemas import (
    BATCH_ID_PATTERN,
    SERIAL_PATTERN,
    ControlLimitsOut,
    DriftCheckOut,
    DriftOut,
    FailRateOut,
    FaultOut,
    HoldIn,
    HoldOut,
    InspectionOut,
    LatencyOut,
    ModelOut,
    PChartOut,
    ReleaseIn,
    ReleaseOut,
    StatusOut,
    TriggerIn,
    TriggerOut,
)
from qcstation.station.drift import DriftMonitor, ScoreDrift
from qcstation.station.holds import BatchMonitor
from qcstation.station.recipe import HoldRules
from qcstation.station.sources import decode_image, sniff_extension
from qcstation.station.store import utc_iso
from qcstation.station.types import BatchStatus, HoldRaised

router = APIRouter(tags=["operator"])

BatchId = Annotated[str, Path(pattern=BATCH_ID_PATTERN, description="batch (job) id")]


# -- holds ----------------------------------------------------------------------------------------------


@router.post("/batches/{batch_id}/holds", response_model=HoldOut, status_code=201, summary="Raise a hold")
def raise_hold(ctx: Ctx, who: HoldRaiser, batch_id: BatchId, body: HoldIn) -> HoldOut:
    """Put a batch on hold by hand, with a reason; every later part of the batch is quarantined (HOLD).

    When the station is inspecting this batch the hold goes through its batch monitor, so the very next
    part is already held; otherwise it is recorded in the store.
    """
    batch = ctx.store.get_batch(batch_id)
    if batch is None:
        raise not_found(f"no batch {batch_id!r} at station {ctx.store.station_id}")
    if batch.status is not BatchStatus.OPEN:
        raise ApiError(
            409, "batch", f"batch {batch_id} is {batch.status.value}; only an OPEN batch can be held"
        )
    c = ctx.control
    if c is not None and c.running and c.station.batch_id == batch_id:
        _ev, hold_id = c.raise_hold(by=who.actor, reason=body.reason)
    else:
        ev = HoldRaised(
            batch_id=batch_id,
            rule="manual",
            detail=f"manual hold by {who.actor}: {body.reason}",
            evidence=(),
            suspects=(),
            at=datetime.now(UTC),
            actor=who.actor,
        )
        hold_id = ctx.store.record_hold_raised(ev)
        if ctx.feed is not None:
            ctx.feed.on_event(ev)
    for h in ctx.store.holds(batch_id=batch_id):
        if h.hold_id == hold_id:
            return HoldOut.of(h)
    raise ApiError(503, "store", f"the hold {hold_id} was recorded but cannot be read back")


@router.post("/batches/{batch_id}/release", response_model=ReleaseOut, summary="Release a hold (quality)")
def release_hold(ctx: Ctx, who: HoldReleaser, batch_id: BatchId, body: ReleaseIn) -> ReleaseOut:
    """Release every open hold of a batch, with a reason (quality role); the batch is OPEN again."""
    batch = ctx.store.get_batch(batch_id)
    if batch is None:
        raise not_found(f"no batch {batch_id!r} at station {ctx.store.station_id}")
    open_before = {h.hold_id for h in ctx.store.holds(batch_id=batch_id, open_only=True)}
    c = ctx.control
    if c is not None and c.running and c.station.batch_id == batch_id:
        c.release(by=who.actor, reason=body.reason)
    else:
        if batch.status is not BatchStatus.HOLD:
            raise ApiError(409, "release", f"batch {batch_id} is {batch.status.value}, not on hold")
        from qcstation.station.types import HoldReleased

        ev = HoldReleased(batch_id, who.actor, body.reason, datetime.now(UTC))
        ctx.store.record_hold_released(ev)
        if ctx.feed is not None:
            ctx.feed.on_event(ev)
    after = ctx.store.get_batch(batch_id)
    assert after is not None
    released = [HoldOut.of(h) for h in ctx.store.holds(batch_id=batch_id) if h.hold_id in open_before]
    return ReleaseOut(job_id=batch_id, state=after.status.value, released=released)


# -- on-demand inspection and trigger -------------------------------------------------------------------


@router.post(
    "/inspect",
    response_model=InspectionOut,
    status_code=201,
    responses={
        413: {"description": "the image is larger than the limit"},
        415: {"description": "the file is not an image the station can read"},
    },
    summary="Inspect an uploaded image",
)
def inspect_upload(
    ctx: Ctx,
    who: Inspector,
    file: Annotated[UploadFile, File(description="an encoded image: PNG, JPEG, BMP, TIFF")],
    serial: Annotated[str | None, Form(pattern=SERIAL_PATTERN, description="part id (serial)")] = None,
    batch: Annotated[
        str | None, Form(pattern=BATCH_ID_PATTERN, description="must be the station's current batch")
    ] = None,
) -> InspectionOut:
    """Run the station's model and rules on an uploaded image and record it like any captured part.

    The image goes through the running station's decision and commit stages (the batch's hold rules count
    it, its image is archived per the recipe, the live stream shows it); the response is the stored result.
    """
    control = ctx.require_station("on-demand inspection")
    limit = ctx.config.max_upload_bytes
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"the image is larger than {limit} bytes")
    if not data:
        raise ApiError(422, "empty", "the uploaded file is empty")
    name = (file.filename or "upload")[:100]
    image, fault = decode_image(data, name)
    if image is None:
        raise ApiError(415, "not_an_image", f"not an image the station can read: {fault}")
    st = control.station
    if batch is not None and batch != st.batch_id:
        raise ApiError(
            409,
            "wrong_batch",
            f"the station is inspecting batch {st.batch_id}, not {batch}; the part was not recorded",
        )
    assert ctx.feed is not None
    frame_id = f"upload-{uuid7()}"
    frame = Frame(
        frame_id=frame_id,
        captured_at=datetime.now(UTC),
        image=image,
        serial=serial,
        source=f"api-upload:{who.name}",
        encoded=data,
        encoded_ext=sniff_extension(data),
    )
    waiter = ctx.feed.expect(frame_id)
    control.submit(frame)
    if not waiter.done.wait(ctx.config.inspect_timeout_s) or waiter.decision is None:
        ctx.feed.forget(frame_id)
        raise ApiError(
            503,
            "not_committed",
            f"the station did not commit the part within {ctx.config.inspect_timeout_s:.0f} s; "
            f"look for measurement_id {frame_id} later",
        )
    rec = ctx.store.get_inspection(waiter.decision.record_id)
    if rec is None:
        raise ApiError(503, "store", "the part was committed but cannot be read back")
    ctx.store.add_event(
        "inspection_uploaded",
        at=datetime.now(UTC),
        actor=who.actor,
        batch_id=rec.batch_id,
        reason="on-demand inspection",
        data={"result_id": rec.id, "filename": name, "bytes": len(data), "serial": serial},
    )
    return InspectionOut.of(rec)


@router.post("/trigger", response_model=TriggerOut, status_code=202, summary="Capture one frame now")
def trigger(ctx: Ctx, who: Triggerer, body: TriggerIn) -> TriggerOut:
    """Ask the camera for one frame now, for a serial; the result arrives on the stream and in the list."""
    control = ctx.require_station("a trigger")
    ts = control.trigger_source()
    if ts is None:
        raise ApiError(
            409,
            "not_triggered",
            f"the station's source ({getattr(control.station.source, 'name', '?')}) captures continuously, "
            "not on trigger; start it with: qcstation serve --trigger",
        )
    ts.trigger(body.serial)
    ctx.store.add_event(
        "trigger_requested",
        at=datetime.now(UTC),
        actor=who.actor,
        batch_id=control.station.batch_id,
        reason="capture requested over the API",
        data={"serial": body.serial},
    )
    return TriggerOut(queued=True, pending=ts.pending, part_id=body.serial)


# -- live -----------------------------------------------------------------------------------------------


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
    summary="Live results and events (SSE)",
)
async def stream(
    ctx: Ctx,
    _who: Reader,
    limit: Annotated[int | None, Query(ge=1, le=100_000, description="end after this many messages")] = None,
) -> StreamingResponse:
    """Server-sent events: ``result`` per committed part, ``hold_raised``, ``hold_released``,
    ``station_fault``/``station_recovered``, ``batch_opened``/``batch_closed``, and ``dropped`` when this
    client was too slow and missed messages (catch up with ``GET /inspections?cursor=``)."""
    if ctx.feed is None:
        raise ApiError(409, "no_station", "the live stream needs a station running in this process")
    sub = ctx.feed.subscribe(asyncio.get_running_loop(), size=ctx.config.stream_queue)
    return StreamingResponse(
        ctx.feed.stream(sub, limit=limit, keepalive_s=ctx.config.stream_keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/status", response_model=StatusOut, summary="The station at a glance")
def status(ctx: Ctx, _who: Reader) -> StatusOut:
    """Source state, rate, latency percentiles, model, recipe, current batch, hold, outbox backlog."""
    backlog = ctx.store.count_outbox_pending()
    c = ctx.control
    if c is None:
        det = ctx.detector
        return StatusOut(
            station_id=ctx.store.station_id,
            running=False,
            source=None,
            source_state="none",
            source_fault=None,
            store_fault=None,
            rate_per_s=0.0,
            parts=0,
            verdicts={},
            latency_ms=LatencyOut(p50=None, p95=None, p99=None, samples=0),
            model=None if det is None else ModelOut(**vars_of(det.info)),
            product_id=None,
            recipe_id=None,
            job_id=None,
            batch_state=None,
            hold=None,
            outbox_backlog=backlog,
        )
    st = c.station
    s = st.stats
    running = c.running
    state: Literal["running", "faulted", "stopped"] = (
        "stopped" if not running else ("faulted" if s.source_fault else "running")
    )
    open_holds = ctx.store.holds(batch_id=st.batch_id, open_only=True)
    return StatusOut(
        station_id=ctx.store.station_id,
        running=running,
        source=str(getattr(st.source, "name", type(st.source).__name__)),
        source_state=state,
        source_fault=s.source_fault,
        store_fault=s.store_fault,
        rate_per_s=round(s.rate, 3),
        parts=s.committed,
        verdicts=dict(s.verdicts),
        latency_ms=latency(list(s.latencies_ms)),
        model=ModelOut(**vars_of(st.detector.info)),
        product_id=st.recipe.product,
        recipe_id=st.recipe_hash,
        job_id=st.batch_id,
        batch_state=c.batch_status.value,
        hold=HoldOut.of(open_holds[-1]) if open_holds else None,
        outbox_backlog=backlog,
        control_limits=control_limits(st.recipe.holds),
        drift=None if st.drift is None else drift_status(st.drift, s.drift),
        faults=faults(st.monitor),
    )


def drift_status(monitor: DriftMonitor, event: ScoreDrift | None) -> DriftOut:
    """The drift watch now: its window against the card's quantiles, and the drift event while drifting."""
    last = {c.quantile: c for c in monitor.checks}  # empty until the window has filled once
    checks = []
    for q, score, expected in monitor.references:
        c = last.get(q)
        checks.append(
            DriftCheckOut(
                quantile=q,
                score=round(score, 6),
                expected=round(expected, 4),
                observed=None if c is None else round(c.observed, 4),
                z=None if c is None else round(c.z, 2),
            )
        )
    worst = max(last.values(), key=lambda c: abs(c.z), default=None)
    drifting = monitor.drifting
    event = event if drifting and event is not None and event.drifting else None
    return DriftOut(
        state="drifting" if drifting else ("ok" if last else "filling"),
        z=None if worst is None else round(worst.z, 2),
        z_limit=monitor.rule.z_limit,
        window=monitor.rule.window,
        samples=monitor.samples,
        reference="the model card's good_scores: quantiles of the scores of good validation parts",
        checks=checks,
        since=None if event is None else utc_iso(event.at),
        detail=None if event is None else event.detail,
    )


def faults(monitor: BatchMonitor) -> list[FaultOut]:
    """The batch monitor's ongoing faults, oldest first."""
    return [
        FaultOut(kind=kind, since=utc_iso(since), detail=what, error_parts=errors)
        for kind, since, what, errors in monitor.faults
    ]


def control_limits(rules: HoldRules) -> ControlLimitsOut:
    """The recipe's hold rules as the limits a fail-rate trend is drawn against."""
    pc = rules.p_chart
    p_chart = None
    if pc is not None:
        p0, n = pc.baseline_rate, pc.subgroup
        ucl = p0 + pc.sigma * math.sqrt(p0 * (1.0 - p0) / n)
        p_chart = PChartOut(baseline_rate=p0, subgroup=n, sigma=pc.sigma, ucl=round(ucl, 6))
    fr = rules.fail_rate
    return ControlLimitsOut(
        p_chart=p_chart,
        fail_rate=None if fr is None else FailRateOut(window=fr.window, max_rate=fr.max_rate),
        consecutive_fails=rules.consecutive_fails,
        review_counts_as_fail=rules.review_counts_as_fail,
    )


def vars_of(info: object) -> dict[str, str]:
    """name, version and sha256 of a ModelInfo."""
    return {k: str(getattr(info, k)) for k in ("name", "version", "sha256")}


def latency(samples: list[float]) -> LatencyOut:
    """p50/p95/p99 of the recent capture-to-commit latencies."""
    if len(samples) < 2:
        one = round(samples[0], 3) if samples else None
        return LatencyOut(p50=one, p95=one, p99=one, samples=len(samples))
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return LatencyOut(p50=round(q[49], 3), p95=round(q[94], 3), p99=round(q[98], 3), samples=len(samples))
