"""Toilet access and siting: the solvers against brute force over every k-subset, walking
distances against networkx on a graph this test builds itself (projected by pyproj), and
the HTTP answers per role."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import networkx as nx
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from pyproj import Transformer
from scipy.sparse import csr_matrix

from gridmap.analysis import covering, reach
from gridmap.analysis import toilets as tl
from gridmap.routing import network
from gridmap.store.base import Query, Scope

TO_METRIC = Transformer.from_crs("EPSG:4326", "EPSG:4547", always_xy=True)


# --- the solvers against brute force --------------------------------------------------


def _covered(cover: np.ndarray, w: np.ndarray, chosen: list[int] | tuple[int, ...]) -> float:
    return float(w[cover[list(chosen)].any(axis=0)].sum())


@pytest.mark.parametrize("seed", range(8))
def test_mclp_equals_the_best_k_subset(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_c, n_d, k = 11, 25, 3
    d = rng.uniform(0, 1000, (n_c, n_d))
    w = rng.integers(1, 30, n_d).astype(float)
    cover = d <= 300
    best = max(_covered(cover, w, s) for s in itertools.combinations(range(n_c), k))
    exact = covering.mclp(csr_matrix(cover), w, k)
    assert exact.optimal and exact.gap < 1e-9
    assert len(exact.chosen) == k
    assert exact.objective == best == _covered(cover, w, exact.chosen)
    # the gains are marginal: each is what its site adds to the ones before it
    for n in range(1, k + 1):
        assert sum(exact.gains[:n]) == _covered(cover, w, exact.chosen[:n])
    greedy = covering.greedy_mclp(csr_matrix(cover), w, k)
    assert greedy.objective == _covered(cover, w, greedy.chosen) <= best


def test_greedy_can_miss_what_the_exact_model_finds() -> None:
    w = np.array([3, 2, 2, 3, 2], float)
    cover = np.zeros((3, 5), bool)
    cover[0, [0, 1]] = cover[1, [2, 3]] = cover[2, [1, 2, 4]] = True
    assert covering.greedy_mclp(csr_matrix(cover), w, 2).objective == 9
    exact = covering.mclp(csr_matrix(cover), w, 2)
    assert exact.objective == 10 and sorted(exact.chosen) == [0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_pmedian_equals_the_best_k_subset(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n_c, n_d, k = 10, 20, 3
    d = rng.uniform(1, 1200, (n_c, n_d))
    base = rng.uniform(200, 900, n_d)  # the walk to a toilet already there
    w = rng.integers(1, 20, n_d).astype(float)
    reach_m = np.where(d <= 1000, d, 0.0)  # pairs beyond 1 km not given
    far = np.where(d <= 1000, d, np.inf)

    def total(s: tuple[int, ...] | list[int]) -> float:
        return float(np.dot(w, np.minimum(base, far[list(s)].min(axis=0))))

    best = min(total(s) for s in itertools.combinations(range(n_c), k))
    exact = covering.pmedian(csr_matrix(reach_m), base, w, k)
    assert exact.optimal
    assert exact.objective == pytest.approx(best, rel=1e-9)
    assert total(exact.chosen) == pytest.approx(best, rel=1e-9)
    greedy = covering.greedy_pmedian(csr_matrix(reach_m), base, w, k)
    assert (
        greedy.objective == pytest.approx(total(greedy.chosen)) and greedy.objective >= best - 1e-6
    )


# --- walking distances against networkx -----------------------------------------------


def _node(xy: Any) -> tuple[float, float]:
    return (round(float(xy[0]), 6), round(float(xy[1]), 6))


def _nx_graph(
    lines_wgs84: list[shapely.LineString], points: np.ndarray
) -> tuple[nx.Graph, list[Any]]:
    """Roads noded where they cross (shapely), every point spliced into its nearest road at
    the foot of the perpendicular; nodes are coordinates, weights metres (EPSG:4547)."""
    metric = [
        shapely.LineString(np.column_stack(TO_METRIC.transform(*np.asarray(line.coords).T)))
        for line in lines_wgs84
    ]
    noded = list(shapely.get_parts(shapely.unary_union(metric)))
    px, py = TO_METRIC.transform(points[:, 0], points[:, 1])
    pts = shapely.points(np.column_stack([px, py]))
    tree = shapely.STRtree(noded)
    nearest_line = tree.query_nearest(pts, all_matches=False)[1]
    feet: dict[int, list[tuple[float, Any]]] = defaultdict(list)
    g = nx.Graph()
    names = []
    for n, (pt, li) in enumerate(zip(pts, nearest_line, strict=True)):
        line = noded[li]
        at = line.project(pt)
        foot = line.interpolate(at)
        name = ("p", n)
        names.append(name)
        g.add_edge(name, ("f", n), weight=pt.distance(foot))
        feet[li].append((at, ("f", n)))
    # a road that ends within 1 m of another joins it by a connector to its foot there
    for li, line in enumerate(noded):
        for end in (line.coords[0], line.coords[-1]):
            pt = shapely.Point(end)
            for other in tree.query(pt, predicate="dwithin", distance=1.0):
                o = noded[other]
                if other == li or pt.distance(shapely.Point(o.coords[0])) < 1e-6:
                    continue
                if pt.distance(shapely.Point(o.coords[-1])) < 1e-6:
                    continue
                foot = ("c", li, end, int(other))
                g.add_edge(_node(end), foot, weight=pt.distance(o))
                feet[int(other)].append((o.project(pt), foot))
    for li, line in enumerate(noded):
        ends = [(0.0, _node(line.coords[0])), (line.length, _node(line.coords[-1]))]
        chain = sorted([ends[0], *feet.get(li, []), ends[1]], key=lambda t: t[0])
        for (a, u), (b, v) in itertools.pairwise(chain):
            g.add_edge(u, v, weight=b - a)
    return g, names


def test_walking_distances_match_networkx_on_the_sample(sample_store: Any) -> None:
    net = network.of_store(sample_store)
    roads = sample_store.query("roads", Query()).with_geometry()
    lines = [
        geom
        for geom, p in zip(roads.geometries, roads.properties, strict=True)
        if p.get("walkable") is not False and p.get("status") != "planned"
    ]
    homes = tl.homes(sample_store, Scope.ALL)
    tx, ty = tl.toilets(sample_store, tl.OPEN)
    points = np.column_stack([np.r_[tx, homes.lon], np.r_[ty, homes.lat]])
    g, names = _nx_graph(lines, points)
    limit = 800.0
    theirs = nx.multi_source_dijkstra_path_length(g, set(names[: len(tx)]), cutoff=limit)
    ours = reach.nearest(net, (tx, ty), (homes.lon, homes.lat), limit)
    assert ours.method == "walk"
    expected = np.array([theirs.get(n, np.inf) for n in names[len(tx) :]])
    both = np.isfinite(expected) & np.isfinite(ours.metres)
    assert both.sum() > 0.5 * len(expected)
    # gridmap snaps road vertices to 1 m: allow that, nothing more
    assert np.abs(ours.metres[both] - expected[both]).max() < 3.0
    # a place one side finds within the limit the other finds just beyond it
    mine = np.isfinite(ours.metres) & ~np.isfinite(expected)
    theirs_only = np.isfinite(expected) & ~np.isfinite(ours.metres)
    assert (ours.metres[mine] >= limit - 3).all()
    assert (expected[theirs_only] >= limit - 3).all()


# --- over HTTP, per role --------------------------------------------------------------


def _get(client: TestClient, url: str, headers: dict[str, str]) -> Any:
    r = client.get(url, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_access_per_grid_adds_up_and_matches_the_library(
    client: TestClient, auth: dict[str, dict[str, str]], sample_store: Any
) -> None:
    body = _get(client, "/analysis/toilet-access", auth["subdistrict_admin"])
    assert body["method"] == "walk" and body["distances_m"] == [300, 500]
    assert body["protected"] is False
    assert body["toilets"] == {"existing": 12, "planned": 3}
    acc = tl.access(sample_store, Scope.ALL)
    grids = {a["id"]: a for a in body["areas"]}
    stats = {a["id"]: a for a in _get(client, "/stats/grids", auth["subdistrict_admin"])["areas"]}
    for gid, a in grids.items():
        mine = acc.homes.grid == gid
        assert a["households"] == stats[gid]["households"] == int(mine.sum())
        for d in ("300", "500"):
            t = a["toilets"][d]
            assert t["existing"] == int(acc.served("existing", int(d))[mine].sum())
            assert t["existing"] <= t["with_planned"] <= a["households"]
            assert t["existing_share"] == round(t["existing"] / a["households"], 4)
        assert a["toilets"]["300"]["existing"] <= a["toilets"]["500"]["existing"]
    total = sum(a["toilets"]["300"]["existing"] for a in grids.values())
    assert 0 < total < sum(a["households"] for a in grids.values())
    communities = _get(
        client, "/analysis/toilet-access?level=communities", auth["subdistrict_admin"]
    )
    assert sum(a["toilets"]["500"]["with_planned"] for a in communities["areas"]) == sum(
        a["toilets"]["500"]["with_planned"] for a in grids.values()
    )
    other = _get(client, "/analysis/toilet-access?distances=200,800", auth["subdistrict_admin"])
    assert set(other["areas"][0]["toilets"]) == {"200", "800"}


def _on_step(v: float) -> bool:
    return 0 <= v <= 1 and abs(v * 20 - round(v * 20)) < 1e-9


def test_planners_get_shares_in_steps_of_five_percent_never_counts(
    client: TestClient, public_client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    planner = auth["planner"]
    body = _get(client, "/analysis/toilet-access", planner)
    admin = _get(client, "/analysis/toilet-access", auth["subdistrict_admin"])
    exact = {a["id"]: a for a in admin["areas"]}
    assert body["protected"] is True and len(body["areas"]) == len(exact) == 40
    for a in body["areas"]:
        assert set(a) == {"id", "name", "toilets"}  # no household count of any kind
        for d, t in a["toilets"].items():
            assert set(t) == {"existing_share", "with_planned_share"}
            for key, v in t.items():
                assert _on_step(v), (a["id"], d, key, v)
                households = exact[a["id"]]["households"]
                served = exact[a["id"]]["toilets"][d][key.removesuffix("_share")]
                assert abs(v - served / households) <= 0.025 + 1e-9
    # a planner's household statistics carry no toilet counts either
    r = client.get("/stats/grids", headers=planner)
    assert r.status_code == 200 and "toilets" not in r.json()["areas"][0]
    r = client.get("/analysis/toilet-access?distances=400", headers=planner)
    assert r.status_code == 400 and "300 and 500" in r.json()["detail"]
    assert public_client.get("/analysis/toilet-access").status_code == 401
    assert client.get("/analysis/toilet-access", headers=auth["auditor"]).status_code == 403
    for bad in ("distances=10", "distances=300,abc", "distances=1,2,3,4", "level=city"):
        r = client.get(f"/analysis/toilet-access?{bad}", headers=auth["subdistrict_admin"])
        assert r.status_code in (400, 422), bad


def test_grid_workers_see_their_own_grids_only(
    client: TestClient, auth: dict[str, dict[str, str]], sample_store: Any
) -> None:
    body = _get(client, "/analysis/toilet-access", auth["grid_worker"])
    stats = _get(client, "/stats/grids", auth["grid_worker"])
    assert [a["id"] for a in body["areas"]] == [a["id"] for a in stats["areas"]]
    assert 1 <= len(body["areas"]) < 40


def test_the_unserved_are_squares_never_points(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    admin = _get(client, "/analysis/toilet-access/unserved?distance=300", auth["subdistrict_admin"])
    access = _get(client, "/analysis/toilet-access", auth["subdistrict_admin"])
    unserved = sum(a["households"] - a["toilets"]["300"]["existing"] for a in access["areas"])
    assert sum(f["properties"]["households"] for f in admin["features"]) == unserved
    assert {f["geometry"]["type"] for f in admin["features"]} == {"Polygon"}
    planner = _get(client, "/analysis/toilet-access/unserved", auth["planner"])
    shown = [f["properties"]["households"] for f in planner["features"]]
    assert shown and all(
        isinstance(v, str) and v[0].isdigit() and int(v.split("–")[0].rstrip("+")) >= 5
        for v in shown
    )
    assert len(planner["features"]) <= len(admin["features"])
    r = client.get("/analysis/toilet-access/unserved?cell=100", headers=auth["planner"])
    assert r.status_code == 400


def test_siting_over_http(
    client: TestClient, public_client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    admin = auth["subdistrict_admin"]
    r = client.post("/analysis/toilet-siting", json={"k": 3}, headers=admin)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["exact"]["optimal"] is True and out["exact"]["gap"] == 0
    assert out["exact"]["covered"] >= out["greedy"]["covered"] > 0
    assert out["exact"]["covered"] == sum(s["gain"] for s in out["sites"])
    assert out["exact"]["covered"] + out["exact"]["unserved_after"] == out["before"]["unserved"]
    assert [s["rank"] for s in out["sites"]] == [1, 2, 3]
    gains = [s["gain"] for s in out["sites"]]
    assert gains == sorted(gains, reverse=True)
    # supplied candidates: the answer is among them
    cands = [{"lon": s["lon"] + 0.0003, "lat": s["lat"]} for s in out["greedy_sites"]]
    cands += [{"lon": 113.29, "lat": 34.81}, {"lon": 113.28, "lat": 34.805}]
    r = client.post("/analysis/toilet-siting", json={"k": 2, "candidates": cands}, headers=admin)
    picked = {(s["lon"], s["lat"]) for s in r.json()["sites"]}
    assert picked <= {(c["lon"], c["lat"]) for c in cands} and len(picked) == 2
    r = client.post(
        "/analysis/toilet-siting",
        json={"k": 2, "objective": "distance", "spacing_m": 250},
        headers=admin,
    )
    far = r.json()
    assert (
        far["exact"]["mean_walk_m"] <= far["greedy"]["mean_walk_m"] < far["before"]["mean_walk_m"]
    )
    planner = client.post("/analysis/toilet-siting", json={"k": 3}, headers=auth["planner"]).json()
    assert planner["protected"] is True and "unserved" not in planner["before"]
    assert "covered" not in planner["exact"] and "unserved_after" not in planner["exact"]
    exact_share = out["exact"]["covered"] / out["before"]["unserved"]
    assert planner["exact"]["covered_share"] == round(exact_share, 2)
    assert all(0 < s["gain"] < 1 for s in planner["sites"])  # shares, whole percents
    assert all(round(s["gain"], 2) == s["gain"] for s in planner["sites"])
    for bad in (
        {"k": 0},
        {"k": 3, "extra": 1},
        {"candidates": [{"lon": "x", "lat": 1}]},
        {"candidates": []},
        {"distance_m": 10},
        {"time_limit_s": 0},
    ):
        assert client.post("/analysis/toilet-siting", json=bad, headers=admin).status_code in (
            400,
            422,
        ), bad
    r = client.post("/analysis/toilet-siting", json={"distance_m": 400}, headers=auth["planner"])
    assert r.status_code == 400
    r = client.post(
        "/analysis/toilet-siting",
        content=b'{"k": NaN}',
        headers={**admin, "content-type": "application/json"},
    )
    assert r.status_code in (400, 422)
    assert public_client.post("/analysis/toilet-siting", json={}).status_code == 401


def test_a_chosen_site_saved_as_a_planned_toilet_counts_as_planned(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]]
) -> None:
    before = edit_client.get("/analysis/toilet-access?level=zones").json()
    site = edit_client.post("/analysis/toilet-siting", json={"k": 1}).json()["sites"][0]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [site["lon"], site["lat"]]},
        "properties": {"name": "规划公厕（选址1）", "status": "planned"},
    }
    worker = edit_auth["grid_worker"]
    r = edit_client.post("/collections/toilets/items", json=feature, headers=worker)
    assert r.status_code in (403, 404)
    r = edit_client.post("/collections/toilets/items", json=feature)
    assert r.status_code == 201, r.text
    after = edit_client.get("/analysis/toilet-access?level=zones").json()
    assert after["toilets"]["planned"] == before["toilets"]["planned"] + 1

    def served(body: Any, key: str) -> int:
        return sum(a["toilets"]["300"][key] for a in body["areas"])

    assert served(after, "existing") == served(before, "existing")
    assert served(after, "with_planned") == served(before, "with_planned") + site["gain"]


def test_a_solver_stopped_early_never_answers_worse_than_greedy(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    admin = auth["subdistrict_admin"]

    def ask(**body: Any) -> Any:
        r = client.post("/analysis/toilet-siting", json=body, headers=admin)
        assert r.status_code == 200, r.text
        return r.json()

    quick = ask(k=10, time_limit_s=0.001)
    assert quick["exact"]["covered"] >= quick["greedy"]["covered"] > 0
    assert quick["exact"]["bound"] >= quick["exact"]["covered"]
    assert quick["exact"]["optimal"] is False or quick["exact"]["gap"] == 0
    walk = ask(k=5, objective="distance", spacing_m=200, time_limit_s=0.001)
    assert walk["exact"]["mean_walk_m"] <= walk["greedy"]["mean_walk_m"]
    assert 0 <= walk["exact"]["bound_mean_walk_m"] <= walk["exact"]["mean_walk_m"]
    # no site is proposed that adds nothing; every road piece gets a candidate
    far = ask(k=3, distance_m=2000)
    assert all(s["gain"] > 0 for s in far["sites"])
    sparse = ask(k=1, spacing_m=1000)
    assert sparse["candidates"] > 100 and sparse["sites"]
