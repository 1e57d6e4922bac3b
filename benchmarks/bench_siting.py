"""Toilet siting on the sample: gridmap's exact maximal covering (HiGHS) against PySAL
spopt's ``MCLP`` (CBC through PuLP) on the same cost matrix, and the greedy answer; then
toilet access for every household, cold, against a straight-line geopandas anchor.

The problem: every household not within ``distance`` on foot of an open or planned toilet,
weighted per building entrance; candidates every 50 m of walkable road. Each answer's
coverage is recomputed here from the dense cost matrix (not taken from the solver).

    .venv/bin/python -m benchmarks.bench_siting [--database data/zhongxinlu.gpkg]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from gridmap.analysis import covering, reach
from gridmap.analysis import toilets as tl
from gridmap.routing import network
from gridmap.store import open_store
from gridmap.store.base import Scope

FAR = 1e9


def _covered(cost: np.ndarray, w: np.ndarray, chosen: list[int], radius: float) -> float:
    """Weight of the demands within ``radius`` of a chosen candidate (demands × candidates)."""
    if not chosen:
        return 0.0
    return float(w[(cost[:, chosen] <= radius).any(axis=1)].sum())


def siting(store, distance: float, k: int) -> None:  # type: ignore[no-untyped-def]
    lon, lat = tl.road_candidates(store, tl.SPACING_M)
    acc = tl.access(store, Scope.ALL, limit=distance)
    unserved = ~acc.served("with_planned", distance)
    w_all = acc.homes.per_place(unserved)
    demand = np.flatnonzero(w_all > 0)
    w = w_all[demand]
    net = network.of_store(store)
    t = time.perf_counter()
    pairs, _ = reach.pairs_within(
        net, (lon, lat), (acc.homes.lon[demand], acc.homes.lat[demand]), distance
    )
    t_pairs = time.perf_counter() - t
    cost = np.full((len(demand), len(lon)), FAR)
    m = pairs.tocoo()
    cost[m.col, m.row] = m.data
    print(
        f"\n## {distance:g} m, k = {k}: {int(w.sum()):,} unserved households at {len(demand)} "
        f"entrances, {len(lon):,} candidates (walking pairs within reach: {pairs.nnz:,}, "
        f"{t_pairs:.2f} s)"
    )
    exact = covering.mclp(pairs, w, k)
    greedy = covering.greedy_mclp(pairs, w, k)
    rows = [
        (
            "gridmap exact (HiGHS)",
            exact.chosen,
            exact.seconds,
            f"{exact.gap:.2%}" if exact.optimal else f"{exact.gap:.2%} (time limit)",
        ),
        ("gridmap greedy", greedy.chosen, greedy.seconds, "none"),
    ]
    try:
        import pulp
        from spopt.locate import MCLP
    except ImportError:
        print("spopt/pulp not installed: pip install -e '.[bench]' for the anchor")
    else:
        t = time.perf_counter()
        model = MCLP.from_cost_matrix(cost, w, service_radius=distance, p_facilities=k)
        model = model.solve(pulp.PULP_CBC_CMD(msg=False))
        spent = time.perf_counter() - t
        chosen = [j for j, clients in enumerate(model.fac2cli) if len(clients)]
        status = pulp.LpStatus[model.problem.status]
        rows.append(("spopt MCLP (CBC)", chosen, spent, f"CBC: {status}"))
    best = _covered(cost, w, exact.chosen, distance)
    print("| solver | covered households | of unserved | proven gap | seconds | vs gridmap time |")
    print("|---|---|---|---|---|---|")
    for name, chosen, secs, gap in rows:
        got = _covered(cost, w, chosen, distance)
        print(
            f"| {name} | {got:,.0f} | {got / w.sum():.1%} | {gap} | {secs:.2f} | "
            f"{secs / exact.seconds:.1f}× |"
        )
    assert best == exact.objective, "the exact answer's coverage, recomputed, differs"


def access(store, path: Path) -> None:  # type: ignore[no-untyped-def]
    import geopandas as gpd
    import shapely

    print("\n## toilet access for every household (cold: network, households, walks)")
    times = []
    for _ in range(3):
        network._cache.clear()
        tl._memo.clear()
        t = time.perf_counter()
        acc = tl.access(store, Scope.ALL, limit=500)
        times.append(time.perf_counter() - t)
    n = len(acc.homes.ids)
    share = acc.served("existing", 300).mean()
    print(
        f"gridmap walking access, {n:,} households: best {min(times):.3f} s, worst "
        f"{max(times):.3f} s (within 300 m: {share:.1%})"
    )
    tx, ty = tl.toilets(store, tl.OPEN)

    def straight() -> np.ndarray:
        hh = gpd.read_file(path, layer="households", engine="pyogrio").to_crs(4547)
        pts = gpd.GeoDataFrame(geometry=shapely.points(tx, ty), crs=4326).to_crs(4547)
        joined = gpd.sjoin_nearest(hh, pts, distance_col="metres")
        return joined["metres"].to_numpy()

    times = []
    for _ in range(3):
        t = time.perf_counter()
        metres = straight()
        times.append(time.perf_counter() - t)
    print(
        f"geopandas read + sjoin_nearest, straight line (anchor): best {min(times):.3f} s "
        f"(within 300 m: {(metres <= 300).mean():.1%}; straight lines understate the walk)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--database", default=None, help="a gridmap GeoPackage (default: build the sample)"
    )
    args = ap.parse_args()
    if args.database:
        path = Path(args.database)
    else:
        from gridmap.sample import build_demo

        path = Path(tempfile.mkdtemp()) / "sample.gpkg"
        build_demo(path).close()
    store = open_store(path)
    for distance, k in ((300, 3), (500, 3), (300, 10)):
        siting(store, distance, k)
    access(store, path)
    store.close()


if __name__ == "__main__":
    main()
