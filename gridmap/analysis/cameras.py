"""Camera coverage (天网): each camera's view — a sector from its direction, field of view and
range (a PTZ camera turns: a full circle) — cut where building footprints block the line of
sight; the walkable road length and building entrances those views cover per grid; the road
pieces no camera sees (blind spots), ranked by the households whose way home runs along them;
and new camera positions that cover the worst of them (the same covering model as toilets).

Geometry is metric (EPSG:4547). Only cameras that are online watch anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
import shapely.ops

from gridmap.analysis import covering
from gridmap.analysis import toilets as tl
from gridmap.crs import from_metric, to_metric
from gridmap.errors import QueryError
from gridmap.routing import network
from gridmap.store.base import Query, Scope, Store

RAY_STEP_DEG = 2.0
"""Angle between the rays cast to find what blocks a camera's view."""
MOUNT_M = 1.0
"""A building this close to a camera is the one it hangs on: it does not block the view."""
EDGE_M = 1.0
"""A road this close to a grid's edge (along the line between two grids) counts for it."""
DOOR_M = 1.5
"""An entrance on a footprint's edge is seen when a view reaches within this of it."""
PIECE_M = 50.0
"""Blind road stretches are cut into pieces at most this long."""
PTZ_RANGE_M = 60.0
MAX_CANDIDATES = 5_000
"""Candidate camera positions one proposal may weigh (each needs its line-of-sight view)."""
"""Range of a proposed camera (a PTZ dome turning full circle)."""


def sector(
    x: float, y: float, direction: float, fov: float, radius: float, steps: int = 24
) -> shapely.Polygon:
    """A camera's view with nothing in the way: a circular sector in metres, direction
    clockwise from north (fov ≥ 360: a circle)."""
    if fov >= 360:
        return shapely.Point(x, y).buffer(radius, quad_segs=16)
    angles = np.radians(np.linspace(direction - fov / 2, direction + fov / 2, steps))
    ring = [
        (x, y),
        *zip(x + radius * np.sin(angles), y + radius * np.cos(angles), strict=True),
        (x, y),
    ]
    return shapely.Polygon(ring)


def _rays(
    x: float, y: float, direction: float, fov: float, radius: float, step: float = RAY_STEP_DEG
) -> tuple[npt.NDArray, npt.NDArray]:
    """Bearings (radians) of the rays over the view, and each ray's far end (R×2)."""
    full = fov >= 360
    n = max(math.ceil((360 if full else fov) / step), 2)
    span = np.linspace(0, 360, n, endpoint=False) if full else np.linspace(-fov / 2, fov / 2, n)
    bearing = np.radians(direction + span) if not full else np.radians(span)
    ends = np.column_stack([x + radius * np.sin(bearing), y + radius * np.cos(bearing)])
    return bearing, ends


def views(
    xy: npt.NDArray[np.float64],
    direction: npt.ArrayLike,
    fov: npt.ArrayLike,
    radius: npt.ArrayLike,
    buildings: npt.NDArray[np.object_],
    *,
    step: float = RAY_STEP_DEG,
) -> list[shapely.Polygon]:
    """Each camera's view (metric) cut at the first building footprint along rays ``step``
    degrees apart."""
    tree = shapely.STRtree(buildings) if len(buildings) else None
    out: list[shapely.Polygon] = []
    for (x, y), d, f, r in zip(
        xy,
        np.asarray(direction, float),
        np.asarray(fov, float),
        np.asarray(radius, float),
        strict=True,
    ):
        bearing, ends = _rays(x, y, d, f, r, step)
        reach = np.full(len(ends), r)
        origin = shapely.Point(x, y)
        if tree is not None:
            rays = shapely.linestrings(
                np.stack([np.broadcast_to([x, y], ends.shape), ends], axis=1)
            )
            ray_i, b_i = tree.query(rays, predicate="intersects")
            if len(ray_i):
                blocks = buildings[b_i]
                mount = shapely.distance(origin, blocks) < MOUNT_M
                ray_i, blocks = ray_i[~mount], blocks[~mount]
                hit = shapely.distance(origin, shapely.intersection(rays[ray_i], blocks))
                np.minimum.at(reach, ray_i, np.where(np.isfinite(hit), hit, r))
        far = np.column_stack([x + reach * np.sin(bearing), y + reach * np.cos(bearing)])
        ring = far if f >= 360 else np.vstack([[x, y], far, [x, y]])
        out.append(shapely.make_valid(shapely.Polygon(ring)))
    return out


