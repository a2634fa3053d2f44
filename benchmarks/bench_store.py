"""Store ingest rate (SQLite, PostgreSQL; outbox on) and commit -> MQTT delivery delay.

Run: ``PYTHONPATH=tests:src .venv/bin/python benchmarks/bench_store.py [--n 5000] [--runs 3]``
(PostgreSQL at 127.0.0.1:5432/test, Mosquitto at 127.0.0.1:1883; a missing server skips its part).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

from qcstation.station.store import Store
from station.factories_store import PRODUCT, RECIPE_HASH, T0, Factory

log = logging.getLogger("bench_store")


def ingest(url: str, n: int, group: int = 50) -> float:
    """Records/s committing ``n`` records in group commits (each also queues its outbox row)."""
    with Store.open(url, "bench") as s:
        s.open_batch("B", product=PRODUCT, recipe_hash=RECIPE_HASH, at=T0, actor="bench")
        f = Factory(batch_id="B")
        batches = [[f.decision() for _ in range(group)] for _ in range(n // group)]
        t0 = time.perf_counter()
        for ds in batches:
            s.commit(ds, product=PRODUCT, recipe_hash=RECIPE_HASH, image_refs={})
        return n / (time.perf_counter() - t0)


def mqtt_delay(n: int, port: int = 1883) -> tuple[float, float]:
    """p50/p99 ms from commit to the subscriber receiving the record (forwarder thread, QoS 1)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from qcstation.station.forwarders.mqtt import MqttSink
    from qcstation.station.outbox import Forwarder

    got: dict[str, float] = {}
    ready = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_connect = lambda c, *_: c.subscribe("qcstation/bench/+/+/inspections", qos=1)
    sub.on_subscribe = lambda *_: ready.set()
    sub.on_message = lambda _c, _u, m: got.setdefault(json.loads(m.payload)["id"], time.perf_counter())
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(10)
    with tempfile.TemporaryDirectory() as d, Store.open(Path(d) / "s.db", "bench") as s:
        s.open_batch("B", product=PRODUCT, recipe_hash=RECIPE_HASH, at=T0, actor="bench")
        sink = MqttSink("127.0.0.1", port, site="bench", line="l", station="bench")
        fwd = Forwarder(s, [sink], idle_wait=0.005)
        fwd.start()
        f = Factory(batch_id="B")
        sent: dict[str, float] = {}
        for _ in range(n // 5):
            ds = [f.decision() for _ in range(5)]
            s.commit(ds, product=PRODUCT, recipe_hash=RECIPE_HASH, image_refs={})
            now = time.perf_counter()
            sent.update({d.record_id: now for d in ds})
            time.sleep(0.01)  # ~500 records/s, a busy line
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        fwd.stop()
    sub.disconnect()
    sub.loop_stop()
    delays = sorted((got[k] - t) * 1000 for k, t in sent.items() if k in got)
    return delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))]


def main() -> None:
    """Print medians over ``--runs``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rates = [ingest(str(Path(d) / f"s{k}.db"), a.n) for k in range(a.runs)]
    med = statistics.median(rates)
    log.info("SQLite ingest, outbox on: %.0f records/s (median of %d x %d)", med, a.runs, a.n)
    try:
        from station.plant.servers import pg_schema

        pg = []
        for _ in range(a.runs):
            with pg_schema() as url:
                pg.append(ingest(url, a.n))
        med = statistics.median(pg)
        log.info("PostgreSQL ingest, outbox on: %.0f records/s (median of %d x %d)", med, a.runs, a.n)
    except Exception as e:
        log.info("PostgreSQL skipped: %s", e)
    try:
        runs = [mqtt_delay(1000) for _ in range(a.runs)]
        log.info(
            "commit -> MQTT delivery: p50 %.1f ms, p99 %.1f ms (medians of %d runs, 1000 records at ~500/s)",
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            a.runs,
        )
    except Exception as e:
        log.info("MQTT skipped: %s", e)


if __name__ == "__main__":
    main()
