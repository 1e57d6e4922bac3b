"""Toilet access and siting (厕所革命): how many households live within a walk of a public
toilet (open ones, and open plus planned), where the unserved live (as density, never as
points), and where k new toilets serve the most unserved households (maximal covering) or
shorten everyone's walk most (p-median), exactly and greedily.

Households are placed at their building's entrance (their own point where they have no
building); walking distances come from the walking network (:mod:`gridmap.analysis.reach`).
Households are read under the caller's scope, so their reads are noted like any other.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from scipy.sparse.csgraph import dijkstra

from gridmap.analysis import covering, reach
from gridmap.crs import from_metric, to_metric
from gridmap.errors import QueryError
from gridmap.routing import network
from gridmap.routing.matrix import DETOUR_FACTOR
from gridmap.store.base import Query, Scope, Store

DISTANCES = (300, 500)
"""Walking distances (m) reported by default, and the only ones where counts are protected."""
OPEN = ("existing",)
PLANNED = ("planned", "under_construction")
SPACING_M = 50.0
"""Default spacing of candidate sites generated along walkable roads."""
MAX_DISTANCE_M = 2000
PMEDIAN_CAP_M = 2000.0
"""In the p-median, a household with no toilet within this walk counts this far."""
MAX_CANDIDATES = 20_000
MAX_PAIRS = 400_000
"""The p-median's model grows with the pairs nearer than a household's toilet: bounded so
that one request stays within a few hundred MB."""
DENSITY_CELL_M = 200


@dataclass(frozen=True)
class Homes:
    """Households in scope: id, grid, and the place (index into lon/lat) they walk from."""

    ids: npt.NDArray[np.int64]
    grid: npt.NDArray[np.int64]
    place: npt.NDArray[np.int64]
    lon: npt.NDArray[np.float64]
    lat: npt.NDArray[np.float64]

    def per_place(self, mask: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.float64]:
        """Households per place (those of ``mask`` only)."""
        w = None if mask is None else mask.astype(float)
        return np.bincount(self.place, weights=w, minlength=len(self.lon)).astype(float)


def homes(store: Store, scope: Scope) -> Homes:
    """The households ``scope`` sees, placed at their building's entrance."""
    if not scope.allows_layer("households"):
        e = np.empty(0)
        return Homes(e.astype(np.int64), e.astype(np.int64), e.astype(np.int64), e, e)
    building = store.values("households", "building_id", scope=scope)
    grid = store.values("households", "grid_id", scope=scope)
    ids = np.array(sorted(building), dtype=np.int64)
    b_ids = sorted({int(b) for b in building.values() if b is not None})
    entrance: dict[int, tuple[float, float]] = {}
    if b_ids:
        fs = store.query("buildings", Query(ids=b_ids)).with_geometry()
        inside = shapely.point_on_surface(fs.geometries)
        for bid, p, pt in zip(fs.ids.tolist(), fs.properties, inside, strict=True):
            lon, lat = p.get("entrance_lon"), p.get("entrance_lat")
            entrance[bid] = (lon, lat) if lon is not None and lat is not None else (pt.x, pt.y)
    loose = [int(f) for f in ids if building[int(f)] is None or building[int(f)] not in entrance]
    own: dict[int, tuple[float, float]] = {}
    if loose:
        fs = store.query("households", Query(ids=loose), scope=scope).with_geometry()
        own = {int(f): (g.x, g.y) for f, g in zip(fs.ids.tolist(), fs.geometries, strict=True)}
    keys: dict[tuple[str, int], int] = {}
    xy: list[tuple[float, float]] = []
    place = np.empty(len(ids), dtype=np.int64)
    for n, f in enumerate(ids.tolist()):
        b = building[f]
        key = ("b", int(b)) if b is not None and b in entrance else ("h", f)
        if key not in keys:
            keys[key] = len(xy)
            xy.append(entrance[key[1]] if key[0] == "b" else own[f])
        place[n] = keys[key]
    arr = np.asarray(xy, float).reshape(-1, 2)
    g = np.array([-1 if grid.get(f) is None else int(grid[f]) for f in ids.tolist()], np.int64)
    return Homes(ids, g, place, arr[:, 0], arr[:, 1])


def toilets(store: Store, statuses: Sequence[str]) -> tuple[npt.NDArray, npt.NDArray]:
    """Longitudes and latitudes of the toilets of the given statuses."""
    fs = store.query("toilets", Query()).with_geometry()
    keep = [
        g for g, p in zip(fs.geometries, fs.properties, strict=True) if p.get("status") in statuses
    ]
    return (np.array([g.x for g in keep]), np.array([g.y for g in keep]))


