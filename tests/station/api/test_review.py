"""The review queue and verdict override as a quality engineer meets them: real station, real SQLite store."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml
from typer.testing import CliRunner

from model_factory import part_image
from qcstation.station.review import ReviewError, decide, reviews_for

Api = Any
V1 = "/api/v1"
GOOD_PNG = cv2.imencode(".png", part_image((96, 96)))[1].tobytes()
BAD_PNG = cv2.imencode(".png", part_image((96, 96), blobs=((48, 48, 8),)))[1].tobytes()


def _queue(api: Api, **params: Any) -> list[str]:
    r = api.client.get(f"{V1}/review", params=params, headers=api.auth("viewer"))
    assert r.status_code == 200, r.text
    return [i["result_id"] for i in r.json()["items"]]


def test_queue_holds_unreviewed_fails_newest_first_and_pages_back(api: Api) -> None:
    # given a PASS and three FAILs
    api.upload(GOOD_PNG, serial="P1")
    fails = [api.upload(BAD_PNG, serial=f"F{i}")["result_id"] for i in range(3)]
    # then the queue is the FAILs, newest first, and a cursor pages back in time
    assert _queue(api) == fails[::-1]
    page = api.client.get(f"{V1}/review", params={"limit": 2}, headers=api.auth("viewer")).json()
    assert [i["result_id"] for i in page["items"]] == fails[:0:-1] and page["has_more"]
    rest = _queue(api, limit=2, cursor=page["next_cursor"])
    assert rest == fails[:1]
    bad = api.client.get(f"{V1}/review", params={"cursor": "nope"}, headers=api.auth("viewer"))
    assert bad.status_code == 400


def test_override_by_quality_is_a_chained_audit_event_and_shows_on_the_result(api: Api) -> None:
    bad = api.upload(BAD_PNG, serial="S-1")
    rid = bad["result_id"]
    before = api.client.get(f"{V1}/inspections/{rid}", headers=api.auth("viewer")).json()
    assert before["review"] is None
    # when quality overrides the FAIL to PASS with a reason
    r = api.client.post(
        f"{V1}/inspections/{rid}/review",
        json={"decision": "override", "verdict": "PASS", "reason": "dust on the lens, part is fine"},
        headers=api.auth("quality"),
    )
    assert r.status_code == 201, r.text
    review = r.json()["review"]
    assert review["decision"] == "override"
    assert (review["original_result_state"], review["result_state"]) == ("FAIL", "PASS")
    assert review["reviewed_by"] == "api:quality"
    # then the record itself is unchanged, the result shows the review, and it left the queue
    after = api.client.get(f"{V1}/inspections/{rid}", headers=api.auth("viewer")).json()
    assert after["result_state"] == "FAIL" and after["hash"] == before["hash"]
    assert after["review"] == review
    assert rid not in _queue(api)
    assert rid in _queue(api, include_reviewed=True)
    # and the review is an audit event in the hash chain, which still verifies
    events = api.client.get(
        f"{V1}/events", params={"kind": "review_override"}, headers=api.auth("viewer")
    ).json()["items"]
    assert len(events) == 1
    ev = events[0]
    assert ev["actor"] == "api:quality" and ev["reason"] == "dust on the lens, part is fine"
    assert ev["data"]["record_id"] == rid
    assert (ev["data"]["original_verdict"], ev["data"]["verdict"]) == ("FAIL", "PASS")
    assert ev["event_id"] == review["event_id"]
    assert api.store.verify().ok


def test_confirm_by_admin_and_a_later_review_supersedes(api: Api) -> None:
    rid = api.upload(BAD_PNG, serial="S-2")["result_id"]
    r = api.client.post(
        f"{V1}/inspections/{rid}/review",
        json={"decision": "confirm", "reason": "real crack"},
        headers=api.auth("admin"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["review"]["result_state"] == "FAIL"
    r2 = api.client.post(
        f"{V1}/inspections/{rid}/review",
        json={"decision": "override", "verdict": "PASS", "reason": "second look: a stain"},
        headers=api.auth("quality"),
    )
    assert r2.status_code == 201
    got = api.client.get(f"{V1}/inspections/{rid}", headers=api.auth("viewer")).json()
    assert got["review"]["decision"] == "override" and got["review"]["reason"] == "second look: a stain"


@pytest.mark.parametrize("role", ["viewer", "operator", "mes"])
def test_only_quality_reviews(api: Api, role: str) -> None:
    rid = api.upload(BAD_PNG)["result_id"]
    r = api.client.post(
        f"{V1}/inspections/{rid}/review",
        json={"decision": "override", "verdict": "PASS", "reason": "looks fine to me"},
        headers=api.auth(role),
    )
    assert r.status_code == 403
    assert "quality" in r.json()["detail"]
    assert api.client.get(f"{V1}/events", params={"kind": "review_override"}).status_code in (200, 401)
    assert reviews_for(api.store).latest(rid) is None


def test_bad_reviews_are_4xx_and_write_nothing(api: Api) -> None:
    rid = api.upload(BAD_PNG)["result_id"]
    url = f"{V1}/inspections/{rid}/review"
    q = api.auth("quality")
    cases = [
        ({"decision": "override", "verdict": "PASS"}, 422),  # no reason
        ({"decision": "override", "verdict": "PASS", "reason": "   "}, 422),  # blank reason
        ({"decision": "maybe", "verdict": "PASS", "reason": "x"}, 422),
        ({"decision": "override", "verdict": "REVIEW", "reason": "x"}, 422),
        ({"decision": "override", "verdict": "FAIL", "reason": "x"}, 409),  # already FAIL
        ({"decision": "confirm", "verdict": "PASS", "reason": "x"}, 409),  # confirm cannot change it
        ({"decision": "override", "reason": "x"}, 409),  # override needs the new verdict
    ]
    for body, status in cases:
        r = api.client.post(url, json=body, headers=q)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"]
    unknown = f"{V1}/inspections/00000000-0000-7000-8000-000000000000/review"
    r = api.client.post(unknown, json={"decision": "confirm", "reason": "x"}, headers=q)
    assert r.status_code == 404
    assert api.client.post(f"{V1}/inspections/nope/review", json={}, headers=q).status_code == 422
    assert reviews_for(api.store).latest(rid) is None
    assert api.client.get(f"{V1}/events", params={"kind": "review_override"}, headers=q).json()["items"] == []


def test_decide_rules() -> None:
    assert decide("FAIL", "confirm", None) == "FAIL"
    assert decide("PASS", "confirm", "PASS") == "PASS"
    assert decide("REVIEW", "override", "PASS") == "PASS"
    assert decide("FAIL", "override", "PASS") == "PASS"
    for args in [("REVIEW", "confirm", None), ("FAIL", "override", "FAIL"), ("PASS", "override", None)]:
        with pytest.raises(ReviewError):
            decide(*args)  # type: ignore[arg-type]


def test_index_catches_up_with_the_chain(api: Api) -> None:
    # a review event the index missed (written straight to the chain) is found when the index syncs
    rid = api.upload(BAD_PNG)["result_id"]
    rs = reviews_for(api.store)
    api.store.add_event(
        "review_confirm",
        at=datetime.now(UTC),
        actor="api:quality",
        batch_id="B1",
        reason="seen",
        data={"record_id": rid, "original_verdict": "FAIL", "verdict": "FAIL", "decision": "confirm"},
    )
    assert rs.latest(rid) is None
    assert rs.sync() == 1
    got = rs.latest(rid)
    assert got is not None and got.decision == "confirm"


def test_status_publishes_the_control_limits(api: Api) -> None:
    s = api.client.get(f"{V1}/status", headers=api.auth("viewer")).json()
    limits = s["control_limits"]
    assert limits["consecutive_fails"] == 3 and limits["review_counts_as_fail"] is True


def test_recent_is_newest_first(api: Api) -> None:
    a = api.upload(GOOD_PNG)["result_id"]
    b = api.upload(BAD_PNG)["result_id"]
    items = api.client.get(f"{V1}/recent", headers=api.auth("viewer")).json()["items"]
    assert [i["result_id"] for i in items][:2] == [b, a]
    only = api.client.get(f"{V1}/recent", params={"verdict": "FAIL"}, headers=api.auth("viewer")).json()
    assert [i["result_id"] for i in only["items"]] == [b]


# -- dataset export -----------------------------------------------------------------------------------------


def test_dataset_export_is_read_by_the_training_package(api: Api, tmp_path: Path, tiny_model: Path) -> None:
    fail_id = api.upload(BAD_PNG, serial="X 1:a")["result_id"]  # no file name
    pass_id = api.upload(BAD_PNG, serial="X-2")["result_id"]
    api.upload(BAD_PNG, serial="X-3")  # not reviewed: not exported
    q = api.auth("quality")
    for rid, body in [
        (fail_id, {"decision": "confirm", "reason": "real defect"}),
        (pass_id, {"decision": "override", "verdict": "PASS", "reason": "false call"}),
    ]:
        assert api.client.post(f"{V1}/inspections/{rid}/review", json=body, headers=q).status_code == 201
    out = tmp_path / "export"
    from qcstation.cli import app

    data_dir = tmp_path / "data"
    args = ["dataset", "export", "--out", str(out), "--data-dir", str(data_dir), "--station", "st1"]
    res = CliRunner().invoke(
        app,
        [*args, "--model", str(tiny_model)],
        env={"QCSTATION_DATABASE_URL": str(data_dir / "qc.db")},
    )
    assert res.exit_code == 0, res.output
    config = yaml.safe_load((out / "dataset.yaml").read_text())
    assert config["layout"] == "indexed_masks" and config["classes"][0] in ("good", "background")
    with (out / "labels.csv").open() as f:
        rows = {r["record_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {fail_id, pass_id}
    assert rows[pass_id]["verdict"] == "PASS" and rows[pass_id]["reason"] == "false call"
    assert rows[fail_id]["reviewer"] == "api:quality"
    fail_mask = cv2.imread(str(out / "masks" / (Path(rows[fail_id]["file"]).stem + ".png")), 0)
    pass_mask = cv2.imread(str(out / "masks" / (Path(rows[pass_id]["file"]).stem + ".png")), 0)
    assert fail_mask.max() >= 1 and pass_mask.max() == 0
    # the training package reads it
    pytest.importorskip("torch")
    from qcstation.training.data import SegmentationDataset

    ds = SegmentationDataset.from_folder(out, size=64)
    assert len(ds) == 2 and not ds.skipped
