"""Pure-ASGI middleware: a request id on every request and security headers on responses."""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import re
from collections.abc import Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_INLINE_SCRIPT = re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.S | re.I)
_SRC = re.compile(rb"\bsrc\s*=", re.I)
log = logging.getLogger("gridmap.api")


def inline_script_hashes(page: bytes) -> list[str]:
    """CSP source expressions (``'sha256-…'``) for every inline ``<script>`` of a page."""
    out = []
    for attrs, body in _INLINE_SCRIPT.findall(page):
        if _SRC.search(attrs):
            continue
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        out.append(f"'sha256-{digest}'")
    return sorted(set(out))


def page_csp(script_hashes: Iterable[str] = (), img_hosts: Iterable[str] = ()) -> str:
    """The content security policy of an HTML page: everything from the service itself.

    Scripts run only from the service's own files and as the page's own inline scripts,
    named by hash: no ``'unsafe-inline'``, so markup that slipped into a page (an
    ``onerror`` attribute, an injected ``<script>``) does not run. Styles may be inline
    (Leaflet positions everything with them).
    """
    scripts = " ".join(["'self'", *script_hashes])
    images = " ".join(["'self'", "data:", "blob:", *img_hosts])
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        f"img-src {images}; font-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


CSP = page_csp()
"""The policy of a page without inline scripts."""
_ALWAYS = [
    (b"vary", b"Accept"),  # JSON or HTML by the Accept header, on the same URL
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


STATIC_SCRIPT_PAGES = frozenset({"/docs", "/docs/oauth2-redirect"})
"""Pages whose inline scripts hold no stored value (Swagger UI): their scripts are hashed
from the page. Every other HTML page either brings its own policy (the maps, hashing the
scripts they wrote) or may run no inline script at all."""


def request_id_of(scope: Scope) -> str:
    """The request's id, made by whichever middleware asks first and kept in its state.

    It names the request in the log, it guards nothing: Python's generator (which the
    child of a fork reseeds) rather than the OS's, whose system call lets go of the
    interpreter lock, and the event loop then waits for it behind the threads."""
    state: dict[str, Any] = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = f"{random.getrandbits(128):032x}"
    return str(state["request_id"])


class SecurityHeaders:
    """Adds ``X-Request-ID`` and security headers; a CSP on every HTML page.

    An HTML page that brings no policy of its own gets :data:`CSP` (no inline script), or,
    on :data:`STATIC_SCRIPT_PAGES`, a policy naming that page's inline scripts by hash.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        held: Message | None = None
        body: list[bytes] = []

        async def send_with_headers(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += _ALWAYS
                headers.append((b"x-request-id", request_id.encode()))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                has_csp = any(k.lower() == b"content-security-policy" for k, _ in headers)
                message["headers"] = headers
                if ctype.startswith(b"text/html") and not has_csp:
                    if scope["path"] not in STATIC_SCRIPT_PAGES:
                        headers.append((b"content-security-policy", CSP.encode()))
                    else:
                        held = message
                        return
            elif message["type"] == "http.response.body" and held is not None:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                page = b"".join(body)
                csp = page_csp(inline_script_hashes(page)).encode()
                held["headers"].append((b"content-security-policy", csp))
                await send(held)
                message = {"type": "http.response.body", "body": page, "more_body": False}
                held = None
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """413 for a request body over ``max_bytes`` (``upload_bytes`` for a file import): at
    once when Content-Length says so, and as soon as a streamed body crosses the limit,
    before the app buffers it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_bytes: int | None = None) -> None:
        self.app = app
        self.body_bytes = max_bytes
        self.upload_bytes = upload_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        upload = path.startswith("/collections/") and path.endswith("/import")
        limit = self.upload_bytes if upload else self.body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    await self._refuse(send, limit)
                    return
        seen = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    await self._refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # the 413 has been sent; the app's own answer is dropped
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send, limit: int) -> None:
        body = (
            b'{"type":"about:blank","title":"Content Too Large","status":413,'
            b'"detail":"the request body exceeds ' + str(limit).encode() + b' bytes"}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ReadAudit:
    """Turns the request's log of personal reads into audit entries before the response
    starts (one per layer: who, which ids, from where, by which route)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = False

        async def send_after_audit(message: Message) -> None:
            nonlocal refused
            if refused:  # the audit failed: nothing of the app's answer leaves
                return
            if message["type"] == "http.response.start":
                try:
                    await self._audit(scope, int(message["status"]))
                except Exception as exc:
                    refused = True
                    await self._unrecorded(scope, receive, send, exc)
                    return
            await send(message)

        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_after_audit(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception:
            if not started:  # a 500 answered from outside: what was read is still recorded
                try:
                    await self._audit(scope, 500)
                except Exception as exc:
                    log.error("the reads of a failed request were not recorded (%r)", exc)
            raise

    @staticmethod
    async def _audit(scope: Scope, status: int) -> None:
        from api.auth import audit_reads

        if scope["app"].state.store.remote:  # a round trip: off the event loop
            await run_in_threadpool(audit_reads, scope, status)
        else:
            audit_reads(scope, status)

    @staticmethod
    async def _unrecorded(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        """A read whose audit entry could not be written is not answered: a 503 instead."""
        from api.errors import problem

        log.error("a personal read was refused: its audit entry was not written (%r)", exc)
        detail = "the read could not be recorded in the audit log, so it was not answered; retry"
        answer = problem(503, detail, instance=scope.get("path"), headers={"Retry-After": "2"})
        await answer(scope, receive, send)


class HeadAsGet:
    """HEAD answered wherever GET is: the GET response's status and headers, no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
