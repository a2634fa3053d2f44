"""Request and response bodies of the REST API (pydantic, separate for requests and responses).

Result fields are named after the OPC UA Machine Vision result (OPC 40100 ``ResultDataType``) in snake_case
where one fits: ``result_id`` (ResultId), ``part_id`` (PartId), ``product_id`` (ProductId), ``recipe_id``
(InternalRecipeId: the recipe's content hash), ``job_id`` (JobId: the batch), ``measurement_id`` (MeasId: the
frame), ``creation_time`` (CreationTime), ``processing_times`` (ProcessingTimes), ``result_state``
(ResultState: the verdict). docs/API.md has the whole table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from starlette.responses import JSONResponse

from qcstation.station.review import Review
from qcstation.station.store import BatchRow, EventRecord, HoldRecord, InspectionRecord

BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SERIAL_PATTERN = r"^[^\x00-\x1f\x7f/\\]{1,200}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

Verdict = Literal["PASS", "REVIEW", "FAIL", "ERROR"]
Disposition = Literal["ACCEPT", "REJECT", "HOLD"]
BatchState = Literal["OPEN", "HOLD", "CLOSED"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# -- errors ---------------------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """Every 4xx/5xx body."""

    error: str = Field(description="machine-readable code: not_found, validation, unauthorized, ...")
    detail: str = Field(description="a sentence saying what is wrong")
    errors: list[dict[str, Any]] | None = Field(default=None, description="per-field problems (422)")


# -- inspections ------------------------------------------------------------------------------------------


class RegionOut(_Out):
    """One defect region, in frame pixels."""

    class_id: int
    class_name: str
    score: float
    bbox: list[int] = Field(description="x, y, width, height")
    area_px: float
    area_mm2: float | None
    centroid: list[float]


class ModelOut(_Out):
    """The model that made the result."""

    name: str
    version: str
    sha256: str


class ProcessingTimesOut(_Out):
    """OPC 40100 ProcessingTimes: capture (start) to decision (end), and each stage in ms."""

    start_time: str = Field(description="captured_at, UTC")
    end_time: str = Field(description="decided_at, UTC")
    processing_duration_ms: float
    stages_ms: dict[str, float | None]


class InspectionOut(_Out):
    """One inspection result with its part and lot identity."""

    result_id: str = Field(description="OPC 40100 ResultId: time-ordered UUIDv7, idempotency key")
    part_id: str | None = Field(description="OPC 40100 PartId: the serial number, when known")
    product_id: str = Field(description="OPC 40100 ProductId")
    recipe_id: str = Field(description="OPC 40100 InternalRecipeId: sha256 of the recipe content")
    job_id: str = Field(description="OPC 40100 JobId: the batch (lot)")
    measurement_id: str = Field(description="OPC 40100 MeasId: the frame id at the source")
    creation_time: str = Field(description="OPC 40100 CreationTime: when the result was decided (UTC)")
    processing_times: ProcessingTimesOut
    result_state: Verdict = Field(description="OPC 40100 ResultState: PASS, REVIEW, FAIL or ERROR")
    disposition: Disposition
    station_id: str
    source: str
    model: ModelOut
    reasons: list[str]
    regions: list[RegionOut]
    class_scores: dict[str, float | None]
    image_score: float | None
    image_available: bool = Field(description="OPC 40100 HasTransferableDataOnFile: the image was kept")
    error: str | None
    seq: int = Field(description="position in the station's hash chain")
    hash: str

    @classmethod
    def of(cls, r: InspectionRecord) -> InspectionOut:
        """From a stored record."""
        return cls.model_validate(inspection_fields(r))


def _duration_ms(start: str, end: str) -> float:
    try:  # utc_iso text; with strptime (parse_utc) this was more than half the cost of building a result
        return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() * 1e3, 3)
    except ValueError:
        return 0.0


def inspection_fields(r: InspectionRecord) -> dict[str, Any]:
    """The fields of :class:`InspectionOut` for a stored record, as plain values.

    The result reads send them as they are (:class:`JsonBody`); the types are the model's already (the
    store gives floats for scores and timings, ints for ids and boxes), so the bytes are the same.
    """
    return {
        "result_id": r.id,
        "part_id": r.serial,
        "product_id": r.product,
        "recipe_id": r.recipe_hash,
        "job_id": r.batch_id,
        "measurement_id": r.frame_id,
        "creation_time": r.decided_at,
        "processing_times": {
            "start_time": r.captured_at,
            "end_time": r.decided_at,
            "processing_duration_ms": _duration_ms(r.captured_at, r.decided_at),
            "stages_ms": r.timings,
        },
        "result_state": r.verdict.value,
        "disposition": r.disposition.value,
        "station_id": r.station,
        "source": r.source,
        "model": {"name": r.model_name, "version": r.model_version, "sha256": r.model_sha256},
        "reasons": r.reasons,
        "regions": [g.to_dict() for g in r.regions],
        "class_scores": r.class_scores,
        "image_score": r.image_score,
        "image_available": r.image_ref is not None,
        "error": r.error,
        "seq": r.seq,
        "hash": r.hash,
    }


def review_fields(r: Review) -> dict[str, Any]:
    """The fields of :class:`ReviewOut` for a review, as plain values."""
    return {
        "event_id": r.event_id,
        "decision": r.decision,
        "original_result_state": r.original_verdict,
        "result_state": r.verdict,
        "reviewed_by": r.actor,
        "reason": r.reason,
        "reviewed_at": r.at,
    }


class JsonBody(JSONResponse):
    """A body of plain values made by the ``*_fields`` functions, encoded by pydantic-core as it is.

    FastAPI sends a returned ``Response`` without validating or serialising it again, while the route's
    ``response_model`` still documents the body. The result reads return these: their values come from typed
    store records, and validating a page of 50 results into models only to serialise them again was a third
    of the API's own CPU for a list page (docs/bench-api.md). The bytes are those the ``response_model``
    would give; tests/station/api/test_api.py checks the bodies against the models.
    """

    def render(self, content: Any) -> bytes:
        """Compact UTF-8 JSON, as FastAPI writes a ``response_model`` (non-finite floats as null)."""
        return to_json(content)


class ReviewOut(_Out):
    """A quality engineer's review of a result: an audit event, never a change to the record."""

    event_id: str = Field(description="the review_confirm / review_override audit event")
    decision: Literal["confirm", "override"]
    original_result_state: Verdict = Field(description="the station's verdict")
    result_state: Literal["PASS", "FAIL"] = Field(description="the verdict after review")
    reviewed_by: str
    reason: str
    reviewed_at: str

    @classmethod
    def of(cls, r: Review) -> ReviewOut:
        """From a review."""
        return cls.model_validate(review_fields(r))


