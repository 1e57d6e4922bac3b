"""Grid balance over HTTP (thin: parse → gridmap.analysis.balance → JSON): households per grid
against the target with a redrawing proposal and its map; applied by a subdistrict admin."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, Response

from api.auth import record, require
from api.deps import PrincipalDep, ScopeDep, SettingsDep, StoreDep, solving
from api.routes.analysis import policy
from api.routes.maps import BasemapParam, Lang, page_of, respond
from gridmap.analysis import balance as bl
from gridmap.errors import QueryError, VersionConflictError
from gridmap.maps.balance_page import balance_map
from gridmap.ratelimit import ANALYSING
from gridmap.security import Role

router = APIRouter(tags=["Analysis"])

Low = Annotated[int, Query(alias="min", ge=1, le=100_000, description="Fewest households.")]
High = Annotated[int, Query(alias="max", ge=1, le=100_000, description="Most households.")]


def _check(lo: int, hi: int) -> None:
    if lo > hi:
        raise QueryError("min must not exceed max")


def _coarse(lo: int, hi: int, small: int | None) -> None:
    """Where counts are protected the target moves in steps of 50: flags read at every
    threshold would give each grid's count exactly."""
    if small and (lo % 50 or hi % 50):
        raise QueryError("for this role min and max are multiples of 50")


@router.get("/analysis/grid-balance", summary="Households per grid and a redrawing proposal")
async def grid_balance(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    lo: Low = bl.TARGET[0],
    hi: High = bl.TARGET[1],
) -> Response:
    """Each grid's households against the target (flag under/ok/over) and a proposal that
    moves whole buildings between adjacent grids of one community: the moves, the counts
    after, and its `basis` (give it to `/apply`). Planners get counts rounded to 5;
    community admins and grid workers their own grids, moves among those only."""
    _check(lo, hi)
    count_scope, small = policy(principal, scope)
    _coarse(lo, hi, small)

    def run() -> dict[str, Any]:
        p = bl.plan(store, count_scope, lo=lo, hi=hi)
        return bl.describe(store, p, rounded=small)

    with ANALYSING.enter(principal.username):
        out = await solving(request, run)
    return Response(orjson.dumps(out), media_type="application/json")


class ApplyIn(BaseModel):
    """Apply the proposal made at ``basis`` for this target."""

    model_config = ConfigDict(extra="forbid")
    min: int = Field(bl.TARGET[0], ge=1, le=100_000)
    max: int = Field(bl.TARGET[1], ge=1, le=100_000)
    basis: str = Field(max_length=200, description="The proposal's basis, as GET returned it.")


@router.post("/analysis/grid-balance/apply", summary="Redraw the grids as proposed")
async def apply_balance(
    request: Request, body: ApplyIn, store: StoreDep, scope: ScopeDep, principal: PrincipalDep
) -> Response:
    """Subdistrict admins only: the proposal for this target is made again and applied in
    one transaction (grid shapes; buildings' and households' grids derived again). 412 when
    the grids, buildings, households or roads changed since the proposal was shown."""
    require(principal, Role.SUBDISTRICT_ADMIN)
    _check(body.min, body.max)

    def run() -> dict[str, Any]:
        p = bl.plan(store, scope, lo=body.min, hi=body.max)
        if p.basis != body.basis:
            msg = "the grids, buildings or households changed since that proposal; get it again"
            raise VersionConflictError(msg)
        if p.after_shapes:
            bl.apply(store, p.after_shapes, versions=p.versions, scope=scope)
        return bl.describe(store, p)

    with ANALYSING.enter(principal.username):
        out = await solving(request, run)
    detail = f"grid balance {body.min}-{body.max}: {out['buildings_moved']} buildings moved"
    await run_in_threadpool(record, request, principal, "update", object="grids", detail=detail)
    return Response(orjson.dumps(out), media_type="application/json")


@router.get("/map/grid-balance", response_class=HTMLResponse, summary="Grid balance map")
async def balance_page(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    lo: Low = bl.TARGET[0],
    hi: High = bl.TARGET[1],
    lang: Lang = "zh",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """Before (grids by flag) and after (proposed boundaries, the buildings that move)."""
    _check(lo, hi)
    count_scope, small = policy(principal, scope)
    _coarse(lo, hi, small)
    if basemap == "tianditu" and not settings.tianditu_key:
        raise QueryError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")

    def render() -> tuple[bytes, str]:
        p = bl.plan(store, count_scope, lo=lo, hi=hi)
        summary = bl.describe(store, p, rounded=small)
        m = balance_map(
            store, p, summary, lang=lang, basemap=basemap, tianditu_key=settings.tianditu_key
        )
        return page_of(m, basemap)

    with ANALYSING.enter(principal.username):
        return respond(await solving(request, render))
