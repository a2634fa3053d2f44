"""The station screen as the operator and the quality engineer meet it: real Chromium, server and station.

A real uvicorn server runs the app over a tiny ONNX model, a trigger-only source and a SQLite store on a free
loopback port; the test hands parts to the station through ``POST /inspect`` (which returns once the part is
committed) and drives Debian's Chromium through Playwright. Screenshots go to ``test-artifacts/screen/``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import uvicorn
import yaml

from model_factory import part_image
from qcstation.inspect.detector import Detector
from qcstation.station.api import ApiConfig, create_app
from qcstation.station.archive import ImageArchive
from qcstation.station.pipeline import Station
from qcstation.station.recipe import load_recipe
from qcstation.station.settings import Settings
from qcstation.station.sources import ListSource, TriggerSource
from qcstation.station.store import Store
from qcstation.station.tokens import TokenStore
from station.plant.servers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "screen"
ROLES = ("viewer", "operator", "quality", "admin")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"the screen test drives Debian's Chromium at {CHROMIUM} (apt install chromium): missing",
    ),
]

GOOD = part_image((240, 320))
BAD = part_image((240, 320), blobs=((200, 110, 22),))
GOOD_PNG = cv2.imencode(".png", GOOD)[1].tobytes()
BAD_PNG = cv2.imencode(".png", BAD)[1].tobytes()


@dataclass
class Served:
    """A running server: its base URL, a token per role, the store, the station."""

    base: str
    secrets: dict[str, str]
    store: Store
    station: Station

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def part(self, png: bytes, serial: str) -> dict[str, Any]:
        """Hand one part to the station; returns its committed result."""
        r = httpx.post(
            f"{self.base}/api/v1/inspect",
            files={"file": ("part.png", png, "image/png")},
            data={"serial": serial},
            headers=self.auth("operator"),
            timeout=30,
        )
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result


@contextmanager
def serve(tmp_path: Path, model: Path, **recipe_extra: Any) -> Iterator[Served]:
    """A real server over a station with ``model`` and the screen test's recipe (plus ``recipe_extra``)."""
    data = tmp_path / "data"
    store = Store.open(data / "qc.db", "line-3")
    tokens = TokenStore(store)
    secrets = {r: tokens.issue(r, r, by="test").secret for r in ROLES}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "product": "bracket",
                "model": str(model),
                "mm_per_px": 0.1,
                "classes": {"dark": {"min_area_px": 20}},
                "holds": {
                    "consecutive_fails": 3,
                    "suspect_last": 2,
                    "p_chart": {"baseline_rate": 0.1, "subgroup": 10, "sigma": 3.0},
                },
                "images": {"keep_pass_every": 1},
                **recipe_extra,
            }
        )
    )
    archive = ImageArchive(data / "images")
    station = Station(
        source=TriggerSource(ListSource([GOOD], loop=True, name="cam-1")),
        detector=Detector.from_path(model),
        recipe=load_recipe(recipe),
        store=store,
        archive=archive,
        batch_id="LOT-42",
        release_poll_s=0.1,
    )
    app = create_app(
        settings=Settings(data_dir=data, station_id="line-3"),
        store=store,
        archive=archive,
        station=station,
        tokens=tokens,
        config=ApiConfig(stream_keepalive_s=1.0),
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield Served(f"http://127.0.0.1:{port}", secrets, store, station)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


@pytest.fixture
def served(tmp_path: Path, tiny_model: Path) -> Iterator[Served]:
    with serve(tmp_path, tiny_model) as s:
        yield s


def test_operator_and_quality_at_the_screen(served: Served) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            # the line-side PC is logged in with an operator token
            context.add_init_script(f"localStorage.setItem('qcs.token', '{served.secrets['operator']}')")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(served.base + "/")
            expect(page.locator("#h-role")).to_contain_text("operator")
            expect(page.locator("#live")).to_contain_text("LIVE")
            expect(page.locator("#h-batch")).to_have_text("LOT-42")

            # a PASS part appears: the big tile says PASS, with its serial
            served.part(GOOD_PNG, "SN-1001")
            expect(page.locator("#v-word")).to_have_text("PASS")
            expect(page.locator("#v-serial")).to_have_text("SN-1001")
            expect(page.locator("#verdict")).to_have_class("tile v-PASS")
            expect(page.locator("#part-img")).to_be_visible()
            expect(page.locator("#c-pass")).to_have_text("1")
            page.screenshot(path=str(ARTIFACTS / "01-pass.png"))

            # a FAIL part appears: big FAIL, and it is at the top of the recent rejects
            fail = served.part(BAD_PNG, "SN-1002")
            assert fail["result_state"] == "FAIL"
            expect(page.locator("#v-word")).to_have_text("FAIL")
            expect(page.locator("#reject-list li").first).to_contain_text("SN-1002")
            expect(page.locator("#c-fail")).to_have_text("1")
            expect(page.locator("#queue-list li").first).to_contain_text("SN-1002")
            page.screenshot(path=str(ARTIFACTS / "02-fail.png"))

            # two more fails in a row: the hold rule fires and the banner says which rule, with its evidence
            served.part(BAD_PNG, "SN-1003")
            served.part(BAD_PNG, "SN-1004")
            banner = page.locator("#hold")
            expect(banner).to_be_visible()
            expect(page.locator("#hold-rule")).to_have_text("consecutive_fails")
            expect(page.locator("#hold-evidence")).to_have_text("3")
            expect(page.locator("#release-why")).to_contain_text("operator cannot release")
            expect(page.locator("#queue-list li")).to_have_count(3)
            page.screenshot(path=str(ARTIFACTS / "03-hold.png"))

            # a good part inside the held batch is quarantined: the tile says HOLD, never a green PASS
            served.part(GOOD_PNG, "SN-1010")
            expect(page.locator("#v-serial")).to_have_text("SN-1010")
            expect(page.locator("#v-word")).to_have_text("HOLD")
            expect(page.locator("#verdict")).to_have_class("tile v-HELD")
            expect(page.locator("#v-time")).to_contain_text("PASS part, quarantined")

            # the operator tries to release with their own token: refused, the hold stays
            page.click("#release-btn")
            page.fill("#r-token", served.secrets["operator"])
            page.fill("#r-reason", "looks fine to me")
            page.click("#r-submit")
            expect(page.locator("#r-msg")).to_contain_text("cannot release holds")
            expect(banner).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "04-release-refused.png"))
            # no reason: the screen refuses before asking the station
            page.fill("#r-token", served.secrets["quality"])
            page.fill("#r-reason", "")
            page.click("#r-submit")
            expect(page.locator("#r-msg")).to_contain_text("reason is required")
            # quality releases with a reason: the banner goes
            page.fill("#r-reason", "3 parts re-measured, fixture cleaned")
            page.click("#r-submit")
            expect(banner).to_be_hidden()
            expect(page.locator("#h-batch-state")).to_have_text("OPEN")
            batch = httpx.get(f"{served.base}/api/v1/batches/LOT-42", headers=served.auth("viewer")).json()
            assert batch["batch"]["state"] == "OPEN"
            assert batch["holds"][0]["released_by"] == "api:quality"

            # quality overrides a FAIL from the review queue, with a reason
            page.locator("#queue-list li", has_text="SN-1002").click()
            expect(page.locator("#detail-dlg")).to_be_visible()
            expect(page.locator("#d-verdict")).to_have_text("FAIL")
            page.fill("#rv-token", served.secrets["quality"])
            page.click("#rv-buttons button[data-verdict='PASS']")
            expect(page.locator("#rv-msg")).to_contain_text("reason is required")
            page.fill("#rv-token", served.secrets["quality"])
            page.fill("#rv-reason", "shadow of the gripper, not a pit")
            page.click("#rv-buttons button[data-verdict='PASS']")
            expect(page.locator("#rv-msg")).to_contain_text("Recorded: override")
            expect(page.locator("#d-review-state")).to_contain_text("FAIL → PASS")
            page.screenshot(path=str(ARTIFACTS / "05-review-override.png"))
            page.click("#d-close")
            expect(page.locator("#queue-list")).not_to_contain_text("SN-1002")
            got = httpx.get(
                f"{served.base}/api/v1/inspections/{fail['result_id']}", headers=served.auth("viewer")
            ).json()
            assert got["result_state"] == "FAIL"  # the record never changes
            assert got["review"]["result_state"] == "PASS"
            assert got["review"]["reason"] == "shadow of the gripper, not a pit"

            # the same screen on a 1920x1080 display
            page.set_viewport_size({"width": 1920, "height": 1080})
            served.part(BAD_PNG, "SN-1005")
            expect(page.locator("#v-serial")).to_have_text("SN-1005")
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "06-fullhd.png"))
            assert not errors, errors
            assert served.store.verify().ok
        finally:
            browser.close()


