"""Assign 1,000,000 household points to the sample's grid cells: gridmap vs geopandas.sjoin.

Anchors measured in the same run: geopandas.sjoin (STRtree, predicate intersects) and a
naive shapely loop (timed on a subsample and scaled, since it would take minutes).
"""

from __future__ import annotations

import datetime as dt
import time

import geopandas as gpd
import numpy as np
import shapely

from benchmarks._common import best_of
from gridmap.assign import assign_points
from gridmap.sample import build_sample

N = 1_000_000
NAIVE_N = 20_000


def main() -> None:
    sample = build_sample(today=dt.date(2026, 11, 24))
    grids = sample.frame.to_wgs84(sample.layers["grids"][0])
    minx, miny, maxx, maxy = shapely.total_bounds(grids)
    rng = np.random.default_rng(0)
    x = rng.uniform(minx - 0.002, maxx + 0.002, N)
    y = rng.uniform(miny - 0.002, maxy + 0.002, N)
    print(f"{N:,} points, {len(grids)} grid cells")

    ours = best_of(lambda: assign_points(x, y, grids))
    result = assign_points(x, y, grids)

    polys = gpd.GeoDataFrame(geometry=grids, crs=4326)

    def sjoin_from_xy() -> gpd.GeoDataFrame:
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=4326)
        return gpd.sjoin(pts, polys, how="left", predicate="intersects")

    pts_ready = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=4326)
    sj_xy = best_of(sjoin_from_xy)
    sj_geom = best_of(lambda: gpd.sjoin(pts_ready, polys, how="left", predicate="intersects"))

    joined = gpd.sjoin(pts_ready, polys, how="left", predicate="intersects")
    joined = joined[~joined.index.duplicated(keep="first")]
    ref = joined["index_right"].fillna(-1).astype(int).to_numpy()
    agree = (ref == result).mean()

    sub = slice(0, NAIVE_N)
    pts = shapely.points(x[sub], y[sub])
    t = time.perf_counter()
    naive = np.full(NAIVE_N, -1)
    for i, p in enumerate(pts):
        for j, g in enumerate(grids):
            if g.intersects(p):
                naive[i] = j
                break
    naive_t = (time.perf_counter() - t) * N / NAIVE_N
    assert (naive == result[sub]).all(), "naive loop disagrees"

    print(f"gridmap PolygonIndex (x, y arrays)      {ours:8.3f} s")
    print(f"geopandas.sjoin incl. building points   {sj_xy:8.3f} s   ratio {sj_xy / ours:6.1f}x")
    print(
        f"geopandas.sjoin, points prebuilt        {sj_geom:8.3f} s   ratio {sj_geom / ours:6.1f}x"
    )
    print(
        f"naive shapely loop (scaled from {NAIVE_N:,}) {naive_t:8.1f} s   "
        f"ratio {naive_t / ours:6.0f}x"
    )
    print(f"agreement with sjoin: {agree:.6f}")


if __name__ == "__main__":
    main()