@dataclass(frozen=True)
class Access:
    """Each place's walk to the nearest open toilet, and to the nearest open or planned one
    (inf beyond ``limit``), and how it was measured."""

    homes: Homes
    existing: npt.NDArray[np.float64]
    with_planned: npt.NDArray[np.float64]
    limit: float
    method: str
    counts: dict[str, int]
    """Toilets by group: "existing", "planned"."""

    def served(self, which: str, distance: float) -> npt.NDArray[np.bool_]:
        """Per household: within ``distance`` of a toilet of ``which`` (existing, with_planned)."""
        metres = self.existing if which == "existing" else self.with_planned
        return metres[self.homes.place] <= distance


_memo: OrderedDict[tuple[object, ...], tuple[npt.NDArray, npt.NDArray, str]] = OrderedDict()
_memo_lock = threading.Lock()


def access(store: Store, scope: Scope, *, limit: float = max(DISTANCES)) -> Access:
    """Walking distance from every household in scope to the nearest toilet (up to ``limit``)."""
    h = homes(store, scope)
    net = network.of_store(store)
    key = (
        id(store),
        store.stamps(("roads", "toilets", "buildings")),
        float(limit),
        h.lon.tobytes(),
        h.lat.tobytes(),
    )
    with _memo_lock:
        hit = _memo.get(key)
    open_ = toilets(store, OPEN)
    planned = toilets(store, PLANNED)
    if hit is None:
        both = (np.r_[open_[0], planned[0]], np.r_[open_[1], planned[1]])
        a = reach.nearest(net, open_, (h.lon, h.lat), limit)
        b = reach.nearest(net, both, (h.lon, h.lat), limit)
        hit = (a.metres, b.metres, a.method)
        with _memo_lock:
            _memo[key] = hit
            while len(_memo) > 8:
                _memo.popitem(last=False)
    counts = {"existing": len(open_[0]), "planned": len(planned[0])}
    return Access(h, hit[0], hit[1], float(limit), hit[2], counts)


def check_distances(distances: Sequence[int], protected: bool) -> tuple[int, ...]:
    """Distances sorted and checked: 1–3 values of 50–2000 m; the defaults where protected."""
    ds = tuple(sorted({int(d) for d in distances}))
    if not ds or len(ds) > 3 or any(d < 50 or d > MAX_DISTANCE_M for d in ds):
        msg = f"give one to three walking distances of 50 to {MAX_DISTANCE_M} m"
        raise QueryError(msg)
    if protected and ds != DISTANCES:
        msg = "for this role the walking distances are fixed at 300 and 500 m"
        raise QueryError(msg)
    return ds


def measure_names(distances: Sequence[int]) -> list[str]:
    """The per-grid counts of households served: toilet:{existing|all}:{metres}."""
    return [f"toilet:{w}:{d}" for w in ("existing", "all") for d in distances]


def measure_orders(distances: Sequence[int]) -> list[tuple[str, str]]:
    """How the counts are ordered (a ≤ b): nearer ≤ farther, open ≤ open + planned, and the
    farthest ≤ the households."""
    ds = sorted(distances)
    out = [(f"toilet:existing:{d}", f"toilet:all:{d}") for d in ds]
    for w in ("existing", "all"):
        out += [(f"toilet:{w}:{a}", f"toilet:{w}:{b}") for a, b in itertools.pairwise(ds)]
        out.append((f"toilet:{w}:{ds[-1]}", "households"))
    return out


def per_grid(acc: Access, distances: Sequence[int]) -> dict[int, dict[str, int]]:
    """Households served per grid, as :func:`measure_names`."""
    out: dict[int, dict[str, int]] = {}
    grids = acc.homes.grid
    for w, which in (("existing", "existing"), ("all", "with_planned")):
        for d in distances:
            hit = acc.served(which, d)
            ids, n = np.unique(grids[hit], return_counts=True)
            for g, c in zip(ids.tolist(), n.tolist(), strict=True):
                out.setdefault(g, {})[f"toilet:{w}:{d}"] = c
    return out


BANDS = ((5, 9), (10, 19), (20, 49), (50, 99), (100, None))


