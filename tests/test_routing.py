"""The routing core: solver adapter, walking network and POST /routes/optimize, checked against
published optima, hand-built cases and an evaluator written here (not the solver's numbers)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from benchmarks.instances import read_tsp, tour_length, tsp_matrix, tsp_optimum
from benchmarks.walking_anchor import spliced_matrix
from gridmap.crs import from_metric, to_metric
from gridmap.routing import network
from gridmap.routing.matrix import DETOUR_FACTOR, WALK_SPEED_M_S
from gridmap.routing.optimize import Place, Request, optimize
from gridmap.routing.pool import POOL, processes
from gridmap.routing.solver import UNREACHABLE, Problem, Result, Route, Shift, Stop, rank, solve
from gridmap.store import FeatureStore

ORIGIN = (434_000.0, 3_851_500.0)  # EPSG:4547 metres: the south-west of the sample


def _lonlat(xy: np.ndarray) -> np.ndarray:
    """Metric offsets from ORIGIN as WGS84 lon/lat."""
    pts = from_metric(shapely.points(xy[:, 0] + ORIGIN[0], xy[:, 1] + ORIGIN[1]))
    return shapely.get_coordinates(pts)


# ------------------------------------------------------------------ evaluator (not the solver's)


def check_route(problem: Problem, route, *, tol: int = 0) -> None:  # type: ignore[no-untyped-def]
    """Recompute a route's clock from the matrix: windows met, shift kept, times consistent."""
    sh = problem.shifts[route.shift]
    by_id = {s.id: s for s in problem.stops}
    clock, at = route.start, sh.start
    assert route.start >= sh.early
    for v in route.visits:
        s = by_id[v.stop]
        arrival = clock + int(problem.duration[at, s.node])
        assert v.arrival == arrival
        begin = max(arrival, v.start)
        assert v.start >= arrival
        windows = s.windows or ((sh.early, sh.late),)
        assert any(lo <= v.start <= hi for lo, hi in windows), (v, windows)
        assert v.end == v.start + s.service_s
        assert begin == v.start
        clock, at = v.end, s.node
    back = clock + (int(problem.duration[at, sh.end]) if sh.end is not None else 0)
    assert back <= route.end <= sh.late + tol


def _square(n: int, side: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, side, (n, 2))
    d = np.rint(np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))).astype(np.int64)
    return d, np.rint(d / WALK_SPEED_M_S).astype(np.int64)


# ------------------------------------------------------------------ solver


def test_every_stop_left_out_has_the_right_reason() -> None:
    """Hand-built: one unreachable, one longer than any shift, one whose window lies outside
    every shift, and more work than the day holds (the rest: capacity)."""
    n = 12
    d = np.full((n, n), 100, dtype=np.int64)
    np.fill_diagonal(d, 0)
    d[1, :] = d[:, 1] = UNREACHABLE
    d[1, 1] = 0
    day = (8 * 3600, 16 * 3600)
    stops = [
        Stop("cut-off", 1, 600),
        Stop("too-long", 2, 9 * 3600),
        Stop("dawn", 3, 600, windows=((3 * 3600, 5 * 3600),)),
        *(Stop(f"s{k}", k, 2 * 3600) for k in range(4, n)),  # 8 × 2 h in an 8 h day
    ]
    res = solve(Problem(d, d, stops, [Shift(0, 0, 0, *day)]), time_limit_s=0.5)
    why = dict(res.unassigned)
    assert why.pop("cut-off") == "unreachable"
    assert why.pop("too-long") == "outside_shift"
    assert why.pop("dawn") == "time_window"
    assert set(why.values()) == {"capacity"}
    visited = [v.stop for r in res.routes for v in r.visits]
    assert len(visited) == 3  # 3 × (2 h + 100 s walking) + the way back fit; a 4th does not
    assert set(visited) | set(why) == {f"s{k}" for k in range(4, n)}


