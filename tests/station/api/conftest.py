"""Fixtures for API tests: a real station (tiny ONNX model, trigger source, SQLite store) behind the app."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml

with warnings.catch_warnings():
    # starlette asks for the httpx2 package for its TestClient; httpx is what this project installs
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

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

GOOD = part_image((96, 96))
BAD = part_image((96, 96), blobs=((48, 48, 8),))
GOOD_PNG = cv2.imencode(".png", GOOD)[1].tobytes()
BAD_PNG = cv2.imencode(".png", BAD)[1].tobytes()
ROLES = ("viewer", "operator", "quality", "mes", "admin")


def write_recipe(tmp_path: Path, model: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "product": "widget",
        "model": str(model),
        "mm_per_px": 0.05,
        "classes": {"dark": {"min_area_px": 20}},
        "holds": {"consecutive_fails": 3, "suspect_last": 2},
        "images": {"keep_pass_every": 1},
    }
    data.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Api:
    """A running app with a token per role."""

    client: TestClient
    store: Store
    station: Station
    tokens: TokenStore
    secrets: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    def upload(self, png: bytes = GOOD_PNG, *, serial: str | None = None, role: str = "operator") -> Any:
        data = {"serial": serial} if serial else {}
        r = self.client.post(
            "/api/v1/inspect",
            files={"file": ("part.png", png, "image/png")},
            data=data,
            headers=self.auth(role),
        )
        assert r.status_code == 201, r.text
        return r.json()


def build(
    tmp_path: Path, model: Path, *, issue: bool = True, recipe: dict[str, Any] | None = None, **config: Any
) -> tuple[Any, Store, Station, TokenStore, dict[str, str]]:
    data = tmp_path / "data"
    store = Store.open(data / "qc.db", "st1")
    tokens = TokenStore(store)
    secrets = {r: tokens.issue(r, r, by="test").secret for r in ROLES} if issue else {}
    archive = ImageArchive(data / "images")
    source = TriggerSource(ListSource([GOOD, BAD], loop=True, name="cam"))
    station = Station(
        source=source,
        detector=Detector.from_path(model),
        recipe=load_recipe(write_recipe(tmp_path, model, **(recipe or {}))),
        store=store,
        archive=archive,
        batch_id="B1",
        release_poll_s=0.1,
    )
    app = create_app(
        settings=Settings(data_dir=data, station_id="st1"),
        store=store,
        archive=archive,
        station=station,
        tokens=tokens,
        config=ApiConfig(**config),
    )
    return app, store, station, tokens, secrets


@pytest.fixture
def app_builder(tmp_path: Path, tiny_model: Path) -> Any:
    """``app_builder(issue=True, model=None, recipe=None, **ApiConfig fields) -> (app, store, station, tokens,
    secrets)``: ``model`` replaces the tiny model, ``recipe`` overrides recipe fields."""

    def make(
        *, issue: bool = True, model: Path | None = None, recipe: dict[str, Any] | None = None, **config: Any
    ) -> tuple[Any, Store, Station, TokenStore, dict[str, str]]:
        return build(tmp_path, model or tiny_model, issue=issue, recipe=recipe, **config)

    return make


@pytest.fixture
def api(tmp_path: Path, tiny_model: Path) -> Iterator[Api]:
    app, store, station, tokens, secrets = build(tmp_path, tiny_model, max_upload_bytes=200_000)
    with TestClient(app) as client:
        yield Api(client, store, station, tokens, secrets)
    store.close()
