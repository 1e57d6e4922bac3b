"""Operations: the request id, one JSON access-log line and Prometheus figures per request,
and the /health, /ready and /metrics routes."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem
from api.middleware import request_id_of
from gridmap.observe import CURRENT, Tally

log = logging.getLogger("gridmap.access")
router = APIRouter(tags=["Operations"])

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 2.0, 5.0, 10.0, 30.0)
REQUESTS = Counter(
    "gridmap_http_requests", "Requests answered, by route and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "gridmap_http_request_duration_seconds",
    "Time from request to the end of the response",
    ["method", "route"],
    buckets=_BUCKETS,
)
DB_TIME = Histogram(
    "gridmap_db_seconds",
    "Time a request spent in database calls",
    ["method", "route"],
    buckets=_BUCKETS,
)
IN_FLIGHT = Gauge(
    "gridmap_http_requests_in_flight", "Requests being answered", multiprocess_mode="livesum"
)
_GIVEN_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods kept as labels; any other (PROPFIND, a made-up one) is counted as ``other``."""


def route_of(scope: Scope) -> str:
    """The route template a request matched (``/collections/{collection_id}/items``), so
    that figures are kept per route, never per URL; static files and misses grouped."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    return "(unmatched)"


class Observe:
    """Outermost middleware: gives the request its id, counts its database time, and logs
    and measures it when it ends. An ``X-Request-ID`` the request brings (a proxy's) is
    logged beside ours as ``upstream_id``, never used as ours: the audit log names requests
    by the id, and a client must not choose it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tally = Tally(request_id_of(scope))
        token = CURRENT.set(tally)
        status = 500
        start = time.perf_counter()

        async def send_noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_noting)
        finally:
            IN_FLIGHT.dec()
            CURRENT.reset(token)
            self._record(scope, status, time.perf_counter() - start, tally)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float, tally: Tally) -> None:
        method, route = scope["method"], route_of(scope)
        method = method if method in METHODS else "other"  # a fixed number of series
        REQUESTS.labels(method, route, str(status)).inc()
        LATENCY.labels(method, route).observe(seconds)
        DB_TIME.labels(method, route).observe(tally.db_seconds)
        principal = scope.get("state", {}).get("principal")
        client = scope.get("client")
        fields: dict[str, Any] = {
            "request_id": tally.request_id,
            "method": method,
            "route": route,
            "path": scope.get("path", ""),
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "db_ms": round(tally.db_seconds * 1000, 2),
            "db_calls": tally.db_calls,
            "client": client[0] if client else None,
            "user": getattr(principal, "username", None) or None,
        }
        given = next((v for k, v in scope.get("headers", []) if k == b"x-request-id"), b"")
        if given and _GIVEN_ID.fullmatch(given.decode("latin-1")):
            fields["upstream_id"] = given.decode("latin-1")
        level = logging.ERROR if status >= 500 else logging.INFO
        log.log(level, "%s %s %s", method, scope.get("path", ""), status, extra=fields)


@router.get("/health", summary="Liveness: the process answers", include_in_schema=True)
async def health() -> dict[str, str]:
    """200 while the process serves requests (it asks the database nothing)."""
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: the database answers and its schema is current")
async def ready(request: Request) -> Response:
    """200 when the store answers and holds this release's schema; 503 (with why) if not."""
    store = request.app.state.store
    why = await run_in_threadpool(store.readiness)
    if why:
        return problem(503, why, instance="/ready", headers={"Retry-After": "5"})
    return Response(b'{"status":"ready"}', media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus figures (loopback or GRIDMAP_METRICS_FROM only)",
    include_in_schema=False,  # not listed: to whoever may not read it, it does not exist
)
async def metrics(request: Request) -> Response:
    """Request counts, latencies and database time per route, in Prometheus' text format.
    Answered only to the addresses ``GRIDMAP_METRICS_FROM`` names (loopback by default);
    to anyone else it does not exist (404)."""
    allowed = request.app.state.settings.metrics_from
    peer = request.client.host if request.client else ""
    if not _allowed(peer, allowed):
        return problem(404, "Not Found", instance="/metrics")
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _allowed(peer: str, allowed: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return peer == "testclient" and "testclient" in allowed
    for net in allowed:
        try:
            if addr in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


def _registry() -> Any:
    """The process's own figures, or every worker's when uvicorn runs several
    (``PROMETHEUS_MULTIPROC_DIR`` set, see docs/operations.md)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY
