"""Grid balance on the sample: gridmap's redrawing against PySAL spopt's regionalisation of
the same building cells, community by community — max-p (as many regions as possible, each
with at least ``min`` households; 10 construction rounds, not spopt's default 99) and AZP
(as many regions as the community has grids, started from today's grids).

For each: the share of regions within [min, max], households moved (those whose region is
not the one matched to their grid today: regions and grids paired to share the most
households, by linear_sum_assignment) and seconds. Counted here from the labels, not taken
from either tool.

    .venv/bin/python -m benchmarks.bench_balance [--database data/zhongxinlu.gpkg]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from gridmap.analysis import balance as bl
from gridmap.store import open_store
from gridmap.store.base import Scope

CONSTRUCTION = 10
"""max-p's construction rounds (spopt's default 99 takes ~17 min on the sample's largest
community of 367 cells; 10 take under 2)."""


def _score(c: bl.Cells, labels: np.ndarray, lo: int, hi: int) -> tuple[int, int, int]:
    """(regions, regions within [lo, hi], households moved) for cell labels."""
    regions = np.unique(labels)
    grids = np.unique(c.grid)
    share = np.zeros((len(grids), len(regions)))
    gi = {g: k for k, g in enumerate(grids)}
    ri = {r: k for k, r in enumerate(regions)}
    for g, r, h in zip(c.grid, labels, c.households, strict=True):
        share[gi[g], ri[r]] += h
    rows, cols = linear_sum_assignment(-share)
    kept = share[rows, cols].sum()
    sizes = [c.households[labels == r].sum() for r in regions]
    inside = sum(lo <= s <= hi for s in sizes)
    return len(regions), int(inside), int(c.households.sum() - kept)


def run(store, lo: int, hi: int) -> None:  # type: ignore[no-untyped-def]
    c, _, _ = bl.cells(store, Scope.ALL)
    print(f"\n## target {lo}–{hi}: {len(np.unique(c.grid))} grids, {len(c.grid)} building cells")
    t = time.perf_counter()
    moves = bl.propose(c, lo=lo, hi=hi, roads=bl._roads(store))
    ours_s = time.perf_counter() - t
    labels = c.grid.copy()
    where = {int(b): k for k, b in enumerate(c.building)}
    for m in moves:
        labels[where[m.building]] = m.target
    rows = [("today's grids", c.grid, 0.0), ("gridmap (local search)", labels, ours_s)]
    try:
        import geopandas as gpd
        import libpysal
        from spopt.region import AZP, MaxPHeuristic
    except ImportError:
        print("spopt not installed: pip install -e '.[bench]' for the anchors")
    else:
        maxp = np.zeros(len(c.grid), dtype=np.int64)
        azp = np.zeros(len(c.grid), dtype=np.int64)
        t_maxp = t_azp = 0.0
        for community in np.unique(c.community):
            idx = np.flatnonzero(c.community == community)
            gdf = gpd.GeoDataFrame(
                {"households": c.households[idx].astype(float)}, geometry=list(c.shape[idx])
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # the cells' own adjacency (shared edges ≥ 1 m), as gridmap moves along it
                pos = {int(i): k for k, i in enumerate(idx)}
                w = libpysal.weights.W(
                    {k: [pos[j] for j in c.neighbours[i] if j in pos] for k, i in enumerate(idx)}
                )
                t = time.perf_counter()
                m = MaxPHeuristic(
                    gdf, w, ["households"], "households", lo, top_n=2,
                    max_iterations_construction=CONSTRUCTION,
                )  # fmt: skip
                m.solve()
                t_maxp += time.perf_counter() - t
                maxp[idx] = community * 10_000 + np.asarray(m.labels_)
                t = time.perf_counter()
                start = np.unique(c.grid[idx], return_inverse=True)[1]
                a = AZP(
                    gdf, w, ["households"], n_clusters=int(start.max() + 1),
                    random_state=0, initial_labels=start,
                )  # fmt: skip
                a.solve()
                t_azp += time.perf_counter() - t
                azp[idx] = community * 10_000 + np.asarray(a.labels_)
        rows += [
            ("spopt max-p (min households)", maxp, t_maxp),
            ("spopt AZP (from today)", azp, t_azp),
        ]
    print("| method | regions | within target | share | households moved | seconds |")
    print("|---|---|---|---|---|---|")
    for name, lab, secs in rows:
        n, inside, moved = _score(c, lab, lo, hi)
        print(f"| {name} | {n} | {inside} | {inside / n:.0%} | {moved:,} | {secs:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", default=None, help="a gridmap GeoPackage (default: the sample)")
    args = ap.parse_args()
    if args.database:
        path = Path(args.database)
    else:
        from gridmap.sample import build_demo

        path = Path(tempfile.mkdtemp()) / "sample.gpkg"
        build_demo(path).close()
    store = open_store(path)
    for lo, hi in ((300, 500), (350, 420)):
        run(store, lo, hi)
    store.close()


if __name__ == "__main__":
    main()