@dataclass(frozen=True)
class Cameras:
    """The cameras that watch (online), where they are (metric) and what they see."""

    ids: npt.NDArray[np.int64]
    xy: npt.NDArray[np.float64]
    views: list[shapely.Polygon]
    offline: int


def _buildings(store: Store) -> npt.NDArray[np.object_]:
    fs = store.query("buildings", Query()).with_geometry()
    return to_metric(fs.geometries) if len(fs) else np.empty(0, dtype=object)


def watching(store: Store) -> Cameras:
    """Every online camera's line-of-sight view."""
    fs = store.query("cameras", Query()).with_geometry()
    on = [k for k, p in enumerate(fs.properties) if p.get("status", "online") == "online"]
    xy = shapely.get_coordinates(to_metric(fs.geometries[on])) if on else np.empty((0, 2))
    props = [fs.properties[k] for k in on]
    polys = views(
        xy,
        [float(p.get("direction_deg") or 0) for p in props],
        [360.0 if p.get("kind") == "ptz" else float(p.get("fov_deg") or 60) for p in props],
        [float(p.get("range_m") or 50) for p in props],
        _buildings(store),
    )
    return Cameras(fs.ids[on], xy, polys, len(fs) - len(on))


@dataclass(frozen=True)
class Coverage:
    """What the cameras see: per grid road metres and entrances (seen, in all), the blind
    road pieces (metric) with the households along each, and the views' union."""

    per_grid: dict[int, dict[str, float]]
    blind: npt.NDArray[np.object_]
    blind_households: npt.NDArray[np.int64]
    seen: shapely.Geometry
    cameras: Cameras


def _cut(lines: npt.NDArray[np.object_], piece: float) -> npt.NDArray[np.object_]:
    """Lines cut into pieces of at most ``piece`` metres."""
    out: list[shapely.Geometry] = []
    for line in (
        shapely.get_parts(shapely.line_merge(shapely.union_all(lines))) if len(lines) else []
    ):
        n = max(math.ceil(line.length / piece), 1)
        for k in range(n):
            out.append(shapely.ops.substring(line, k * line.length / n, (k + 1) * line.length / n))
    return np.asarray(out, dtype=object)


