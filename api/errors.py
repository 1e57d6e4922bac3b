"""Domain errors → RFC 9457 problem+json responses, installed once on the app."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gridmap.errors import (
    AuthenticationError,
    FeatureNotFoundError,
    GridmapError,
    IntegrityError,
    InvalidFeatureError,
    OutOfScope,
    PermissionDeniedError,
    QueryError,
    RateLimitedError,
    StorageFullError,
    StoreError,
    UnknownLayerError,
    VersionConflictError,
)

log = logging.getLogger("gridmap.api")

STATUS: dict[type[GridmapError], int] = {
    QueryError: 400,
    UnknownLayerError: 404,
    FeatureNotFoundError: 404,
    InvalidFeatureError: 422,
    VersionConflictError: 412,
    IntegrityError: 409,
    StoreError: 503,
    StorageFullError: 507,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    RateLimitedError: 429,
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    428: "Precondition Required",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


BadRequestError = QueryError
"""A query parameter is malformed (→ 400)."""


class PreconditionRequiredError(GridmapError):
    """An edit came without If-Match (→ 428)."""


STATUS[PreconditionRequiredError] = 428


def problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An application/problem+json response."""
    body = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def _status_for(exc: GridmapError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def _register_body_errors() -> None:
    from api.body import MalformedBodyError, PayloadTooLargeError, UnsupportedMediaTypeError
    from gridmap.accounts import AccountError, WeakPasswordError

    STATUS[PayloadTooLargeError] = 413
    STATUS[UnsupportedMediaTypeError] = 415
    STATUS[WeakPasswordError] = 422
    STATUS[AccountError] = 422
    STATUS[MalformedBodyError] = 400


_register_body_errors()


async def _audit_denied(request: Request, status: int, action: str = "denied") -> None:
    """Every refused request goes to the audit log, with its method, path and query."""
    from fastapi.concurrency import run_in_threadpool

    from api.auth import record, what_was_asked
    from gridmap.security import PUBLIC

    principal = getattr(request.state, "principal", None) or PUBLIC
    try:
        await run_in_threadpool(
            record,
            request,
            principal,
            action,
            result=str(status),
            object=f"{request.method} {request.url.path}"[:200],
            detail=what_was_asked(request)[:1000],
        )
    except Exception:  # the refusal is answered even if the log cannot be written
        log.exception("could not audit a denied request")


def install(app: FastAPI) -> None:
    """Install the exception handlers on ``app``."""

    @app.exception_handler(GridmapError)
    async def _domain(request: Request, exc: GridmapError) -> Response:
        status = _status_for(exc)
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="gridmap"'
        if isinstance(exc, RateLimitedError):
            headers["Retry-After"] = str(exc.retry_after)
        elif status == 503:
            headers["Retry-After"] = "2"
        if status in (401, 403, 429):
            await _audit_denied(request, status)
        elif isinstance(exc, OutOfScope):  # answered like a missing resource, logged as tried
            await _audit_denied(request, status, "denied_scope")
        return problem(status, str(exc), instance=request.url.path, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{loc}: {e.get('msg')}")
        return problem(400, "invalid request: " + "; ".join(parts), instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        return problem(exc.status_code, detail, instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "internal error; the event was logged", instance=request.url.path)