def test_plans_keep_shifts_windows_and_visit_each_stop_once() -> None:
    d, t = _square(60, 1500, seed=3)
    rng = np.random.default_rng(4)
    stops = []
    for k in range(1, 60):
        lo = int(rng.integers(8, 15)) * 3600
        windows = ((lo, lo + 2 * 3600),) if k % 3 == 0 else ()
        if k % 7 == 0:  # an evening or a morning: either will do
            windows = ((9 * 3600, 10 * 3600), (18 * 3600, 19 * 3600))
        stops.append(Stop(f"s{k}", k, 300, windows, required=k % 5 != 0, prize=5000))
    shifts = [
        Shift(w, 0, 0, a, b)
        for w in range(2)
        for a, b in ((8 * 3600, 12 * 3600), (14 * 3600, 17 * 3600), (18 * 3600, 20 * 3600))
    ]
    p = Problem(d, t, stops, shifts)
    res = solve(p, time_limit_s=1.0, seed=1)
    seen = [v.stop for r in res.routes for v in r.visits]
    assert len(seen) == len(set(seen))
    assert set(seen) | {i for i, _ in res.unassigned} == {s.id for s in stops}
    assert not set(seen) & {i for i, _ in res.unassigned}
    for r in res.routes:
        check_route(p, r)
    must = {s.id for s in stops if s.required}
    assert must <= set(seen)  # the day has room for every must-visit stop


def test_optional_stops_are_dropped_before_must_visit_ones() -> None:
    d, t = _square(40, 2000, seed=5)
    stops = [Stop(f"s{k}", k, 1800, required=k <= 8, prize=3000) for k in range(1, 40)]
    p = Problem(d, t, stops, [Shift(0, 0, 0, 8 * 3600, 17 * 3600)])
    res = solve(p, time_limit_s=0.5)
    seen = {v.stop for r in res.routes for v in r.visits}
    assert {f"s{k}" for k in range(1, 9)} <= seen
    assert all(why == "capacity" for _, why in res.unassigned)
    assert len(seen) < 39


def _brute_force_tour(d: np.ndarray) -> int:
    """The shortest closed tour from node 0, by trying every order (small n only)."""
    n = len(d)
    return min(
        int(d[0, p[0]] + sum(d[a, b] for a, b in itertools.pairwise(p)) + d[p[-1], 0])
        for p in itertools.permutations(range(1, n))
    )


def test_many_problems_are_solved_on_every_core() -> None:
    """Five 8-node tours handed to the solver processes: each the brute-force optimum."""
    problems, want = [], []
    for seed in range(5):
        d, t = _square(8, 1000, seed=20 + seed)
        stops = [Stop(f"s{k}", k, 0) for k in range(1, 8)]
        problems.append(Problem(d, t, stops, [Shift(0, 0, 0, 0, 10 * 3600)]))
        want.append(_brute_force_tour(d))
    done: list[int] = []
    results = POOL.solve_all(((p, {"time_limit_s": 0.5}) for p in problems), done.append)
    assert [r.routes[0].distance_m for r in results] == want
    assert sorted(done) == list(range(5))
    if processes() > 1:
        assert POOL._pool is not None  # they went to the processes


def test_rank_puts_must_visits_before_prizes_before_metres() -> None:
    d, t = _square(4, 1000, seed=1)
    stops = [Stop("m", 1, 0), Stop("o", 2, 0, required=False, prize=500), Stop("p", 3, 0)]
    p = Problem(d, t, stops, [Shift(0, 0, 0, 0, 36000)])

    def result(left: list[str], metres: int) -> Result:
        r = Route(0, 0, (), 0, 0, metres, 0)
        return Result((r,), tuple((x, "capacity") for x in left))

    ordered = [result([], 9000), result(["o"], 100), result(["m"], 10), result(["m", "o"], 5)]
    assert sorted(ordered, key=lambda r: rank(p, r)) == ordered


def test_one_problem_is_solved_two_ways_side_by_side() -> None:
    """Once the solver processes are up, a lone problem runs both variants and keeps the
    better; the answer is a tour of every stop no longer than nearest-neighbour's."""
    d, t = _square(30, 2000, seed=9)
    p = Problem(d, t, [Stop(f"s{k}", k, 0) for k in range(1, 30)], [Shift(0, 0, 0, 0, 36000)])
    POOL.warm_up()
    for _ in range(200):
        if POOL.ready():
            break
        time.sleep(0.05)
    assert POOL.ready() or processes() == 1
    res = POOL.solve_best(p, {"time_limit_s": 0.3})
    (route,) = res.routes
    assert sorted(int(v.stop[1:]) for v in route.visits) == list(range(1, 30))
    tour, left = [0], set(range(1, 30))
    while left:
        nxt = min(left, key=lambda k: d[tour[-1], k])
        tour.append(nxt)
        left.remove(nxt)
    greedy = sum(int(d[a, b]) for a, b in itertools.pairwise([*tour, 0]))
    assert route.distance_m <= greedy


