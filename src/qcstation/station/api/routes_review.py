"""Routes for quality review: the review queue, confirm/override of a verdict, and the newest results.

A review is an audit event in the hash chain (``review_confirm`` / ``review_override``), never an UPDATE of
the inspection record; ``GET /inspections/{id}`` shows the latest review in its ``review`` field. Only the
quality role (and admin) may review, with a reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from qcstation.station.api.auth import Action, Principal, authorize
from qcstation.station.api.deps import Caller, Ctx, Reader, decode_cursor, encode_cursor
from qcstation.station.api.errors import ApiError, not_found
from qcstation.station.api.schemas import (
    BATCH_ID_PATTERN,
    UUID_PATTERN,
    InspectionDetailOut,
    InspectionOut,
    RecentOut,
    ReviewIn,
    ReviewPage,
    Verdict,
)
from qcstation.station.review import reviews_for

router = APIRouter(tags=["review"])

ResultId = Annotated[str, Path(pattern=UUID_PATTERN, description="result id (UUID)")]


async def _may_review(principal: Caller) -> Principal:
    return authorize(principal, Action.OVERRIDE)


Reviewer = Annotated[Principal, Depends(_may_review)]


@router.get("/review", response_model=ReviewPage, summary="The review queue (newest first)")
def review_queue(
    ctx: Ctx,
    _who: Reader,
    batch: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN, description="job (batch) id")] = None,
    include_reviewed: Annotated[
        bool, Query(description="also results that were reviewed already (with their review)")
    ] = False,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the last page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 50,
) -> ReviewPage:
    """Results waiting for a quality engineer: every REVIEW and FAIL result not reviewed yet, newest first.

    Paging goes back in time: ``next_cursor`` names the oldest result of the page and the next page starts
    right before it. A result leaves the queue once reviewed (``include_reviewed`` keeps it, with its review).
    """
    reviews = reviews_for(ctx.store)
    before = decode_cursor("r", cursor) if cursor else None
    try:
        rows = reviews.queue(before=before, limit=limit, batch_id=batch, include_reviewed=include_reviewed)
    except ValueError as e:
        raise ApiError(400, "bad_cursor", str(e)) from e
    latest = reviews.latest_many([r.id for r in rows]) if include_reviewed else {}
    return ReviewPage(
        items=[InspectionDetailOut.with_review(r, latest.get(r.id)) for r in rows],
        next_cursor=encode_cursor("r", rows[-1].id) if rows else cursor,
        has_more=len(rows) == limit,
    )


@router.post(
    "/inspections/{result_id}/review",
    response_model=InspectionDetailOut,
    status_code=201,
    summary="Confirm or override a verdict (quality)",
)
def review_inspection(ctx: Ctx, who: Reviewer, result_id: ResultId, body: ReviewIn) -> InspectionDetailOut:
    """Record a quality engineer's decision on a result, with a reason (quality or admin role).

    ``confirm`` agrees with a PASS or FAIL; ``override`` sets the other verdict (a REVIEW part is decided by
    an override to PASS or FAIL). The record never changes: the review is an audit event (``review_confirm``
    or ``review_override`` with who, why, the original and the new verdict) in the hash chain, shown on the
    stream as ``review`` and in the result's ``review`` field. A later review supersedes an earlier one.
    409 when the decision contradicts the result (confirming a REVIEW, overriding to the same verdict).
    """
    rec = ctx.store.get_inspection(result_id)
    if rec is None:
        raise not_found(f"no result {result_id}")
    review = reviews_for(ctx.store).record(
        rec,
        decision=body.decision,
        verdict=body.verdict,
        actor=who.actor,
        reason=body.reason,
        at=datetime.now(UTC),
    )
    if ctx.feed is not None:
        ctx.feed.publish(
            "review",
            {
                "result_id": rec.id,
                "part_id": rec.serial,
                "job_id": rec.batch_id,
                "decision": review.decision,
                "original_result_state": review.original_verdict,
                "result_state": review.verdict,
                "by": review.actor,
                "reason": review.reason,
                "at": review.at,
            },
        )
    return InspectionDetailOut.with_review(rec, review)


@router.get("/recent", response_model=RecentOut, summary="The newest results (newest first)")
def recent(
    ctx: Ctx,
    _who: Reader,
    batch: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN, description="job (batch) id")] = None,
    verdict: Annotated[list[Verdict] | None, Query(description="only these result states")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="how many")] = 50,
) -> RecentOut:
    """This station's newest results, newest first: what a screen shows after a reload (its trend, its
    recent rejects). To follow every result use ``GET /inspections?cursor=`` or the stream."""
    rows = reviews_for(ctx.store).recent(limit=limit, batch_id=batch, verdicts=verdict or ())
    return RecentOut(items=[InspectionOut.of(r) for r in rows])