def coverage(store: Store, scope: Scope, *, households: bool = True) -> Coverage:
    """Road length and entrances seen per grid, and the blind pieces with the households
    along each (those ``scope`` sees, their reads noted; none read without ``households``)."""

    cams = watching(store)
    seen = shapely.union_all(cams.views) if cams.views else shapely.Polygon()
    net = network.of_store(store)
    roads = _walkable(store)
    grids = store.query("grids", Query()).with_geometry()
    g_metric = shapely.buffer(to_metric(grids.geometries), EDGE_M)  # roads on the edge count
    per_grid: dict[int, dict[str, float]] = {
        int(g): {"road_m": 0.0, "road_seen_m": 0.0, "entrances": 0, "entrances_seen": 0}
        for g in grids.ids
    }
    if len(roads) and len(g_metric):
        r_i, g_i = shapely.STRtree(g_metric).query(roads, predicate="intersects")
        inside = shapely.intersection(roads[r_i], g_metric[g_i])
        seen_part = shapely.intersection(inside, seen)
        for g, a, b in zip(
            grids.ids[g_i].tolist(), shapely.length(inside), shapely.length(seen_part), strict=True
        ):
            per_grid[g]["road_m"] += float(a)
            per_grid[g]["road_seen_m"] += float(b)
    b = store.query("buildings", Query()).with_geometry()
    for p, geom in zip(b.properties, b.geometries, strict=True):
        g = p.get("grid_id")
        if g is None or int(g) not in per_grid:
            continue
        lon, lat = p.get("entrance_lon"), p.get("entrance_lat")
        pt = (
            shapely.Point(lon, lat)
            if lon is not None and lat is not None
            else shapely.point_on_surface(geom)
        )
        per_grid[int(g)]["entrances"] += 1
        door = to_metric(np.array([pt], dtype=object))[0]
        per_grid[int(g)]["entrances_seen"] += int(shapely.dwithin(seen, door, DOOR_M))
    blind = (
        _cut(shapely.difference(roads, seen), PIECE_M) if len(roads) else np.empty(0, dtype=object)
    )
    blind = blind[shapely.length(blind) > 1.0] if len(blind) else blind
    along = (
        _households_along(store, scope, net, blind)
        if households
        else np.zeros(len(blind), dtype=np.int64)
    )
    return Coverage(per_grid, blind, along, seen, cams)


def _walkable(store: Store) -> npt.NDArray[np.object_]:
    """The walkable roads in use as drawn (metric; overlaps dissolved): a road on the line
    between two grids counts for both, as an overlay counts it."""
    fs = store.query("roads", Query()).with_geometry()
    keep = [
        g
        for g, p in zip(fs.geometries, fs.properties, strict=True)
        if p.get("walkable") is not False and p.get("status") != "planned"
    ]
    if not keep:
        return np.empty(0, dtype=object)
    merged = shapely.union_all(to_metric(np.asarray(keep, dtype=object)))
    return np.asarray(shapely.get_parts(merged), dtype=object)


def _households_along(
    store: Store, scope: Scope, net: network.Network, blind: npt.NDArray[np.object_]
) -> npt.NDArray[np.int64]:
    """Per blind piece: the households whose entrance joins the road on it."""
    counts = np.zeros(len(blind), dtype=np.int64)
    homes = tl.homes(store, scope)
    if len(blind) == 0 or len(homes.ids) == 0:
        return counts
    att = network.attach(net, homes.lon, homes.lat)
    ok = np.flatnonzero(att.attached)
    feet = shapely.points(att.foot[ok])
    where, piece = shapely.STRtree(blind).query_nearest(feet, max_distance=1.0, all_matches=False)
    w = homes.per_place()[ok]
    np.add.at(counts, piece, w[where].astype(np.int64))
    return counts


def per_grid_shares(
    cov: Coverage, grid_ids: frozenset[int] | None = None, *, step: float | None = None
) -> list[dict[str, object]]:
    """Per grid: the share of walkable road length and of building entrances seen; with
    ``step`` (for roles that may not see cameras) to that step only: a role that may edit
    roads must not learn, from a share moving by a hair, whether a camera sees a spot."""

    def share(part: float, whole: float) -> float | None:
        if not whole:
            return None
        if step is None:
            return round(part / whole, 4)
        return round(step * round(part / whole / step), 2)

    out: list[dict[str, object]] = []
    for g, f in sorted(cov.per_grid.items()):
        if grid_ids is not None and g not in grid_ids:
            continue
        out.append(
            {
                "grid_id": g,
                "road_seen_share": share(f["road_seen_m"], f["road_m"]),
                "entrances_seen_share": share(f["entrances_seen"], f["entrances"]),
            }
        )
    return out


@dataclass(frozen=True)
class Proposal:
    """New camera positions (WGS84) covering the worst blind pieces, exact and greedy."""

    lon: npt.NDArray[np.float64]
    lat: npt.NDArray[np.float64]
    views: list[shapely.Polygon]
    exact: covering.Siting
    greedy: covering.Siting
    demand: float


