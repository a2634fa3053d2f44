"""Throw-away servers for the plant tests: a schema in the machine's PostgreSQL, and private Mosquitto and
PostgreSQL instances on free ports that a test may stop and start without disturbing anyone else."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
MOSQUITTO = "/usr/sbin/mosquitto"
PG_BIN = next(
    (d for d in ("/usr/lib/postgresql/15/bin", "/usr/local/bin") if Path(d, "initdb").exists()), None
)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, *, timeout: float = 15.0, up: bool = True) -> None:
    """Wait until 127.0.0.1:port accepts (``up``) or refuses connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not {'up' if up else 'down'} after {timeout} s")


def shared_pg_available() -> str | None:
    """None when the machine's PostgreSQL answers, else why not."""
    try:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user="postgres", connect_timeout=3):
            return None
    except psycopg.Error as e:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DB} unreachable: {e}"


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema in database ``test``; yields a SQLAlchemy URL whose search_path is that schema."""
    name = f"qc_test_{uuid.uuid4().hex[:12]}"
    dsn = {"host": PG_HOST, "port": PG_PORT, "dbname": PG_DB, "user": "postgres", "autocommit": True}
    with psycopg.connect(**dsn) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield (
            f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}"
            f"?options={quote(f'-csearch_path={name}')}"
        )
    finally:
        with psycopg.connect(**dsn) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


class Mosquitto:
    """A private broker: ``listener <port> 127.0.0.1``, anonymous, no persistence."""

    def __init__(self, directory: Path, *, persistence: bool = False) -> None:
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        keep = "persistence false\n"
        if persistence:
            keep = f"persistence true\npersistence_location {directory}/\n"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{keep}log_dest none\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            wait_port(self.port, up=False)


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PgCluster:
    """A private PostgreSQL cluster made with ``initdb`` (run as the postgres user when we are root)."""

    def __init__(self) -> None:
        if PG_BIN is None:
            raise RuntimeError("initdb not found")
        self.dir = Path(tempfile.mkdtemp(prefix="qc-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    f"{PG_BIN}/initdb",
                    "-D",
                    str(self.data),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres(
                [
                    f"{PG_BIN}/pg_ctl",
                    "-D",
                    str(self.data),
                    "-o",
                    opts,
                    "-l",
                    str(self.dir / "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Subscriber:
    """An MES-like MQTT client: QoS 1, a persistent session (clean_session False), subscribes on connect."""

    def __init__(self, port: int, topic: str, *, client_id: str = "mes") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.on_message = self._on_message
        self.client = c
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("subscriber did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def ids(self, suffix: str) -> list[str]:
        """Record ids received on topics ending in ``suffix``, first arrival of each id only."""
        seen: set[str] = set()
        out: list[str] = []
        with self.lock:
            for topic, payload, _ in self.messages:
                if topic.endswith(suffix) and payload["id"] not in seen:
                    seen.add(payload["id"])
                    out.append(payload["id"])
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class WebhookReceiver:
    """A local HTTP receiver that fails a share of calls (503) and checks every signature."""

    def __init__(self, secret: bytes, *, fail_every: int = 0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from qcstation.station.forwarders.webhook import verify_signature

        self.secret = secret
        self.calls = 0
        self.bad_signatures = 0
        self.ids: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.calls += 1
                    fail = fail_every and outer.calls % fail_every == 0
                    if not fail:
                        if verify_signature(outer.secret, body, self.headers.get("X-Qcstation-Signature")):
                            assert json.loads(body)["id"] == self.headers["X-Qcstation-Id"]
                            outer.ids.append(self.headers["X-Qcstation-Id"])
                        else:
                            outer.bad_signatures += 1
                self.send_response(503 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def unique_ids(self) -> list[str]:
        seen: set[str] = set()
        with self.lock:
            return [i for i in self.ids if not (i in seen or seen.add(i))]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
