"""The outbox forwarder with fake and real sinks: order, restart, dead letters, backlog, MQTT, central."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from qcstation.station.outbox import BACKLOG_KIND, DEAD_LETTER_KIND, Delivery, Forwarder, outbox_backlog
from qcstation.station.store import OutboxItem, Store
from station.factories_store import Factory
from station.plant.servers import Mosquitto, Subscriber, WebhookReceiver
from station.test_store import commit, open_b1


class ListSink:
    """Collects what it gets; fails while ``down`` is set; refuses the ids in ``refuse`` for good."""

    def __init__(self, name: str = "list") -> None:
        self.name = name
        self.got: list[OutboxItem] = []
        self.down = False
        self.refuse: set[str] = set()
        self.closed = False

    def deliver(self, items: Sequence[OutboxItem]) -> Delivery:
        if self.down:
            return Delivery(0, error="down")
        dead = tuple((it, "refused") for it in items if it.record_id in self.refuse)
        self.got.extend(it for it in items if it.record_id not in self.refuse)
        return Delivery(len(items), dead)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "st.db", "st-1")
    open_b1(s)
    return s


def _fill(store: Store, n: int) -> list[str]:
    f = Factory()
    ds = [f.decision() for _ in range(n)]
    commit(store, *ds)
    return [d.record_id for d in ds]


def _wait(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def test_delivers_in_order_to_every_sink_and_marks_delivered(store: Store) -> None:
    ids = _fill(store, 30)
    a, b = ListSink("a"), ListSink("b")
    fwd = Forwarder(store, [a, b], batch=7)
    fwd.run(until_empty=True)
    for sink in (a, b):
        assert [it.record_id for it in sink.got if it.topic == "inspections"] == ids
        assert [it.id for it in sink.got] == sorted(it.id for it in sink.got)
    assert store.count_outbox_pending() == 0
    assert outbox_backlog(store).size == 0


def test_a_failing_sink_holds_items_and_a_new_forwarder_resumes(store: Store, tmp_path: Path) -> None:
    ids = _fill(store, 10)
    ok, flaky = ListSink("ok"), ListSink("flaky")
    flaky.down = True
    fwd = Forwarder(store, [ok, flaky], retry_base=0.01, retry_cap=0.02)
    with pytest.raises(Exception, match="flaky: down"):
        fwd.step()
    assert store.count_outbox_pending() == 11  # batch_opened + 10 records: nothing marked
    store.close()
    # a restarted forwarder (new process: new store, new sink objects) delivers everything, in order
    again = Store.open(tmp_path / "st.db", "st-1")
    sink = ListSink("flaky")
    Forwarder(again, [sink]).run(until_empty=True)
    assert [it.record_id for it in sink.got if it.topic == "inspections"] == ids
    assert again.count_outbox_pending() == 0


def test_a_dead_letter_is_handled_and_chained_as_an_event(store: Store) -> None:
    ids = _fill(store, 3)
    sink = ListSink()
    sink.refuse = {ids[1]}
    Forwarder(store, [sink]).run(until_empty=True)
    dead = store.events(kind=DEAD_LETTER_KIND)
    assert len(dead) == 1
    assert dead[0].data["record_id"] == ids[1]
    assert store.count_outbox_pending() == 0
    assert store.verify().ok


def test_an_old_backlog_raises_one_event(store: Store) -> None:
    _fill(store, 3)
    sink = ListSink()
    sink.down = True
    fwd = Forwarder(store, [sink], backlog_alert_after=0.0)
    for _ in range(3):
        with pytest.raises(Exception, match="down"):
            fwd.step()
    assert len(store.events(kind=BACKLOG_KIND)) == 1
    b = outbox_backlog(store)
    assert b.size == 5  # batch_opened, 3 records, the alert event itself
    assert b.age_seconds >= 0.0
    assert b.oldest_created_at is not None


@pytest.mark.server
def test_mqtt_publishes_records_events_and_status(store: Store, broker: Mosquitto) -> None:
    from qcstation.station.forwarders.mqtt import MqttSink

    ids = _fill(store, 20)
    sub = Subscriber(broker.port, "qcstation/#", client_id="mes-status")
    sink = MqttSink("127.0.0.1", broker.port, site="plant1", line="L2", station="st-1")
    fwd = Forwarder(store, [sink])
    fwd.start()
    try:
        _wait(lambda: len(sub.ids("/inspections")) == 20)
    finally:
        fwd.stop()
    assert sub.ids("/inspections") == ids
    assert len(sub.ids("/events")) == 1  # batch_opened
    _wait(lambda: any(p.get("state") == "offline" for t, p, _ in sub.messages if t.endswith("/status")))
    states = [p["state"] for t, p, _ in sub.messages if t == "qcstation/plant1/L2/st-1/status"]
    assert states[0] == "online"
    assert states[-1] == "offline"
    sub.close()
    # a late subscriber gets the retained status
    late = Subscriber(broker.port, "qcstation/+/+/+/status", client_id="late")
    _wait(lambda: bool(late.messages))
    assert late.messages[0][2] is True
    late.close()
    assert store.count_outbox_pending() == 0


def test_webhook_signs_and_dead_letters_a_4xx(store: Store) -> None:
    from qcstation.station.forwarders.webhook import WebhookSink

    ids = _fill(store, 5)
    rx = WebhookReceiver(b"s3cret")
    sink = WebhookSink(rx.url, "s3cret", station="st-1", retry_base=0.01)
    try:
        Forwarder(store, [sink]).run(until_empty=True)
    finally:
        sink.close()
        rx.close()
    assert [i for i in rx.unique_ids() if i in set(ids)] == ids
    assert rx.bad_signatures == 0


@pytest.mark.parametrize(
    ("status", "dead", "calls"),
    [(200, False, 1), (400, True, 1), (404, True, 1), (408, False, 3), (429, False, 3), (503, False, 3)],
)
def test_webhook_status_handling(store: Store, status: int, dead: bool, calls: int) -> None:
    import httpx

    from qcstation.station.forwarders.webhook import WebhookSink

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    sink = WebhookSink("http://mes/hook", "k", station="st-1", attempts=3, retry_base=0.001, client=client)
    item = store.outbox_pending(limit=1)[0]
    result = sink.deliver([item])
    assert len(seen) == calls
    assert result.handled == (0 if status >= 408 and not dead and status != 200 else 1)
    assert bool(result.dead) is dead
    assert seen[0].headers["X-Qcstation-Id"] == item.record_id
    sink.close()


@pytest.mark.server
def test_central_store_gets_every_row_and_verifies(store: Store, pg_url: str) -> None:
    from qcstation.station.forwarders.central import CentralSink

    ids = _fill(store, 25)
    sink = CentralSink(pg_url, store.engine, station="st-1")
    Forwarder(store, [sink], batch=10).run(until_empty=True)
    Forwarder(store, [CentralSink(pg_url, store.engine, station="st-1")]).step()  # nothing left: no-op
    sink.close()
    with Store.open(pg_url, "st-1") as central:
        assert [r.id for r in central.inspections(limit=100)] == ids
        report = central.verify()
        assert report.ok, report.describe()
        assert report.checked == 26
