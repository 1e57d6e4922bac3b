"""Authentication at the edge: bearer tokens → principals, login, the caller, the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.security import OAuth2PasswordBearer
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Scope as AsgiScope

from api.html import render
from gridmap.access import ReadLog, id_ranges
from gridmap.accounts import Accounts, audit
from gridmap.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from gridmap.security import PUBLIC, ROLE_ZH, Principal, Role
from gridmap.store import Store

router = APIRouter(tags=["Accounts"])

COOKIE = "gridmap_session"


def client_address(request: Request) -> str:
    """The peer address of a request (a reverse proxy should set it through uvicorn)."""
    return request.client.host if request.client else "-"


# Declares the OAuth2 password flow in the OpenAPI document (Swagger's "Authorize" button);
# the header itself is checked below, so that a malformed one is a 401, not ignored.
oauth2 = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)


async def get_principal(
    request: Request, _token: Annotated[str | None, Depends(oauth2)] = None
) -> Principal:
    """The caller: PUBLIC without a token, the token's user with one, 401 for a bad token."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    header = request.headers.get("authorization")
    principal = PUBLIC
    cookie = request.cookies.get(COOKIE)
    if not header and cookie and request.method in ("GET", "HEAD"):
        # The browser session (maps, HTML pages) reads only: a cookie never authorises a
        # change, so a forged cross-site request cannot edit anything.
        header = f"Bearer {cookie}"
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("send the token as 'Authorization: Bearer <token>'")
        accounts: Accounts = request.app.state.accounts
        # Over the embedded file, inline: a remembered token is a dictionary look-up plus
        # one indexed read, and a new one costs ~70 µs, less than a thread hop. Over a
        # database server, a token remembered while nothing changed is answered from
        # memory; anything else may need a round trip: kept off the event loop.
        if not accounts.store.remote:
            principal = accounts.principal(token.strip())
        else:
            known = accounts.remembered(token.strip())
            if known is None:
                known = await run_in_threadpool(accounts.principal, token.strip())
            principal = known
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(principal: Principal, *roles: Role) -> None:
    """401 for the public, 403 for a role not among ``roles``."""
    if not principal.authenticated:
        raise AuthenticationError("log in first (POST /token)")
    if principal.role not in roles:
        raise PermissionDeniedError(f"{ROLE_ZH[principal.role]} may not do this")


def record(request: Request, principal: Principal, action: str, **kw: Any) -> None:
    """Audit an action of this request (source address and request id included)."""
    store: Store = request.app.state.store
    audit(
        store,
        principal,
        action,
        source=client_address(request),
        request_id=getattr(request.state, "request_id", None),
        **kw,
    )


def what_was_asked(request: Request) -> str:
    """Method, path and query of a request, for the audit log."""
    query = request.url.query
    return f"{request.method} {request.url.path}" + (f"?{query}" if query else "")


def audit_reads(scope: AsgiScope, status: int) -> None:
    """One audit entry per personal layer the request read (see :mod:`gridmap.access`)."""
    state = scope.get("state") or {}
    log: ReadLog | None = state.get("reads")
    if log is None:
        return
    summary, counts = log.summary(), log.counts()
    if not summary and not counts:
        return
    request = Request(scope)
    principal = state.get("principal") or PUBLIC
    result = "ok" if status < 400 else str(status)
    for layer_id, ids, grid_id in summary:
        record(
            request,
            principal,
            log.action,
            object=f"{layer_id}: {len(ids)} features",
            grid_id=grid_id,
            result=result,
            detail=f"{what_was_asked(request)[:300]} ids {id_ranges(ids)}",
        )
    for layer_id, rows, grid_id in counts:
        if layer_id not in {s[0] for s in summary}:
            record(
                request,
                principal,
                log.action,
                object=f"{layer_id}: {rows} features counted",
                grid_id=grid_id,
                result=result,
                detail=f"{what_was_asked(request)[:300]} counted in the database",
            )


@router.post("/token", summary="Log in (OAuth2 password flow)")
def token(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
) -> Response:
    """Exchange a username and password for a short-lived bearer token."""
    import orjson

    request.app.state.login_limiter.hit(client_address(request), "login attempts")
    accounts: Accounts = request.app.state.accounts
    try:
        t = accounts.login(username, password, source=client_address(request))
    except (AuthenticationError, RateLimitedError):
        record(request, Principal(username[:64], Role.PUBLIC), "login", result="denied")
        raise
    rec = request.app.state.store.user(username)
    record(request, Principal(username, Role(rec["role"])), "login")
    body = {"access_token": t.access_token, "token_type": "bearer", "expires_in": t.expires_in}
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


@router.get("/users/me", summary="Who am I")
async def me(principal: PrincipalDep) -> dict[str, Any]:
    """The caller's name, role and grids."""
    return {
        "username": principal.username or None,
        "role": principal.role.value,
        "role_zh": ROLE_ZH[principal.role],
        "grid_ids": sorted(principal.grid_ids) if principal.grid_ids is not None else None,
        "community_id": principal.community_id,
    }


@router.get("/audit", summary="The audit log (auditors only)")
def audit_log(
    request: Request,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    action: Annotated[str | None, Query(max_length=40)] = None,
    username: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Who did what, when, from where; newest first. Auditors see no business data."""
    require(principal, Role.AUDITOR)
    equals = {k: v for k, v in (("action", action), ("username", username)) if v}
    rows, total = request.app.state.store.audit_entries(limit=limit, offset=offset, equals=equals)
    return {"entries": rows, "numberMatched": total, "numberReturned": len(rows)}


def _safe_next(target: str | None) -> str:
    """Only a local path may follow a login (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/map"
    return target


@router.get("/login", summary="Log-in page for the browser", response_class=HTMLResponse)
def login_page(
    request: Request, next: Annotated[str | None, Query(max_length=500)] = None
) -> HTMLResponse:
    """A form that logs a browser in (session cookie) for maps and HTML pages."""
    minutes = request.app.state.settings.token_minutes
    return render(
        "login.html", title="登录 Log in", next=_safe_next(next), error=None, minutes=minutes
    )


@router.post("/login", summary="Log a browser in (session cookie)", response_class=HTMLResponse)
def login_form(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    next: Annotated[str | None, Form(max_length=500)] = None,
) -> Response:
    """Check the password and set an HttpOnly, SameSite=Strict session cookie."""
    request.app.state.login_limiter.hit(client_address(request), "login attempts")
    accounts: Accounts = request.app.state.accounts
    minutes = request.app.state.settings.token_minutes
    try:
        t = accounts.login(username, password, source=client_address(request))
    except (AuthenticationError, RateLimitedError) as exc:
        record(request, Principal(username[:64], Role.PUBLIC), "login", result="denied")
        page = render(
            "login.html",
            title="登录 Log in",
            next=_safe_next(next),
            error=str(exc),
            minutes=minutes,
        )
        page.status_code = 401 if isinstance(exc, AuthenticationError) else 429
        if isinstance(exc, RateLimitedError):
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    rec = request.app.state.store.user(username)
    record(request, Principal(username, Role(rec["role"])), "login", detail="browser")
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE, t.access_token, max_age=t.expires_in, httponly=True, samesite="strict", path="/"
    )
    return response


@router.post("/logout", summary="Log a browser out")
def logout() -> Response:
    """Forget the session cookie."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
