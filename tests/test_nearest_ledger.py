"""Nearest features and a ledger's latest entries, reduced in the database: part of the
store's contract, the same on every backend (``GRIDMAP_TEST_BACKEND``). Answers are checked
against brute forces computed here (pyproj, shapely, Python over every row read), across
the GeoPackage and PostGIS backends, and the PostGIS plan is checked to use the index's
KNN order."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pytest
import shapely

from gridmap.errors import HiddenLayerError, InvalidFeatureError, PermissionDeniedError
from gridmap.store import FeatureStore, Query, Scope, open_store
from tests import postgres
from tests.test_contract import _grid, _two_stores

P = shapely.Point


@lru_cache(maxsize=1)
def _to_4547() -> Any:
    """WGS84 lon/lat → EPSG:4547 metres, straight from pyproj (not gridmap.crs)."""
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", "EPSG:4547", always_xy=True)


def _brute_nearest(
    features: list[tuple[int, Any]], lon: float, lat: float, k: int
) -> list[tuple[int, float]]:
    """The k (id, metres) nearest the point among every feature given, ranked by distance
    in EPSG:4547 and then id: every distance computed, nothing skipped."""
    tr = _to_4547()
    geoms = np.asarray([g for _, g in features], dtype=object)
    metric = shapely.transform(geoms, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))
    d = shapely.distance(metric, P(*tr.transform(lon, lat))).tolist()
    return sorted(((fid, dist) for (fid, _), dist in zip(features, d, strict=True)),
                  key=lambda x: (x[1], x[0]))[:k]  # fmt: skip


def _offset(lon: float, lat: float, east_m: float, north_m: float) -> shapely.Point:
    """The point ``east_m``, ``north_m`` metres from (lon, lat) on the EPSG:4547 map."""
    tr = _to_4547()
    x, y = tr.transform(lon, lat)
    return P(*tr.transform(x + east_m, y + north_m, direction="INVERSE"))


NEAR_POINTS = [
    (113.2843, 34.8017),  # among the features
    (113.2600, 34.7900),  # on a corner of the grids
    (113.3100, 34.8300),  # inside the service area, beyond the features
    (113.0000, 34.5000),  # 40 km away
    (116.0000, 36.0000),  # 280 km away, across the central meridian
    (100.0000, 30.0000),  # 1400 km away
    (113.2900, -60.0000),  # across the equator: the search circle holds the south pole
    (-100.0000, 0.0000),  # the other side of the Earth
    (179.0000, 89.0000),  # by the north pole
]


def test_nearest_equals_a_brute_force_in_metres(store: FeatureStore) -> None:
    """The k nearest, by the index's candidates and an exact ranking, are exactly those of
    a brute force over every feature (pyproj and shapely here): points near and far, k up
    to more than there are, features sharing a point (ties go to the lower id), an
    equality filter, polygons, and a scope of one grid; only the answers are read."""
    from gridmap import queries
    from gridmap.access import ReadLog

    g1, g2 = _grid(store)
    rng = np.random.default_rng(29)
    n = 120
    spots = shapely.points(rng.uniform(113.262, 113.298, n), rng.uniform(34.791, 34.809, n))
    spots[10:16] = spots[9]  # seven toilets at one spot
    status = [("existing", "planned")[i % 3 == 0] for i in range(n)]
    t_ids = store.insert("toilets", spots, [{"name": f"t{i}", "status": status[i]}
                                             for i in range(n)])  # fmt: skip
    toilets = list(zip(t_ids, spots, strict=True))
    homes = shapely.points(rng.uniform(113.261, 113.299, n), rng.uniform(34.791, 34.809, n))
    homes[40:44] = homes[39]  # five households at one door
    h_ids = store.insert("households", homes, [{"room": str(i)} for i in range(n)])
    in_grid = {h: store.get("households", h).properties["grid_id"] for h in h_ids}
    households = list(zip(h_ids, homes, strict=True))
    polys = [shapely.box(x, y, x + 0.002, y + 0.0015)
             for x, y in zip(rng.uniform(113.26, 113.31, 12), rng.uniform(34.78, 34.83, 12),
                             strict=True)]  # fmt: skip
    o_ids = store.insert("old_neighbourhoods", polys, [{"name": str(i)} for i in range(12)])
    areas = list(zip(o_ids, polys, strict=True))
    points = [*NEAR_POINTS, *((float(shapely.get_x(g)), float(shapely.get_y(g)))
                              for g in (spots[9], homes[39]))]  # fmt: skip
    mine = Scope(grid_ids=frozenset({g2}))
    cases = [
        ("toilets", toilets, None, Scope()),
        ("toilets", [f for f, s in zip(toilets, status, strict=True) if s == "planned"],
         {"status": "planned"}, Scope()),
        ("households", households, None, Scope()),
        ("households", [f for f in households if in_grid[f[0]] == g2], None, mine),
        ("old_neighbourhoods", areas, None, Scope()),
    ]  # fmt: skip
    for layer_id, features, equals, scope in cases:
        for lon, lat in points:
            for k in (1, 3, 9, 100):
                got = queries.nearest(store, layer_id, lon, lat, k=k, scope=scope, equals=equals)
                want = _brute_nearest(features, lon, lat, k)
                where = (layer_id, lon, lat, k, equals, scope.grid_ids)
                assert [n.feature.id for n in got] == [f for f, _ in want], where
                assert [n.distance_m for n in got] == pytest.approx(
                    [d for _, d in want], rel=1e-12, abs=1e-6
                ), where
    # only the k answers are read (noted in the read log), in the caller's scope
    log = ReadLog()
    got = queries.nearest(store, "households", 113.28, 34.80, k=5,
                          scope=Scope(grid_ids=frozenset({g1}), reads=log))  # fmt: skip
    assert log.summary() == [("households", sorted(n.feature.id for n in got), g1)]
    with pytest.raises(HiddenLayerError):
        store.nearest_ids("households", 113.28, 34.80, 3, scope=Scope(layers=frozenset()))


def test_nearest_is_exact_where_a_degree_box_is_not(store: FeatureStore) -> None:
    """A degree of latitude is shorter than 111 320 m here: a toilet 1597 m due north is
    nearer than one 1600 m due east, though a box of "1600 m" in degrees (111 320 m a
    degree, as the growing-box search had it) holds only the eastern one."""
    from gridmap import queries

    lon, lat = 113.27, 34.79
    east, north = _offset(lon, lat, 1600, 0), _offset(lon, lat, 0, 1597)
    store.insert("toilets", [east, north], [{"name": "east"}, {"name": "north"}])
    (found,) = queries.nearest(store, "toilets", lon, lat, k=1)
    assert found.feature.properties["name"] == "north"
    assert found.distance_m == pytest.approx(1597, abs=1e-6)
    assert [n.feature.id for n in queries.nearest(store, "toilets", lon, lat, k=2)] == [2, 1]


def test_standings_are_the_ledger_reduced_per_household(store: FeatureStore) -> None:
    """A campaign's standings (reduced in the database) equal a reduction here of every
    ledger row read: per household its latest entry by time, of equal times the last
    recorded, and its number of entries; in each scope and campaign. Only the latest
    entries are read; the others are counted."""
    import datetime as dt

    from gridmap import campaigns as camp
    from gridmap.access import ReadLog
    from gridmap.layers import VISIT_STATUS

    g1, g2 = _grid(store)
    rng = np.random.default_rng(31)
    n = 40
    xs = np.where(np.arange(n) % 2 == 0, 113.27, 113.29) + rng.uniform(-0.005, 0.005, n)
    homes = shapely.points(xs, rng.uniform(34.795, 34.805, n))
    hh = store.insert("households", homes, [{"room": str(i)} for i in range(n)])
    day = dt.date(2026, 11, 1)
    c1 = camp.create(store, name="一", starts=day, ends=day + dt.timedelta(days=60))
    c2 = camp.create(store, name="二", starts=day, ends=day + dt.timedelta(days=60), grid_ids=[g2])
    times = ["2026-11-02T09:00:00", "2026-11-03T10:30:00", "2026-11-03T10:30:00",
             "2026-11-05T08:00:00"]  # fmt: skip
    campaigns = [c1.id, c1.id, c2.id, None]
    entries = [
        (i, {"household_id": h, "campaign_id": campaigns[int(rng.integers(4))],
             "visited_at": times[int(rng.integers(4))],
             "outcome": VISIT_STATUS[int(rng.integers(len(VISIT_STATUS)))]})
        for i, h in enumerate(hh) for _ in range(int(rng.integers(0, 6)))
    ]  # fmt: skip
    order = rng.permutation(len(entries))  # ids do not follow the times
    store.insert(
        "visits",
        [homes[entries[j][0]] for j in order],
        [entries[j][1] for j in order],
    )
    every = store.query("visits")
    rows = sorted(zip(every.ids.tolist(), every.properties, strict=True), key=lambda r: r[0])

    def brute(c: camp.Campaign, grids: frozenset[int] | None) -> dict[int, camp.Standing]:
        latest: dict[int, tuple[str, int]] = {}
        tries: dict[int, int] = {}
        state: dict[int, camp.Standing] = {}
        for fid, p in rows:
            if p["campaign_id"] != c.id or (grids is not None and p["grid_id"] not in grids):
                continue
            h = p["household_id"]
            tries[h] = tries.get(h, 0) + 1
            if h not in latest or (p["visited_at"], fid) > latest[h]:
                latest[h] = (p["visited_at"], fid)
                state[h] = camp.Standing(p["outcome"], p["visited_at"], 0)
        return {h: camp.Standing(s.outcome, s.visited_at, tries[h]) for h, s in state.items()}

    tied = brute(c1, None)
    assert any(s.tries > 1 for s in tied.values())
    same_time = {
        h for h in tied
        if sum(1 for _, p in rows if p["household_id"] == h and p["campaign_id"] == c1.id
               and p["visited_at"] == tied[h].visited_at) > 1
    }  # fmt: skip
    assert same_time  # the data hold latest entries with equal times
    for c in (c1, c2):
        for grids in (None, frozenset({g1}), frozenset({g1, g2})):
            scope = Scope(grid_ids=grids)
            limit = camp.target_scope(c, scope).grid_ids
            want = brute(c, limit)
            assert camp.standings(store, c, scope=scope) == want, (c.id, grids)
            some = [h for k, h in enumerate(hh) if k % 3 == 0] + [10**9]
            got = camp.standings(store, c, scope=scope, households=some)
            assert got == {h: s for h, s in want.items() if h in some}, (c.id, grids)
            assert camp.standings(store, c, scope=scope, households=[]) == {}
            with pytest.MonkeyPatch.context() as mp:  # more than are asked for by id
                mp.setattr(camp, "_STANDINGS_BY_ID", 2)
                assert camp.standings(store, c, scope=scope, households=some) == got
    # the read log: the latest entries read, the others counted
    log = ReadLog()
    mine = camp.standings(store, c1, scope=Scope(grid_ids=frozenset({g1}), reads=log))
    read = store.latest("visits", "household_id", "visited_at", ["household_id"],
                        Query(equals={"campaign_id": c1.id}),
                        scope=Scope(grid_ids=frozenset({g1})))  # fmt: skip
    assert log.summary() == [("visits", sorted(r[0] for r in read), g1)]
    assert log.counts() == [("visits", sum(s.tries for s in mine.values()) - len(mine), None)]
    # per value of any column, nulls one value; latest by id
    by_campaign = store.latest("visits", "campaign_id", "id", ["campaign_id", "outcome"])
    want = {}
    for fid, p in rows:
        n_before = want.get(p["campaign_id"], (0, None, None, 0))[3]
        want[p["campaign_id"]] = (fid, p["campaign_id"], p["outcome"], n_before + 1)
    assert by_campaign == sorted(want.values())
    with pytest.raises(PermissionDeniedError):
        store.latest("visits", "household_id", "visited_at", ["note"],
                     scope=Scope(masked=frozenset({("visits", "note")})))  # fmt: skip
    with pytest.raises(InvalidFeatureError, match="unknown"):
        store.latest("visits", "household_id", "nope", ["outcome"])
    with pytest.raises(HiddenLayerError):
        store.latest("visits", "household_id", "visited_at", [], scope=Scope(layers=frozenset()))


@pytest.mark.postgis
def test_both_backends_rank_nearest_and_reduce_the_ledger_alike(
    request: pytest.FixtureRequest,
) -> None:
    from gridmap import campaigns as camp
    from gridmap import queries

    gpkg, pg = _two_stores(request)
    try:
        rng = np.random.default_rng(37)
        points = [*zip(rng.uniform(113.25, 113.33, 5).tolist(),
                       rng.uniform(34.78, 34.84, 5).tolist(), strict=True),
                  (113.25, 34.70)]  # fmt: skip
        for layer_id in ("households", "toilets", "buildings", "roads"):
            for lon, lat in points:
                for k, scope in ((1, Scope()), (10, Scope(grid_ids=frozenset({1, 7}))),
                                 (100, Scope())):  # fmt: skip
                    a = gpkg.nearest_ids(layer_id, lon, lat, k, scope=scope)
                    assert a == pg.nearest_ids(layer_id, lon, lat, k, scope=scope)
                    x = queries.nearest(gpkg, layer_id, lon, lat, k=k, scope=scope)
                    y = queries.nearest(pg, layer_id, lon, lat, k=k, scope=scope)
                    assert [(n.feature.id, n.distance_m) for n in x] == [
                        (n.feature.id, n.distance_m) for n in y
                    ]
                    assert [n.feature.properties for n in x] == [n.feature.properties for n in y]
        for c in camp.all_campaigns(gpkg):
            for scope in (Scope(), Scope(grid_ids=frozenset({1, 2, 3}))):
                a = camp.standings(gpkg, c, scope=scope)
                assert a and a == camp.standings(pg, c, scope=scope)
    finally:
        gpkg.close()
        pg.close()


@pytest.mark.postgis
def test_postgis_finds_nearest_candidates_by_the_index_knn(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nearest() over PostGIS asks the GiST index for its candidates in KNN order (one
    statement ORDER BY geom <-> point, planned as an index scan ordered by distance) and
    counts no boxes."""
    import psycopg

    from gridmap import queries
    from tests.conftest import require_postgis

    require_postgis()
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database("gm_knn", template=request.getfixturevalue("sample_template"))
    pg = open_store(url)
    seen: list[tuple[str, Any]] = []
    execute = psycopg.Connection.execute

    def spy(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        seen.append((str(query), params))
        return execute(self, query, params, **kw)

    try:
        monkeypatch.setattr(psycopg.Connection, "execute", spy)
        found = queries.nearest(pg, "households", 113.2919, 34.8096, k=10)
        monkeypatch.undo()
    finally:
        pg.close()
    assert len(found) == 10
    knn = [(q, p) for q, p in seen if "<->" in q]
    assert len(knn) == 1, [q for q, _ in seen]
    assert not [q for q, _ in seen if "count(" in q.lower()]
    with psycopg.connect(url) as c:
        plan = [r[0] for r in c.execute("EXPLAIN " + knn[0][0], knn[0][1]).fetchall()]
    scans = [i for i, line in enumerate(plan) if "Index Scan using households_geom_gist" in line]
    assert any("Order By: (geom <->" in line for i in scans for line in plan[i + 1 : i + 3]), (
        "\n".join(plan)
    )
