"""The REST API as an MES integrator and the people at the line meet it: real station, real SQLite store."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_factory import part_image

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

Api = Any
GOOD_PNG = cv2.imencode(".png", part_image((96, 96)))[1].tobytes()
BAD_PNG = cv2.imencode(".png", part_image((96, 96), blobs=((48, 48, 8),)))[1].tobytes()

V1 = "/api/v1"


# -- inspections ------------------------------------------------------------------------------------------


def test_pagination_has_no_gap_or_duplicate_while_parts_arrive(api: Api) -> None:
    # given 5 parts
    first = [api.upload(GOOD_PNG, serial=f"A{i}")["result_id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    added: list[str] = []
    # when paging 2 at a time while a part is added between every page
    for _ in range(20):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get(f"{V1}/inspections", params=params, headers=api.auth("mes")).json()
        seen += [i["result_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not page["items"]:
            break
        if len(added) < 3:
            added.append(api.upload(GOOD_PNG, serial=f"B{len(added)}")["result_id"])
    # then every part was seen exactly once, in commit order
    assert seen == first + added
    assert len(set(seen)) == len(seen)


def test_every_filter(api: Api) -> None:
    good = api.upload(GOOD_PNG, serial="S-good")
    bad = api.upload(BAD_PNG, serial="S-bad")
    get = lambda **p: [  # noqa: E731
        i["result_id"]
        for i in api.client.get(f"{V1}/inspections", params=p, headers=api.auth("viewer")).json()["items"]
    ]
    assert get(verdict="FAIL") == [bad["result_id"]]
    assert get(verdict="PASS") == [good["result_id"]]
    assert get(disposition="REJECT") == [bad["result_id"]]
    assert get(serial="S-good") == [good["result_id"]]
    assert get(batch="B1") == [good["result_id"], bad["result_id"]]
    assert get(batch="other") == []
    assert get(since=bad["creation_time"]) == [bad["result_id"]]
    assert get(until=bad["creation_time"]) == [good["result_id"]]
    # bad filters and cursors are 4xx with a message
    for params, status in [
        ({"verdict": "MAYBE"}, 422),
        ({"since": "yesterday"}, 422),
        ({"since": "2026-01-01T00:00:00"}, 400),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400),
        ({"cursor": "garbage"}, 400),
        ({"cursor": "aTE6MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAw"}, 400),  # well-formed, unknown id
        ({"limit": 0}, 422),
        ({"batch": "../../etc"}, 422),
    ]:
        r = api.client.get(f"{V1}/inspections", params=params, headers=api.auth("viewer"))
        assert r.status_code == status, (params, r.text)
        assert r.json()["detail"]


def test_one_result_its_image_and_overlay(api: Api) -> None:
    bad = api.upload(BAD_PNG, serial="S1")
    rid = bad["result_id"]
    one = api.client.get(f"{V1}/inspections/{rid}", headers=api.auth("viewer")).json()
    # the part/lot identity a plant expects
    assert one["part_id"] == "S1" and one["job_id"] == "B1" and one["product_id"] == "widget"
    assert len(one["recipe_id"]) == 64 and one["result_state"] == "FAIL" and one["regions"]
    assert one["model"]["name"] == "tiny" and one["image_available"]
    img = api.client.get(f"{V1}/inspections/{rid}/image", headers=api.auth("viewer"))
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content == BAD_PNG
    ov = api.client.get(f"{V1}/inspections/{rid}/overlay", headers=api.auth("viewer"))
    assert ov.status_code == 200 and ov.content.startswith(b"\x89PNG")
    unknown = "01900000-0000-7000-8000-000000000000"
    for path in (
        f"/inspections/{unknown}",
        f"/inspections/{unknown}/image",
        f"/inspections/{unknown}/overlay",
    ):
        r = api.client.get(V1 + path, headers=api.auth("viewer"))
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert api.client.get(f"{V1}/inspections/..%2F..%2Fetc", headers=api.auth("viewer")).status_code in (
        404,
        422,
    )


def test_serial_history(api: Api) -> None:
    a = api.upload(GOOD_PNG, serial="SN-7")["result_id"]
    api.upload(GOOD_PNG, serial="SN-8")
    b = api.upload(BAD_PNG, serial="SN-7")["result_id"]
    h = api.client.get(f"{V1}/serials/SN-7/history", headers=api.auth("mes")).json()
    assert h["part_id"] == "SN-7" and [i["result_id"] for i in h["items"]] == [a, b]


def test_result_reads_send_the_bytes_their_response_models_would(api: Api) -> None:
    # given a good part, a failed part with regions, and a reviewed one (the reads skip re-validation)
    api.upload(GOOD_PNG, serial="SN-9")
    bad = api.upload(BAD_PNG, serial="SN-9")["result_id"]
    r = api.client.post(
        f"{V1}/inspections/{bad}/review",
        json={"decision": "override", "verdict": "PASS", "reason": "dust on the lens"},
        headers=api.auth("quality"),
    )
    assert r.status_code == 201, r.text
    from qcstation.station.api.schemas import InspectionDetailOut, InspectionPage, SerialHistoryOut

    reads = [
        (f"{V1}/inspections", {"limit": 1}, InspectionPage),
        (f"{V1}/inspections", {"serial": "SN-9"}, InspectionPage),
        (f"{V1}/serials/SN-9/history", {}, SerialHistoryOut),
        (f"{V1}/inspections/{bad}", {}, InspectionDetailOut),
    ]
    for path, params, model in reads:
        resp = api.client.get(path, params=params, headers=api.auth("mes"))
        # then each body validates against its published model, and is byte for byte its serialisation
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
        assert resp.content == model.model_validate_json(resp.content).model_dump_json(by_alias=True).encode()
    one = api.client.get(f"{V1}/inspections/{bad}", headers=api.auth("mes")).json()
    assert one["regions"] and one["review"]["result_state"] == "PASS"


# -- batches and holds ------------------------------------------------------------------------------------


def test_batch_start_close_and_summary(api: Api) -> None:
    r = api.client.post(
        f"{V1}/batches", json={"batch_id": "LOT-2", "planned_quantity": 50}, headers=api.auth("mes")
    )
    # starting a batch makes it the one the station inspects from now on
    assert r.status_code == 201 and r.json()["state"] == "OPEN" and r.json()["active"] is True
    assert api.upload(GOOD_PNG)["job_id"] == "LOT-2"
    again = api.client.post(f"{V1}/batches", json={"batch_id": "LOT-2"}, headers=api.auth("mes"))
    assert again.status_code == 200
    wrong = api.client.post(
        f"{V1}/batches", json={"batch_id": "LOT-3", "product_id": "gear"}, headers=api.auth("mes")
    )
    assert wrong.status_code == 409
    assert (
        api.client.post(f"{V1}/batches", json={"batch_id": "LOT-3"}, headers=api.auth("viewer")).status_code
        == 403
    )
    # the running batch cannot be closed under the station; after switching back to B1 it can
    assert api.client.post(f"{V1}/batches/LOT-2/close", headers=api.auth("mes")).status_code == 409
    back = api.client.post(f"{V1}/batches", json={"batch_id": "B1"}, headers=api.auth("mes"))
    assert back.status_code == 200 and back.json()["active"] is True
    closed = api.client.post(f"{V1}/batches/LOT-2/close", headers=api.auth("mes"))
    assert closed.status_code == 200 and closed.json()["state"] == "CLOSED"
    assert api.client.post(f"{V1}/batches/LOT-2/close", headers=api.auth("mes")).status_code == 409
    # the running batch cannot be closed under the station
    assert api.client.post(f"{V1}/batches/B1/close", headers=api.auth("mes")).status_code == 409
    api.upload(GOOD_PNG)
    api.upload(BAD_PNG)
    s = api.client.get(f"{V1}/batches/B1", headers=api.auth("viewer")).json()
    assert s["total"] == 2 and s["yield"] == 0.5 and s["verdicts"]["FAIL"] == 1
    assert s["pareto"][0]["class_name"] == "dark" and s["hold"]["on_hold"] is False and s["batch"]["active"]
    assert api.client.get(f"{V1}/batches/NOPE", headers=api.auth("viewer")).status_code == 404
    kinds = [e["kind"] for e in api.client.get(f"{V1}/events", headers=api.auth("viewer")).json()["items"]]
    assert "batch_opened" in kinds and "batch_closed" in kinds


def test_hold_raise_and_release_by_role_with_audit(api: Api) -> None:
    # raising needs a reason
    assert api.client.post(f"{V1}/batches/B1/holds", json={}, headers=api.auth("operator")).status_code == 422
    r = api.client.post(f"{V1}/batches/B1/holds", json={"reason": "burr seen"}, headers=api.auth("operator"))
    assert r.status_code == 201 and r.json()["rule"] == "manual" and r.json()["raised_by"] == "api:operator"
    # the running station's monitor knows at once: the next part is quarantined
    assert api.upload(GOOD_PNG)["disposition"] == "HOLD"
    assert (
        api.client.post(
            f"{V1}/batches/B1/holds", json={"reason": "x"}, headers=api.auth("operator")
        ).status_code
        == 409
    )
    # release: operator 403 saying why, no reason 422, quality 200
    r = api.client.post(f"{V1}/batches/B1/release", json={"reason": "ok"}, headers=api.auth("operator"))
    assert r.status_code == 403 and "needs quality" in r.json()["detail"]
    assert (
        api.client.post(
            f"{V1}/batches/B1/release", json={"reason": "  "}, headers=api.auth("quality")
        ).status_code
        == 422
    )
    assert (
        api.client.post(f"{V1}/batches/B1/release", json={}, headers=api.auth("quality")).status_code == 422
    )
    r = api.client.post(
        f"{V1}/batches/B1/release", json={"reason": "burr within spec"}, headers=api.auth("quality")
    )
    assert (
        r.status_code == 200
        and r.json()["state"] == "OPEN"
        and r.json()["released"][0]["release_reason"] == "burr within spec"
    )
    assert api.upload(GOOD_PNG)["disposition"] == "ACCEPT"
    events = api.client.get(
        f"{V1}/events", params={"kind": "hold_released"}, headers=api.auth("viewer")
    ).json()["items"]
    assert events[-1]["actor"] == "api:quality" and events[-1]["reason"] == "burr within spec"
    raised = api.client.get(
        f"{V1}/events", params={"kind": "hold_raised"}, headers=api.auth("viewer")
    ).json()["items"]
    assert raised[-1]["actor"] == "api:operator" and "burr seen" in raised[-1]["reason"]
    assert api.store.verify().ok


def test_hold_on_a_batch_the_station_is_not_running_goes_through_the_store(api: Api) -> None:
    api.client.post(f"{V1}/batches", json={"batch_id": "LOT-9"}, headers=api.auth("mes"))
    assert (
        api.client.post(
            f"{V1}/batches/LOT-9/holds", json={"reason": "r"}, headers=api.auth("mes")
        ).status_code
        == 201
    )
    assert api.client.get(f"{V1}/batches/LOT-9", headers=api.auth("viewer")).json()["hold"]["on_hold"]
    r = api.client.post(f"{V1}/batches/LOT-9/release", json={"reason": "fine"}, headers=api.auth("admin"))
    assert r.status_code == 200 and r.json()["state"] == "OPEN"
    assert (
        api.client.post(
            f"{V1}/batches/LOT-9/release", json={"reason": "again"}, headers=api.auth("quality")
        ).status_code
        == 409
    )
    assert (
        api.client.post(f"{V1}/batches/NOPE/holds", json={"reason": "r"}, headers=api.auth("mes")).status_code
        == 404
    )


# -- upload inspection and trigger ------------------------------------------------------------------------


def test_upload_good_defective_and_bad_files(api: Api) -> None:
    assert api.upload(GOOD_PNG, serial="U1")["result_state"] == "PASS"
    bad = api.upload(BAD_PNG, serial="U2")
    assert (
        bad["result_state"] == "FAIL"
        and bad["disposition"] == "REJECT"
        and bad["source"] == "api-upload:operator"
    )
    before = api.store.count_inspections()

    def post(content: bytes, **kw: object) -> object:
        return api.client.post(
            f"{V1}/inspect",
            files={"file": ("x.png", content, "image/png")},
            headers=api.auth("operator"),
            **kw,  # type: ignore[arg-type]
        )

    r = post(b"this is not an image")
    assert r.status_code == 415 and "not an image" in r.json()["detail"]  # type: ignore[attr-defined]
    assert post(b"").status_code == 422  # type: ignore[attr-defined]
    assert post(b"\x89PNG" + b"0" * 300_000).status_code == 413  # type: ignore[attr-defined]
    assert post(GOOD_PNG, data={"batch": "OTHER"}).status_code == 409  # type: ignore[attr-defined]
    assert api.client.post(f"{V1}/inspect", headers=api.auth("operator")).status_code == 422
    assert (
        api.client.post(
            f"{V1}/inspect", files={"file": ("x.png", GOOD_PNG)}, headers=api.auth("viewer")
        ).status_code
        == 403
    )
    # nothing written for refused uploads
    assert api.store.count_inspections() == before


def test_trigger_captures_one_frame_for_a_serial(api: Api) -> None:
    r = api.client.post(f"{V1}/trigger", json={"serial": "T-1"}, headers=api.auth("mes"))
    assert r.status_code == 202 and r.json()["queued"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        items = api.client.get(f"{V1}/inspections", params={"serial": "T-1"}, headers=api.auth("mes")).json()[
            "items"
        ]
        if items:
            break
        time.sleep(0.05)
    assert items and items[0]["measurement_id"] == "1"


# -- stream, status, metrics, health ----------------------------------------------------------------------


def test_stream_delivers_a_committed_result(api: Api) -> None:
    lines: list[str] = []

    def later() -> None:
        time.sleep(0.5)
        api.upload(BAD_PNG, serial="LIVE-1")

    t = threading.Thread(target=later)
    t.start()
    with api.client.stream(
        "GET", f"{V1}/stream", params={"limit": 1}, headers=api.auth("viewer"), timeout=20
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            lines.append(line)
    t.join()
    data = [json.loads(x[len("data: ") :]) for x in lines if x.startswith("data: ")]
    assert "event: result" in lines and data[0]["part_id"] == "LIVE-1" and data[0]["result_state"] == "FAIL"


def test_slow_stream_client_gets_a_dropped_notice(api: Api) -> None:
    import asyncio

    assert api.station.sinks
    feed = next(s for s in api.station.sinks if hasattr(s, "subscribe"))
    loop = asyncio.new_event_loop()
    try:
        sub = feed.subscribe(loop, size=2)
        for i in range(5):
            feed.publish("result", {"n": i})
        msgs, dropped = sub.take()
        assert [m.data["n"] for m in msgs] == [3, 4] and dropped == 3
    finally:
        feed.unsubscribe(sub)
        loop.close()


def test_status_metrics_health_ready(api: Api) -> None:
    api.upload(BAD_PNG)
    s = api.client.get(f"{V1}/status", headers=api.auth("viewer")).json()
    assert s["running"] and s["source_state"] == "running" and s["job_id"] == "B1" and s["parts"] == 1
    assert s["latency_ms"]["p99"] is not None and s["model"]["name"] == "tiny" and s["outbox_backlog"] >= 1
    text = api.client.get(f"{V1}/metrics", headers=api.auth("viewer")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    fails = [s for s in families["qcstation_inspections"].samples if s.labels.get("verdict") == "FAIL"]
    assert (
        fails[0].value == 1.0
        and "qcstation_outbox_backlog" in families
        and "qcstation_batch_on_hold" in families
    )
    stage_p99 = {
        s.labels["stage"]: s.value
        for s in families["qcstation_stage_ms"].samples
        if s.labels["quantile"] == "0.99"
    }
    assert set(stage_p99) == {"preprocess", "infer", "postprocess", "decide", "commit"}
    assert all(v >= 0 for v in stage_p99.values())
    assert api.client.get(f"{V1}/health").json()["status"] == "ok"
    assert api.client.get(f"{V1}/ready").status_code == 200


def test_status_shows_score_drift_and_station_faults(app_builder: Any, make_model: Any) -> None:
    from datetime import UTC, datetime

    from qcstation.station.types import StationFault

    # given a model whose card says good parts score very low (p50 0.001, p90 0.01), a 30-part drift window
    model = make_model(
        "drift.onnx",
        card_overrides={"good_scores": {"quantiles": {"0.5": 0.001, "0.9": 0.01}, "count": 100}},
    )
    app, store, station, _tokens, secrets = app_builder(model=model, recipe={"drift": {"window": 30}})
    viewer = {"Authorization": f"Bearer {secrets['viewer']}"}
    greyish = cv2.imencode(".png", np.full((96, 96), 145, np.uint8))[1].tobytes()
    with TestClient(app) as client:
        status = lambda: client.get(f"{V1}/status", headers=viewer).json()  # noqa: E731
        d = status()["drift"]
        assert (d["state"], d["samples"], d["window"], d["z"], d["since"]) == ("filling", 0, 30, None, None)
        assert [(c["quantile"], c["score"], c["observed"]) for c in d["checks"]] == [
            (0.5, 0.001, None),
            (0.9, 0.01, None),
        ]
        assert "good_scores" in d["reference"] and status()["faults"] == []
        # when 30 parts pass that all score above the card's good p90 (a little darker than its good parts)
        for i in range(30):
            r = client.post(
                f"{V1}/inspect",
                files={"file": ("p.png", greyish, "image/png")},
                data={"serial": f"G{i}"},
                headers={"Authorization": f"Bearer {secrets['operator']}"},
            )
            assert r.status_code == 201 and r.json()["result_state"] == "PASS", r.text
        # then the status says the scores drift, how far, since when, as the score_drift event does
        d = status()["drift"]
        assert d["state"] == "drifting" and d["samples"] == 30 and d["z"] > d["z_limit"] == 4.0
        assert d["checks"][1]["observed"] == 1.0 and d["checks"][1]["expected"] == 0.1
        events = client.get(f"{V1}/events", params={"kind": "score_drift"}, headers=viewer).json()["items"]
        assert len(events) == 1 and d["since"] == events[0]["at"] and d["detail"] == events[0]["reason"]
        # when the camera is lost (the station reports it to its batch monitor), then the status lists it
        lost = datetime(2026, 1, 31, 8, 0, tzinfo=UTC)
        station.monitor.fault(StationFault("source", "camera lost", lost))
        assert status()["faults"] == [
            {
                "kind": "source",
                "since": "2026-01-31T08:00:00.000000Z",
                "detail": "source fault: camera lost",
                "error_parts": 0,
            }
        ]
        station.monitor.fault(StationFault("source", "camera back", lost, recovered=True))
        assert status()["faults"] == []
    store.close()


def test_ready_is_503_without_a_station(tmp_path: Path) -> None:
    from qcstation.station.api import create_app
    from qcstation.station.archive import ImageArchive
    from qcstation.station.settings import Settings
    from qcstation.station.store import Store
    from qcstation.station.tokens import TokenStore

    with Store.open(tmp_path / "qc.db", "st1") as store:
        app = create_app(
            settings=Settings(data_dir=tmp_path, station_id="st1"),
            store=store,
            archive=ImageArchive(tmp_path / "images"),
            station=None,
            tokens=TokenStore(store),
        )
        with TestClient(app) as c:
            r = c.get(f"{V1}/ready")
            assert r.status_code == 503 and r.json()["status"] == "not_ready"
            # no tokens, loopback: read-only without a token; writes always need one
            assert c.get(f"{V1}/inspections").status_code == 200
            w = c.post(f"{V1}/batches/B1/holds", json={"reason": "x"})
            assert w.status_code == 401 and "bearer token" in w.json()["detail"]
            assert c.post(f"{V1}/inspect", files={"file": ("x.png", GOOD_PNG)}).status_code == 401


# -- access control ---------------------------------------------------------------------------------------


def test_missing_wrong_and_revoked_tokens_are_401_with_a_reason(api: Api) -> None:
    r = api.client.get(f"{V1}/inspections")
    assert r.status_code == 401 and "missing bearer token" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = api.client.get(f"{V1}/inspections", headers={"Authorization": "Bearer qcs_nope"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown token"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = api.client.get(f"{V1}/inspections", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    api.tokens.revoke("viewer", by="test")
    time.sleep(0.01)
    r = api.client.get(f"{V1}/inspections", headers=api.auth("viewer"))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert api.client.get(f"{V1}/tokens", headers=api.auth("operator")).status_code == 403
    names = {t["name"] for t in api.client.get(f"{V1}/tokens", headers=api.auth("admin")).json()}
    assert names == {"viewer", "operator", "quality", "mes", "admin"}
    kinds = [e.kind for e in api.store.events(limit=100)]
    assert "token_issued" in kinds and "token_revoked" in kinds


def test_no_anonymous_access_when_listening_beyond_loopback(app_builder: Any) -> None:
    app, store, *_ = app_builder(issue=False, host="0.0.0.0")
    with TestClient(app) as c:
        assert c.get(f"{V1}/inspections").status_code == 401
    store.close()


def test_check_bind_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    from qcstation.station.api.auth import check_bind
    from qcstation.station.errors import ConfigError
    from qcstation.station.store import Store
    from qcstation.station.tokens import TokenStore

    with Store.open(tmp_path / "qc.db", "st1") as store:
        tokens = TokenStore(store)
        check_bind("127.0.0.1", tokens)
        with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
            check_bind("0.0.0.0", tokens)
        tokens.issue("ops", "admin", by="t")
        check_bind("0.0.0.0", tokens)
