"""The README's main job: the bundled model, the demo recipe and sample_images/, end to end."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_run_shows_pass_fail_and_a_hold(tmp_path: Path) -> None:
    # given the repository's own model, recipe and demo images (copied so the test writes nothing in the repo)
    for d in ("models", "recipes", "sample_images"):
        shutil.copytree(ROOT / d, tmp_path / d)
    # when the station's main job runs with its defaults
    res = subprocess.run(
        [sys.executable, "-m", "qcstation.cli", "run", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # then every image is a record, with PASS and FAIL verdicts and a batch hold
    db = tmp_path / "qcstation-data" / "qcstation.db"
    with sqlite3.connect(db) as c:
        verdicts = dict(c.execute("select verdict, count(*) from inspections group by verdict").fetchall())
        holds = c.execute("select rule from holds").fetchall()
        kinds = {k for (k,) in c.execute("select distinct kind from events")}
    assert sum(verdicts.values()) == 60
    assert verdicts.get("PASS", 0) >= 20
    assert verdicts.get("FAIL", 0) >= 5
    assert "ERROR" not in verdicts
    assert holds
    assert "hold_raised" in kinds
    verify = subprocess.run(
        [sys.executable, "-m", "qcstation.cli", "verify"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
