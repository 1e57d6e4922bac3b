"""Grid balance (网格调整): households per grid against the 300–500 target, and a redrawing that
moves whole buildings between adjacent grids of the same community until as many grids as
possible are within it, with as few households moved as can be.

Each grid is cut into one cell per building (Voronoi regions of the buildings inside the grid,
each widened to its whole footprint), so a building moves with the land around it and the
grids keep covering what they covered. A move must leave the grid it leaves in one piece, and
the moved cell must share a boundary with the grid it joins. Among moves that bring grids
nearer the target, the one that brings them nearest is taken, then the one moving fewest
households, then the one whose new boundary runs most along roads; moves repeat until none
helps; then the same again with ties broken in shuffled orders, keeping the best answer
(a local search: it does not prove the fewest moves, and says so).

Applying is one transaction: gaining grids grow first, then every changed grid takes its new
shape, and the store derives buildings' and households' grids again as it does after any
grid edit.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import shapely

from gridmap.crs import from_metric, to_metric
from gridmap.errors import QueryError
from gridmap.store.base import Query, Scope, Store

TARGET = (300, 500)
TOUCH_M = 1.0
"""Cells share a boundary when their common edge is at least this long."""
ROAD_M = 10.0
"""A new boundary within this of a road follows the road."""
MAX_MOVES = 500
RESTARTS = 4
"""Searches again with ties broken in shuffled orders (the first search can trap itself);
a fixed number, seeded, so that the same data always give the same proposal."""


@dataclass
class Cells:
    """The cells: each building's id, its grid and community, its households, its metric
    shape, and which cells it shares a boundary with."""

    building: npt.NDArray[np.int64]
    grid: npt.NDArray[np.int64]
    community: npt.NDArray[np.int64]
    households: npt.NDArray[np.int64]
    shape: npt.NDArray[np.object_]
    neighbours: list[set[int]] = field(default_factory=list)


def _grid_cells(area: shapely.Geometry, feet: list[shapely.Geometry]) -> list[shapely.Geometry]:
    """A grid cut into one cell per building footprint: Voronoi regions of the footprints'
    inner points, each widened to its footprint and kept off the others."""
    if len(feet) == 1:
        return [area]
    seeds = shapely.point_on_surface(np.asarray(feet, dtype=object))
    regions = shapely.get_parts(
        shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=area)
    )
    tree = shapely.STRtree(regions)
    own = tree.query(seeds, predicate="within")
    cell = [shapely.Polygon()] * len(feet)
    for s, r in zip(*own, strict=True):
        cell[int(s)] = shapely.intersection(regions[int(r)], area)
    everyone = shapely.union_all(feet)
    out = []
    for k, foot in enumerate(feet):
        others = shapely.difference(everyone, foot)
        out.append(
            shapely.intersection(shapely.union(shapely.difference(cell[k], others), foot), area)
        )
    return out


def cells(store: Store, scope: Scope) -> tuple[Cells, dict[int, shapely.Geometry], dict[int, int]]:
    """The cells, each grid's metric shape and each grid's community; households are those
    ``scope`` sees (their reads noted)."""
    grids = store.query("grids", Query()).with_geometry()
    shape = dict(zip(grids.ids.tolist(), to_metric(grids.geometries), strict=True))
    community = {
        int(i): int(p.get("community_id") or -1)
        for i, p in zip(grids.ids, grids.properties, strict=True)
    }
    b = store.query("buildings", Query()).with_geometry()
    feet = to_metric(b.geometries)
    of_building = store.values("households", "building_id", scope=scope)
    per_building = Counter(v for v in of_building.values() if v is not None)
    by_grid: dict[int, list[int]] = defaultdict(list)
    for k, p in enumerate(b.properties):
        if p.get("grid_id") in shape:
            by_grid[int(p["grid_id"])].append(k)
    rows: list[tuple[int, int, int, int, shapely.Geometry]] = []
    for g, ks in by_grid.items():
        for k, c in zip(ks, _grid_cells(shape[g], [feet[k] for k in ks]), strict=True):
            bid = int(b.ids[k])
            rows.append((bid, g, community[g], per_building.get(bid, 0), c))
    loose = [f for f, v in of_building.items() if v is None]
    _count_loose(store, scope, loose, rows)
    cs = Cells(
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.int64),
        np.array([r[3] for r in rows], np.int64),
        np.array([r[4] for r in rows], dtype=object),
    )
    cs.neighbours = adjacency(cs.shape)
    return cs, shape, community


def _count_loose(
    store: Store,
    scope: Scope,
    loose: list[int],
    rows: list[tuple[int, int, int, int, shapely.Geometry]],
) -> None:
    """Households with no building count in the cell their point lies in (they move with
    it); ``rows`` are updated in place."""
    if not loose or not rows:
        return
    fs = store.query("households", Query(ids=loose), scope=scope).with_geometry()
    pts = to_metric(fs.geometries)
    where, cell = shapely.STRtree(np.asarray([r[4] for r in rows], dtype=object)).query(
        pts, predicate="intersects"
    )
    first = np.unique(where, return_index=True)[1]
    extra = Counter(cell[first].tolist())
    for k, n in extra.items():
        b, g, c, h, shape = rows[k]
        rows[k] = (b, g, c, h + n, shape)


def adjacency(shapes: npt.NDArray[np.object_]) -> list[set[int]]:
    """Which shapes share a boundary at least TOUCH_M long."""
    out: list[set[int]] = [set() for _ in shapes]
    if len(shapes) == 0:
        return out
    a, b = shapely.STRtree(shapes).query(shapes, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    common = shapely.intersection(shapely.boundary(shapes[a]), shapely.boundary(shapes[b]))
    for i, j, length in zip(a.tolist(), b.tolist(), shapely.length(common), strict=True):
        if length >= TOUCH_M:
            out[i].add(j)
            out[j].add(i)
    return out


def _off(h: int, lo: int, hi: int) -> int:
    return max(0, lo - h) + max(0, h - hi)


def _connected(members: set[int], neighbours: list[set[int]]) -> bool:
    if not members:
        return False
    start = next(iter(members))
    seen, todo = {start}, deque([start])
    while todo:
        for n in neighbours[todo.popleft()]:
            if n in members and n not in seen:
                seen.add(n)
                todo.append(n)
    return len(seen) == len(members)


@dataclass(frozen=True)
class Move:
    """One building (its cell) from one grid to another."""

    building: int
    source: int
    target: int
    households: int


def propose(
    c: Cells,
    *,
    lo: int = TARGET[0],
    hi: int = TARGET[1],
    roads: shapely.Geometry | None = None,
    restarts: int = RESTARTS,
    seed: int = 0,
) -> list[Move]:
    """Moves that bring grids into [lo, hi] (see the module's docstring): the local search
    in the cells' order, then again with ties broken in shuffled orders (``restarts``
    times, seeded: the same data give the same answer); the best wins — fewest out of range,
    then least total distance from the target, then fewest households moved."""
    if not 0 < lo <= hi:
        raise QueryError("the target needs 0 < min ≤ max households")
    near_road = shapely.buffer(roads, ROAD_M) if roads is not None and not roads.is_empty else None
    rng = np.random.default_rng(seed)
    best: tuple[tuple[int, int, int], list[Move]] | None = None
    for k in range(restarts + 1):
        order = np.arange(len(c.grid)) if k == 0 else rng.permutation(len(c.grid))
        grid = _search(c, lo, hi, near_road, order)
        moves = [
            Move(int(c.building[i]), int(c.grid[i]), int(grid[i]), int(c.households[i]))
            for i in np.flatnonzero(grid != c.grid)
        ]
        after = counts(c, moves)
        score = (
            sum(_off(h, lo, hi) > 0 for h in after.values()),
            sum(_off(h, lo, hi) for h in after.values()),
            sum(m.households for m in moves),
        )
        if best is None or score < best[0]:
            best = (score, moves)
        if best[0][0] == 0 and k == 0 and not moves:
            break
    return best[1] if best is not None else []


def _search(
    c: Cells,
    lo: int,
    hi: int,
    near_road: shapely.Geometry | None,
    order: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """One local search: the best improving move, again and again (the total distance from
    the target falls with each, so it ends); the cells' grids at the end."""
    grid = c.grid.copy()
    count: Counter[int] = Counter()
    for g, h in zip(grid.tolist(), c.households.tolist(), strict=True):
        count[g] += h
    members: dict[int, set[int]] = defaultdict(set)
    for i, g in enumerate(grid.tolist()):
        members[g].add(i)
    for _ in range(MAX_MOVES):
        best: tuple[tuple[float, float, float], int, int] | None = None
        for i in order.tolist():
            a = int(grid[i])
            if len(members[a]) < 2:
                continue
            w = int(c.households[i])
            for j in c.neighbours[i]:
                b = int(grid[j])
                if b == a or c.community[j] != c.community[i]:
                    continue
                gain = (_off(count[a], lo, hi) + _off(count[b], lo, hi)) - (
                    _off(count[a] - w, lo, hi) + _off(count[b] + w, lo, hi)
                )
                if gain <= 0:
                    continue
                key = (float(gain), float(-w), 0.0)
                if best is not None and key[:2] < best[0][:2]:
                    continue
                if not _connected(members[a] - {i}, c.neighbours):
                    continue
                key = (float(gain), float(-w), _along_roads(c, i, members[a], near_road))
                if best is None or key > best[0]:
                    best = (key, i, b)
        if best is None:
            break
        _, i, b = best
        a = int(grid[i])
        members[a].discard(i)
        members[b].add(i)
        count[a] -= int(c.households[i])
        count[b] += int(c.households[i])
        grid[i] = b
    return grid