def band(n: int) -> str:
    """A count shown as its band (counts below 5 are never shown)."""
    for lo, hi in BANDS:
        if hi is None or n <= hi:
            return f"{lo}+" if hi is None else f"{lo}–{hi}"
    return ""


def unserved_density(
    acc: Access,
    distance: float,
    *,
    which: str = "existing",
    cell_m: float = DENSITY_CELL_M,
    small_cells: int | None = None,
) -> list[tuple[shapely.Polygon, int | str]]:
    """Unserved households counted in square cells of ``cell_m`` (metric grid), as WGS84
    squares. With ``small_cells`` cells below it are left out and the rest shown as bands."""
    h = acc.homes
    unserved = ~acc.served(which, distance)
    if not unserved.any():
        return []
    xy = reach.metric_xy(h.lon, h.lat)[h.place[unserved]]
    cell = np.floor(xy / cell_m).astype(np.int64)
    keys, n = np.unique(cell, axis=0, return_counts=True)
    boxes = from_metric(
        shapely.box(
            keys[:, 0] * cell_m,
            keys[:, 1] * cell_m,
            (keys[:, 0] + 1) * cell_m,
            (keys[:, 1] + 1) * cell_m,
        )
    )
    out: list[tuple[shapely.Polygon, int | str]] = []
    for box, c in zip(boxes, n.tolist(), strict=True):
        if small_cells is None:
            out.append((box, c))
        elif c >= small_cells:
            out.append((box, band(c)))
    return out


def road_candidates(store: Store, spacing_m: float = SPACING_M) -> tuple[npt.NDArray, npt.NDArray]:
    """Candidate sites every ``spacing_m`` along the walkable, existing roads (within the
    service area where one is set), near-duplicates at crossings merged."""
    if spacing_m < 10:
        msg = "candidate spacing must be at least 10 m"
        raise QueryError(msg)
    net = network.of_store(store)
    if len(net.u) == 0:
        return np.empty(0), np.empty(0)
    merged = shapely.line_merge(shapely.union_all(net.segments))
    lines = shapely.get_parts(merged)
    lengths = shapely.length(lines)
    pts: list[npt.NDArray] = []
    for line, length in zip(lines, lengths, strict=True):
        # every spacing_m from half a spacing in; a piece shorter than that gets its middle
        at = np.arange(spacing_m / 2, length, spacing_m)
        at = at if len(at) else np.array([length / 2])
        pts.append(shapely.get_coordinates(shapely.line_interpolate_point(line, at)))
    xy = np.unique(np.round(np.vstack(pts) / 5.0) * 5.0, axis=0)
    if len(xy) > MAX_CANDIDATES:
        msg = f"{len(xy)} candidate sites at {spacing_m:g} m; use a larger spacing"
        raise QueryError(msg)
    wgs = from_metric(shapely.points(xy))
    lon, lat = shapely.get_coordinates(wgs).T
    area = store.service_area
    if area is not None:
        inside = shapely.contains_xy(area, lon, lat)
        lon, lat = lon[inside], lat[inside]
    return lon, lat


@dataclass(frozen=True)
class Plan:
    """A siting answer: the candidates, what each chosen site adds, exact and greedy."""

    objective: str
    """"coverage" (most unserved households within the distance) or "distance" (p-median)."""
    distance_m: float
    lon: npt.NDArray[np.float64]
    lat: npt.NDArray[np.float64]
    exact: covering.Siting
    greedy: covering.Siting
    demand: int
    """Households the objective counts: unserved (coverage) or all in scope (distance)."""
    households: int
    """Households in scope."""
    before: float
    """Unserved households (coverage), or total household-metres (distance), before."""
    method: str


