"""Routes for the MES and other plant systems: results, a serial's history, batches, audit events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import cv2
import numpy as np
from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from qcstation.inspect.overlay import draw_overlay
from qcstation.inspect.types import Inspection, ModelInfo
from qcstation.station.api.deps import ApiContext, BatchManager, Ctx, Reader, decode_cursor, encode_cursor
from qcstation.station.api.errors import ApiError, not_found
from qcstation.station.api.schemas import (
    BATCH_ID_PATTERN,
    SERIAL_PATTERN,
    UUID_PATTERN,
    BatchOut,
    BatchStartIn,
    BatchSummaryOut,
    Disposition,
    EventOut,
    EventPage,
    HoldOut,
    InspectionDetailOut,
    InspectionPage,
    JsonBody,
    SerialHistoryOut,
    Verdict,
    detail_fields,
    inspection_fields,
)
from qcstation.station.review import Review, reviews_for
from qcstation.station.store import InspectionRecord

router = APIRouter(tags=["mes"])

ResultId = Annotated[str, Path(pattern=UUID_PATTERN, description="result id (UUID)")]
BatchId = Annotated[str, Path(pattern=BATCH_ID_PATTERN, description="batch (job) id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]

_MEDIA = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "webp": "image/webp",
}


def _utc(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ApiError(400, "bad_filter", f"{name} needs a time zone, e.g. 2026-01-31T08:00:00Z")
    return value.astimezone(UTC)


@router.get("/inspections", response_model=InspectionPage, summary="List results (filtered, paged)")
async def list_inspections(
    ctx: Ctx,
    _who: Reader,
    batch: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN, description="job (batch) id")] = None,
    serial: Annotated[str | None, Query(pattern=SERIAL_PATTERN, description="part id (serial)")] = None,
    verdict: Annotated[Verdict | None, Query(description="result state")] = None,
    disposition: Annotated[Disposition | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="decided at or after (ISO 8601 with zone)")] = None,
    until: Annotated[datetime | None, Query(description="decided before (ISO 8601 with zone)")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the last page")] = None,
    limit: Limit = 100,
) -> JsonBody:
    """This station's results, oldest first, all filters combined.

    Paging is by cursor, not offset: ``next_cursor`` names the last result of the page, and the next page
    starts right after it in commit order, so no result is skipped or repeated while the station writes.
    """
    since_u, until_u = _utc("since", since), _utc("until", until)
    if since_u is not None and until_u is not None and since_u >= until_u:
        raise ApiError(400, "bad_filter", f"since ({since_u.isoformat()}) must be before until")
    after = decode_cursor("i", cursor) if cursor else None
    try:
        rows = await run_in_threadpool(
            ctx.store.inspections,
            batch_id=batch,
            serial=serial,
            verdict=verdict,
            disposition=disposition,
            since=since_u,
            until=until_u,
            after=after,
            limit=limit,
        )
    except ValueError as e:
        raise ApiError(400, "bad_cursor" if "cursor" in str(e) else "bad_filter", str(e)) from e
    next_cursor = encode_cursor("i", rows[-1].id) if rows else cursor
    items = [inspection_fields(r) for r in rows]
    return JsonBody({"items": items, "next_cursor": next_cursor, "has_more": len(rows) == limit})


def _record(ctx: ApiContext, result_id: str) -> InspectionRecord:
    rec = ctx.store.get_inspection(result_id)
    if rec is None:
        raise not_found(f"no result {result_id}")
    return rec


def _record_and_review(ctx: ApiContext, result_id: str) -> tuple[InspectionRecord, Review | None]:
    rec = _record(ctx, result_id)
    return rec, reviews_for(ctx.store).latest(rec.id)


@router.get("/inspections/{result_id}", response_model=InspectionDetailOut, summary="One result")
async def get_inspection(ctx: Ctx, _who: Reader, result_id: ResultId) -> JsonBody:
    """One result by id (any station in this database), with its latest quality review (``review``)."""
    rec, review = await run_in_threadpool(_record_and_review, ctx, result_id)
    return JsonBody(detail_fields(rec, review))


_IMAGE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}, "application/octet-stream": {}}},
}


@router.get(
    "/inspections/{result_id}/image",
    response_class=Response,
    responses=_IMAGE_RESPONSES,
    summary="The archived image of a result",
)
def get_image(ctx: Ctx, _who: Reader, result_id: ResultId) -> Response:
    """The image bytes exactly as archived (404 when the recipe did not keep this part's image)."""
    rec = _record(ctx, result_id)
    if rec.image_ref is None:
        raise not_found(f"result {result_id} has no kept image (the recipe keeps a share of PASS images)")
    try:
        path = ctx.archive.path(rec.image_ref)
    except FileNotFoundError as e:
        raise not_found(f"the image of result {result_id} was pruned from the archive") from e
    media = _MEDIA.get(path.suffix.lstrip(".").lower(), "application/octet-stream")
    return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=86400"})


@router.get(
    "/inspections/{result_id}/overlay",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
    summary="The image with the result's regions drawn",
)
def get_overlay(ctx: Ctx, _who: Reader, result_id: ResultId) -> Response:
    """A PNG of the archived image with a labelled box per region (the heat map is not stored)."""
    rec = _record(ctx, result_id)
    if rec.image_ref is None:
        raise not_found(f"result {result_id} has no kept image to draw on")
    try:
        data = ctx.archive.get(rec.image_ref)
    except FileNotFoundError as e:
        raise not_found(f"the image of result {result_id} was pruned from the archive") from e
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ApiError(
            409, "not_an_image", f"the evidence kept for result {result_id} is not a decodable image"
        )
    score = rec.image_score if rec.image_score is not None else 0.0
    inspection = Inspection(
        regions=rec.regions,
        class_scores={k: v for k, v in rec.class_scores.items() if v is not None},
        image_score=min(max(score, 0.0), 1.0),
        timings_ms={},
        model=ModelInfo(rec.model_name, rec.model_version, rec.model_sha256),
        frame_shape=(int(image.shape[0]), int(image.shape[1])),
    )
    ok, buf = cv2.imencode(".png", draw_overlay(image, inspection))
    if not ok:
        raise ApiError(409, "not_an_image", f"cannot encode the overlay of result {result_id}")
    return Response(buf.tobytes(), media_type="image/png")


@router.get("/serials/{serial}/history", response_model=SerialHistoryOut, summary="A part's whole history")
async def serial_history(
    ctx: Ctx, _who: Reader, serial: Annotated[str, Path(pattern=SERIAL_PATTERN)]
) -> JsonBody:
    """Every result of one serial number at every station in this database, oldest first (up to 1000)."""
    rows = await run_in_threadpool(ctx.store.serial_history, serial, limit=1000)
    return JsonBody({"part_id": serial, "items": [inspection_fields(r) for r in rows]})


# -- batches --------------------------------------------------------------------------------------------


def _active(ctx: ApiContext, batch_id: str) -> bool:
    c = ctx.control
    return c is not None and c.running and c.station.batch_id == batch_id


@router.post(
    "/batches",
    response_model=BatchOut,
    status_code=201,
    responses={200: {"model": BatchOut, "description": "the batch existed already (idempotent start)"}},
    summary="Start a batch",
)
def start_batch(ctx: Ctx, who: BatchManager, body: BatchStartIn, response: Response) -> BatchOut:
    """Open a batch for the station's recipe and make it the batch the station inspects from now on.

    Idempotent: starting an existing open batch returns it (200) and resumes it, with its hold state. Parts
    captured before the call stay in the batch they were captured for.
    """
    if ctx.control is None:
        raise ApiError(409, "no_station", "starting a batch needs the station's recipe; no station runs here")
    st = ctx.control.station
    product = st.recipe.product
    if body.product_id is not None and body.product_id != product:
        raise ApiError(
            409, "wrong_product", f"this station's recipe is for product {product!r}, not {body.product_id!r}"
        )
    existing = ctx.store.get_batch(body.batch_id)
    ctx.control.start_batch(body.batch_id, actor=who.actor, planned_qty=body.planned_quantity)
    batch = ctx.store.get_batch(body.batch_id)
    assert batch is not None
    if existing is not None:
        response.status_code = 200
    elif ctx.feed is not None:
        ctx.feed.publish("batch_opened", {"job_id": batch.batch_id, "product_id": product, "by": who.actor})
    return BatchOut.of(batch, active=_active(ctx, body.batch_id))


@router.post("/batches/{batch_id}/close", response_model=BatchOut, summary="Close a batch")
def close_batch(ctx: Ctx, who: BatchManager, batch_id: BatchId) -> BatchOut:
    """Close a batch (refused while it is on hold, and while the station is inspecting it)."""
    if ctx.store.get_batch(batch_id) is None:
        raise not_found(f"no batch {batch_id!r} at station {ctx.store.station_id}")
    if _active(ctx, batch_id):
        raise ApiError(
            409,
            "batch_active",
            f"the station is inspecting batch {batch_id}; stop the station before closing it",
        )
    ctx.store.close_batch(batch_id, at=datetime.now(UTC), actor=who.actor)
    batch = ctx.store.get_batch(batch_id)
    assert batch is not None
    if ctx.feed is not None:
        ctx.feed.publish("batch_closed", {"job_id": batch_id, "by": who.actor})
    return BatchOut.of(batch, active=False)


@router.get("/batches/{batch_id}", response_model=BatchSummaryOut, summary="Batch summary")
def get_batch(ctx: Ctx, _who: Reader, batch_id: BatchId) -> BatchSummaryOut:
    """Counts by result state and disposition, yield, defect Pareto by class, and hold state."""
    if ctx.store.get_batch(batch_id) is None:
        raise not_found(f"no batch {batch_id!r} at station {ctx.store.station_id}")
    s = ctx.store.batch_summary(batch_id)
    batch = ctx.store.get_batch(batch_id)
    assert batch is not None
    holds = ctx.store.holds(batch_id=batch_id)
    return BatchSummaryOut.model_validate(
        {
            "batch": BatchOut.of(batch, active=_active(ctx, batch_id)),
            "total": s["total"],
            "verdicts": s["verdicts"],
            "dispositions": s["dispositions"],
            "yield": s["yield"],
            "pareto": s["pareto"],
            "hold": {
                "on_hold": s["hold"]["on_hold"],
                "holds_total": s["hold"]["holds_total"],
                "open": [HoldOut.of(h) for h in holds if h.is_open],
            },
            "holds": [HoldOut.of(h) for h in holds],
        }
    )


# -- audit events ---------------------------------------------------------------------------------------


@router.get("/events", response_model=EventPage, summary="Audit events since a cursor")
def list_events(
    ctx: Ctx,
    _who: Reader,
    after: Annotated[str | None, Query(max_length=200, description="next_cursor of the last page")] = None,
    kind: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+$")] = None,
    batch: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN)] = None,
    limit: Limit = 100,
) -> EventPage:
    """This station's audit events (batches, holds, releases, faults, tokens, uploads), oldest first."""
    after_id = decode_cursor("e", after) if after else None
    try:
        rows = ctx.store.events(after=after_id, kind=kind, batch_id=batch, limit=limit)
    except ValueError as e:
        raise ApiError(400, "bad_cursor", str(e)) from e
    return EventPage(
        items=[EventOut.of(e) for e in rows],
        next_cursor=encode_cursor("e", rows[-1].id) if rows else after,
        has_more=len(rows) == limit,
    )