def _along_roads(c: Cells, i: int, source: set[int], near_road: shapely.Geometry | None) -> float:
    """The share of the boundary a move would draw (the cell against what stays) near roads."""
    if near_road is None:
        return 0.0
    stays = [j for j in c.neighbours[i] if j in source and j != i]
    if not stays:
        return 0.0
    edge = shapely.intersection(c.shape[i].boundary, shapely.union_all(c.shape[stays]).boundary)
    if edge.length == 0:
        return 0.0
    return float(shapely.intersection(edge, near_road).length / edge.length)


def counts(c: Cells, moves: list[Move] | None = None) -> dict[int, int]:
    """Households per grid, before or after ``moves``."""
    out: Counter[int] = Counter()
    for g, h in zip(c.grid.tolist(), c.households.tolist(), strict=True):
        out[g] += h
    for m in moves or []:
        out[m.source] -= m.households
        out[m.target] += m.households
    return dict(out)


def new_shapes(
    c: Cells, shapes: dict[int, shapely.Geometry], moves: list[Move]
) -> dict[int, shapely.Geometry]:
    """The metric shapes of the grids ``moves`` change: what they had, less the cells that
    leave, plus those that join (each a single polygon)."""
    where = {int(b): k for k, b in enumerate(c.building.tolist())}
    out_of: dict[int, list[shapely.Geometry]] = defaultdict(list)
    into: dict[int, list[shapely.Geometry]] = defaultdict(list)
    for m in moves:
        cell = c.shape[where[m.building]]
        out_of[m.source].append(cell)
        into[m.target].append(cell)
    changed = {}
    for g in set(out_of) | set(into):
        s = shapely.difference(shapes[g], shapely.union_all(out_of[g])) if out_of[g] else shapes[g]
        if into[g]:
            s = shapely.union(s, shapely.union_all(into[g]))
        changed[g] = _one_polygon(s)
    return changed