def site(
    store: Store,
    scope: Scope,
    *,
    k: int = 3,
    distance_m: float = 300.0,
    objective: str = "coverage",
    candidates: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    spacing_m: float = SPACING_M,
    include_planned: bool = True,
    time_limit: float = covering.TIME_LIMIT_S,
) -> Plan:
    """Choose ``k`` new toilet sites among ``candidates`` (default: along walkable roads)."""
    if objective not in ("coverage", "distance"):
        msg = "objective must be coverage or distance"
        raise QueryError(msg)
    if candidates is None:
        lon, lat = road_candidates(store, spacing_m)
    else:
        lon, lat = np.asarray(candidates[0], float), np.asarray(candidates[1], float)
    net = network.of_store(store)
    which = "with_planned" if include_planned else "existing"
    if objective == "coverage":
        acc = access(store, scope, limit=distance_m)
        unserved = ~acc.served(which, distance_m)
        w = acc.homes.per_place(unserved)
        cover, method = reach.pairs_within(
            net, (lon, lat), (acc.homes.lon, acc.homes.lat), distance_m
        )
        if cover.nnz > 5 * MAX_PAIRS:
            msg = f"{cover.nnz:,} candidate–household pairs; use a larger spacing_m or distance"
            raise QueryError(msg)
        exact = covering.mclp(cover, w, k, time_limit=time_limit)
        greedy = covering.greedy_mclp(cover, w, k)
        demand = int(unserved.sum())
        return Plan(
            objective,
            distance_m,
            lon,
            lat,
            exact,
            greedy,
            demand,
            len(acc.homes.ids),
            demand,
            method,
        )
    acc = access(store, scope, limit=PMEDIAN_CAP_M)
    metres = acc.with_planned if include_planned else acc.existing
    base = np.minimum(metres, PMEDIAN_CAP_M)
    w = acc.homes.per_place()
    dist, method = reach.pairs_within(
        net, (lon, lat), (acc.homes.lon, acc.homes.lat), float(base.max(initial=0.0))
    )
    useful = int((dist.tocoo().data < base[dist.tocoo().col]).sum())
    if useful > MAX_PAIRS:
        msg = (
            f"{useful:,} candidate–household pairs for the distance objective (at most "
            f"{MAX_PAIRS:,}); use a larger spacing_m or supply fewer candidates"
        )
        raise QueryError(msg)
    exact = covering.pmedian(dist, base, w, k, time_limit=time_limit)
    greedy = covering.greedy_pmedian(dist, base, w, k)
    before = float(np.dot(w, base))
    n = len(acc.homes.ids)
    return Plan(objective, distance_m, lon, lat, exact, greedy, n, n, before, method)


def catchments(
    store: Store,
    lon: npt.ArrayLike,
    lat: npt.ArrayLike,
    distance_m: float,
    *,
    width_m: float = 25.0,
) -> list[shapely.Geometry]:
    """Each point's walking service area (WGS84): the road pieces whose middle lies within
    ``distance_m`` on foot, widened by ``width_m``; a circle of distance ÷ 1.3 where there
    are no walkable roads, an empty polygon for a point off the network."""
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    net = network.of_store(store)
    if len(lon) == 0:
        return []
    if len(net.u) == 0:
        centres = to_metric(shapely.points(lon, lat))
        return list(from_metric(shapely.buffer(centres, distance_m / DETOUR_FACTOR)))
    att = network.attach(net, lon, lat)
    walks = network.Walks.of(net, att)
    out: list[shapely.Geometry] = [shapely.Polygon()] * len(lon)
    ok = np.flatnonzero(att.attached)
    if len(ok) == 0:
        return out
    dist = np.atleast_2d(
        dijkstra(walks.graph, directed=True, indices=walks.row[ok], limit=distance_m)
    )
    half = net.length / 2
    middle = np.minimum(dist[:, net.u] + half, dist[:, net.v] + half)
    for row, i in enumerate(ok):
        inside = middle[row] <= distance_m
        inside[att.edge[i]] = True  # its own road
        area = shapely.buffer(shapely.union_all(net.segments[inside]), width_m)
        out[i] = from_metric([area])[0]
    return out


def summary(store: Store) -> dict[str, object]:
    """How distances are measured ("walk", or "straight" where there are no walkable roads)
    and the toilets counted (open, planned)."""
    net = network.of_store(store)
    return {
        "method": reach.WALK if len(net.u) else reach.STRAIGHT,
        "toilets": {
            "existing": len(toilets(store, OPEN)[0]),
            "planned": len(toilets(store, PLANNED)[0]),
        },
    }


def _share(part: float, whole: float) -> float:
    """part / whole to the whole percent (what a protected role sees of a count)."""
    return round(part / whole, 2) if whole > 0 else 0.0


def _site_list(plan: Plan, answer: covering.Siting, protected: bool) -> list[dict[str, object]]:
    """The sites in the order their gains were taken; where ``protected`` the gains are
    shares of the unserved (whole percent) or whole metres, and sites showing none left out."""
    out: list[dict[str, object]] = []
    for i, gain in zip(answer.chosen, answer.gains, strict=True):
        if plan.objective == "coverage":
            shown: float = _share(gain, plan.before) if protected else round(gain)
        else:  # metres of walk saved per household
            shown = round(gain / max(plan.demand, 1), 0 if protected else 1)
        if protected and shown == 0:
            continue
        out.append({"lon": float(plan.lon[i]), "lat": float(plan.lat[i]), "gain": shown})
    for rank, site in enumerate(out, start=1):
        site["rank"] = rank
    return out


