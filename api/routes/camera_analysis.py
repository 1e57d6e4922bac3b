"""Camera coverage over HTTP (thin: parse → gridmap.analysis.cameras → JSON): per-grid
shares for anyone who may see statistics; views, blind spots and proposed positions only for
roles that may see cameras."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import shapely
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, Response

from api.deps import PrincipalDep, ScopeDep, SettingsDep, StoreDep, solving
from api.routes.analysis import policy
from api.routes.maps import BasemapParam, Lang, page_of, respond
from gridmap.analysis import cameras as cm
from gridmap.crs import from_metric
from gridmap.errors import HiddenLayerError, QueryError
from gridmap.maps.cache import PageCache
from gridmap.maps.camera_page import camera_map
from gridmap.ratelimit import ANALYSING
from gridmap.store.base import Scope, Store

router = APIRouter(tags=["Analysis"])

SOURCES = ("cameras", "buildings", "roads", "grids", "households")
"""What camera coverage is computed from."""


def _camera_roles(scope: Scope) -> None:
    """Views, blind spots and proposals are camera data: 404 for roles that may not see them."""
    if not scope.allows_layer("cameras"):
        raise HiddenLayerError("no camera analysis for this role")


def _coverage(
    request: Request, store: Store, scope: Scope, *, households: bool = True
) -> cm.Coverage:
    """The coverage (with this scope's households along the blind pieces, or none), kept
    while nothing it reads changes."""
    cache: PageCache = request.app.state.layers
    key = ("camera-coverage", scope, households, store.stamps(SOURCES))

    def compute() -> cm.Coverage:
        return cm.coverage(store, scope, households=households)

    return cache.get_or_render(key, compute, reads=scope.reads)  # type: ignore[no-any-return]


@router.get("/analysis/camera-coverage", summary="Camera coverage of roads and entrances per grid")
def camera_coverage(
    request: Request, store: StoreDep, scope: ScopeDep, principal: PrincipalDep
) -> Response:
    """Per grid: the share of walkable road length and of building entrances that an online
    camera sees (views cut by buildings). Roles that may see cameras also get the metres,
    counts and the number of cameras; others only the shares, in steps of 5 %."""
    count_scope, _ = policy(principal, scope)
    detail = scope.allows_layer("cameras")
    cov = _coverage(request, store, count_scope, households=detail)
    grids = count_scope.grid_ids if count_scope.grid_ids is not None else None
    rows = cm.per_grid_shares(cov, grids, step=None if detail else 0.05)
    if detail:
        for r in rows:
            r.update({k: round(v, 1) for k, v in cov.per_grid[int(r["grid_id"])].items()})
    body: dict[str, Any] = {"grids": rows}
    if detail:
        body["cameras"] = {"online": len(cov.cameras.ids), "offline": cov.cameras.offline}
        body["blind_pieces"] = len(cov.blind)
    return Response(orjson.dumps(body), media_type="application/json")


def _features(geoms: Any, props: list[dict[str, Any]]) -> bytes:
    features = [
        {"type": "Feature", "geometry": shapely.geometry.mapping(g), "properties": p}
        for g, p in zip(geoms, props, strict=True)
    ]
    return orjson.dumps({"type": "FeatureCollection", "features": features})


@router.get(
    "/analysis/camera-coverage/blind-spots",
    summary="Road pieces no camera sees, ranked by the households along them",
)
def blind_spots(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> Response:
    """The blind road pieces (≤ 50 m each, GeoJSON CRS84), most households along first."""
    count_scope, _ = policy(principal, scope)
    _camera_roles(scope)
    cov = _coverage(request, store, count_scope)
    order = sorted(
        range(len(cov.blind)),
        key=lambda i: (-int(cov.blind_households[i]), -cov.blind[i].length),
    )[:limit]
    geoms = from_metric(cov.blind[order]) if order else []
    props = [
        {
            "rank": n,
            "households": int(cov.blind_households[i]),
            "length_m": round(cov.blind[i].length, 1),
        }
        for n, i in enumerate(order, start=1)
    ]
    return Response(_features(geoms, props), media_type="application/geo+json")


@router.get("/analysis/camera-coverage/views", summary="Each online camera's view")
def camera_views(
    request: Request, store: StoreDep, scope: ScopeDep, principal: PrincipalDep
) -> Response:
    """Each online camera's view as a polygon, cut where buildings block it (GeoJSON)."""
    count_scope, _ = policy(principal, scope)
    _camera_roles(scope)
    cov = _coverage(request, store, count_scope)
    geoms = from_metric(cov.cameras.views) if cov.cameras.views else []
    props = [{"camera_id": int(i)} for i in cov.cameras.ids]
    return Response(_features(geoms, props), media_type="application/geo+json")


class CameraSitingIn(BaseModel):
    """Where to put k new cameras."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(5, ge=1, le=30)
    range_m: float = Field(cm.PTZ_RANGE_M, ge=10, le=300)
    spacing_m: float = Field(25.0, ge=10, le=500)
    time_limit_s: float = Field(30.0, gt=0, le=120)


@router.post("/analysis/camera-siting", summary="Propose new camera positions")
async def camera_siting(
    request: Request,
    body: CameraSitingIn,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
) -> Response:
    """k new PTZ cameras along walkable roads covering the most households along blind
    pieces (maximal covering, HiGHS; greedy beside it), each with its view."""
    count_scope, _ = policy(principal, scope)
    _camera_roles(scope)

    def run() -> dict[str, Any]:
        cov = _coverage(request, store, count_scope)
        p = cm.propose(
            store,
            count_scope,
            k=body.k,
            range_m=body.range_m,
            spacing_m=body.spacing_m,
            cov=cov,
            time_limit=body.time_limit_s,
        )
        return cm.describe(p)

    with ANALYSING.enter(principal.username):
        out = await solving(request, run)
    return Response(orjson.dumps(out), media_type="application/json")


@router.get("/map/cameras", response_class=HTMLResponse, summary="Camera coverage map")
async def camera_page(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=0, le=20, description="New cameras to propose (0: none).")] = 0,
    lang: Lang = "zh",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """Views cut by buildings, blind road pieces with most households along them, grids by
    the share of road seen and, with `k`, proposed cameras. Offline like every map page."""
    count_scope, _ = policy(principal, scope)
    _camera_roles(scope)
    if basemap == "tianditu" and not settings.tianditu_key:
        raise QueryError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")

    def render() -> tuple[bytes, str]:
        cov = _coverage(request, store, count_scope)
        proposal = cm.propose(store, count_scope, k=k, cov=cov) if k else None
        m = camera_map(
            store,
            cov,
            scope=scope,
            proposal=proposal,
            lang=lang,
            basemap=basemap,
            tianditu_key=settings.tianditu_key,
        )
        return page_of(m, basemap)

    key = ("camera-map", scope, k, lang, basemap, store.stamps(SOURCES))
    cache: PageCache = request.app.state.pages

    def cached() -> tuple[bytes, str]:
        return cache.get_or_render(key, render, reads=count_scope.reads)

    if k:
        with ANALYSING.enter(principal.username):
            return respond(await solving(request, cached))
    return respond(await solving(request, cached))