def _one_polygon(s: shapely.Geometry) -> shapely.Geometry:
    """Slivers from the cuts closed and dropped: the largest polygon of the result."""
    s = shapely.buffer(
        shapely.buffer(shapely.make_valid(s), 0.05, join_style="mitre"), -0.05, join_style="mitre"
    )
    parts = [p for p in shapely.get_parts(s) if isinstance(p, shapely.Polygon)]
    return max(parts, key=lambda p: p.area)


def apply(
    store: Store,
    shapes: dict[int, shapely.Geometry],
    *,
    versions: dict[int, int] | None = None,
    scope: Scope = Scope.ALL,
) -> None:
    """Give the grids their new metric shapes together, in one transaction; the store
    derives buildings' and households' grids again (and refuses, writing nothing, if a
    household would end in another grid than its building, or — with ``versions`` — if a
    grid was edited since the proposal was made)."""
    expected = {g: versions[g] for g in shapes} if versions is not None else None
    geoms = {g: _wgs84(s) for g, s in shapes.items()}
    store.reshape("grids", geoms, expected_versions=expected, scope=scope)


def _wgs84(s: shapely.Geometry) -> shapely.Geometry:
    """A metric polygon in WGS84, valid (a transform can fold a sliver's edges)."""
    g = shapely.make_valid(from_metric([s])[0])
    parts = [p for p in shapely.get_parts(g) if isinstance(p, shapely.Polygon)]
    return max(parts, key=lambda p: p.area)


