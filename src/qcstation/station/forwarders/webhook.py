"""Webhook sink: one HTTP POST per outbox item, signed with HMAC-SHA256, retried with backoff and jitter.

Request: ``POST <url>``, body = the item's JSON exactly as stored, headers ``Content-Type: application/json``,
``X-Qcstation-Id`` (the record id, the idempotency key), ``X-Qcstation-Topic`` (inspections/events),
``X-Qcstation-Station``, ``X-Qcstation-Signature: sha256=<hex HMAC-SHA256 of the body with the shared
secret>``. A 2xx is delivered; 408, 429, 5xx and network errors are retried; any other 4xx is a dead letter.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
from collections.abc import Callable, Sequence

import httpx

from qcstation.station.outbox import Delivery
from qcstation.station.store import OutboxItem

log = logging.getLogger(__name__)

__all__ = ["WebhookSink", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-Qcstation-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does: compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class WebhookSink:
    """POSTs each item to one URL, in order."""

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        station: str,
        name: str = "webhook",
        timeout: float = 5.0,
        attempts: int = 6,
        retry_base: float = 0.2,
        retry_cap: float = 10.0,
        rng: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        """Deliver to ``url``; ``attempts`` tries per item within one :meth:`deliver` call.

        Raises:
            ValueError: an empty secret.
        """
        key = secret.encode() if isinstance(secret, str) else secret
        if not key:
            raise ValueError("expected a webhook secret, got an empty one")
        self.name = name
        self.url = url
        self.station = station
        self.attempts = max(1, attempts)
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self._secret = key
        self._rng = rng
        self._stop = stop or threading.Event()
        self._client = client or httpx.Client(timeout=timeout)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        ceiling = min(self.retry_cap, self.retry_base * 2**attempt)
        if retry_after is not None and retry_after.isdigit():
            return min(float(retry_after), self.retry_cap)
        return float(ceiling / 2 + self._rng() * ceiling / 2)

    def _post(self, item: OutboxItem) -> tuple[bool, str | None]:
        """(handled, reason): (True, None) delivered; (True, why) dead letter; (False, why) retry later."""
        body = item.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Qcstation-Id": item.record_id,
            "X-Qcstation-Topic": item.topic,
            "X-Qcstation-Station": self.station,
            SIGNATURE_HEADER: sign(self._secret, body),
        }
        why = "not tried"
        for attempt in range(self.attempts):
            retry_after: str | None = None
            try:
                r = self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            else:
                if 200 <= r.status_code < 300:
                    return True, None
                why = f"HTTP {r.status_code}"
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    return True, f"{why}: {r.text[:200]}"
                retry_after = r.headers.get("Retry-After")
            if attempt + 1 < self.attempts and self._stop.wait(self._delay(attempt, retry_after)):
                break
        return False, why

    def deliver(self, items: Sequence[OutboxItem]) -> Delivery:
        """POST in order; stop at the first item that still fails after its attempts."""
        dead: list[tuple[OutboxItem, str]] = []
        for k, item in enumerate(items):
            handled, why = self._post(item)
            if not handled:
                return Delivery(k, tuple(dead), error=f"{item.record_id}: {why}")
            if why is not None:
                dead.append((item, why))
        return Delivery(len(items), tuple(dead))

    def close(self) -> None:
        """Stop waiting between retries and close the HTTP client."""
        self._stop.set()
        self._client.close()