def propose(
    store: Store,
    scope: Scope,
    *,
    k: int = 5,
    range_m: float = PTZ_RANGE_M,
    spacing_m: float = 25.0,
    cov: Coverage | None = None,
    time_limit: float = covering.TIME_LIMIT_S,
) -> Proposal:
    """``k`` new PTZ cameras (range ``range_m``, line of sight cut by buildings) along the
    walkable roads, chosen to cover the most households along blind pieces (the length of
    blind road where no household is along any)."""
    if not 10 <= range_m <= 300 or spacing_m < 10:
        raise QueryError("range_m must be 10–300 m and spacing_m at least 10 m")
    cov = cov or coverage(store, scope)
    mids = (
        shapely.line_interpolate_point(cov.blind, 0.5, normalized=True)
        if len(cov.blind)
        else np.empty(0, dtype=object)
    )
    weight = cov.blind_households.astype(float)
    if weight.sum() == 0:
        weight = shapely.length(cov.blind) if len(cov.blind) else weight
    lon, lat = tl.road_candidates(store, spacing_m)
    xy = (
        shapely.get_coordinates(to_metric(shapely.points(lon, lat)))
        if len(lon)
        else np.empty((0, 2))
    )
    if len(mids) and len(xy):  # only candidates within reach of a blind piece that counts
        wanted = mids[weight > 0]
        near = shapely.STRtree(wanted).query(
            shapely.points(xy), predicate="dwithin", distance=range_m
        )[0]
        keep = np.unique(near)
        xy, lon, lat = xy[keep], lon[keep], lat[keep]
    n = len(xy)
    if n > MAX_CANDIDATES:
        msg = f"{n:,} candidate positions near blind road (at most {MAX_CANDIDATES:,}); "
        msg += "use a larger spacing_m"
        raise QueryError(msg)
    polys = views(
        xy, np.zeros(n), np.full(n, 360.0), np.full(n, range_m), _buildings(store), step=5.0
    )
    from scipy.sparse import csr_matrix

    if n and len(mids):
        cand, piece = shapely.STRtree(mids).query(
            np.asarray(polys, dtype=object), predicate="contains"
        )
        cover = csr_matrix((np.ones(len(cand)), (cand, piece)), shape=(n, len(mids)))
    else:
        cover = csr_matrix((n, len(mids)))
    exact = covering.mclp(cover, weight, k, time_limit=time_limit)
    greedy = covering.greedy_mclp(cover, weight, k)
    wgs = from_metric(np.asarray(polys, dtype=object)) if n else np.empty(0, dtype=object)
    return Proposal(lon, lat, list(wgs), exact, greedy, float(weight.sum()))


def _answer(p: Proposal, s: covering.Siting) -> dict[str, object]:
    out: dict[str, object] = {
        "covered": round(s.objective, 1),
        "seconds": round(s.seconds, 3),
        "sites": [
            {
                "rank": n,
                "lon": float(p.lon[i]),
                "lat": float(p.lat[i]),
                "gain": round(g, 1),
                "view": shapely.geometry.mapping(p.views[i]),
            }
            for n, (i, g) in enumerate(zip(s.chosen, s.gains, strict=True), start=1)
        ],
    }
    if s.method == "milp":
        out |= {"optimal": s.optimal, "gap": round(max(s.gap, 0.0), 9), "bound": round(s.bound, 1)}
    return out


def describe(p: Proposal) -> dict[str, object]:
    """A proposal as plain data (WGS84): exact and greedy sites with their views and gains
    (households along blind pieces newly seen)."""
    return {
        "candidates": len(p.lon),
        "blind_households": round(p.demand, 1),
        "solver": covering.SOLVER,
        "exact": _answer(p, p.exact),
        "greedy": _answer(p, p.greedy),
    }
