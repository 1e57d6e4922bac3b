"""Planning analyses over HTTP (thin: parse → gridmap.analysis → JSON): toilet access per
area, where the unserved live, and where new toilets should go."""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

import orjson
import shapely
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, Response

from api.deps import PrincipalDep, ScopeDep, SettingsDep, StoreDep, crs_param, solving
from api.routes.domain import STATS_SOURCES
from api.routes.maps import BasemapParam, Lang, page_of, respond
from gridmap import queries
from gridmap.analysis import toilets as tl
from gridmap.crs import CRS84, from_input
from gridmap.errors import (
    AuthenticationError,
    InvalidFeatureError,
    PermissionDeniedError,
    QueryError,
)
from gridmap.maps.cache import PageCache
from gridmap.maps.toilet_page import toilet_map
from gridmap.ratelimit import ANALYSING
from gridmap.security import Principal, stats_scope
from gridmap.store.base import Scope

router = APIRouter(tags=["Analysis"])

DistancesParam = Annotated[
    str,
    Query(
        pattern=r"^[0-9]{2,4}(,[0-9]{2,4}){0,2}$",
        description="Walking distances in metres, comma-separated (50–2000; fixed at "
        "300,500 for roles whose statistics are protected).",
    ),
]


def policy(principal: Principal, scope: Scope) -> tuple[Scope, int | None]:
    """The scope to count households in and the small-cell limit (as for /stats)."""
    if not principal.authenticated:
        raise AuthenticationError("log in first (POST /token)")
    policy = stats_scope(principal, scope)
    if policy is None:
        raise PermissionDeniedError("this role may not see household statistics")
    return policy


def _distances(text: str, protected: bool) -> tuple[int, ...]:
    return tl.check_distances([int(x) for x in text.split(",")], protected)


@router.get("/analysis/toilet-access", summary="Households within a walk of a public toilet")
def toilet_access(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    level: Literal["grids", "communities", "zones"] = "grids",
    distances: DistancesParam = "300,500",
) -> Response:
    """Per area: households, and those within each walking distance of an open toilet and
    of an open or planned one, with shares. Planners get the shares only, in steps of 5 %
    (they may move toilets and roads: counts before and after would tell one household);
    the walk is on the walking network (`method`: `straight` only when the subdistrict has
    no walkable roads, as straight line × 1.3)."""
    scope, small = policy(principal, scope)
    ds = _distances(distances, bool(small))
    today = dt.date.today()

    def count() -> bytes:
        if small:  # shares in 5 % steps, no counts (see gridmap.analysis.toilets.area_shares)
            areas = tl.area_shares(store, scope, level, ds)
        else:
            rows = queries.household_stats(
                store, level, scope=scope, today=today, toilets=ds, days=30
            )
            keep = ("id", "name", "households", "toilets")
            areas = [{k: r[k] for k in keep} for r in rows]
        body = {"level": level, "distances_m": list(ds), **tl.summary(store), "areas": areas}
        return orjson.dumps({**body, "protected": bool(small)})

    key = ("toilet-access", level, scope, small, ds, today, store.stamps(STATS_SOURCES))
    cache: PageCache = request.app.state.stats
    return Response(
        cache.get_or_render(key, count, reads=scope.reads), media_type="application/json"
    )


@router.get(
    "/analysis/toilet-access/unserved",
    summary="Where households beyond a walk of a toilet live (density squares)",
)
def unserved(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    distance: Annotated[int, Query(ge=50, le=tl.MAX_DISTANCE_M)] = 300,
    with_planned: Annotated[bool, Query(description="Count planned toilets as open.")] = False,
    cell: Annotated[int, Query(ge=50, le=1000, description="Square size in metres.")] = 200,
) -> Response:
    """Unserved households counted in squares (GeoJSON, CRS84), never as points. Where
    statistics are protected, the distance is 300 or 500 m, squares of fewer than 5 are
    left out and the rest are shown as bands (`5–9`, `10–19` …), and squares are ≥ 200 m."""
    scope, small = policy(principal, scope)
    if small and (distance not in tl.DISTANCES or cell < tl.DENSITY_CELL_M):
        msg = f"for this role: distance 300 or 500, cell at least {tl.DENSITY_CELL_M} m"
        raise QueryError(msg)
    acc = tl.access(store, scope, limit=distance)
    which = "with_planned" if with_planned else "existing"
    squares = tl.unserved_density(acc, distance, which=which, cell_m=cell, small_cells=small)
    features = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(g),
            "properties": {"households": n},
        }
        for g, n in squares
    ]
    body = {
        "type": "FeatureCollection",
        "features": features,
        "distance_m": distance,
        "with_planned": with_planned,
        "cell_m": cell,
        "method": acc.method,
        "protected": bool(small),
    }
    return Response(orjson.dumps(body), media_type="application/geo+json")


Coord = Annotated[float, Field(allow_inf_nan=False)]