class InspectionDetailOut(InspectionOut):
    """One result, with its latest quality review (null while not reviewed)."""

    review: ReviewOut | None = Field(
        default=None, description="the latest review of this result; the record itself never changes"
    )

    @classmethod
    def with_review(cls, r: InspectionRecord, review: Review | None) -> InspectionDetailOut:
        """From a stored record and its latest review."""
        return cls.model_validate(detail_fields(r, review))


def detail_fields(r: InspectionRecord, review: Review | None) -> dict[str, Any]:
    """The fields of :class:`InspectionDetailOut` for a stored record and its latest review."""
    return {**inspection_fields(r), "review": None if review is None else review_fields(review)}


class ReviewIn(_In):
    """Confirm or override a verdict (quality role); the reason is required."""

    decision: Literal["confirm", "override"] = Field(
        description="confirm keeps PASS/FAIL; override sets a different verdict (a REVIEW part is decided "
        "by override to PASS or FAIL)"
    )
    verdict: Literal["PASS", "FAIL"] | None = Field(
        default=None, description="the verdict after review (required for override)"
    )
    reason: str = Field(min_length=1, max_length=2000, description="why (required)")


class ReviewPage(_Out):
    """A page of the review queue, newest first."""

    items: list[InspectionDetailOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")
    has_more: bool


class RecentOut(_Out):
    """The newest results, newest first (what a screen shows after a reload)."""

    items: list[InspectionOut]


class InspectionPage(_Out):
    """A page of results, oldest first."""

    items: list[InspectionOut]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; present whenever items are, so a client can poll "
        "for new results from where it stopped"
    )
    has_more: bool = Field(description="the page is full: more results are already there")


# -- events -----------------------------------------------------------------------------------------------