def test_a_killed_solver_process_loses_no_plan() -> None:
    d, t = _square(8, 1000, seed=4)
    p = Problem(d, t, [Stop(f"s{k}", k, 0) for k in range(1, 8)], [Shift(0, 0, 0, 0, 36000)])
    POOL.solve_all([(p, {"time_limit_s": 0.1})] * 2)  # the processes are up
    pool = POOL._pool
    if pool is None:  # one core: everything is solved in this process
        assert processes() == 1
        return
    for proc in list(pool._processes.values()):
        proc.kill()
    results = POOL.solve_all([(p, {"time_limit_s": 0.3})] * 3)
    assert [r.routes[0].distance_m for r in results] == [_brute_force_tour(d)] * 3


def test_open_ended_routes_end_at_their_last_stop() -> None:
    d, t = _square(20, 1000, seed=8)
    stops = [Stop(f"s{k}", k, 60) for k in range(1, 20)]
    p = Problem(d, t, stops, [Shift(0, 0, None, 0, 10 * 3600)])
    res = solve(p, time_limit_s=0.3)
    (r,) = res.routes
    nodes = [0, *(int(v.stop[1:]) for v in r.visits)]
    assert r.distance_m == sum(int(d[a, b]) for a, b in itertools.pairwise(nodes))
    assert r.end == r.visits[-1].end


