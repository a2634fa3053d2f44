"""What routes receive: the app's context and the caller's identity, as ``Annotated`` dependency aliases.

``Ctx`` is everything ``create_app`` was given; ``Reader``, ``Inspector``, ``Triggerer``, ``BatchManager``,
``HoldRaiser``, ``HoldReleaser`` and ``Admin`` authenticate the request and check its role for one action.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from qcstation.inspect.detector import Detector
from qcstation.station.api.auth import Action, Authenticator, Principal, authorize
from qcstation.station.api.control import StationControl
from qcstation.station.api.errors import ApiError
from qcstation.station.api.live import LiveFeed
from qcstation.station.archive import ImageArchive
from qcstation.station.settings import Settings
from qcstation.station.store import POOL_SIZE, Store
from qcstation.station.tokens import TokenStore


class ApiConfig(BaseSettings):
    """Settings of the HTTP side (env ``QCSTATION_API_*``); the station's own are in ``Settings``."""

    model_config = SettingsConfigDict(env_prefix="QCSTATION_API_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="address to listen on; loopback unless told")
    port: int = Field(default=8000, ge=1, le=65535)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="POST /inspect limit")
    inspect_timeout_s: float = Field(default=30.0, gt=0, description="how long an upload waits for commit")
    stream_queue: int = Field(default=256, ge=1, le=100_000, description="per-client stream queue")
    stream_keepalive_s: float = Field(default=15.0, gt=0)
    worker_threads: int = Field(
        default=POOL_SIZE - 8,
        ge=1,
        le=POOL_SIZE - 8,
        description="threads running store reads and sync routes at once (below the store's connection pool, "
        "so API reads can never hold every connection while the station's commit waits for one)",
    )


@dataclass
class ApiContext:
    """Everything the routes use, made once by ``create_app``."""

    settings: Settings
    config: ApiConfig
    store: Store
    archive: ImageArchive
    tokens: TokenStore
    auth: Authenticator
    control: StationControl | None
    feed: LiveFeed | None
    detector: Detector | None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def require_station(self, what: str) -> StationControl:
        """The running station, or a 409 saying ``what`` needs one."""
        if self.control is None:
            raise ApiError(
                409, "no_station", f"{what} needs a station running in this process; there is none"
            )
        if not self.control.running:
            raise ApiError(409, "station_stopped", f"{what} needs the station running; it has stopped")
        return self.control


# The dependencies below are coroutines on purpose: FastAPI runs a plain ``def`` dependency in the thread
# pool, one hand-off (and one GIL hand-back) per dependency per request, for work of a few microseconds.


async def get_ctx(request: Request) -> ApiContext:
    """The app's context."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]


async def get_principal(request: Request, ctx: Ctx) -> Principal:
    """Who the request is (401 when it cannot say); the token store is queried in a worker thread."""
    header = request.headers.get("authorization")
    principal = ctx.auth.authenticate_cached(header)
    if principal is None:  # not remembered: one query, at most once per token per cache_s
        principal = await run_in_threadpool(ctx.auth.authenticate, header)
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


def _role(action: Action) -> object:
    async def dep(principal: Caller) -> Principal:
        return authorize(principal, action)

    dep.__name__ = f"may_{action.name.lower()}"
    return Depends(dep)


Reader = Annotated[Principal, _role(Action.READ)]
Inspector = Annotated[Principal, _role(Action.INSPECT)]
Triggerer = Annotated[Principal, _role(Action.TRIGGER)]
BatchManager = Annotated[Principal, _role(Action.BATCH)]
HoldRaiser = Annotated[Principal, _role(Action.RAISE_HOLD)]
HoldReleaser = Annotated[Principal, _role(Action.RELEASE_HOLD)]
Admin = Annotated[Principal, _role(Action.ADMIN)]


# -- cursors ----------------------------------------------------------------------------------------------

_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def encode_cursor(kind: str, record_id: str) -> str:
    """An opaque cursor naming the last item of a page (``kind`` keeps event and result cursors apart)."""
    return base64.urlsafe_b64encode(f"{kind}1:{record_id}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    """The record id inside a cursor.

    Raises:
        ApiError: 400 when the cursor was not made by :func:`encode_cursor` for ``kind``.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    prefix, _, record_id = text.partition(":")
    if prefix != f"{kind}1" or not _ID_RE.fullmatch(record_id):
        raise ApiError(400, "bad_cursor", f"cursor {cursor[:80]!r} is not a cursor this API gave out")
    return record_id
