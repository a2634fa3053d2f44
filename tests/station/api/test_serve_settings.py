"""`qcstation serve` applies its process-wide settings for the server's lifetime (uvicorn faked)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from model_factory import part_image
from qcstation.cli import app
from qcstation.station.errors import ConfigError


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "p1.png"), part_image((96, 96)))
    recipe = {"product": "w", "model": str(tiny_model), "classes": {"dark": {"min_area_px": 20}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QCSTATION_SWITCH_INTERVAL_MS", raising=False)
    return tmp_path


def serve_and_see_switch_interval(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[float]]:
    seen: list[float] = []

    def fake_run(_app: object, **_kw: object) -> None:
        seen.append(sys.getswitchinterval())

    monkeypatch.setattr(uvicorn, "run", fake_run)
    args = ["serve", "--source", "frames", "--recipe", "recipe.yaml", "--data-dir", "data", "--port", "8765"]
    return CliRunner().invoke(app, args), seen


@pytest.mark.parametrize(("env", "expected_s"), [(None, 0.001), ("0.5", 0.0005), ("5", 0.005)])
def test_serve_runs_the_server_under_the_configured_switch_interval_and_restores_it(
    project: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, expected_s: float
) -> None:
    # given the interpreter's own switch interval, and the setting in the environment (or not)
    before = sys.getswitchinterval()
    if env is not None:
        monkeypatch.setenv("QCSTATION_SWITCH_INTERVAL_MS", env)
    # when serve runs (uvicorn returns at once)
    result, seen = serve_and_see_switch_interval(monkeypatch)
    # then the server ran under the setting, and the interpreter's value is back afterwards
    assert result.exit_code == 0, result.output
    assert seen == [pytest.approx(expected_s)]
    assert sys.getswitchinterval() == before


def test_serve_refuses_a_switch_interval_out_of_range(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCSTATION_SWITCH_INTERVAL_MS", "0")
    result, seen = serve_and_see_switch_interval(monkeypatch)
    assert isinstance(result.exception, ConfigError)
    assert "switch_interval_ms" in str(result.exception)
    assert seen == []
