"""The app factory: the REST API ``/api/v1`` (and, later, the operator screen at ``/``) over ready parts.

Nothing is built at import time and nothing global is kept: :func:`create_app` receives the settings, the
store, the archive, the station (or None), and the token store, and returns a FastAPI app. When it is given a
station, the app runs it in a background thread for the app's lifetime (startup to shutdown) and registers
its live feed as a station sink.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from qcstation.inspect.detector import Detector
from qcstation.station.api import errors, routes_admin, routes_mes, routes_operator, routes_review
from qcstation.station.api.auth import Authenticator, is_loopback
from qcstation.station.api.control import StationControl
from qcstation.station.api.deps import ApiConfig, ApiContext
from qcstation.station.api.live import LiveFeed
from qcstation.station.api.schemas import ErrorOut
from qcstation.station.archive import ImageArchive
from qcstation.station.pipeline import Station
from qcstation.station.settings import Settings
from qcstation.station.store import Store
from qcstation.station.tokens import TokenStore

API_PREFIX = "/api/v1"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad filter or cursor"},
    401: {"model": ErrorOut, "description": "missing, unknown or revoked token"},
    403: {"model": ErrorOut, "description": "the token's role may not do this"},
    404: {"model": ErrorOut, "description": "no such result, batch or image"},
    409: {"model": ErrorOut, "description": "not allowed in the current state"},
    422: {"model": ErrorOut, "description": "invalid request values"},
    503: {"model": ErrorOut, "description": "store unavailable"},
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(Exception):
    pass


class UploadLimit:
    """Refuse request bodies over a limit with 413 before they are parsed (multipart spools to disk)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        """Wrap ``app``; bodies above ``max_bytes`` (plus room for multipart headers) get 413."""
        self.app = app
        self.max_bytes = max_bytes + 64 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry."""
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                await self._reject(send)
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg.get("type") == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        limit = self.max_bytes - 64 * 1024
        resp = JSONResponse(
            {"error": "too_large", "detail": f"the request body is larger than {limit} bytes"},
            status_code=413,
        )
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


def static_dir() -> Path:
    """Where the operator screen's files are (``index.html`` and its assets)."""
    return Path(str(resources.files("qcstation.station.api") / "static"))


def create_app(
    *,
    settings: Settings,
    store: Store,
    archive: ImageArchive,
    station: Station | None,
    tokens: TokenStore,
    detector: Detector | None = None,
    config: ApiConfig | None = None,
    run_station: bool = True,
) -> FastAPI:
    """Build the API over ready parts.

    Args:
        settings: the station's settings.
        store: the traceability store.
        archive: the image archive.
        station: the station of this process, or None (a read-only API over a store).
        tokens: the API token store.
        detector: the model, for ``/status`` when there is no station.
        config: HTTP-side settings (bind address, upload limit, stream queue); default from the environment.
        run_station: run ``station`` for the app's lifetime (False when the caller runs it).

    Returns:
        The app; serve it with uvicorn, or drive it with ``fastapi.testclient.TestClient``.
    """
    cfg = config or ApiConfig()
    control = StationControl(station, managed=run_station) if station is not None else None
    feed: LiveFeed | None = None
    if station is not None:
        feed = LiveFeed(
            product=station.recipe.product,
            recipe_hash=station.recipe_hash,
            station_id=store.station_id,
            queue_size=cfg.stream_queue,
        )
        station.sinks.append(feed)
    ctx = ApiContext(
        settings=settings,
        config=cfg,
        store=store,
        archive=archive,
        tokens=tokens,
        auth=Authenticator(tokens, loopback_only=is_loopback(cfg.host)),
        control=control,
        feed=feed,
        detector=detector if detector is not None else (station.detector if station is not None else None),
    )
    ctx.registry.register(routes_admin.StationCollector(ctx))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Store reads and sync routes run in anyio's thread pool (40 threads by default); see worker_threads.
        anyio.to_thread.current_default_thread_limiter().total_tokens = cfg.worker_threads
        if control is not None:
            control.start()
        try:
            yield
        finally:
            if feed is not None:
                feed.close()
            if control is not None and control.managed:
                control.stop()

    app = FastAPI(
        title="qcstation",
        version="1",
        summary="Line-side visual quality inspection station: results, batches, holds, live stream.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    errors.install(app)
    api = APIRouter(prefix=API_PREFIX, responses=_ERRORS)
    api.include_router(routes_mes.router)
    api.include_router(routes_operator.router)
    api.include_router(routes_admin.router)
    api.include_router(routes_review.router)
    app.include_router(api)
    app.add_middleware(UploadLimit, max_bytes=cfg.max_upload_bytes)
    static = static_dir()
    if (static / "index.html").is_file():
        app.mount("/", StaticFiles(directory=static, html=True), name="screen")
    return app
