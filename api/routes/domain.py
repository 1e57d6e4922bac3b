"""Domain queries: locate a point, nearest features, statistics per grid/community/zone."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from api.deps import PrincipalDep, ScopeDep, StoreDep, crs_param
from gridmap import geojson, queries
from gridmap.crs import CRS84, to_wgs84_xy
from gridmap.errors import AuthenticationError, HiddenLayerError, PermissionDeniedError
from gridmap.layers import get_layer
from gridmap.maps.cache import PageCache
from gridmap.security import Principal, business_data_allowed, stats_scope

router = APIRouter(tags=["Queries"])

Lon = Annotated[float, Query(description="Longitude (or easting) in crs.", allow_inf_nan=False)]
Lat = Annotated[float, Query(description="Latitude (or northing) in crs.", allow_inf_nan=False)]
Crs = Annotated[
    str | None, Query(description="CRS of lon/lat (default CRS84; gcj02, bd09 …).", max_length=200)
]


def _point(lon: float, lat: float, crs: str | None) -> tuple[float, float]:
    uri = crs_param(crs, "crs")
    if uri == CRS84:
        return lon, lat
    x, y = to_wgs84_xy([lon], [lat], uri)
    return float(x[0]), float(y[0])


def _business(principal: Principal) -> None:
    if not business_data_allowed(principal):
        raise PermissionDeniedError("auditors see the audit log only")


@router.get("/locate", summary="Which zone, community, grid and old neighbourhood is a point in")
def locate(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    lon: Lon,
    lat: Lat,
    crs: Crs = None,
) -> Response:
    """The areas containing a point (null where none); the grid comes with its worker."""
    _business(principal)
    x, y = _point(lon, lat, crs)
    body = {"lon": x, "lat": y, **queries.locate(store, x, y, scope=scope)}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/nearest", summary="The k nearest features of a collection")
def nearest(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    collection: Annotated[str, Query(description="Collection id, e.g. toilets.", max_length=60)],
    lon: Lon,
    lat: Lat,
    k: Annotated[int, Query(ge=1, le=100, description="How many features.")] = 5,
    crs: Crs = None,
) -> Response:
    """The k nearest features with their straight-line distance in metres (GeoJSON)."""
    _business(principal)
    layer = get_layer(collection)
    if not scope.allows_layer(layer.id):
        raise HiddenLayerError(f"no collection {collection[:60]!r}")
    out_crs = crs_param(crs, "crs")
    x, y = _point(lon, lat, crs)
    found = queries.nearest(store, layer.id, x, y, k=k, scope=scope)
    geoms = geojson.geometry_fragments([n.feature.geometry for n in found], out_crs)
    features: list[dict[str, Any]] = [
        {
            "type": "Feature",
            "id": n.feature.id,
            "geometry": g,
            "properties": {**n.feature.properties, "distance_m": round(n.distance_m, 2)},
        }
        for n, g in zip(found, geoms, strict=True)
    ]
    body = {"type": "FeatureCollection", "features": features, "numberReturned": len(features)}
    return Response(
        orjson.dumps(body),
        media_type="application/geo+json",
        headers={"Content-Crs": f"<{out_crs}>"},
    )


STATS_SOURCES = (
    "households",
    "visits",
    "gridmap_documents",
    "grids",
    "communities",
    "zones",
    "toilets",
    "roads",
    "buildings",
)
"""What household statistics are counted from (and the areas they are listed by)."""


@router.get("/stats/{level}", summary="Household statistics per grid, community or zone")
def stats(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    level: Literal["grids", "communities", "zones"],
    days: Annotated[int, Query(ge=1, le=366, description="Window for recent visits.")] = 30,
    campaign: Annotated[
        int | None, Query(ge=1, le=2**53, description="Add this campaign's coverage.")
    ] = None,
) -> Response:
    """Households, population, tag counts and visits in the last `days` days, per area;
    with `campaign`, its households, those done and its coverage.

    Planners get counts below 5 as "<5"; grid workers and community admins their grids.
    """
    if not principal.authenticated:
        raise AuthenticationError("log in first (POST /token)")
    policy = stats_scope(principal, scope)
    if policy is None:
        raise PermissionDeniedError("this role may not see household statistics")
    scope, small = policy
    today = dt.date.today()  # as household_stats would take it

    def count() -> bytes:
        rows = queries.household_stats(
            store, level, scope=scope, today=today, days=days, small_cells=small, campaign=campaign
        )
        return orjson.dumps({"level": level, "areas": rows})

    # exact: kept only while nothing it counts from has changed (and for the same day)
    key = ("stats", level, scope, small, days, campaign, today, store.stamps(STATS_SOURCES))
    cache: PageCache = request.app.state.stats
    return Response(
        cache.get_or_render(key, count, reads=scope.reads), media_type="application/json"
    )
