"""The ``qcstation`` command as a user runs it: a real process, real files, exit codes and messages."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml

from model_factory import part_image

ROOT = Path(__file__).resolve().parents[1]

GOOD = part_image((96, 96))
BAD = part_image((96, 96), blobs=((48, 48, 8),))


def qc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qcstation.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "QCSTATION_STATION_ID": "cli-test"},
    )


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path) -> Path:
    """A folder laid out like the repo: frames, a recipe pointing at a model."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, img in enumerate([GOOD, BAD, BAD, BAD, GOOD, GOOD], start=1):
        cv2.imwrite(str(frames / f"part_{i:02d}.png"), img)
    (frames / "part_07.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    recipe: dict[str, Any] = {
        "product": "widget",
        "model": str(tiny_model),
        "classes": {"dark": {"min_area_px": 20}},
        "holds": {"consecutive_fails": 3},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path


def run_station(project: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return qc(
        "run",
        "--source",
        "frames",
        "--recipe",
        "recipe.yaml",
        "--data-dir",
        "data",
        "--batch",
        "LOT-1",
        "--quiet",
        *extra,
        cwd=project,
    )


def test_run_verify_tamper(project: Path) -> None:
    # when the station runs over the folder
    res = run_station(project)
    assert res.returncode == 0, res.stderr
    assert "7 parts" in res.stdout
    assert "HOLD" in res.stdout
    # then verify passes
    ok = qc("verify", "--data-dir", "data", cwd=project)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "chain intact" in ok.stdout
    # and after one row is edited by hand, verify fails and names that row
    db = project / "data" / "qcstation.db"
    with sqlite3.connect(db) as c:
        (row_id,) = c.execute(
            "select id from inspections where verdict = 'FAIL' order by seq limit 1"
        ).fetchone()
        c.execute("update inspections set verdict = 'PASS' where id = ?", (row_id,))
    bad = qc("verify", "--data-dir", "data", cwd=project)
    assert bad.returncode == 1
    assert "BROKEN" in bad.stdout
    assert row_id in bad.stdout.replace("\n", "")


def test_queries_and_release(project: Path) -> None:
    assert run_station(project).returncode == 0
    fails = qc("inspections", "--data-dir", "data", "--verdict", "fail", "--json", cwd=project)
    assert fails.returncode == 0, fails.stderr
    records = [json.loads(line) for line in fails.stdout.splitlines()]
    assert len(records) == 3
    assert {r["verdict"] for r in records} == {"FAIL"}
    holds = qc("holds", "--data-dir", "data", "--open", cwd=project)
    assert "consecutive" in holds.stdout
    # a release without a reason is refused, nothing changes
    no_reason = qc("release", "LOT-1", "--by", "q.eng", "--reason", " ", "--data-dir", "data", cwd=project)
    assert no_reason.returncode == 2
    assert "needs a reason" in no_reason.stderr
    ok = qc(
        "release", "LOT-1", "--by", "q.eng", "--reason", "die replaced", "--data-dir", "data", cwd=project
    )
    assert ok.returncode == 0, ok.stderr
    again = qc("release", "LOT-1", "--by", "q.eng", "--reason", "x", "--data-dir", "data", cwd=project)
    assert again.returncode == 2
    assert "not on hold" in again.stderr
    summary = qc("batch", "summary", "LOT-1", "--data-dir", "data", cwd=project)
    assert '"OPEN"' in summary.stdout
    assert qc("verify", "--data-dir", "data", cwd=project).returncode == 0


def test_missing_model_stops_startup(project: Path) -> None:
    recipe = yaml.safe_load((project / "recipe.yaml").read_text())
    recipe["model"] = "models/missing.onnx"
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = run_station(project)
    assert res.returncode == 2
    assert "model file not found" in res.stderr
    assert "missing.onnx" in res.stderr
    assert not (project / "data" / "qcstation.db").exists()


def test_recipe_with_unknown_class_stops_startup(project: Path) -> None:
    recipe = yaml.safe_load((project / "recipe.yaml").read_text())
    recipe["classes"] = {"scratch": {"min_area_px": 3}}
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = run_station(project)
    assert res.returncode == 2
    assert "scratch" in res.stderr
    assert "does not have" in res.stderr


def test_invalid_recipe_says_which_field(project: Path) -> None:
    (project / "recipe.yaml").write_text("product: w\nmodel: m.onnx\nholds: {consecutive_fails: 0}\n")
    res = run_station(project)
    assert res.returncode == 2
    assert "consecutive_fails" in res.stderr


def test_unwritable_data_directory_stops_startup(project: Path) -> None:
    (project / "blocker").write_text("a file where a directory should be")
    res = qc(
        "run",
        "--source",
        "frames",
        "--recipe",
        "recipe.yaml",
        "--data-dir",
        "blocker/data",
        "-q",
        cwd=project,
    )
    assert res.returncode == 2
    assert "blocker/data" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_source_folder(project: Path) -> None:
    res = qc("run", "--source", "nowhere", "--recipe", "recipe.yaml", "--data-dir", "data", "-q", cwd=project)
    assert res.returncode == 2
    assert "nowhere" in res.stderr


def test_verify_without_a_store_says_so(tmp_path: Path) -> None:
    res = qc("verify", "--data-dir", "empty", cwd=tmp_path)
    assert res.returncode == 2
    assert "no store" in res.stderr


def test_sigterm_drains_and_stops_cleanly(project: Path) -> None:
    import signal
    import time

    # given the station replaying the folder forever
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qcstation.cli",
            "run",
            "--source",
            "frames",
            "--recipe",
            "recipe.yaml",
            "--data-dir",
            "data",
            "--loop",
            "--quiet",
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    db = project / "data" / "qcstation.db"
    deadline = time.monotonic() + 60
    count = 0
    while time.monotonic() < deadline and count < 50:
        time.sleep(0.2)
        if db.exists():
            with sqlite3.connect(db) as c:
                try:
                    count = c.execute("select count(*) from inspections").fetchone()[0]
                except sqlite3.OperationalError:
                    count = 0
    assert count >= 50, "the station did not get going"
    # when it gets SIGTERM
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    # then it exits 0 after recording everything it captured, and says how many
    assert proc.returncode == 0, err
    assert "SIGTERM" in err
    with sqlite3.connect(db) as c:
        stored = c.execute("select count(*) from inspections").fetchone()[0]
        (data,) = c.execute("select data from events where kind = 'station_stopped'").fetchone()
    assert json.loads(data)["parts"] == stored
    assert f"{stored} parts" in out
    assert qc("verify", "--data-dir", "data", cwd=project).returncode == 0


def test_prune_keeps_rejects(project: Path) -> None:
    assert run_station(project).returncode == 0
    images = project / "data" / "images"
    before = sum(1 for p in images.rglob("*") if p.is_file())
    assert before >= 3  # the FAIL and ERROR images at least
    res = qc("prune", "--days", "0", "--data-dir", "data", cwd=project)
    assert res.returncode == 0, res.stderr
    after = sum(1 for p in images.rglob("*") if p.is_file())
    assert after >= 3
    assert after <= before
    res = qc("prune", "--days", "0", "--include-rejects", "--data-dir", "data", cwd=project)
    assert sum(1 for p in images.rglob("*") if p.is_file()) == 0


def test_run_and_serve_assemble_their_station_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qcstation import cli
    from qcstation.station.settings import Settings, default_inference_workers

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert default_inference_workers() == 2 and default_inference_workers(serving=True) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_inference_workers() == 1
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    # the stations `run` and `serve` assemble, from the bundled recipe and model
    settings = Settings(data_dir=tmp_path)
    loaded, detector = cli._load_model(settings, ROOT / "recipes" / "demo.yaml")
    store = cli._open_store(settings, must_exist=False)
    try:
        kw = {"source": str(ROOT / "sample_images"), "batch": None, "rate": None, "loop": False}
        assert cli._assemble(settings, store, loaded, detector, **kw).inference_workers == 2
        assert cli._assemble(settings, store, loaded, detector, serving=True, **kw).inference_workers == 1
        # a setting (QCSTATION_INFERENCE_WORKERS or --workers) wins in both
        monkeypatch.setenv("QCSTATION_INFERENCE_WORKERS", "3")
        chosen = Settings(data_dir=tmp_path)
        assert cli._assemble(chosen, store, loaded, detector, serving=True, **kw).inference_workers == 3
        # the commit linger: 150 ms unless QCSTATION_COMMIT_LINGER_MS says otherwise (0: off)
        assert cli._assemble(settings, store, loaded, detector, **kw).linger_s == pytest.approx(0.15)
        monkeypatch.setenv("QCSTATION_COMMIT_LINGER_MS", "0")
        assert cli._assemble(Settings(data_dir=tmp_path), store, loaded, detector, **kw).linger_s == 0
    finally:
        store.close()
    monkeypatch.setenv("QCSTATION_INFERENCE_WORKERS", "0")
    with pytest.raises(ValueError, match="inference_workers"):
        Settings(data_dir=tmp_path)
    monkeypatch.setenv("QCSTATION_INFERENCE_WORKERS", "1")
    monkeypatch.setenv("QCSTATION_COMMIT_LINGER_MS", "-5")
    with pytest.raises(ValueError, match="commit_linger_ms"):
        Settings(data_dir=tmp_path)
