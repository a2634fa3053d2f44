"""Score drift: live scores of good parts watched against the model card's validation scores of good parts.

A model is calibrated on validation images; on the line, a dirty lens, a new light, a different supplier's
material or a camera that moved shifts every score before the first part is judged wrong. The card carries
the validation distribution of good parts' scores (``good_scores.quantiles``). :class:`DriftMonitor` counts,
over the last ``window`` parts the station passed, how many score above each reference quantile, and
compares that with what good parts do (a binomial z-score). Too many above the median or the 90th percentile
means scores crept up (false rejects coming); too few means they collapsed (a blank or overexposed view may
be passing parts unseen). Either way the quality engineer is told: an audit event, queued to the MES like any
event, and the station's status. It never changes a verdict or holds a batch by itself.

Only PASS parts count: defective parts score high by design, and how many the line makes is the batch-hold
rules' business, not a property of the model's view. The monitor is pure: values in, an event out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qcstation.station.recipe import DriftRule

REFERENCE_QUANTILES = (0.5, 0.9)
"""The card's good-score quantiles watched: well below any sane reject threshold, so passing parts reach
them."""


@dataclass(frozen=True, slots=True)
class QuantileCheck:
    """One reference quantile over the window.

    Attributes:
        quantile: the quantile of good validation scores (0.5 = median).
        score: its score on the card.
        expected: the share of passing good parts expected above ``score``.
        observed: the share of the window's passing parts above it.
        z: binomial z-score of the observed count.
    """

    quantile: float
    score: float
    expected: float
    observed: float
    z: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready (event data, API)."""
        return {
            "quantile": self.quantile,
            "score": round(self.score, 6),
            "expected": round(self.expected, 4),
            "observed": round(self.observed, 4),
            "z": round(self.z, 2),
        }


@dataclass(frozen=True, slots=True)
class ScoreDrift:
    """The live scores left (``drifting``) or came back to (not ``drifting``) the card's distribution."""

    drifting: bool
    at: datetime
    window: int
    checks: tuple[QuantileCheck, ...]
    z_limit: float

    @property
    def detail(self) -> str:
        """One line for people: which quantile, expected vs observed."""
        worst = max(self.checks, key=lambda c: abs(c.z))
        direction = "above" if worst.observed > worst.expected else "below"
        state = "scores drift from" if self.drifting else "scores back within"
        return (
            f"{state} the model's validation of good parts: {worst.observed:.0%} of the last {self.window} "
            f"passed parts score above its p{round(worst.quantile * 100)} ({worst.score:.3f}), expected "
            f"{worst.expected:.0%} (z {worst.z:+.1f}, {direction}; limit ±{self.z_limit:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready event data."""
        return {
            "drifting": self.drifting,
            "window": self.window,
            "z_limit": self.z_limit,
            "checks": [c.to_dict() for c in self.checks],
        }


class DriftMonitor:
    """Watches passing parts' scores against reference quantiles of good validation scores.

    Build it with :meth:`from_card`; ``observe`` every judged part in order.

    Args:
        references: quantile -> score of good validation parts (e.g. ``{0.5: 0.07, 0.9: 0.46}``).
        rule: the recipe's drift settings (window, z limit).
        reject_share: the share of good validation parts above the reject threshold (the card's false-reject
            rate); those never pass, so the expected share above a quantile among passing parts is
            ``(1 - q - reject_share) / (1 - reject_share)``.
    """

    def __init__(self, references: Mapping[float, float], rule: DriftRule, reject_share: float = 0.0) -> None:
        if not references:
            raise ValueError("expected at least one reference quantile, got none")
        if not 0.0 <= reject_share < 0.5:
            raise ValueError(f"expected a reject share in [0, 0.5), got {reject_share}")
        self.rule = rule
        self._refs = sorted(references.items())
        self._expected = [
            min(max((1.0 - q - reject_share) / (1.0 - reject_share), 0.001), 0.999) for q, _ in self._refs
        ]
        self._window: deque[tuple[bool, ...]] = deque(maxlen=rule.window)
        self._above = [0] * len(self._refs)
        self._drifting = False
        self._last: tuple[QuantileCheck, ...] = ()

    @classmethod
    def from_card(cls, good_scores: Mapping[str, Any], rule: DriftRule) -> DriftMonitor | None:
        """A monitor from the card's ``good_scores``, or None when it is off or the card has no quantiles.

        Raises:
            ValueError: the card's quantiles are not numbers in (0, 1) with finite scores.
        """
        if not rule.enabled:
            return None
        raw = good_scores.get("quantiles") or {}
        refs: dict[float, float] = {}
        for key, value in raw.items():
            try:
                q, v = float(key), float(value)
            except (TypeError, ValueError):
                q, v = math.nan, math.nan
            if not (0.0 < q < 1.0 and math.isfinite(v)):
                raise ValueError(f"card good_scores quantile {key!r}: {value!r} is not a quantile and score")
            if any(math.isclose(q, r) for r in REFERENCE_QUANTILES):
                refs[q] = v
        if not refs:
            return None
        share = float(good_scores.get("false_reject_rate") or 0.0)
        return cls(refs, rule, reject_share=min(max(share, 0.0), 0.49))

    @property
    def drifting(self) -> bool:
        """True from a drift event until the event that clears it."""
        return self._drifting

    @property
    def checks(self) -> tuple[QuantileCheck, ...]:
        """The last full window's checks (empty until the window has filled once)."""
        return self._last

    @property
    def references(self) -> tuple[tuple[float, float, float], ...]:
        """What the window is compared with: (quantile, its score on the card, share expected above it)."""
        return tuple((q, ref, p) for (q, ref), p in zip(self._refs, self._expected, strict=True))

    @property
    def samples(self) -> int:
        """Passed parts in the window now (up to ``rule.window``)."""
        return len(self._window)

    def observe(self, score: float, passed: bool, at: datetime) -> ScoreDrift | None:
        """Count one judged part; returns an event when the state changes.

        Drift is signalled when any quantile's |z| exceeds the limit, and cleared only when every |z| is
        back under half of it, so a window on the edge does not flap.

        Args:
            score: the part's image score.
            passed: whether it was judged PASS (only those count).
            at: when it was judged.
        """
        if not passed or not math.isfinite(score):
            return None
        if len(self._window) == self._window.maxlen:
            for i, was in enumerate(self._window[0]):
                self._above[i] -= was
        flags = tuple(score > ref for _, ref in self._refs)
        self._window.append(flags)
        for i, now in enumerate(flags):
            self._above[i] += now
        n = len(self._window)
        if n < self.rule.window:
            return None
        self._last = tuple(
            QuantileCheck(q, ref, p, k / n, (k - n * p) / math.sqrt(n * p * (1.0 - p)))
            for (q, ref), p, k in zip(self._refs, self._expected, self._above, strict=True)
        )
        worst = max(abs(c.z) for c in self._last)
        limit = self.rule.z_limit
        if not self._drifting and worst > limit:
            self._drifting = True
        elif self._drifting and worst < limit / 2:
            self._drifting = False
        else:
            return None
        return ScoreDrift(self._drifting, at, n, self._last, limit)
