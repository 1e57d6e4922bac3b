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
    assert greedy.objective == pytest.approx(total(greedy.chosen)) and greedy.objective >= best - 1e-6


# --- walking distances against networkx -----------------------------------------------


def _node(xy: Any) -> tuple[float, float]:
    return (round(float(xy[0]), 6), round(float(xy[1]), 6))


def _nx_graph(lines_wgs84: list[shapely.LineString], points: np.ndarray) -> tuple[nx.Graph, list[Any]]:
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
