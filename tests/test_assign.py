"""Bulk point-in-polygon assignment agrees with a plain shapely loop, edges included."""

from __future__ import annotations

import numpy as np
import shapely

from gridmap.assign import PolygonIndex, assign_points


def _voronoi_cells(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = shapely.box(0, 0, 3000, 2400)
    seeds = shapely.multipoints(shapely.points(rng.uniform(0, 3000, n), rng.uniform(0, 2400, n)))
    cells = shapely.voronoi_polygons(seeds, extend_to=frame)
    return np.array([c.intersection(frame) for c in cells.geoms])


def _naive(x: np.ndarray, y: np.ndarray, polys: np.ndarray) -> np.ndarray:
    out = np.full(len(x), -1)
    for i, (px, py) in enumerate(zip(x, y, strict=True)):
        p = shapely.Point(px, py)
        for j, poly in enumerate(polys):
            if poly.intersects(p):
                out[i] = j
                break
    return out


def test_matches_naive_loop_on_random_points() -> None:
    polys = _voronoi_cells(40, 1)
    rng = np.random.default_rng(2)
    x = rng.uniform(-200, 3200, 4000)
    y = rng.uniform(-200, 2600, 4000)
    got = assign_points(x, y, polys)
    assert (got == _naive(x, y, polys)).all()
    assert (got == -1).sum() > 0  # some points fall outside every cell


def test_points_on_shared_edges_and_vertices_get_the_lowest_index() -> None:
    polys = np.array([shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1), shapely.box(0, 1, 1, 2)])
    x = np.array([1.0, 0.5, 1.0, 2.0, 2.0001])
    y = np.array([0.5, 1.0, 1.0, 0.5, 0.5])
    assert assign_points(x, y, polys).tolist() == [0, 0, 0, 1, -1]


def test_interior_cells_answer_without_exact_test() -> None:
    idx = PolygonIndex(_voronoi_cells(10, 5), cells=10_000)
    labels = idx._labels
    assert (labels >= 0).mean() > 0.5  # most of the raster is decided in advance


def test_empty_polygon_set() -> None:
    assert assign_points([1.0, 2.0], [1.0, 2.0], []).tolist() == [-1, -1]


def test_lookup_geometries_uses_point_on_surface_for_polygons() -> None:
    polys = np.array([shapely.box(0, 0, 10, 10), shapely.box(10, 0, 20, 10)])
    idx = PolygonIndex(polys)
    got = idx.lookup_geometries([shapely.box(12, 2, 14, 4), shapely.Point(5, 5)])
    assert got.tolist() == [1, 0]