@pytest.mark.parametrize("name", ["eil51", "berlin52", "st70"])
def test_tsplib_tours_through_the_api_are_near_the_published_optimum(
    client: TestClient, name: str
) -> None:
    """Straight-line mode, the instance scaled to a few kilometres; the returned order is
    measured with TSPLIB's own distances against the proven optimum."""
    xy = read_tsp(name)
    scale = 3000.0 / np.ptp(xy, axis=0).max()
    ll = _lonlat((xy - xy.min(axis=0)) * scale)
    stops = [{"id": str(k), "lon": x, "lat": y} for k, (x, y) in enumerate(ll) if k]
    body = {
        "stops": stops,
        "start": {"lon": ll[0, 0], "lat": ll[0, 1]},
        "mode": "straight",
        "shift": ["00:00", "23:59"],
        "time_limit_s": 1.0,
    }
    r = client.post("/routes/optimize", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mode"] == "straight" and "note" not in out
    assert out["unassigned"] == []
    (route,) = out["routes"]
    tour = [0, *(int(i) for i in route["stops"])]
    assert sorted(tour) == list(range(len(xy)))
    gap = tour_length(tour, tsp_matrix(xy)) / tsp_optimum(name) - 1
    assert gap <= 0.01, f"{name}: {gap:.2%} above the optimum"
    line = route["geometry"]["coordinates"]
    assert line[0] == line[-1]
    assert line[0] == pytest.approx(list(ll[0]), abs=1e-7)
    assert route["distance_m"] == pytest.approx(
        tour_length(tour, tsp_matrix(xy)) * scale * DETOUR_FACTOR, rel=0.02
    )


# ------------------------------------------------------------------ walking network


def _lattice(n: int, step: float) -> list[shapely.LineString]:
    """An n × n street lattice (metric offsets), each street drawn in pieces as maps do."""
    lines = []
    for k in range(n):
        for j in range(n - 1):
            lines.append(shapely.LineString([(k * step, j * step), (k * step, (j + 1) * step)]))
            lines.append(shapely.LineString([(j * step, k * step), ((j + 1) * step, k * step)]))
    return [shapely.LineString(_lonlat(np.asarray(line.coords)).tolist()) for line in lines]


def test_walking_distances_on_a_street_lattice_are_manhattan_distances() -> None:
    step = 120.0
    net = network.build(_lattice(6, step))
    rng = np.random.default_rng(0)
    grid_pts = rng.integers(0, 6, (25, 2)) * step
    ll = _lonlat(grid_pts.astype(float))
    m, att, pred = network.walking_matrix(net, ll[:, 0], ll[:, 1])
    manhattan = np.abs(grid_pts[:, None, :] - grid_pts[None, :, :]).sum(axis=2)
    assert np.abs(m.distance - manhattan).max() <= 2  # metres (projection and snapping)
    assert np.array_equal(m.duration, np.rint(m.distance / WALK_SPEED_M_S).astype(np.int64)) or (
        np.abs(m.duration - m.distance / WALK_SPEED_M_S).max() <= 1
    )
    # the drawn leg follows streets: its length is the walking distance
    leg = shapely.LineString(network.leg(att, pred, 0, 1))
    assert leg.length == pytest.approx(m.distance[0, 1], abs=2)


def test_walking_matrix_equals_the_textbook_spliced_graph(sample_store: FeatureStore) -> None:
    """The sample's streets and 300 random points (some off the map): the same metres as
    plain csgraph.dijkstra over the graph with every point spliced in as a node."""
    net = network.of_store(sample_store)
    minx, miny, maxx, maxy = sample_store.extent("roads")
    rng = np.random.default_rng(3)
    lon = rng.uniform(minx - 0.01, maxx + 0.01, 300)
    lat = rng.uniform(miny - 0.01, maxy + 0.01, 300)
    m, att, walks = network.walking_matrix(net, lon, lat)
    want = spliced_matrix(net, lon, lat)
    finite = np.isfinite(want)
    assert np.array_equal(finite, m.distance < UNREACHABLE)
    assert 0 < (~att.attached).sum() < 300
    assert np.abs(m.distance[finite] - want[finite]).max() <= 1
    # every drawn leg is as long as its walk
    for i, j in rng.integers(0, 300, (40, 2)):
        if finite[i, j] and i != j:
            drawn = shapely.LineString(network.leg(att, walks, int(i), int(j))).length
            assert drawn == pytest.approx(want[i, j], abs=1.5)


def test_points_off_the_streets_walk_to_their_nearest_street() -> None:
    step = 200.0
    net = network.build(_lattice(3, step))
    # 30 m north of the middle of the bottom street, and 40 m east of the left street
    pts = np.array([[100.0, 30.0], [40.0, 300.0], [5000.0, 5000.0]])
    ll = _lonlat(pts)
    m, att, _ = network.walking_matrix(net, ll[:, 0], ll[:, 1])
    # out to the street (30), 100 west to the corner, 300 north, 0 east... then in 40
    assert m.distance[0, 1] == pytest.approx(30 + 100 + 300 + 40, abs=2)
    assert not att.attached[2] and m.distance[0, 2] == UNREACHABLE


def test_no_point_near_any_street_leaves_every_stop_unreachable() -> None:
    net = network.build(_lattice(2, 100.0))
    ll = _lonlat(np.array([[5000.0, 5000.0], [6000.0, 5000.0]]))
    m, att, _ = network.walking_matrix(net, ll[:, 0], ll[:, 1])
    assert not att.attached.any()
    assert m.distance[0, 1] == UNREACHABLE and m.distance[0, 0] == 0


def test_unconnected_streets_make_stops_unreachable(store: FeatureStore) -> None:
    near = _lattice(2, 100.0)
    far = shapely.LineString(_lonlat(np.array([[3000.0, 0.0], [3100.0, 0.0]])).tolist())
    road = {"name": "测试路", "walkable": True, "status": "existing"}
    store.insert("roads", [*near, far], [road] * (len(near) + 1))
    ll = _lonlat(np.array([[0.0, 0.0], [3050.0, 0.0], [100.0, 100.0]]))
    m, _, _ = network.walking_matrix(network.of_store(store), ll[:, 0], ll[:, 1])
    assert m.distance[0, 1] == UNREACHABLE and m.distance[0, 2] == pytest.approx(200, abs=2)
    req = Request(
        [Place("island", ll[1, 0], ll[1, 1]), Place("corner", ll[2, 0], ll[2, 1])],
        (ll[0, 0], ll[0, 1]),
        time_limit_s=0.2,
    )
    plan = optimize(req, store)
    assert dict(plan.result.unassigned) == {"island": "unreachable"}
    assert plan.detour_note is None and plan.mode == "walk"
    # a planned road is left out unless asked for; a road that is not walkable always
    store.insert("roads", [far], [{**road, "walkable": False}])
    assert len(network.of_store(store).u) == len(network.build([*near, far]).u)
    bridge = shapely.LineString(_lonlat(np.array([[100.0, 0.0], [3000.0, 0.0]])).tolist())
    store.insert("roads", [bridge], [{**road, "status": "planned"}])
    plan = optimize(req, store)
    assert dict(plan.result.unassigned) == {"island": "unreachable"}
    plan = optimize(dataclasses.replace(req, planned_roads=True), store)
    assert plan.result.unassigned == ()
    (r,) = plan.result.routes  # out along the planned road to the island and back
    assert r.distance_m >= 2 * 2950


def test_points_the_roads_do_not_reach_walk_straight_and_the_plan_says_so(
    store: FeatureStore,
) -> None:
    """Roads known only around the start (a partial import): the stop 3 km off is still
    planned, by straight line × detour factor, and the plan says which points."""
    road = {"name": "测试路", "walkable": True, "status": "existing"}
    store.insert("roads", _lattice(3, 100.0), [road] * len(_lattice(3, 100.0)))
    ll = _lonlat(np.array([[0.0, 0.0], [200.0, 200.0], [3000.0, 0.0]]))
    req = Request(
        [Place("near", ll[1, 0], ll[1, 1]), Place("far", ll[2, 0], ll[2, 1])],
        (ll[0, 0], ll[0, 1]),
        time_limit_s=0.2,
    )
    plan = optimize(req, store)
    assert plan.result.unassigned == () and plan.mode == "walk"
    assert (plan.detour_note or "").startswith("1 of 2 stops lie more than 500 m")
    (r,) = plan.result.routes
    walk_near = 400  # along the streets, corner to corner
    straight_far = DETOUR_FACTOR * (np.hypot(3000 - 200, 200) + 3000)
    assert r.distance_m == pytest.approx(walk_near + straight_far, rel=0.01)


def test_no_roads_means_straight_lines_and_the_plan_says_so(store: FeatureStore) -> None:
    ll = _lonlat(np.array([[0.0, 0.0], [300.0, 400.0]]))
    req = Request([Place("a", ll[1, 0], ll[1, 1])], (ll[0, 0], ll[0, 1]), time_limit_s=0.1)
    plan = optimize(req, store)
    assert plan.mode == "straight" and "no walking network" in (plan.detour_note or "")
    (r,) = plan.result.routes
    assert r.distance_m == pytest.approx(2 * 500 * DETOUR_FACTOR, abs=2)


# ------------------------------------------------------------------ the API


def _sample_stops(client: TestClient, n: int) -> list[dict[str, object]]:
    fs = client.get(f"/collections/buildings/items?limit={n}").json()["features"]
    out = []
    for f in fs:
        c = shapely.geometry.shape(f["geometry"]).centroid
        out.append({"id": f"b{f['id']}", "lon": c.x, "lat": c.y, "service_s": 300})
    return out


def test_walk_mode_uses_the_sample_streets(client: TestClient) -> None:
    stops = _sample_stops(client, 30)
    body = {"stops": stops, "start": {k: stops[0][k] for k in ("lon", "lat")}, "workers": 2}
    r = client.post("/routes/optimize", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mode"] == "walk" and "note" not in out
    assert out["solver"]["name"] == "pyvrp" and out["solver"]["seed"] == 0
    visited = [s for route in out["routes"] for s in route["stops"]]
    assert sorted(visited) == sorted(s["id"] for s in stops)
    for route in out["routes"]:
        line = shapely.LineString(route["geometry"]["coordinates"])
        metres = to_metric([line])[0].length
        assert metres == pytest.approx(route["distance_m"], rel=0.02, abs=5)
        straight = sum(
            to_metric([shapely.LineString([(a["lon"], a["lat"]), (b["lon"], b["lat"])])])[0].length
            for a, b in itertools.pairwise(
                [
                    stops[0],
                    *(next(s for s in stops if s["id"] == i) for i in route["stops"]),
                    stops[0],
                ]
            )
        )
        assert route["distance_m"] >= straight - 5  # no walk is shorter than the crow flies
        assert route["arrivals"] == sorted(route["arrivals"])
        assert route["depart"] >= "08:30:00" and route["back"] <= "17:30:00"


def test_a_thousand_stops_in_one_request(client: TestClient) -> None:
    rng = np.random.default_rng(9)
    ll = _lonlat(rng.uniform(0, 3000, (1001, 2)))
    body = {
        "stops": [{"id": f"p{k}", "lon": x, "lat": y} for k, (x, y) in enumerate(ll[1:])],
        "start": {"lon": ll[0, 0], "lat": ll[0, 1]},
        "mode": "straight",
        "workers": 5,
        "shift": ["00:00", "23:59"],
        "time_limit_s": 2,
    }
    r = client.post("/routes/optimize", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    seen = [s for route in out["routes"] for s in route["stops"]]
    assert len(seen) + len(out["unassigned"]) == 1000 and len(set(seen)) == len(seen)


@pytest.mark.parametrize(
    ("patch", "status"),
    [
        ({"stops": []}, 400),
        (
            {"stops": [{"id": "a", "lon": 113.3, "lat": 34.8, "time_window": ["10:00", "09:00"]}]},
            400,
        ),
        (
            {"stops": [{"id": "a", "lon": 113.3, "lat": 34.8, "time_window": ["24:00", "25:00"]}]},
            400,
        ),
        ({"stops": [{"id": "a", "lon": 113.3, "lat": 34.8}] * 2}, 422),
        ({"stops": [{"id": "a", "lon": 913.3, "lat": 34.8}]}, 422),
        ({"stops": [{"id": "a", "lon": 113.3, "lat": 34.8, "colour": "red"}]}, 400),
        ({"shift": ["17:00", "08:00"]}, 400),
        ({"workers": 0}, 400),
        ({"time_limit_s": 1e9}, 400),
        ({"crs": "EPSG:99999"}, 400),
        ({"mode": "drive"}, 400),
    ],
)
def test_bad_routing_requests_get_a_clear_4xx(
    client: TestClient, patch: dict[str, object], status: int
) -> None:
    body = {
        "stops": [{"id": "a", "lon": 113.29, "lat": 34.81}],
        "start": {"lon": 113.29, "lat": 34.81},
    }
    r = client.post("/routes/optimize", json={**body, **patch})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_too_many_stops_are_refused_before_solving(client: TestClient) -> None:
    stop = {"id": "x", "lon": 113.29, "lat": 34.81}
    body = {
        "stops": [{**stop, "id": str(k)} for k in range(2001)],
        "start": {"lon": 113.29, "lat": 34.81},
    }
    r = client.post("/routes/optimize", json=body)
    assert r.status_code == 422 and "at most 2000" in r.json()["detail"]


def test_coordinates_in_another_crs(client: TestClient) -> None:
    """GCJ-02 in (as a Chinese web map gives them), GCJ-02 out; the route is the same."""
    stops = _sample_stops(client, 8)
    base = {"start": {k: stops[0][k] for k in ("lon", "lat")}, "time_limit_s": 0.3}
    plain = client.post("/routes/optimize", json={**base, "stops": stops}).json()
    from gridmap.crs import wgs84_to_gcj02

    def gcj(p: dict[str, object]) -> dict[str, object]:
        x, y = wgs84_to_gcj02([p["lon"]], [p["lat"]])
        return {**p, "lon": float(x[0]), "lat": float(y[0])}

    moved = {
        **base,
        "start": gcj(base["start"]),
        "stops": [gcj(s) for s in stops],
        "crs": "gcj02",
    }
    out = client.post("/routes/optimize", json=moved).json()
    assert out["crs"] != plain["crs"]
    assert [r["distance_m"] for r in out["routes"]] == pytest.approx(
        [r["distance_m"] for r in plain["routes"]], abs=3
    )
    first = out["routes"][0]["geometry"]["coordinates"][0]
    assert math.dist(first, [moved["start"]["lon"], moved["start"]["lat"]]) < 1e-5