def _figures(plan: Plan, answer: covering.Siting, protected: bool) -> dict[str, object]:
    """What an answer achieves, with its proof: households covered (for a protected role,
    shares of the unserved), or the mean walk."""
    out: dict[str, object]
    milp = answer.method == "milp"
    if plan.objective == "coverage":
        if protected:
            out = {"covered_share": _share(answer.objective, plan.before)}
            if milp:
                out["bound_share"] = _share(answer.bound, plan.before)
        else:
            out = {
                "covered": round(answer.objective),
                "unserved_after": round(plan.before - answer.objective),
            }
            if milp:
                out["bound"] = round(answer.bound)
    else:
        n, places = max(plan.demand, 1), 0 if protected else 1
        out = {"mean_walk_m": round(answer.objective / n, places)}
        if milp:
            out["bound_mean_walk_m"] = round(answer.bound / n, places)
    out["seconds"] = round(answer.seconds, 3)
    if milp:
        out |= {"optimal": answer.optimal, "gap": round(max(answer.gap, 0.0), 9)}
    return out


def describe(plan: Plan, *, protected: bool = False) -> dict[str, object]:
    """A siting answer as plain data (WGS84): the exact sites with their marginal gains,
    the greedy ones beside them, and what each achieves. Where ``protected`` no household
    count is given: shares of the unserved to the whole percent, walks to the whole metre
    (a site's gain near a point must not tell one household)."""
    n = max(plan.households, 1)
    if plan.objective == "coverage":
        before: dict[str, object] = (
            {"unserved_share": _share(plan.before, n)}
            if protected
            else {"unserved": int(plan.before), "households": plan.households}
        )
        gain = (
            "share of the unserved households newly within distance_m of a toilet"
            if protected
            else "households newly within distance_m of a toilet"
        )
    else:
        before = {"mean_walk_m": round(plan.before / n, 0 if protected else 1)}
        gain = "metres of walk saved per household in scope"
    return {
        "objective": plan.objective,
        "distance_m": plan.distance_m,
        "method": plan.method,
        "candidates": len(plan.lon),
        "before": before,
        "solver": covering.SOLVER,
        "exact": _figures(plan, plan.exact, protected),
        "greedy": _figures(plan, plan.greedy, protected),
        "gain": gain,
        "sites": _site_list(plan, plan.exact, protected),
        "greedy_sites": _site_list(plan, plan.greedy, protected),
        "protected": protected,
    }


def area_shares(
    store: Store, scope: Scope, level: str, distances: Sequence[int] = DISTANCES
) -> list[dict[str, object]]:
    """Per grid, community or zone: the shares of households within each distance of an
    open toilet and of an open or planned one, in steps of 5 % — what a role whose counts
    are protected sees (no counts: shares this coarse do not move for one household)."""
    acc = access(store, scope, limit=max(distances))
    grids = store.query("grids", Query())
    up = {int(i): p.get("community_id") for i, p in zip(grids.ids, grids.properties, strict=True)}
    communities = store.query("communities", Query())
    zone = {
        int(i): p.get("zone_id")
        for i, p in zip(communities.ids, communities.properties, strict=True)
    }
    area_of = {
        "grids": lambda g: g,
        "communities": lambda g: up.get(g),
        "zones": lambda g: zone.get(up.get(g)) if up.get(g) is not None else None,
    }[level]
    areas = np.array([area_of(int(g)) if g >= 0 else None for g in acc.homes.grid], dtype=object)
    names = store.query(level, Query())
    out: list[dict[str, object]] = []
    for aid, p in zip(names.ids.tolist(), names.properties, strict=True):
        mine = areas == aid
        total = int(mine.sum())
        if total == 0:
            continue
        shares = {}
        for d in distances:
            shares[str(d)] = {
                "existing_share": _step(acc.served("existing", d)[mine].sum() / total),
                "with_planned_share": _step(acc.served("with_planned", d)[mine].sum() / total),
            }
        out.append({"id": aid, "name": p.get("name"), "toilets": shares})
    return out


def _step(share: float, step: float = 0.05) -> float:
    return round(step * round(share / step), 2)