class EventOut(_Out):
    """One audit event: who did what, when and why."""

    event_id: str
    kind: str
    job_id: str | None = Field(description="the batch, when the event concerns one")
    at: str
    actor: str
    reason: str | None
    data: dict[str, Any]
    station_id: str
    seq: int
    hash: str

    @classmethod
    def of(cls, e: EventRecord) -> EventOut:
        """From a stored event."""
        return cls(
            event_id=e.id,
            kind=e.kind,
            job_id=e.batch_id,
            at=e.at,
            actor=e.actor,
            reason=e.reason,
            data=dict(e.data),
            station_id=e.station,
            seq=e.seq,
            hash=e.hash,
        )


class EventPage(_Out):
    """A page of audit events, oldest first."""

    items: list[EventOut]
    next_cursor: str | None
    has_more: bool


# -- batches and holds ------------------------------------------------------------------------------------


class BatchStartIn(_In):
    """Start a batch (lot) at this station; the recipe is the station's."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN, description="the MES lot/job id")
    product_id: str | None = Field(
        default=None, max_length=200, description="must match the station's recipe product when given"
    )
    planned_quantity: int | None = Field(default=None, ge=1, le=100_000_000)


class HoldIn(_In):
    """Raise a hold by hand."""

    reason: str = Field(min_length=1, max_length=2000, description="why the batch is held (required)")


class ReleaseIn(_In):
    """Release a hold (quality role)."""

    reason: str = Field(min_length=1, max_length=2000, description="why the batch may go on (required)")


class CloseIn(_In):
    """Close a batch."""

    reason: str | None = Field(default=None, max_length=2000)


class HoldOut(_Out):
    """A hold with its rule, evidence and release."""

    hold_id: str
    job_id: str
    rule: str
    detail: str
    evidence: list[str] = Field(description="result ids that made the rule fire")
    suspects: list[str] = Field(description="result ids of the parts before the hold, to re-check")
    raised_at: str
    raised_by: str
    released_at: str | None
    released_by: str | None
    release_reason: str | None

    @classmethod
    def of(cls, h: HoldRecord) -> HoldOut:
        """From a stored hold."""
        return cls(
            hold_id=h.hold_id,
            job_id=h.batch_id,
            rule=h.rule,
            detail=h.detail,
            evidence=list(h.evidence),
            suspects=list(h.suspects),
            raised_at=h.raised_at,
            raised_by=h.raised_by,
            released_at=h.released_at,
            released_by=h.released_by,
            release_reason=h.release_reason,
        )


class BatchOut(_Out):
    """A batch and its state."""

    job_id: str
    product_id: str
    recipe_id: str
    state: BatchState
    planned_quantity: int | None
    opened_at: str
    opened_by: str
    closed_at: str | None
    active: bool = Field(description="the station is inspecting this batch now")

    @classmethod
    def of(cls, b: BatchRow, *, active: bool) -> BatchOut:
        """From a stored batch."""
        return cls(
            job_id=b.batch_id,
            product_id=b.product,
            recipe_id=b.recipe_hash,
            state=b.status.value,
            planned_quantity=b.planned_qty,
            opened_at=b.opened_at,
            opened_by=b.opened_by,
            closed_at=b.closed_at,
            active=active,
        )


class ParetoOut(_Out):
    """One defect class in the batch's Pareto."""

    class_name: str
    parts: int
    regions: int
    share: float | None
    cumulative_share: float | None


class HoldStateOut(_Out):
    """Whether the batch is held, and its open holds."""

    on_hold: bool
    holds_total: int
    open: list[HoldOut]


class BatchSummaryOut(_Out):
    """Counts, yield, defect Pareto and hold state of a batch."""

    batch: BatchOut
    total: int
    verdicts: dict[str, int]
    dispositions: dict[str, int]
    yield_: float | None = Field(alias="yield", description="PASS share; null for an empty batch")
    pareto: list[ParetoOut]
    hold: HoldStateOut
    holds: list[HoldOut] = Field(description="every hold of the batch, oldest first")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- station ----------------------------------------------------------------------------------------------


class TriggerIn(_In):
    """Capture one frame now for a part."""

    serial: str | None = Field(default=None, pattern=SERIAL_PATTERN)


class TriggerOut(_Out):
    """A queued capture request."""

    queued: bool
    pending: int = Field(description="requests waiting for the camera, this one included")
    part_id: str | None


class LatencyOut(_Out):
    """Capture-to-commit latency over the recent window, in ms."""

    p50: float | None
    p95: float | None
    p99: float | None
    samples: int


