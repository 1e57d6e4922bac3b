"""Everyday spatial questions: which areas contain a point, the nearest features, statistics."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

from gridmap.cql import Filter
from gridmap.cql import tree as ct
from gridmap.crs import METRIC_EPSG, to_metric
from gridmap.disclosure import Protected, Table, protect
from gridmap.errors import (
    FeatureNotFoundError,
    InvalidGeometryError,
    PermissionDeniedError,
    QueryError,
)
from gridmap.layers import HOUSEHOLD_TAGS, get_layer
from gridmap.store.backend import Measure
from gridmap.store.base import BBox, Feature, Query, Scope, Store


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

    The database's spatial index proposes the ``k`` features nearest in lon/lat degrees
    (KNN); their exact distances in EPSG:4547 give a radius within which at least ``k``
    features lie. Every feature in a box that holds that radius's circle is then ranked
    by exact distance (ties by id), so that no nearer feature can be missed: the degree
    ranking only proposes, the metric ranking decides.
    """
    get_layer(layer_id)
    pt = _check_point(lon, lat)
    if not 1 <= k <= 100:
        msg = "k must be between 1 and 100"
        raise InvalidGeometryError(msg)
    final = scope
    # Candidates are ranked here and never leave; only the k answers are read under the
    # caller's scope (and so noted in its read log).
    scope = dataclasses.replace(scope, reads=None)
    where = Query(equals=equals or {})
    near = store.nearest_ids(layer_id, lon, lat, k, where, scope=scope)
    if not near:
        return []
    fs = store.query(layer_id, Query(ids=near), scope=scope).with_geometry()
    kth = float(np.max(_distances(fs.geometries, pt), initial=0.0))
    box = _search_box(lon, lat, kth) if math.isfinite(kth) else None
    fs = store.query(layer_id, dataclasses.replace(where, bbox=box), scope=scope)
    fs = fs.with_geometry()
    dist = _distances(fs.geometries, pt)
    order = np.lexsort((fs.ids, dist))[: len(near)]
    chosen = fs.ids[order].tolist()
    found = {f.id: f for f in store.query(layer_id, Query(ids=chosen), scope=final)}
    return [
        Nearest(found[fid], float(dist[i]))
        for fid, i in zip(chosen, order, strict=True)
        if fid in found  # unless deleted meanwhile
    ]


_R_MIN = 6_335_000.0
"""Metres, less than the smallest radius of curvature of the CGCS2000 (GRS 80) ellipsoid
(6 335 439 m, the meridian's at the equator): a sphere of this radius, in the same
latitudes and longitudes, measures no path longer than the ellipsoid does."""
_WIDE = 60.0
"""Degrees of longitude from the metric CRS's central meridian beyond which a nearest
search bounds no box (it ranks the whole layer): far from it the projection stretches
beyond what its algorithm keeps exact."""


@lru_cache(maxsize=1)
def _metric_origin() -> tuple[float, float]:
    """(central meridian, scale factor on it) of the metric CRS, a transverse Mercator."""
    import pyproj

    op = pyproj.CRS.from_epsg(METRIC_EPSG).coordinate_operation
    params = {p.name: p.value for p in op.params} if op is not None else {}
    return (
        float(params["Longitude of natural origin"]),
        float(params["Scale factor at natural origin"]),
    )


def _search_box(lon: float, lat: float, radius_m: float) -> BBox | None:
    """A lon/lat box that holds every place within ``radius_m`` metres of (lon, lat) as
    EPSG:4547 measures it (None: no box, the whole layer).

    A transverse Mercator map's scale is nowhere below its scale on the central meridian,
    k0, so two places ``d`` metres apart on the map are at most ``d / k0`` apart along the
    ellipsoid, and so on the sphere of radius :data:`_R_MIN`. The box bounds that
    sphere's cap (latitudes ± its angular radius; longitudes ± asin(sin δ / cos φ), every
    longitude when the cap holds a pole or crosses the antimeridian).
    """
    cm, k0 = _metric_origin()
    if abs((lon - cm + 180.0) % 360.0 - 180.0) > _WIDE:
        return None
    delta = (radius_m * 1.001 + 0.01) / (k0 * _R_MIN)  # radians
    phi = math.radians(lat)
    dlat = math.degrees(delta)
    south, north = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    if delta >= math.pi / 2 - abs(phi):
        return (-180.0, south, 180.0, north)
    dlon = math.degrees(math.asin(min(1.0, math.sin(delta) / math.cos(phi))))
    if lon - dlon < -180.0 or lon + dlon > 180.0:
        return (-180.0, south, 180.0, north)
    return (lon - dlon, south, lon + dlon, north)


