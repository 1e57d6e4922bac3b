"""Everyday spatial questions: which areas contain a point, the nearest features, statistics."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from gridmap.crs import to_metric
from gridmap.errors import InvalidGeometryError
from gridmap.layers import HOUSEHOLD_TAGS, get_layer
from gridmap.store.base import Feature, Query, Scope, Store

_M_PER_DEG = 111_320.0


def _check_point(lon: float, lat: float) -> shapely.Point:
    if not (math.isfinite(lon) and math.isfinite(lat)):
        msg = "lon and lat must be finite numbers"
        raise InvalidGeometryError(msg)
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        msg = "lon must be within -180..180 and lat within -90..90 (is it lon, lat order?)"
        raise InvalidGeometryError(msg)
    return shapely.Point(lon, lat)


def locate(store: Store, lon: float, lat: float, *, scope: Scope = Scope.ALL) -> dict[str, Any]:
    """The zone, community, grid (with its worker) and old neighbourhood containing a point.

    Each entry is ``None`` where the point lies in no such area (or in none the scope shows).
    """
    pt = _check_point(lon, lat)
    out: dict[str, Any] = {}
    fields = {
        "zone": ("zones", ["name"]),
        "community": ("communities", ["name", "code", "phone"]),
        "grid": ("grids", ["code", "name", "community_id", "worker_name", "worker_phone"]),
        "old_neighbourhood": ("old_neighbourhoods", ["name", "renovation_status"]),
    }
    for key, (layer_id, keep) in fields.items():
        if not scope.allows_layer(layer_id):
            out[key] = None
            continue
        fs = store.query(layer_id, Query(geometry=pt, predicate="intersects", limit=1), scope=scope)
        if len(fs) == 0:
            out[key] = None
        else:
            props = fs.properties[0]
            out[key] = {"id": int(fs.ids[0]), **{k: props.get(k) for k in keep}}
    return out


@dataclass
class Nearest:
    """A feature and its distance in metres from the query point."""

    feature: Feature
    distance_m: float


def nearest(
    store: Store,
    layer_id: str,
    lon: float,
    lat: float,
    *,
    k: int = 5,
    scope: Scope = Scope.ALL,
    equals: dict[str, Any] | None = None,
) -> list[Nearest]:
    """The ``k`` features of a layer nearest to a point, by straight-line distance in metres.

    Searches growing boxes through the R-tree until ``k`` candidates are found, then
    re-queries the box whose half-side is the k-th candidate distance, so that no nearer
    feature can be missed; distances are exact in EPSG:4547.
    """
    get_layer(layer_id)
    pt = _check_point(lon, lat)
    if not 1 <= k <= 100:
        msg = "k must be between 1 and 100"
        raise InvalidGeometryError(msg)
    total = store.count(layer_id, Query(equals=equals or {}), scope=scope)
    if total == 0:
        return []
    want = min(k, total)
    cos = max(math.cos(math.radians(lat)), 0.01)

    def box(radius_m: float) -> tuple[float, float, float, float]:
        dx = radius_m / (_M_PER_DEG * cos)
        dy = radius_m / _M_PER_DEG
        return (lon - dx, lat - dy, lon + dx, lat + dy)

    radius = 100.0
    while True:
        n = store.count(layer_id, Query(bbox=box(radius), equals=equals or {}), scope=scope)
        if n >= want or radius > 2e7:
            break
        radius *= 4
    fs = store.query(layer_id, Query(bbox=box(radius), equals=equals or {}), scope=scope)
    dist = _distances(fs.geometries, pt)
    kth = float(np.sort(dist)[want - 1]) if len(dist) >= want else radius
    fs = store.query(
        layer_id, Query(bbox=box(kth * 1.001 + 0.01), equals=equals or {}), scope=scope
    )
    dist = _distances(fs.geometries, pt)
    order = np.lexsort((fs.ids, dist))[:want]
    feats = list(fs)
    return [Nearest(feats[i], float(dist[i])) for i in order]


def _distances(geoms: Any, pt: shapely.Point) -> np.ndarray:
    if len(geoms) == 0:
        return np.empty(0)
    m = to_metric(np.concatenate([np.asarray(geoms, dtype=object), [pt]]))
    return shapely.distance(m[:-1], m[-1])


Level = str  # "grids" | "communities" | "zones"


def household_stats(
    store: Store,
    level: Level,
    *,
    scope: Scope = Scope.ALL,
    today: dt.date | None = None,
    days: int = 30,
    small_cells: int | None = None,
) -> list[dict[str, Any]]:
    """Households, population, tag counts and visits in the last ``days`` per area.

    ``level`` is ``grids``, ``communities`` or ``zones``. Only households within ``scope``
    are counted; areas the scope hides are left out. With ``small_cells`` every count
    below it (but above 0) is reported as the string ``"<N"`` and coverage as None, so
    that aggregates cannot single out a household.
    """
    if level not in ("grids", "communities", "zones"):
        msg = "level must be grids, communities or zones"
        raise InvalidGeometryError(msg)
    today = today or dt.date.today()
    since = (dt.datetime.combine(today, dt.time()) - dt.timedelta(days=days)).isoformat()
    grids = store.query("grids", scope=scope)
    comms = store.query("communities", scope=scope) if scope.allows_layer("communities") else None
    grid_comm = {
        int(i): p["community_id"] for i, p in zip(grids.ids, grids.properties, strict=True)
    }
    comm_zone = (
        {int(i): p["zone_id"] for i, p in zip(comms.ids, comms.properties, strict=True)}
        if comms is not None
        else {}
    )

    def area_of(grid_id: int | None) -> int | None:
        if grid_id is None:
            return None
        if level == "grids":
            return grid_id
        c = grid_comm.get(grid_id)
        return c if level == "communities" else comm_zone.get(c) if c is not None else None

    acc: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"households": 0, "population": 0, "visited_recently": 0, "tags": Counter()}
    )
    if scope.allows_layer("households"):
        for p in store.query("households", scope=scope).properties:
            a = area_of(p.get("grid_id"))
            if a is None:
                continue
            row = acc[a]
            row["households"] += 1
            row["population"] += p.get("members") or 0
            row["tags"].update(p.get("tags") or [])
            if p.get("last_visit_status") == "visited" and (p.get("last_visit_at") or "") >= since:
                row["visited_recently"] += 1
    areas = store.query(level, scope=scope) if scope.allows_layer(level) else None
    out = []
    if areas is None:
        return out
    for aid, props in zip(areas.ids.tolist(), areas.properties, strict=True):
        row = acc.get(
            aid, {"households": 0, "population": 0, "visited_recently": 0, "tags": Counter()}
        )
        hh = row["households"]
        coverage = round(row["visited_recently"] / hh, 4) if hh else None

        def shown(n: int) -> int | str:
            return f"<{small_cells}" if small_cells and 0 < n < small_cells else n

        out.append(
            {
                "id": aid,
                "name": props.get("name"),
                "households": shown(hh),
                "population": shown(row["population"]),
                "tags": {t: shown(row["tags"].get(t, 0)) for t in HOUSEHOLD_TAGS},
                f"visited_last_{days}_days": shown(row["visited_recently"]),
                "visit_coverage": None if small_cells and hh < small_cells else coverage,
            }
        )
    return out
