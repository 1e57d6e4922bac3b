"""City-wide batch jobs on Dask (gridmap.batch) against one process, in the same run.

1. Grid assignment of every household: ``batch.assign_households`` on a local cluster of
   1, 2, 4 … single-threaded worker processes (each task reads one community's households
   from the store and locates them in every grid), against geopandas.sjoin in one
   process over the same points (read from the same store, in id pages). The answers are
   compared household by household (lowest grid id where a point lies on a border).
2. Visit plans for one day: ``batch.visit_plans`` for every grid of a campaign (or an even
   sample of ``--plan-grids`` of them) against one process: ``plans.compute`` grid after
   grid, each under its grid's scope with the solver in the calling thread, as a worker
   plans it (one core), and ``plans.compute_many`` over every grid at once with its pool
   of solver processes on every core (what ``gridmap plan`` does); plans compared stop
   by stop.

Cluster start-up is not timed (each worker opens the store before the clock starts); a
job's time runs from its first read to its last result, on the client.

    .venv/bin/python -m benchmarks.bench_batch                       # the sample (built)
    .venv/bin/python -m benchmarks.bench_batch --database postgresql://…/city --workers 1,2,4
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from gridmap import batch, plans
from gridmap import campaigns as camp
from gridmap.store import FeatureStore, Query, Scope, is_server_url, open_store

SAMPLE = Path("data/zhongxinlu.gpkg")
PAGE = 100_000


def _households(store: FeatureStore) -> tuple[np.ndarray, np.ndarray, float]:
    """Every household's id and point, read in id pages in one process; seconds taken."""
    started = time.perf_counter()
    ids: list[np.ndarray] = []
    geoms: list[np.ndarray] = []
    after = None
    while True:
        fs = store.query("households", Query(order_by=["id"], limit=PAGE, after=after))
        if not len(fs):
            break
        ids.append(fs.ids.astype(np.int64))
        geoms.append(fs.geometries)
        after = int(fs.ids[-1])
    return np.concatenate(ids), np.concatenate(geoms), time.perf_counter() - started


def _sjoin(points: np.ndarray, grids: batch.Grids) -> tuple[np.ndarray, float]:
    """geopandas.sjoin (intersects) of the points with every grid, the lowest grid id
    kept where a point lies on a border (-1 for none); seconds taken."""
    started = time.perf_counter()
    pts = gpd.GeoDataFrame(geometry=points, crs=4326)
    polys = gpd.GeoDataFrame({"gid": grids.ids}, geometry=grids.geometries, crs=4326)
    joined = gpd.sjoin(pts, polys, how="left", predicate="intersects")
    best = joined.groupby(level=0)["gid"].min()
    out = best.reindex(range(len(points))).fillna(-1).astype(np.int64).to_numpy()
    return out, time.perf_counter() - started


def bench_assign(url: str, workers: list[int], per_task: int, repeat: int) -> None:
    """Assignment on Dask with each worker count against read + sjoin in one process
    (each the best of ``repeat`` runs)."""
    store = open_store(url)
    grids = batch.read_grids(store)
    ids, points, read_s = min((_households(store) for _ in range(repeat)), key=lambda r: r[2])
    store.close()
    want, sjoin_s = min((_sjoin(points, grids) for _ in range(repeat)), key=lambda r: r[1])
    one = read_s + sjoin_s
    n = len(ids)
    print(f"\n1. grid assignment: {n:,} households, {len(grids.ids):,} grids")
    print(f"{'':34}{'seconds':>9}{'households/s':>14}{'× one process':>15}{'× sjoin':>9}")
    print(f"{'one process: read (id pages)':34}{read_s:9.2f}{n / read_s:14,.0f}")
    print(f"{'one process: geopandas.sjoin':34}{sjoin_s:9.2f}{n / sjoin_s:14,.0f}")
    print(f"{'one process: read + sjoin (anchor)':34}{one:9.2f}{n / one:14,.0f}{1.0:15.2f}")
    for w in workers:
        with batch.connect(None, w) as client:
            batch.warm(client, url)
            got = min(
                (
                    batch.assign_households(url, client=client, per_task=per_task)
                    for _ in range(repeat)
                ),
                key=lambda a: a.seconds,
            )
        assert got.ids.tolist() == ids.tolist(), "the job did not read every household once"
        differ = int(np.count_nonzero(got.grid_ids != want))
        s = got.seconds
        label = f"Dask, {w} worker{'s' if w > 1 else ''} ({got.tasks} tasks)"
        print(f"{label:34}{s:9.2f}{n / s:14,.0f}{one / s:15.2f}{sjoin_s / s:9.2f}", end="")
        print(f"   {'same answers as sjoin' if not differ else f'{differ:,} DIFFER from sjoin'}")


def _stops(body: dict[str, Any]) -> list[list[str]]:
    """A plan's stops, route by route, in visit order."""
    return [[s["stop"] for s in r["stops"]] for r in body["routes"]]


def _grid(req: plans.PlanRequest) -> Scope:
    """One grid's scope, under which a worker plans it (its own ledger only)."""
    return Scope(grid_ids=frozenset({req.grid_id}))


def _campaign(store: FeatureStore, wanted: int | None) -> camp.Campaign:
    """The campaign asked for, else the first open one."""
    if wanted is not None:
        return camp.get(store, wanted)
    found = [c for c in camp.all_campaigns(store) if c.status == "open"]
    if not found:
        raise SystemExit("no open campaign to plan (create one: gridmap campaign create)")
    return found[0]


def bench_plans(
    url: str,
    workers: list[int],
    campaign: int | None,
    day: dt.date | None,
    sample: int | None,
    per_task: int,
) -> None:
    """A day's plans on Dask with each worker count against one process, grid by grid."""
    from gridmap.routing import pool

    store = open_store(url)
    c = _campaign(store, campaign)
    when = day or min(max(dt.date.today(), c.starts), c.ends)
    every = batch.campaign_grids(store, c.id, None)
    picked = every
    if sample is not None and sample < len(every):
        picked = [every[int(k)] for k in np.linspace(0, len(every) - 1, sample).round()]
    reqs = [plans.PlanRequest(c.id, g, when) for g in picked]
    started = time.perf_counter()
    many = plans.compute_many(store, reqs, scope=Scope.ALL)  # the solver pool, every core
    pooled = time.perf_counter() - started
    cores = pool.processes()
    os.environ["GRIDMAP_SOLVER_PROCESSES"] = "1"  # the solver in this thread, as in a worker
    started = time.perf_counter()
    want = {r.grid_id: _stops(plans.compute(store, r, scope=_grid(r))) for r in reqs}
    one = time.perf_counter() - started
    store.close()
    k = len(picked)
    agree = sum(1 for r, b in zip(reqs, many, strict=True) if _stops(b) == want[r.grid_id])
    print(f"\n2. visit plans, campaign {c.id} on {when}: {k:,} of {len(every):,} grids")
    print(f"{'':34}{'seconds':>9}{'grids/s':>9}{'per worker':>11}{'× one core':>12}{'× pool':>8}")
    print(f"{'one process, grid after grid':34}{one:9.2f}{k / one:9.2f}{k / one:11.2f}{1.0:12.2f}")
    print(
        f"{f'one process, solver pool ({cores})':34}{pooled:9.2f}{k / pooled:9.2f}"
        f"{k / pooled / cores:11.2f}{one / pooled:12.2f}{1.0:8.2f}   same stops: {agree}/{k}"
    )
    for w in workers:
        with batch.connect(None, w) as client:
            batch.warm(client, url)
            run = batch.visit_plans(
                url, c.id, when, grid_ids=picked, keep=True, client=client, per_task=per_task
            )
        same = sum(1 for g in picked if g in run.bodies and _stops(run.bodies[g]) == want[g])
        sec = run.seconds
        label = f"Dask, {w} worker{'s' if w > 1 else ''}"
        print(
            f"{label:34}{sec:9.2f}{k / sec:9.2f}{k / sec / w:11.2f}{one / sec:12.2f}"
            f"{pooled / sec:8.2f}   same stops: {same}/{k}"
        )


def _sample_store(work: Path) -> str:
    """The sample GeoPackage (data/zhongxinlu.gpkg if built, else built here)."""
    if SAMPLE.exists():
        return str(SAMPLE)
    from gridmap.sample import build_demo

    path = work / "zhongxinlu.gpkg"
    print(f"building the sample into {path} …", flush=True)
    build_demo(path, today=dt.date(2026, 11, 24)).close()
    return str(path)


def _shown(url: str) -> str:
    """The store named without a password."""
    if is_server_url(url):
        from gridmap.store.postgis import redact

        return redact(url)
    return str(Path(url).resolve())


def _versions() -> str:
    """The versions of the libraries measured."""
    import distributed

    return (
        f"distributed {distributed.__version__}, shapely {shapely.__version__}, "
        f"geopandas {gpd.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database", help="GeoPackage or postgresql:// URL (default: the sample)")
    ap.add_argument("--workers", default="1,2,4", help="worker counts to measure (1,2,4)")
    ap.add_argument("--plan-grids", type=int, help="plan an even sample of this many grids")
    ap.add_argument("--campaign", type=int, help="campaign to plan (default: first open one)")
    ap.add_argument("--day", type=dt.date.fromisoformat, help="day to plan (YYYY-MM-DD)")
    ap.add_argument("--per-task", type=int, default=1, help="communities (grids) per task")
    ap.add_argument("--repeat", type=int, default=1, help="assignment: best of this many runs")
    ap.add_argument("--skip-plans", action="store_true", help="measure the assignment only")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory(prefix="gridmap-bench-") as tmp:
        url = args.database or _sample_store(Path(tmp))
        print(f"store {_shown(url)}; {_versions()}; worker processes {workers}")
        bench_assign(url, workers, args.per_task, max(1, args.repeat))
        if not args.skip_plans:
            bench_plans(url, workers, args.campaign, args.day, args.plan_grids, args.per_task)


if __name__ == "__main__":
    main()
