"""Batch holds: rules over the stream of verdicts in one batch that quarantine it.

:class:`BatchMonitor` is fed one judgement per part, in order, plus station faults and the passing of time.
It is pure: the clock is passed in and nothing is read or written outside the object. A hold never clears
itself; only :meth:`BatchMonitor.release` (a person, with a reason) reopens the batch.

What counts: a *fail* is a FAIL verdict, and a REVIEW when ``review_counts_as_fail``. An ERROR verdict is
neither a fail nor a pass: the part was not inspected, so it does not enter the quality rules (consecutive
fails, fail rate, p-chart) at all; it is a station fault instead.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from qcstation.station.errors import BatchError, ReleaseError
from qcstation.station.recipe import HoldRules
from qcstation.station.types import (
    BatchStatus,
    Disposition,
    HoldRaised,
    HoldReleased,
    Judgement,
    StationFault,
    Verdict,
)

RULE_ORDER = ("critical_class", "consecutive_fails", "fail_rate", "p_chart", "station_fault")
"""When several rules fire on the same part, the first in this order raises the hold."""

_INSPECTION = "inspection"  # the fault of ERROR verdicts, ended by the next part that is inspected
_UCL_EPS = 1e-12  # a fail fraction equal to the UCL up to float noise is not a signal


@dataclass(frozen=True, slots=True)
class _Firing:
    rule: str
    detail: str
    evidence: tuple[str, ...]


@dataclass(slots=True)
class _Fault:
    since: datetime
    what: str
    errors: list[str]


class BatchMonitor:
    """Watches one batch's verdicts and raises a hold when a rule fires.

    Args:
        batch_id: the batch watched.
        rules: the recipe's hold rules; each is off when not configured.
        status: the batch's status when monitoring starts (e.g. HOLD for a batch held before a restart).

    Attributes:
        batch_id: the batch watched.
        rules: the hold rules.
    """

    def __init__(self, batch_id: str, rules: HoldRules, status: BatchStatus = BatchStatus.OPEN) -> None:
        self.batch_id = batch_id
        self.rules = rules
        self._status = status
        self._hold: HoldRaised | None = None
        self._counts: dict[Verdict, int] = dict.fromkeys(Verdict, 0)
        self._recent: deque[str] = deque(maxlen=rules.suspect_last)
        self._streak: list[str] = []
        self._window: deque[tuple[str, bool]] = deque(maxlen=rules.fail_rate.window if rules.fail_rate else 1)
        self._subgroup: list[tuple[str, bool]] = []
        # Ongoing faults by kind: "inspection" (ERROR verdicts), or an external fault's kind ("source",
        # "store"). An inspected part ends only the first: a store that cannot be written or a lost camera
        # ends when its own recovery is reported.
        self._faults: dict[str, _Fault] = {}

    # -- state ------------------------------------------------------------------------------------------

    @property
    def status(self) -> BatchStatus:
        """OPEN, HOLD or CLOSED."""
        return self._status

    @property
    def hold(self) -> HoldRaised | None:
        """The hold in force, None when the batch is not on hold (or was put on hold before this monitor)."""
        return self._hold

    @property
    def counts(self) -> dict[Verdict, int]:
        """Parts observed in this batch per verdict (a copy)."""
        return dict(self._counts)

    @property
    def faults(self) -> list[tuple[str, datetime, str, int]]:
        """Ongoing faults, oldest first: (kind, since, what, ERROR parts); a release restarts ``since``."""
        faults = list(self._faults.items())  # one step: the API's threads read while the station writes
        return sorted(((k, f.since, f.what, len(f.errors)) for k, f in faults), key=lambda t: t[1])

    # -- feeding ----------------------------------------------------------------------------------------

    def observe(
        self, record_id: str, judgement: Judgement, now: datetime
    ) -> tuple[Disposition, list[HoldRaised]]:
        """Place one part in the batch, in order of arrival.

        Args:
            record_id: the part's record id (used as evidence and suspect).
            judgement: the rules' verdict on the part.
            now: the decision time.

        Returns:
            The part's disposition (REJECT for FAIL/REVIEW/ERROR; otherwise HOLD when the batch is on hold
            after this part, else ACCEPT) and the hold it raised, if any (at most one).

        Raises:
            BatchError: the batch is closed.
        """
        if self._status is BatchStatus.CLOSED:
            raise BatchError(f"batch {self.batch_id} is closed; part {record_id} cannot be added to it")
        verdict = judgement.verdict
        self._counts[verdict] += 1
        suspects = tuple(self._recent)
        self._recent.append(record_id)

        firings: list[_Firing] = []
        if verdict is Verdict.ERROR:
            what = f"ERROR verdict: {'; '.join(judgement.reasons) or 'no reason'}"
            self._faults.setdefault(_INSPECTION, _Fault(now, what, [])).errors.append(record_id)
            firings += self._check_fault(now)
        else:
            self._faults.pop(_INSPECTION, None)
            firings += self._check_quality(record_id, judgement)

        raised = self._raise(firings, suspects, now)
        if verdict in (Verdict.FAIL, Verdict.REVIEW, Verdict.ERROR):
            disposition = Disposition.REJECT
        elif self._status is BatchStatus.HOLD:
            disposition = Disposition.HOLD
        else:
            disposition = Disposition.ACCEPT
        return disposition, raised

    def fault(self, fault: StationFault) -> list[HoldRaised]:
        """A station-level fault from outside the frame stream (camera lost, store unwritable) or its end.

        Args:
            fault: ``recovered=False`` starts the fault (or continues the one going on); ``recovered=True``
                ends it. Its ``at`` is the time.

        Returns:
            The station_fault hold, when the fault has already lasted long enough.
        """
        if self._status is BatchStatus.CLOSED:
            return []
        if fault.recovered:
            self._faults.pop(fault.kind, None)
            return []
        self._faults.setdefault(fault.kind, _Fault(fault.at, f"{fault.kind} fault: {fault.detail}", []))
        return self._raise(self._check_fault(fault.at), tuple(self._recent), fault.at)

    def tick(self, now: datetime) -> list[HoldRaised]:
        """Let time pass with no parts, so that a lasting station fault can put the batch on hold.

        Args:
            now: the current time.

        Returns:
            The station_fault hold, when it fires now.
        """
        if self._status is BatchStatus.CLOSED:
            return []
        return self._raise(self._check_fault(now), tuple(self._recent), now)

    # -- people -----------------------------------------------------------------------------------------

    def raise_manual(self, by: str, reason: str, now: datetime) -> HoldRaised:
        """Put the batch on hold by hand.

        Args:
            by: who.
            reason: why (required).
            now: when.

        Returns:
            The hold (rule "manual", actor ``by``); its suspects are the last ``suspect_last`` parts.

        Raises:
            BatchError: the batch is already on hold or closed, or ``by`` or ``reason`` is blank.
        """
        if self._status is not BatchStatus.OPEN:
            raise BatchError(f"batch {self.batch_id} is {self._status.value}; only an OPEN batch can be held")
        if not by.strip():
            raise BatchError(f"a manual hold of batch {self.batch_id} needs the name of who raises it")
        if not reason.strip():
            raise BatchError(f"a manual hold of batch {self.batch_id} needs a reason")
        hold = HoldRaised(
            batch_id=self.batch_id,
            rule="manual",
            detail=f"manual hold by {by.strip()}: {reason.strip()}",
            evidence=(),
            suspects=tuple(self._recent),
            at=now,
            actor=by.strip(),
        )
        self._put_on_hold(hold)
        return hold

    def release(self, by: str, reason: str, now: datetime) -> HoldReleased:
        """Release the hold and reopen the batch; the rolling rule state starts afresh.

        The consecutive-fail streak, the fail-rate window and the p-chart subgroup are emptied, so the
        evidence of the released hold cannot fire again at once. A station fault still going on restarts its
        clock at ``now`` (with no evidence), so a camera that stays lost holds the batch again after another
        ``station_fault_s`` seconds.

        Args:
            by: who releases (a quality role, checked by the caller).
            reason: why (required).
            now: when.

        Returns:
            The release event.

        Raises:
            ReleaseError: the batch is not on hold, or ``by`` or ``reason`` is blank.
        """
        if self._status is not BatchStatus.HOLD:
            raise ReleaseError(
                f"batch {self.batch_id} is {self._status.value}, not on hold; nothing to release"
            )
        if not by.strip():
            raise ReleaseError(
                f"releasing the hold on batch {self.batch_id} needs the name of who releases it"
            )
        if not reason.strip():
            raise ReleaseError(f"releasing the hold on batch {self.batch_id} needs a reason")
        self._status = BatchStatus.OPEN
        self._hold = None
        self._streak.clear()
        self._window.clear()
        self._subgroup.clear()
        self._faults = {kind: _Fault(now, f.what, []) for kind, f in self._faults.items()}
        return HoldReleased(batch_id=self.batch_id, by=by.strip(), reason=reason.strip(), at=now)

    def close(self, now: datetime) -> None:
        """Close the batch; closing a closed batch does nothing.

        Args:
            now: when (kept for symmetry with the other operations; the caller records the event).

        Raises:
            BatchError: the batch is on hold.
        """
        if self._status is BatchStatus.HOLD:
            raise BatchError(f"batch {self.batch_id} is on hold; release the hold first, then close it")
        self._status = BatchStatus.CLOSED

    # -- rules ------------------------------------------------------------------------------------------

    def _is_fail(self, verdict: Verdict) -> bool:
        return verdict is Verdict.FAIL or (verdict is Verdict.REVIEW and self.rules.review_counts_as_fail)

    def _check_quality(self, record_id: str, judgement: Judgement) -> list[_Firing]:
        """Update the rolling state with one inspected part; the rules that fire on it, in RULE_ORDER."""
        rules = self.rules
        is_fail = self._is_fail(judgement.verdict)
        firings: list[_Firing] = []

        if rules.critical_class and judgement.verdict is Verdict.FAIL and judgement.critical:
            classes = ", ".join(judgement.failed_classes) or "unnamed class"
            firings.append(
                _Firing("critical_class", f"critical defect ({classes}) in part {record_id}", (record_id,))
            )

        if is_fail:
            self._streak.append(record_id)
        else:
            self._streak.clear()
        k = rules.consecutive_fails
        if k is not None and len(self._streak) >= k:
            firings.append(_Firing("consecutive_fails", f"{k} consecutive fails", tuple(self._streak[-k:])))

        if rules.fail_rate is not None:
            self._window.append((record_id, is_fail))
            window = rules.fail_rate.window
            if len(self._window) == window:
                fails = tuple(r for r, f in self._window if f)
                rate = len(fails) / window
                if rate > rules.fail_rate.max_rate:
                    detail = (
                        f"fail rate {len(fails)}/{window} = {rate:.3g} > {rules.fail_rate.max_rate:g} "
                        f"over the last {window} parts"
                    )
                    firings.append(_Firing("fail_rate", detail, fails))

        if rules.p_chart is not None:
            self._subgroup.append((record_id, is_fail))
            n = rules.p_chart.subgroup
            if len(self._subgroup) >= n:
                fails = tuple(r for r, f in self._subgroup if f)
                self._subgroup.clear()
                p0, sigma = rules.p_chart.baseline_rate, rules.p_chart.sigma
                ucl = p0 + sigma * math.sqrt(p0 * (1.0 - p0) / n)
                frac = len(fails) / n
                if frac > ucl + _UCL_EPS:
                    detail = (
                        f"p-chart: subgroup fail fraction {len(fails)}/{n} = {frac:.3g} > UCL {ucl:.3g} "
                        f"(baseline {p0:g}, {sigma:g} sigma)"
                    )
                    firings.append(_Firing("p_chart", detail, fails))
        return firings

    def _check_fault(self, now: datetime) -> list[_Firing]:
        limit = self.rules.station_fault_s
        if limit is None or not self._faults:
            return []
        fault = min(self._faults.values(), key=lambda f: f.since)
        lasted = (now - fault.since).total_seconds()
        if lasted < limit:
            return []
        since = fault.since.isoformat()
        detail = f"station fault for {lasted:g} s (limit {limit:g} s) since {since}: {fault.what}"
        if fault.errors:
            detail += f" ({len(fault.errors)} ERROR part(s))"
        return [_Firing("station_fault", detail, tuple(fault.errors))]

    def _raise(self, firings: list[_Firing], suspects: tuple[str, ...], now: datetime) -> list[HoldRaised]:
        if self._status is not BatchStatus.OPEN or not firings:
            return []
        firings = sorted(firings, key=lambda f: RULE_ORDER.index(f.rule))
        first, others = firings[0], firings[1:]
        detail = first.detail
        if others:
            detail += "; also fired: " + "; ".join(f"{f.rule} ({f.detail})" for f in others)
        hold = HoldRaised(
            batch_id=self.batch_id,
            rule=first.rule,
            detail=detail,
            evidence=first.evidence,
            suspects=suspects,
            at=now,
        )
        self._put_on_hold(hold)
        return [hold]

    def _put_on_hold(self, hold: HoldRaised) -> None:
        self._status = BatchStatus.HOLD
        self._hold = hold