@dataclass(frozen=True)
class Plan:
    """A redrawing proposal: the cells it was made from, the moves, the grids' counts and
    shapes before and after, and the stamps it was computed at (its basis)."""

    cells: Cells
    shapes: dict[int, shapely.Geometry]
    moves: list[Move]
    after_shapes: dict[int, shapely.Geometry]
    lo: int
    hi: int
    basis: str
    versions: dict[int, int]
    """Each grid's version when the proposal was made (applying refuses a grid edited since)."""


BASIS_TABLES = ("grids", "buildings", "households", "roads")


def plan(store: Store, scope: Scope, *, lo: int = TARGET[0], hi: int = TARGET[1]) -> Plan:
    """The proposal for the grids ``scope`` covers (all of them, or its own grids: moves
    stay among those)."""
    basis = f"{lo}-{hi}." + ".".join(map(str, store.stamps(BASIS_TABLES)))
    grids = store.query("grids", Query())
    versions = dict(zip(grids.ids.tolist(), grids.versions.tolist(), strict=True))
    c, shapes, _ = cells(store, scope)
    if scope.grid_ids is not None:
        keep = np.isin(c.grid, sorted(scope.grid_ids))
        c = _subset(c, keep)
        shapes = {g: s for g, s in shapes.items() if g in scope.grid_ids}
    roads = _roads(store)
    moves = propose(c, lo=lo, hi=hi, roads=roads)
    return Plan(c, shapes, moves, new_shapes(c, shapes, moves), lo, hi, basis, versions)


def _subset(c: Cells, keep: npt.NDArray[np.bool_]) -> Cells:
    idx = np.flatnonzero(keep)
    pos = {int(i): k for k, i in enumerate(idx)}
    out = Cells(c.building[idx], c.grid[idx], c.community[idx], c.households[idx], c.shape[idx])
    out.neighbours = [{pos[j] for j in c.neighbours[i] if j in pos} for i in idx.tolist()]
    return out


def _roads(store: Store) -> shapely.Geometry:
    from gridmap.analysis.cameras import _walkable

    lines = _walkable(store)
    return shapely.union_all(lines) if len(lines) else shapely.LineString()


def describe(store: Store, p: Plan, *, rounded: int | None = None) -> dict[str, object]:
    """A proposal as plain data: per grid before and after (with the target's flag), the
    moves, and what they achieve. With ``rounded`` household counts are multiples of it."""

    def n(v: int) -> int | str:
        if not rounded:
            return int(v)
        return f"<{rounded}" if 0 < v < rounded else int(rounded * round(v / rounded))

    def flag(v: int) -> str:
        return "under" if v < p.lo else "over" if v > p.hi else "ok"

    before, after = counts(p.cells), counts(p.cells, p.moves)
    names = {
        int(i): q.get("name")
        for i, q in zip(*_grid_names(store), strict=True)
        if int(i) in p.shapes
    }
    addresses = dict(store.values("buildings", "address"))
    grids = [
        {
            "id": g,
            "name": names.get(g),
            "before": n(before.get(g, 0)),
            "after": n(after.get(g, 0)),
            "flag_before": flag(before.get(g, 0)),
            "flag_after": flag(after.get(g, 0)),
        }
        for g in sorted(p.shapes)
    ]
    moves = [
        {
            "building": m.building,
            "address": addresses.get(m.building),
            "from": m.source,
            "to": m.target,
            "households": n(m.households),
        }
        for m in p.moves
    ]
    return {
        "target": [p.lo, p.hi],
        "grids": grids,
        "moves": moves,
        "in_range_before": sum(flag(before.get(g, 0)) == "ok" for g in p.shapes),
        "in_range_after": sum(flag(after.get(g, 0)) == "ok" for g in p.shapes),
        "households_moved": n(sum(m.households for m in p.moves)) if p.moves else 0,
        "buildings_moved": len(p.moves),
        "method": "local search (not proven minimal)",
        "basis": p.basis,
        "rounded": bool(rounded),
    }


def _grid_names(store: Store) -> tuple[npt.NDArray[np.int64], list[dict[str, object]]]:
    fs = store.query("grids", Query())
    return fs.ids, fs.properties
