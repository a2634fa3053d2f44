"""`qcstation serve --mqtt`: the station's own process delivers every committed result to the broker."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
import pytest
import yaml

from model_factory import part_image
from station.plant.servers import Mosquitto, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_serve_forwards_every_result_to_mqtt(tmp_path: Path, tiny_model: Path, broker: Mosquitto) -> None:
    # given a project with six frames (one of them bad) and a subscriber on the broker
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, blobs in enumerate([(), ((40, 40, 8),), (), (), ((20, 60, 6),), ()], start=1):
        cv2.imwrite(str(frames / f"p{i}.png"), part_image((96, 96), blobs=blobs))
    recipe = {"product": "w", "model": str(tiny_model), "classes": {"dark": {"min_area_px": 20}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    got: list[dict[str, object]] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/inspections"):
            got.append(json.loads(msg.payload))
            if len(got) >= 6:
                done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("qcstation/#", qos=1)
    sub.loop_start()
    # when the station serves with forwarding to the broker
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qcstation.cli",
            "serve",
            "--source",
            "frames",
            "--recipe",
            "recipe.yaml",
            "--data-dir",
            "data",
            "--port",
            str(free_port()),
            "--mqtt",
            f"127.0.0.1:{broker.port}",
            "--station",
            "st-9",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert done.wait(60), f"only {len(got)} result(s) arrived"
    finally:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        sub.loop_stop()
        sub.disconnect()
    # then every committed record arrived once per id, in commit order, and the outbox is drained
    assert proc.returncode == 0, err
    with sqlite3.connect(tmp_path / "data" / "qcstation.db") as c:
        ids = [r for (r,) in c.execute("select id from inspections order by seq")]
        pending = c.execute("select count(*) from outbox where delivered_at is null").fetchone()[0]
    arrived = [str(m.get("result_id", m.get("id"))) for m in got]
    assert list(dict.fromkeys(arrived)) == ids
    assert pending <= 1  # at most the station_stopped event written as it shut down