def test_score_drift_and_a_lost_camera_show_in_the_health_area(tmp_path: Path, make_model: Any) -> None:
    from datetime import UTC, datetime

    from playwright.sync_api import expect, sync_playwright

    from qcstation.station.types import StationFault

    # given a model whose card says good parts score very low (p50 0.001, p90 0.01), a 30-part drift window
    model = make_model(
        "drift.onnx",
        card_overrides={"good_scores": {"quantiles": {"0.5": 0.001, "0.9": 0.01}, "count": 100}},
    )
    greyish = cv2.imencode(".png", np.full((240, 320), 145, np.uint8))[1].tobytes()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serve(tmp_path, model, drift={"window": 30}) as served, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(f"localStorage.setItem('qcs.token', '{served.secrets['operator']}')")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(served.base + "/")
            expect(page.locator("#s-drift")).to_contain_text("filling: 0 of 30")
            expect(page.locator("#s-faults")).to_have_text("none")
            warning = page.locator("#drift-warn")
            expect(warning).to_be_hidden()
            # when 30 parts pass that all score above the card's good p90 (darker than its good parts)
            for i in range(30):
                assert served.part(greyish, f"SN-{2000 + i}")["result_state"] == "PASS"
            # then the station's drift monitor signals drift and the health area shows an amber warning,
            # while the parts stay PASS and the batch is not held (no hold banner)
            expect(warning).to_be_visible(timeout=10_000)
            expect(warning).to_contain_text("SCORE DRIFT")
            expect(page.locator("#drift-detail")).to_contain_text("of the last 30 passed parts")
            expect(page.locator("#s-drift")).to_contain_text("DRIFTING")
            expect(page.locator("#health")).to_have_class("panel warn")
            expect(page.locator("#hold")).to_be_hidden()
            expect(page.locator("#v-word")).to_have_text("PASS")
            # and a camera lost, as the station reports it to its batch monitor, is listed with its start
            served.station.monitor.fault(
                StationFault("source", "camera lost", datetime(2026, 1, 31, 8, 0, 5, tzinfo=UTC))
            )
            expect(page.locator("#s-faults")).to_have_text("source since 08:00:05 UTC")
            page.screenshot(path=str(ARTIFACTS / "07-drift-and-fault.png"))
            assert not errors, errors
        finally:
            browser.close()