def _distances(geoms: Any, pt: shapely.Point) -> np.ndarray:
    if len(geoms) == 0:
        return np.empty(0)
    m = to_metric(np.concatenate([np.asarray(geoms, dtype=object), [pt]]))
    return shapely.distance(m[:-1], m[-1])


Level = str  # "grids" | "communities" | "zones"
LEVELS = ("grids", "communities", "zones")
PROTECTED_WINDOWS = (7, 30, 90, 180, 365)
"""Visit windows (days) offered where small counts are protected: comparing many nearby
windows would tell how many households were visited on one day."""


def household_stats(
    store: Store,
    level: Level,
    *,
    scope: Scope = Scope.ALL,
    today: dt.date | None = None,
    days: int = 30,
    small_cells: int | None = None,
    campaign: int | None = None,
    toilets: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Households, population, tag counts and visits in the last ``days`` per area, and
    with ``campaign`` that campaign's households, those done and its coverage; with
    ``toilets`` (walking distances) the households within each of a toilet.

    ``level`` is ``grids``, ``communities`` or ``zones``. Only households within ``scope``
    are counted, and only areas that hold grids of the scope are listed. With
    ``small_cells`` every level, measure and visit window is protected at once by
    :func:`gridmap.disclosure.protect` (sums between levels; tag and visit counts at most
    the households; shorter windows at most longer ones): counts below it show as
    ``"<N"``, counts withheld to protect them as ``"x"``, and visit coverage only where
    both of its counts show. The window must then be one of :data:`PROTECTED_WINDOWS`.
    Campaign counts are protected with the rest, every campaign's at once whichever is
    asked for, with the orderings their targets imply (done ≤ target ≤ households; a
    target inside a tag's households at most that tag's count, and so on). Toilet counts
    are for roles whose counts are not protected.
    """
    if level not in LEVELS:
        msg = "level must be grids, communities or zones"
        raise QueryError(msg)
    if small_cells and days not in PROTECTED_WINDOWS:
        msg = f"days must be one of {', '.join(map(str, PROTECTED_WINDOWS))} for this role"
        raise QueryError(msg)
    if toilets is not None:
        from gridmap.analysis.toilets import check_distances

        if small_cells:
            msg = "for this role toilet access is given as shares (GET /analysis/toilet-access)"
            raise QueryError(msg)
        toilets = check_distances(toilets, protected=False)
    today = today or dt.date.today()
    windows = sorted({days, *PROTECTED_WINDOWS}) if small_cells else [days]
    tree = _hierarchy(store, scope)
    members = campaign_members(store, scope, campaign, protected=bool(small_cells))
    extra = _toilet_measures(store, scope, toilets, protected=bool(small_cells))
    counts, orders, aliases = _count_households(store, scope, tree, today, windows, members, extra)
    values = {(m, c): v for c, row in counts.items() for m, v in row.items() if m not in aliases}
    if small_cells:
        prot = _protected(
            tuple(sorted(values.items(), key=repr)),
            tuple(_relations(tree, windows, members, orders, aliases, extra)),
            small_cells,
            disclosure_key(store),
        )
        shown = {k: prot.shown(k, v, small_cells) for k, v in values.items()}
    else:
        shown = dict(values)
    shown.update({(m, c): shown[(twin, c)] for m, twin in aliases.items() for c in counts})
    out = []
    for aid, name in tree.names[level]:
        if aid not in tree.in_scope[level]:
            continue
        cell = (level, aid)
        hh, visited = shown[("households", cell)], shown[(f"visited:{days}", cell)]
        coverage = (
            round(visited / hh, 4)
            if isinstance(hh, int) and isinstance(visited, int) and hh
            else None
        )
        row = {
            "id": aid,
            "name": name,
            "households": hh,
            "population": shown[("population", cell)],
            "tags": {t: shown[(f"tag:{t}", cell)] for t in HOUSEHOLD_TAGS},
            f"visited_last_{days}_days": visited,
            "visit_coverage": coverage,
        }
        if campaign is not None:
            target, done = shown[(f"campaign:{campaign}", cell)], shown[(f"done:{campaign}", cell)]
            row["campaign"] = {
                "id": campaign,
                "households": target,
                "done": done,
                "coverage": _share(done, target),
            }
        if toilets:
            row["toilets"] = _toilet_row(shown, cell, hh, toilets)
        out.append(row)
    return out


def _toilet_row(
    shown: dict[tuple[str, Any], Any], cell: Any, hh: Any, distances: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Per distance: households within it of an open toilet, of an open or planned one,
    and their shares."""
    out: dict[str, dict[str, Any]] = {}
    for d in distances:
        a, b = shown[(f"toilet:existing:{d}", cell)], shown[(f"toilet:all:{d}", cell)]
        out[str(d)] = {
            "existing": a,
            "existing_share": _share(a, hh),
            "with_planned": b,
            "with_planned_share": _share(b, hh),
        }
    return out


@dataclass(frozen=True)
class Extra:
    """Further per-grid counts protected with the household statistics: their names, the
    counts, how they are ordered (a ≤ b) and which are another measure under a new name."""

    names: tuple[str, ...] = ()
    per_grid: Mapping[int, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    orders: tuple[tuple[str, str], ...] = ()
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _toilet_measures(
    store: Store, scope: Scope, distances: Sequence[int] | None, *, protected: bool
) -> Extra:
    """Households within walking distance of a toilet, per grid. Never where counts are
    protected: a planner may move toilets and roads, and two protected tables around such an
    edit would tell one household apart (planners get shares, see
    :func:`gridmap.analysis.toilets.area_shares`)."""
    from gridmap.analysis import toilets as tl

    if not distances or protected or not scope.allows_layer("households"):
        return Extra()
    acc = tl.access(store, scope, limit=max(distances))
    names = tl.measure_names(distances)
    everyone = frozenset(acc.homes.ids.tolist())
    named: dict[str, frozenset[int]] = {"households": everyone}
    aliases: dict[str, str] = {}
    for name in names:
        _, which, d = name.split(":")
        served = acc.served("existing" if which == "existing" else "with_planned", int(d))
        mine = frozenset(acc.homes.ids[served].tolist())
        twin = next((other for other, s in named.items() if s == mine), None)
        if twin is not None:
            aliases[name] = twin
        else:
            named[name] = mine

    def real(m: str) -> str:
        return aliases.get(m, m)

    orders = tuple(
        (real(a), real(b)) for a, b in tl.measure_orders(distances) if real(a) != real(b)
    )
    return Extra(tuple(names), tl.per_grid(acc, distances), orders, aliases)


def _share(part: Any, whole: Any) -> float | None:
    """part / whole when both are shown numbers and whole is not 0."""
    ok = isinstance(part, int) and isinstance(whole, int) and whole
    return round(part / whole, 4) if ok else None


@dataclass(frozen=True)
class Members:
    """Campaigns counted in statistics: each one's target households and those done."""

    ids: tuple[int, ...] = ()
    target: tuple[frozenset[int], ...] = ()
    done: tuple[frozenset[int], ...] = ()


def campaign_members(
    store: Store, scope: Scope, campaign: int | None, *, protected: bool
) -> Members:
    """The campaigns whose counts enter the table: the one asked for; when protected,
    every open campaign (so that asking for one changes nothing about what is withheld;
    at most MAX_OPEN of them, so the protection stays quick). A closed campaign's
    figures are not given under protection."""
    from gridmap import campaigns as camp

    if campaign is not None:
        c = camp.get(store, campaign)
        if not camp.visible_to(c, scope):
            raise FeatureNotFoundError(f"no campaign {campaign}")
        if protected and c.status != "open":
            msg = f"campaign {campaign} is closed: its figures are for roles that see households"
            raise PermissionDeniedError(msg)
    if protected:
        chosen = [c for c in camp.all_campaigns(store) if c.status == "open"]
    else:
        chosen = [camp.get(store, campaign)] if campaign is not None else []
    ids, target, done = [], [], []
    for c in chosen:
        sc = camp.target_scope(c, scope)
        members = store.query_ids("households", Query(filters=camp.target_filters(c)), scope=sc)
        standing = camp.standings(store, c, scope=scope)
        ids.append(c.id)
        target.append(frozenset(members[0].tolist()))
        done.append(frozenset(h for h, st in standing.items() if st.final))
    return Members(tuple(ids), tuple(target), tuple(done))


def _member_orders(
    members: Members, everyone: frozenset[int], tag_sets: dict[str, frozenset[int]]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Orderings (a ≤ b, per cell) that the campaigns' memberships imply, and aliases: a
    campaign whose target is exactly the households, a tag or an earlier campaign is that
    measure (protected once: two copies withheld apart would give each other away)."""
    out: list[tuple[str, str]] = []
    aliases: dict[str, str] = {}
    named = {"households": everyone, **{f"tag:{t}": s for t, s in tag_sets.items()}}
    for cid, target in zip(members.ids, members.target, strict=True):
        mine, me = target & everyone, f"campaign:{cid}"
        twin = next((other for other, s in named.items() if s == mine), None)
        if twin is not None:
            aliases[me] = twin
            out.append((f"done:{cid}", twin))
            continue
        out += [(f"done:{cid}", me), (me, "households")]
        for other, s in named.items():
            if mine <= s and other != "households":
                out.append((me, other))
            if s <= mine:
                out.append((other, me))
        named[me] = mine
    return out, aliases


def _relations(
    tree: _Hierarchy,
    windows: list[int],
    members: Members,
    orders: list[tuple[str, str]],
    aliases: dict[str, str],
    extra: Extra = Extra(),
) -> list[tuple[str, Any, Any]]:
    """How the counts are related: ("sum", parent, children) and ("order", a, b) for a ≤ b."""
    measures = [m for m in _measures(windows, members, extra) if m not in aliases]
    out: list[tuple[str, Any, Any]] = [
        ("sum", (m, up), tuple((m, k) for k in kids))
        for m in measures
        for up, kids in tree.equations
    ]
    cells = [(lv, i) for lv, rows in tree.names.items() for i, _ in rows]
    for c in cells:
        out += [("order", (f"tag:{t}", c), ("households", c)) for t in HOUSEHOLD_TAGS]
        chain = [f"visited:{w}" for w in windows] + ["households"]
        out += [("order", (a, c), (b, c)) for a, b in itertools.pairwise(chain)]
        out += [("order", (a, c), (b, c)) for a, b in orders]
    return out


def _measures(
    windows: list[int], members: Members = Members(), extra: Extra = Extra()
) -> list[str]:
    return [
        "households",
        "population",
        *(f"visited:{w}" for w in windows),
        *(f"tag:{t}" for t in HOUSEHOLD_TAGS),
        *(m for cid in members.ids for m in (f"campaign:{cid}", f"done:{cid}")),
        *extra.names,
    ]


@lru_cache(maxsize=64)
def _protected(
    values: tuple[tuple[Any, int], ...],
    relations: tuple[tuple[str, Any, Any], ...],
    threshold: int,
    key: bytes,
) -> Protected:
    """:func:`gridmap.disclosure.protect`, remembered by the table itself (it is pure)."""
    table = Table(
        dict(values),
        equations=[(a, b) for kind, a, b in relations if kind == "sum"],
        orders=[(a, b) for kind, a, b in relations if kind == "order"],
    )
    return protect(table, threshold=threshold, key=key)


def disclosure_key(store: Store) -> bytes:
    """The service's secret that orders complementary suppression (made on first use)."""
    stored = store.meta("disclosure_key")
    if stored is None:
        stored = secrets.token_hex(32)
        store.set_meta("disclosure_key", stored)
    return bytes.fromhex(stored)


@dataclass
class _Hierarchy:
    """Grids, communities and zones: names, parents, the sums that link them, what is in scope."""

    names: dict[str, list[tuple[int, Any]]]
    parent: dict[tuple[str, int], tuple[str, int]]
    equations: list[tuple[tuple[str, int], list[tuple[str, int]]]]
    in_scope: dict[str, set[int]]


def _hierarchy(store: Store, scope: Scope) -> _Hierarchy:
    names: dict[str, list[tuple[int, Any]]] = {}
    parent: dict[tuple[str, int], tuple[str, int]] = {}
    for level, up, key in (
        ("grids", "communities", "community_id"),
        ("communities", "zones", "zone_id"),
        ("zones", None, None),
    ):
        if not scope.allows_layer(level):
            names[level] = []
            continue
        fs = store.query(level, scope=scope)
        names[level] = [(int(i), p.get("name")) for i, p in zip(fs.ids, fs.properties, strict=True)]
        if up is not None and key is not None:
            for i, p in zip(fs.ids.tolist(), fs.properties, strict=True):
                if p.get(key) is not None:
                    parent[(level, i)] = (up, int(p[key]))
    children: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    cells = {(lv, i) for lv, rows in names.items() for i, _ in rows}
    for child, up in parent.items():
        if up in cells:
            children[up].append(child)
    equations = [(up, kids) for up, kids in children.items()]
    mine = {i for i, _ in names["grids"] if scope.grid_ids is None or i in scope.grid_ids}
    in_scope: dict[str, set[int]] = {"grids": mine, "communities": set(), "zones": set()}
    for g in mine:
        c = parent.get(("grids", g))
        if c is not None:
            in_scope["communities"].add(c[1])
            z = parent.get(c)
            if z is not None:
                in_scope["zones"].add(z[1])
    return _Hierarchy(names, parent, equations, in_scope)


def _household_measures(today: dt.date, windows: list[int]) -> dict[str, Measure]:
    """The base measures of a grid's households, as conditions the database counts."""
    start = dt.datetime.combine(today, dt.time())
    status = ct.Compare("=", ct.Prop("last_visit_status", "str"), ct.Lit("visited", "str"))
    out = {"households": Measure(), "population": Measure("sum", "members")}
    for w in windows:
        since = (start - dt.timedelta(days=w)).isoformat()
        recent = ct.Compare(">=", ct.Prop("last_visit_at", "datetime"), ct.Lit(since, "datetime"))
        out[f"visited:{w}"] = Measure(where=_household_filter(ct.And((status, recent))))
    for t in HOUSEHOLD_TAGS:
        out[f"tag:{t}"] = Measure(
            where=_household_filter(ct.Array("contains", ct.Prop("tags", "list"), (t,)))
        )
    return out


def _household_filter(root: ct.Node) -> Filter:
    return Filter("households", root, frozenset(_props_of(root)))


def _props_of(node: Any) -> set[str]:
    """The property names a checked tree reads."""
    if isinstance(node, ct.Prop):
        return {node.name}
    if dataclasses.is_dataclass(node):
        out: set[str] = set()
        for f in dataclasses.fields(node):
            v = getattr(node, f.name)
            for x in v if isinstance(v, tuple) else (v,):
                if dataclasses.is_dataclass(x):
                    out |= _props_of(x)
        return out
    return set()


def _count_members(
    store: Store,
    scope: Scope,
    members: Members,
    pos: dict[int, int],
    table: npt.NDArray[np.int64],
    first: int,
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The campaigns' target and done counts per grid (columns from ``first``), and the
    orderings and aliases their memberships imply."""
    grid_of = store.values("households", "grid_id", scope=scope)
    tags_of = store.values("households", "tags", scope=scope)
    everyone = frozenset(f for f, g in grid_of.items() if g in pos)
    tag_sets = {
        t: frozenset(f for f in everyone if isinstance(tags_of.get(f), list) and t in tags_of[f])
        for t in HOUSEHOLD_TAGS
    }
    j = first
    for target, done in zip(members.target, members.done, strict=True):
        for f in target & everyone:
            table[pos[grid_of[f]], j] += 1
            if f in done:
                table[pos[grid_of[f]], j + 1] += 1
        j += 2
    return _member_orders(members, everyone, tag_sets)


def _count_households(
    store: Store,
    scope: Scope,
    tree: _Hierarchy,
    today: dt.date,
    windows: list[int],
    members: Members = Members(),
    extra: Extra = Extra(),
) -> tuple[dict[tuple[str, int], dict[str, int]], list[tuple[str, str]], dict[str, str]]:
    """Per cell of every level: households, population, visited in each window, tags,
    the campaigns' counts and ``extra``'s; the orderings and aliases they imply."""
    measures = _measures(windows, members, extra)
    grid_ids = [i for i, _ in tree.names["grids"]]
    pos = {g: k for k, g in enumerate(grid_ids)}
    table = np.zeros((len(grid_ids), len(measures)), dtype=np.int64)
    orders: list[tuple[str, str]] = []
    aliases: dict[str, str] = {}
    if scope.allows_layer("households") and grid_ids:
        base = _household_measures(today, windows)
        per_grid = store.aggregate("households", "grid_id", base, scope=scope)
        for g, figures in per_grid.items():
            if g in pos:
                table[pos[g], : len(base)] = [figures[m] for m in base]
        if members.ids:
            orders, aliases = _count_members(store, scope, members, pos, table, len(base))
        first = len(measures) - len(extra.names)
        for g, figures in extra.per_grid.items():
            if g in pos:
                for j, name in enumerate(extra.names):
                    table[pos[g], first + j] = figures.get(name, 0)
        orders = [*orders, *extra.orders]
        aliases = {**aliases, **extra.aliases}
    counts: dict[tuple[str, int], dict[str, int]] = {
        (lv, i): dict.fromkeys(measures, 0) for lv, rows in tree.names.items() for i, _ in rows
    }
    for g, row in zip(grid_ids, table.tolist(), strict=True):
        cell: tuple[str, int] | None = ("grids", g)
        while cell is not None:
            if cell in counts:
                acc = counts[cell]
                for m, v in zip(measures, row, strict=True):
                    acc[m] += v
            cell = tree.parent.get(cell)
    return counts, orders, aliases