class SiteIn(BaseModel):
    """A candidate site."""

    model_config = ConfigDict(extra="forbid")
    lon: Coord
    lat: Coord


class SitingIn(BaseModel):
    """Where to put k new toilets (see the README)."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(3, ge=1, le=20, description="How many new toilets.")
    objective: Literal["coverage", "distance"] = Field(
        "coverage",
        description="coverage: most unserved households within distance_m (maximal "
        "covering); distance: least total walk to the nearest toilet (p-median).",
    )
    distance_m: int = Field(300, ge=50, le=tl.MAX_DISTANCE_M)
    candidates: list[SiteIn] | None = Field(
        None, min_length=1, max_length=5000, description="Default: along walkable roads."
    )
    spacing_m: float | None = Field(
        None,
        ge=10,
        le=1000,
        description="Spacing of generated candidates (50 m; 100 m for the distance objective).",
    )
    include_planned: bool = Field(True, description="Planned toilets count as open.")
    time_limit_s: float = Field(30.0, gt=0, le=120)
    crs: str | None = Field(None, max_length=200, description="CRS of the candidates.")


@router.post("/analysis/toilet-siting", summary="Choose sites for new public toilets")
async def toilet_siting(
    request: Request, body: SitingIn, store: StoreDep, scope: ScopeDep, principal: PrincipalDep
) -> Response:
    """The k sites that serve the most unserved households (or shorten walks most), solved
    exactly by HiGHS with the proven gap, the greedy answer beside it and each site's
    marginal gain. Nothing is saved: an admin POSTs a chosen site to
    `/collections/toilets/items` (`status: planned`). Planners get shares of the unserved
    (whole percent) and whole metres instead of household counts."""
    scope, small = policy(principal, scope)
    protected = bool(small)
    if protected and body.distance_m not in tl.DISTANCES:
        raise QueryError("for this role distance_m is 300 or 500")
    candidates = None
    if body.candidates is not None:
        crs = crs_param(body.crs, "crs")
        pts = shapely.points([[c.lon, c.lat] for c in body.candidates])
        wgs = shapely.get_coordinates(from_input(pts, crs) if crs != CRS84 else pts)
        if (
            not all(math.isfinite(v) for v in wgs.ravel())
            or (abs(wgs[:, 0]) > 180).any()
            or (abs(wgs[:, 1]) > 90).any()
        ):
            raise InvalidFeatureError("candidates lie outside lon −180..180 / lat −90..90")
        candidates = (wgs[:, 0], wgs[:, 1])
    spacing = body.spacing_m or (tl.SPACING_M if body.objective == "coverage" else 100.0)

    def run() -> dict[str, Any]:
        plan = tl.site(
            store,
            scope,
            k=body.k,
            distance_m=body.distance_m,
            objective=body.objective,
            candidates=candidates,
            spacing_m=spacing,
            include_planned=body.include_planned,
            time_limit=body.time_limit_s,
        )
        return tl.describe(plan, protected=protected)

    with ANALYSING.enter(principal.username):
        out = await solving(request, run)
    return Response(orjson.dumps(out), media_type="application/json")


@router.get("/map/toilets", response_class=HTMLResponse, summary="Toilet access and siting map")
async def toilet_page(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    distance: Annotated[int, Query(description="Walking distance (m): 300 or 500.")] = 300,
    k: Annotated[int, Query(ge=0, le=10, description="New toilets to site (0: none).")] = 3,
    lang: Lang = "zh",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """Grids by the share of households within `distance` of a toilet, walking catchments,
    the unserved as density squares and, with `k`, the k best new sites (maximal covering,
    planned toilets counted as open). Offline like every map page."""
    count_scope, small = policy(principal, scope)
    if distance not in tl.DISTANCES:
        raise QueryError("distance is 300 or 500")
    if basemap == "tianditu" and not settings.tianditu_key:
        raise QueryError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")

    def render() -> tuple[bytes, str]:
        rows = (
            tl.area_shares(store, count_scope, "grids")
            if small
            else queries.household_stats(store, "grids", scope=count_scope, toilets=tl.DISTANCES)
        )
        sites: list[dict[str, Any]] = []
        if k:
            plan = tl.site(store, count_scope, k=k, distance_m=distance)
            sites = tl.describe(plan, protected=bool(small))["sites"]  # type: ignore[assignment]
        m = toilet_map(
            store,
            scope=scope,
            count_scope=count_scope,
            small_cells=small,
            grid_rows=rows,
            distance=distance,
            sites=sites,
            lang=lang,
            basemap=basemap,
            tianditu_key=settings.tianditu_key,
        )
        return page_of(m, basemap)

    key = ("toilet-map", scope, small, distance, k, lang, basemap, store.stamps(STATS_SOURCES))
    cache: PageCache = request.app.state.pages

    def cached() -> tuple[bytes, str]:
        return cache.get_or_render(key, render, reads=count_scope.reads)

    if k:
        with ANALYSING.enter(principal.username):
            return respond(await solving(request, cached))
    return respond(await solving(request, cached))
