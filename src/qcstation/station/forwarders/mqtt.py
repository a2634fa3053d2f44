"""MQTT sink: QoS 1 publishes to ``qcstation/<site>/<line>/<station>/{inspections,events,status}``.

An item counts as delivered only when the broker's PUBACK for it has arrived. ``status`` is retained:
``online`` is published on every (re)connect, and ``offline`` is the last will (sent by the broker when the
station vanishes) and also published on a clean close. paho's network thread reconnects with a backoff of
1 s doubling to ``reconnect_max`` s. Payloads are the outbox JSON as stored (see docs/PLANT.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from qcstation.station.outbox import Delivery
from qcstation.station.store import OutboxItem, utc_iso

log = logging.getLogger(__name__)

__all__ = ["MqttSink", "topic_prefix"]


def topic_prefix(site: str, line: str, station: str) -> str:
    """``qcstation/<site>/<line>/<station>``; refuses MQTT wildcards and separators in the parts."""
    for what, part in (("site", site), ("line", line), ("station", station)):
        if not part or set(part) & set("/#+"):
            raise ValueError(f"expected a {what} without '/', '#' or '+', got {part!r}")
    return f"qcstation/{site}/{line}/{station}"


def _status(state: str, station: str) -> bytes:
    return json.dumps({"state": state, "station": station, "at": utc_iso(datetime.now(UTC))}).encode()


class MqttSink:
    """Publishes outbox items with QoS 1 and waits for every PUBACK."""

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        site: str,
        line: str,
        station: str,
        keepalive: int = 30,
        ack_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        reconnect_max: int = 30,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        """Connect in the background (paho's network thread keeps reconnecting)."""
        self.prefix = topic_prefix(site, line, station)
        self.station = station
        self.status_topic = f"{self.prefix}/status"
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self._connected = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"qcstation-{station}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if username is not None:
            c.username_pw_set(username, password)
        c.will_set(self.status_topic, _status("offline", station), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=reconnect_max)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self._client = c
        c.connect_async(host, port, keepalive)
        c.loop_start()

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            return
        log.info("MQTT connected; %s online", self.station)
        client.publish(self.status_topic, _status("online", self.station), qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._connected.clear()
        log.warning("MQTT disconnected: %s", reason)

    @property
    def connected(self) -> bool:
        """Whether the client holds a broker connection now."""
        return self._connected.is_set()

    def deliver(self, items: Sequence[OutboxItem]) -> Delivery:
        """Publish in order; the handled prefix ends at the first message without a PUBACK."""
        if not self._connected.wait(self.connect_timeout):
            return Delivery(0, error="not connected to the broker")
        infos = [
            self._client.publish(f"{self.prefix}/{it.topic}", it.payload.encode(), qos=1) for it in items
        ]
        deadline = time.monotonic() + self.ack_timeout
        handled = 0
        for info in infos:
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.0))
            except (RuntimeError, ValueError) as e:
                return Delivery(handled, error=f"publish failed: {e}")
            if not info.is_published():
                return Delivery(handled, error="no PUBACK in time")
            handled += 1
        return Delivery(handled)

    def close(self) -> None:
        """Publish ``offline`` (retained), disconnect cleanly, stop the network thread."""
        if self._connected.is_set():
            offline = _status("offline", self.station)
            info = self._client.publish(self.status_topic, offline, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2.0)
        self._client.disconnect()
        self._client.loop_stop()
