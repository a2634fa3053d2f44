"""The one place where errors become HTTP responses.

Every error body is ``{"error": code, "detail": message}`` (plus ``errors`` for request validation)::

    ApiError(status, code, detail)        raised by routes and dependencies      -> its status
    StationError subclasses (station.errors):
        ReleaseError                      no hold / no reason                    -> 409
        BatchError                        batch state forbids it / unknown batch -> 409 (404 when unknown)
        ConfigError, RecipeError, token   unusable values                        -> 400
        SourceError                       no capture source                      -> 409
        StoreError                        the database failed                    -> 503
    (the store's ValueErrors — bad cursor, bad time — are turned into ApiError 400 where they are called)
    RequestValidationError                 bad path/query/body values            -> 422

Nothing a client sends can produce a 500: anything else is a bug and is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qcstation.station.errors import (
    BatchError,
    ConfigError,
    ReleaseError,
    SourceError,
    StationError,
    StoreError,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status, raised by routes and dependencies."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        """Remember status, machine code, message and extra headers (``WWW-Authenticate`` for 401)."""
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def not_found(what: str) -> ApiError:
    """A 404 naming what was not found."""
    return ApiError(404, "not_found", what)


def status_of(exc: StationError) -> int:
    """The HTTP status of a station error."""
    if isinstance(exc, ReleaseError):
        return 409
    if isinstance(exc, BatchError):
        return 404 if str(exc).startswith("no batch") else 409
    if isinstance(exc, ConfigError):
        return 400
    if isinstance(exc, SourceError):
        return 409
    if isinstance(exc, StoreError):
        return 503
    return 409


def _body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(_body(exc.code, exc.detail), status_code=exc.status, headers=exc.headers)

    async def station_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StationError)
        status = status_of(exc)
        if status >= 500:
            log.error("store failure during a request: %s", exc)
        return JSONResponse(_body(exc.code, str(exc)), status_code=status)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        parts = []
        for e in errors[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        detail = "; ".join(parts) or "invalid request"
        clean = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse(jsonable_encoder(_body("validation", detail, errors=clean)), status_code=422)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return JSONResponse(
            _body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StationError, station_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