class PChartOut(_Out):
    """The recipe's p-chart hold rule and its upper control limit."""

    baseline_rate: float = Field(description="p0, the expected fail fraction")
    subgroup: int = Field(description="parts per subgroup (n)")
    sigma: float
    ucl: float = Field(description="p0 + sigma * sqrt(p0 (1 - p0) / n)")


class FailRateOut(_Out):
    """The recipe's rolling fail-rate hold rule."""

    window: int
    max_rate: float


class ControlLimitsOut(_Out):
    """What the recipe's hold rules allow, for a screen's fail-rate trend."""

    p_chart: PChartOut | None
    fail_rate: FailRateOut | None
    consecutive_fails: int | None
    review_counts_as_fail: bool = Field(description="REVIEW parts count as fails in the hold rules")


class DriftCheckOut(_Out):
    """One reference quantile of the model card's good-part scores, and the window against it."""

    quantile: float = Field(description="quantile of the card's good validation scores (0.5 = median)")
    score: float = Field(description="that quantile's score on the card")
    expected: float = Field(description="share of passing good parts expected to score above it")
    observed: float | None = Field(description="share of the window's passed parts above it (null: filling)")
    z: float | None = Field(description="binomial z-score of the observed count (null while filling)")


class DriftOut(_Out):
    """Score drift: passed parts' scores against the model card's validation scores of good parts.

    Advisory: it never changes a verdict or holds a batch; the ``score_drift`` and ``score_drift_cleared``
    audit events record each change.
    """

    state: Literal["filling", "ok", "drifting"] = Field(
        description="filling: fewer passed parts than the window so far; drifting: some |z| went over "
        "z_limit, until every |z| is back under half of it"
    )
    z: float | None = Field(
        description="the check with the largest |z|, signed: + scores crept up (false rejects coming), - "
        "they collapsed (a blank or overexposed view); null while filling"
    )
    z_limit: float
    window: int = Field(description="passed parts in the sliding window")
    samples: int = Field(description="passed parts in the window now")
    reference: str = Field(description="what the window is compared with")
    checks: list[DriftCheckOut]
    since: str | None = Field(description="when the drift was signalled (UTC); null unless drifting")
    detail: str | None = Field(description="the drift event's sentence; null unless drifting")


class FaultOut(_Out):
    """An ongoing station fault of one kind (the batch monitor's view, which a station_fault hold uses)."""

    kind: str = Field(description="inspection (ERROR verdicts), source (camera), store (unwritable), ...")
    since: str = Field(
        description="UTC; when the fault began, or the last hold release during it (the hold rule counts "
        "from there)"
    )
    detail: str
    error_parts: int = Field(description="ERROR parts during an inspection fault")


class StatusOut(_Out):
    """The station at a glance."""

    station_id: str
    running: bool
    source: str | None
    source_state: Literal["running", "faulted", "stopped", "none"]
    source_fault: str | None
    store_fault: str | None
    rate_per_s: float
    parts: int
    verdicts: dict[str, int]
    latency_ms: LatencyOut
    model: ModelOut | None
    product_id: str | None
    recipe_id: str | None
    job_id: str | None
    batch_state: BatchState | None
    hold: HoldOut | None
    outbox_backlog: int
    control_limits: ControlLimitsOut | None = Field(
        default=None, description="the recipe's hold rules as control limits (null without a station)"
    )
    drift: DriftOut | None = Field(
        default=None,
        description="score drift watch (null without a station, with drift off in the recipe, or with a "
        "model card without good-score quantiles)",
    )
    faults: list[FaultOut] = Field(default_factory=list, description="ongoing station faults, oldest first")


class HealthOut(_Out):
    """Liveness or readiness."""

    status: Literal["ok", "not_ready"]
    checks: dict[str, str] = Field(default_factory=dict)


class TokenOut(_Out):
    """An API token, without its secret."""

    name: str
    role: str
    created_at: str
    created_by: str
    revoked_at: str | None


class WhoAmIOut(_Out):
    """Who the request is authenticated as."""

    name: str
    role: str
    anonymous: bool


class ReleaseOut(_Out):
    """The batch after a release, and the holds it released."""

    job_id: str
    state: BatchState
    released: list[HoldOut]


class SerialHistoryOut(_Out):
    """Every result of one part, at every station in this database, oldest first."""

    part_id: str
    items: list[InspectionOut]
