"""Values the decision side of the station passes around: verdicts, dispositions, decisions, events.

All are plain frozen dataclasses: the rules and the batch monitor take them and return them, and do no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from qcstation.inspect.types import Frame, Inspection, ModelInfo


class Verdict(StrEnum):
    """What the rules say about one part. Ordered by severity: PASS < REVIEW < FAIL; ERROR is apart."""

    PASS = "PASS"
    REVIEW = "REVIEW"  # treated as a reject until a person decides
    FAIL = "FAIL"
    ERROR = "ERROR"  # the part could not be inspected: never a silent PASS


class Disposition(StrEnum):
    """What happens to the physical part."""

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    HOLD = "HOLD"  # quarantined with its batch until a quality engineer releases the hold


class Severity(StrEnum):
    """How bad a defect class is; a critical one puts the batch on hold at once."""

    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


class BatchStatus(StrEnum):
    """OPEN -> HOLD -> OPEN (released) ... -> CLOSED."""

    OPEN = "OPEN"
    HOLD = "HOLD"
    CLOSED = "CLOSED"


@dataclass(frozen=True, slots=True)
class Judgement:
    """The rules' verdict on one inspection, with human-readable reasons.

    Attributes:
        verdict: PASS, REVIEW, FAIL or ERROR.
        reasons: e.g. ("crack: 1 region, score 0.93 >= 0.50, area 41.0 px >= 20 px",).
        failed_classes: defect classes that made the part FAIL.
        critical: True when one of ``failed_classes`` is a critical class.
    """

    verdict: Verdict
    reasons: tuple[str, ...] = ()
    failed_classes: tuple[str, ...] = ()
    critical: bool = False


@dataclass(frozen=True, slots=True)
class HoldRaised:
    """A batch-hold rule fired.

    Attributes:
        batch_id: the held batch.
        rule: which rule (consecutive_fails, fail_rate, critical_class, p_chart, station_fault, manual).
        detail: a sentence a quality engineer can read ("3 consecutive fails", "fail rate 0.35 > 0.30 …").
        evidence: record ids of the inspections that made the rule fire.
        suspects: record ids of the last K parts before the hold, to be re-checked.
        at: when it fired.
        actor: "station" for rules, a user for a manual hold.
    """

    batch_id: str
    rule: str
    detail: str
    evidence: tuple[str, ...]
    suspects: tuple[str, ...]
    at: datetime
    actor: str = "station"


@dataclass(frozen=True, slots=True)
class HoldReleased:
    """A quality engineer released a hold, with a reason."""

    batch_id: str
    by: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class StationFault:
    """The station could not work for a while (camera lost, model error, store unwritable)."""

    kind: str  # "source", "model", "store"
    detail: str
    at: datetime
    recovered: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Decision:
    """Everything decided about one frame, ready to be committed.

    Attributes:
        record_id: time-ordered UUID (UUIDv7) of the record, the idempotency key downstream.
        frame: the frame as captured.
        inspection: the detector's output, None when inspection failed (verdict ERROR).
        judgement: the verdict and its reasons.
        disposition: ACCEPT, REJECT or HOLD.
        batch_id: the batch the part belongs to.
        decided_at: when the decision was made (UTC).
        error: why the part could not be inspected (verdict ERROR only).
        events: hold and fault events decided together with this part (committed in the same transaction).
        keep_image: whether the frame's image is archived.
        timings_ms: stage durations (queue waits, preprocess, infer, postprocess, decide).
        model: the model in force, named on the record even when inspection failed (verdict ERROR).
    """

    record_id: str
    frame: Frame
    inspection: Inspection | None
    judgement: Judgement
    disposition: Disposition
    batch_id: str
    decided_at: datetime
    error: str | None = None
    events: tuple[HoldRaised | HoldReleased | StationFault, ...] = ()
    keep_image: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    model: ModelInfo | None = None

    @property
    def stage_timings_ms(self) -> dict[str, float]:
        """The detector's stage durations and the station's, as the record keeps them."""
        return {**(self.inspection.timings_ms if self.inspection is not None else {}), **self.timings_ms}

    def __post_init__(self) -> None:
        if self.decided_at.tzinfo is None:
            raise ValueError(f"expected a timezone-aware decided_at, got naive {self.decided_at.isoformat()}")
        if self.judgement.verdict is Verdict.ERROR:
            if self.disposition is not Disposition.REJECT:
                raise ValueError(f"expected disposition REJECT for an ERROR verdict, got {self.disposition}")
            if not self.error:
                raise ValueError("expected an error message for an ERROR verdict, got none")
        elif self.inspection is None:
            raise ValueError(f"expected an inspection for verdict {self.judgement.verdict}, got None")
        if self.judgement.verdict is not Verdict.PASS and self.disposition is Disposition.ACCEPT:
            raise ValueError(f"expected a {self.judgement.verdict} part not to be ACCEPTed")


JSON = dict[str, Any]
