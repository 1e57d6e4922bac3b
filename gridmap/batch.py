"""City-wide batch jobs on Dask distributed: every household's grid by location, statistics
for every grid, and every grid's visit plans for a day.

Jobs run on a :class:`distributed.Client`: a ``LocalCluster`` of single-threaded worker
processes by default (:func:`connect`), or a running scheduler named by address. Work is
partitioned by community: a task reads the households stored in one community's grids (or
a batch of communities) from the store itself, opened from its URL in the worker (stores
are never shipped), and returns compact numpy/pandas results that the client merges.

Households are partitioned by the grid stored for them, so each one is read by exactly
one task, however near a border it lies; the polygons it is tested against are every
grid (broadcast once to each worker), not its community's, so a household stored in the
wrong community is still found in the right grid. Households stored in no grid form one
more task, and any household no task read (its stored grid gone) a last one, by id.
"""

from __future__ import annotations

import atexit
import datetime as dt
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely
from distributed import Client, LocalCluster, as_completed

from gridmap import campaigns as camp
from gridmap import plans
from gridmap.assign import assign_points
from gridmap.errors import GridmapError
from gridmap.layers import HOUSEHOLD_TAGS, LOCAL_TZ
from gridmap.store import FeatureStore, Query, Scope, is_server_url, open_store
from gridmap.store.base import FeatureSet

IntArray = npt.NDArray[np.int64]
Progress = Callable[[int, int], None]
"""Called with (tasks done, tasks in all) as the job's tasks complete."""

CONNECT_TIMEOUT_S = 5.0
"""Seconds to wait for a scheduler at an address (and for its first worker)."""
NO_GRID = -1
"""Stands for "in no grid" (located) and "none stored" in the integer result arrays."""


class BatchError(GridmapError):
    """A batch job cannot start: no scheduler answers, no worker joins, nothing to do."""


# ---------------------------------------------------------------- cluster


def default_workers() -> int:
    """Worker processes of a local cluster by default: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


QUIET_HTTP = {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}
"""No diagnostic web routes on a local cluster (they would show workers and tasks)."""


@contextmanager
def connect(
    scheduler: str | None = None,
    workers: int | None = None,
    *,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Iterator[Client]:
    """A Dask client on the scheduler at ``scheduler`` (``tcp://host:port``), or on a new
    local cluster of ``workers`` single-threaded processes, closed (cluster too) after."""
    if scheduler:
        client = _remote_client(scheduler, timeout)
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or default_workers()
    if n < 1:
        raise BatchError("workers must be at least 1")
    # Mutual TLS with throw-away certificates, on loopback, no web pages: another user of
    # the machine can neither submit code to the workers nor read what they hold.
    with dask.config.set(QUIET_HTTP):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            security=True,
            dashboard_address=":0",  # its (empty) web server on any free port
            worker_dashboard_address=None,
            scheduler_kwargs={"dashboard": False},
        )
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _remote_client(address: str, timeout: float) -> Client:
    """A client of the scheduler at ``address`` that has a worker, else BatchError."""
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except Exception:  # not a Dask scheduler, an address that is no address …
        # the half-made client closes itself when collected: let that happen now, not
        # inside the next client's start (where distributed's loop lock deadlocks it)
        gc.collect()
        msg = (
            f"no Dask scheduler answers at {address[:100]!r} within {timeout:g} s "
            "(start one with `dask scheduler`, or give its tcp://host:port)"
        )
        raise BatchError(msg) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError):
        client.close()
        msg = f"the Dask scheduler at {address[:100]!r} has no worker (dask worker {address})"
        raise BatchError(msg) from None
    return client


@contextmanager
def _using(client: Client | None, scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """``client`` if given (left open), else one from :func:`connect`."""
    if client is not None:
        yield client
        return
    with connect(scheduler, workers) as own:
        yield own


def _completed(
    client: Client,
    fn: Callable[..., Any],
    items: Sequence[Any],
    *args: Any,
    progress: Progress | None = None,
) -> Iterator[tuple[int, Any]]:
    """(index, result) of ``fn(item, *args)`` for each item, run on the cluster, as each
    completes; ``progress(done, total)`` after each. Tasks left are cancelled on error."""
    futures = [client.submit(fn, item, *args, pure=False) for item in items]
    where = {f.key: i for i, f in enumerate(futures)}
    if progress is not None:
        progress(0, len(futures))
    try:
        for done, fut in enumerate(as_completed(futures, loop=client.loop), start=1):
            try:
                result = fut.result()
            except ModuleNotFoundError as exc:
                msg = f"a Dask worker cannot import {exc.name}: install gridmap where they run"
                raise BatchError(msg) from None
            if progress is not None:
                progress(done, len(futures))
            yield where[fut.key], result
            fut.release()
    finally:
        left = [f for f in futures if not f.done()]
        if left:
            client.cancel(left)


# ---------------------------------------------------------------- stores in workers

_OPEN: dict[tuple[str, int], FeatureStore] = {}
_OPEN_LOCK = threading.Lock()
_KEEP_OPEN = 4


def _canonical(url: str | os.PathLike[str]) -> str:
    """A store setting every worker reads alike: a file as an absolute path."""
    text = str(url)
    return text if is_server_url(text) or "://" in text else str(Path(text).resolve())


def _file_id(url: str) -> int:
    """The file's inode (a file built again at the same path is another store), 0 for a server."""
    if is_server_url(url):
        return 0
    try:
        return os.stat(url).st_ino
    except OSError:
        return -1


def worker_store(url: str) -> FeatureStore:
    """The store at ``url``, opened once per process and kept for the tasks that follow."""
    key = (url, _file_id(url))
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None:
            while len(_OPEN) >= _KEEP_OPEN:
                _OPEN.pop(next(iter(_OPEN))).close()
            store = _OPEN[key] = open_store(url)
    return store


def _open_here(url: str) -> None:
    """In a worker: open the store (nothing comes back)."""
    worker_store(url)


def warm(client: Client, url: str | os.PathLike[str]) -> None:
    """Have every worker import gridmap and open the store now (before a timed job)."""
    client.run(_open_here, _canonical(url))


@atexit.register
def _close_stores() -> None:
    """Close the stores the tasks opened (at the worker's exit)."""
    with _OPEN_LOCK:
        for store in _OPEN.values():
            store.close()
        _OPEN.clear()


@contextmanager
def _opened(url: str) -> Iterator[FeatureStore]:
    """The store for the client's side of a job, closed after."""
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


# ---------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Part:
    """One task's households: those stored in some communities' grids, those stored in
    no grid (``orphans``), or those with given ``ids``."""

    communities: tuple[int | None, ...] = ()
    grid_ids: tuple[int, ...] = ()
    orphans: bool = False
    ids: tuple[int, ...] | None = None


@dataclass
class Grids:
    """Every grid in id order (ids, WGS84 polygons, communities); broadcast to workers."""

    ids: IntArray
    geometries: npt.NDArray[np.object_]
    communities: list[int | None]
    names: list[Any]
    _tree: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the spatial index (each worker builds its own once)."""
        return {**self.__dict__, "_tree": None}

    def candidates(self, bounds: Sequence[float]) -> IntArray:
        """Positions (ascending, so ascending ids) of the grids meeting a box."""
        if self._tree is None:
            self._tree = shapely.STRtree(self.geometries)
        return np.sort(self._tree.query(shapely.box(*bounds))).astype(np.int64)


def read_grids(store: FeatureStore) -> Grids:
    """Every grid that has a geometry, in id order."""
    fs = store.query("grids", Query(order_by=["id"])).with_geometry()
    return Grids(
        fs.ids.astype(np.int64),
        fs.geometries,
        [p.get("community_id") for p in fs.properties],
        [p.get("name") for p in fs.properties],
    )


def community_parts(grids: Grids, per_task: int = 1) -> list[Part]:
    """The grids grouped by community, ``per_task`` communities to a task."""
    if per_task < 1:
        raise BatchError("per_task must be at least 1")
    members: dict[int | None, list[int]] = {}
    for gid, cid in zip(grids.ids.tolist(), grids.communities, strict=True):
        members.setdefault(cid, []).append(gid)
    keys = sorted(members, key=lambda k: (k is None, k or 0))
    return [
        Part(tuple(chunk), tuple(g for c in chunk for g in members[c]))
        for chunk in (keys[k : k + per_task] for k in range(0, len(keys), per_task))
    ]


def read_households(store: FeatureStore, part: Part) -> FeatureSet:
    """The households of one part, every column, in id order."""
    if part.ids is not None:
        return store.query("households", Query(ids=list(part.ids), order_by=["id"]))
    if part.orphans:
        return store.query("households", Query(equals={"grid_id": None}, order_by=["id"]))
    scope = Scope(grid_ids=frozenset(part.grid_ids))
    return store.query("households", Query(order_by=["id"]), scope=scope)


def _stored_grids(fs: FeatureSet) -> IntArray:
    """Each household's stored grid id (NO_GRID for none)."""
    return np.array(
        [g if isinstance(g, int) else NO_GRID for g in (p.get("grid_id") for p in fs.properties)],
        dtype=np.int64,
    )


# ---------------------------------------------------------------- assignment


@dataclass(frozen=True)
class Assignment:
    """Every household's grid by location (NO_GRID: in none) beside its stored grid."""

    ids: IntArray
    grid_ids: IntArray
    stored: IntArray
    tasks: int = 0
    seconds: float = 0.0

    @property
    def mismatched(self) -> IntArray:
        """Ids of the households whose stored grid is not the grid they lie in."""
        return self.ids[self.grid_ids != self.stored]

    @property
    def mismatches(self) -> int:
        """How many households' stored grid is not the one they lie in."""
        return int(np.count_nonzero(self.grid_ids != self.stored))

    @property
    def outside(self) -> int:
        """How many households lie in no grid (or have no location)."""
        return int(np.count_nonzero(self.grid_ids == NO_GRID))

    def to_frame(self) -> pd.DataFrame:
        """One row per household: id, stored grid, located grid (NO_GRID for none)."""
        return pd.DataFrame(
            {"id": self.ids, "stored_grid_id": self.stored, "grid_id": self.grid_ids}
        )


def locate_households(fs: FeatureSet, grids: Grids) -> IntArray:
    """The id of the grid each household lies in (lowest id on a shared border; NO_GRID
    for none or no location), tested against every grid near the households."""
    geoms = fs.geometries
    out = np.full(len(fs), NO_GRID, dtype=np.int64)
    has = np.flatnonzero(~shapely.is_missing(geoms) & ~shapely.is_empty(geoms))
    if not has.size or not len(grids.ids):
        return out
    pts = geoms[has].copy()
    not_point = shapely.get_type_id(pts) != 0
    if not_point.any():
        pts[not_point] = shapely.point_on_surface(pts[not_point])
    x, y = shapely.get_x(pts), shapely.get_y(pts)
    near = grids.candidates((x.min(), y.min(), x.max(), y.max()))
    if not near.size:
        return out
    pos = assign_points(x, y, grids.geometries[near])
    out[has] = np.where(pos >= 0, grids.ids[near[np.maximum(pos, 0)]], NO_GRID)
    return out


def _assign_task(part: Part, url: str, grids: Grids) -> dict[str, IntArray]:
    """In a worker: one part's household ids, stored grids and located grids."""
    fs = read_households(worker_store(url), part)
    return {
        "ids": fs.ids.astype(np.int64),
        "stored": _stored_grids(fs),
        "grid_ids": locate_households(fs, grids),
    }


def assign_households(
    url: str | os.PathLike[str],
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    per_task: int = 1,
    progress: Progress | None = None,
) -> Assignment:
    """Every household's grid computed from its location on the cluster, one task per
    ``per_task`` communities, beside the grid stored for it."""
    url = _canonical(url)
    with _opened(url) as store, _using(client, scheduler, workers) as c:
        started = time.perf_counter()
        grids = read_grids(store)
        parts = [*community_parts(grids, per_task), Part(orphans=True)]
        shared = c.scatter(grids, broadcast=True, hash=False)
        chunks = [r for _, r in _completed(c, _assign_task, parts, url, shared, progress=progress)]
        missing = _unread(store, np.concatenate([ch["ids"] for ch in chunks]))
        if missing.size:  # stored in a grid that no longer exists
            last = [Part(ids=tuple(missing.tolist()))]
            chunks += [r for _, r in _completed(c, _assign_task, last, url, shared)]
            parts += last
        return _merged(chunks, len(parts), time.perf_counter() - started)


def _unread(store: FeatureStore, seen: IntArray) -> IntArray:
    """Household ids no task read (counted first: reading every id is rarely needed)."""
    if store.count("households") == np.unique(seen).size:
        return np.empty(0, dtype=np.int64)
    every = store.query_ids("households")[0].astype(np.int64)
    return np.setdiff1d(every, seen)


def _merged(chunks: list[dict[str, IntArray]], tasks: int, seconds: float) -> Assignment:
    """The tasks' arrays as one assignment in id order (a household read twice, moved
    between communities while the job ran, counts once)."""
    if not chunks:
        empty = np.empty(0, dtype=np.int64)
        return Assignment(empty, empty, empty, tasks, seconds)
    ids = np.concatenate([c["ids"] for c in chunks])
    _, first = np.unique(ids, return_index=True)
    return Assignment(
        ids[first],
        np.concatenate([c["grid_ids"] for c in chunks])[first],
        np.concatenate([c["stored"] for c in chunks])[first],
        tasks,
        seconds,
    )


@dataclass
class Fixed:
    """What writing the located grids did: (id, old, new) written, (id, reason) refused."""

    written: list[tuple[int, int | None, int]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)


def write_grids(
    store: FeatureStore,
    result: Assignment,
    on_write: Callable[[int, Any, int], None] | None = None,
) -> Fixed:
    """Have the store derive again the grid of each mismatched household that lies in a
    grid (one update each, through every rule of the store); others are refused.
    ``on_write(fid, old, new)`` follows each write at once (the CLI audits it there, so
    an interrupted run leaves no write unaudited)."""
    out = Fixed()
    for fid, located in zip(
        result.mismatched.tolist(),
        result.grid_ids[result.grid_ids != result.stored].tolist(),
        strict=True,
    ):
        if located == NO_GRID:
            out.refused.append((fid, "lies in no grid"))
            continue
        try:
            old = store.get("households", fid).properties.get("grid_id")
            new = store.update("households", fid, properties={}).properties.get("grid_id")
        except GridmapError as exc:
            out.refused.append((fid, str(exc)))
            continue
        if new != old:
            out.written.append((fid, old, int(new)))
            if on_write is not None:
                on_write(fid, old, int(new))
    return out


# ---------------------------------------------------------------- statistics


def _instant(value: Any) -> dt.datetime | None:
    """A stored time as naive Beijing time (None if it is none)."""
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    elif isinstance(value, dt.date):
        t = dt.datetime.combine(value, dt.time())
    else:
        return None
    return t.astimezone(LOCAL_TZ).replace(tzinfo=None) if t.tzinfo else t


def household_figures(fs: FeatureSet, since: dt.datetime) -> pd.DataFrame:
    """Per stored grid: households, population, visited since ``since``, each tag."""
    props = fs.properties
    grid = _stored_grids(fs)
    members = [
        m if isinstance(m, int) and not isinstance(m, bool) else 0
        for m in (p.get("members") for p in props)
    ]
    visited = [
        p.get("last_visit_status") == "visited"
        and (t := _instant(p.get("last_visit_at"))) is not None
        and t >= since
        for p in props
    ]
    tags = [set(p["tags"]) if isinstance(p.get("tags"), list) else set() for p in props]
    frame = pd.DataFrame(
        {
            "grid_id": grid,
            "households": np.ones(len(props), dtype=np.int64),
            "population": np.array(members, dtype=np.int64),
            "visited": np.array(visited, dtype=np.int64),
            **{t: np.array([t in s for s in tags], dtype=np.int64) for t in HOUSEHOLD_TAGS},
        }
    )
    return frame[frame["grid_id"] != NO_GRID].groupby("grid_id").sum()


def _stats_task(part: Part, url: str, since: dt.datetime) -> pd.DataFrame:
    """In a worker: one part's figures per grid."""
    return household_figures(read_households(worker_store(url), part), since)


def grid_statistics(
    url: str | os.PathLike[str],
    *,
    today: dt.date | None = None,
    days: int = 30,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    per_task: int = 1,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Per grid (by the grid stored for each household, as the statistics count them):
    households, population, visited in the last ``days``, each tag and visit coverage —
    the figures of :func:`gridmap.queries.household_stats` unprotected, for every grid."""
    if days < 1:
        raise BatchError("days must be at least 1")
    url = _canonical(url)
    since = dt.datetime.combine(today or dt.date.today(), dt.time()) - dt.timedelta(days=days)
    with _opened(url) as store:
        grids = read_grids(store)
    parts = community_parts(grids, per_task)
    with _using(client, scheduler, workers) as c:
        frames = [r for _, r in _completed(c, _stats_task, parts, url, since, progress=progress)]
    columns = ["households", "population", "visited", *HOUSEHOLD_TAGS]
    summed = pd.concat(frames).groupby(level=0).sum() if frames else pd.DataFrame(columns=columns)
    out = summed.reindex(pd.Index(grids.ids, name="grid_id"), fill_value=0)[columns].astype(
        np.int64
    )
    out = out.rename(columns={"visited": f"visited_last_{days}_days"})
    hh, seen = out["households"], out[f"visited_last_{days}_days"]
    out["visit_coverage"] = [  # rounded as household_stats rounds
        round(v / h, 4) if h else None for v, h in zip(seen.tolist(), hh.tolist(), strict=True)
    ]
    out.insert(0, "community_id", pd.array(grids.communities, dtype="Int64"))
    out.insert(0, "name", grids.names)
    return out


# ---------------------------------------------------------------- visit plans


@dataclass
class PlanRun:
    """Each grid's plan in brief (``summary``, one row per grid), the plans' bodies when
    kept, and the ids of the plans saved."""

    summary: pd.DataFrame
    bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    saved: dict[int, int] = field(default_factory=dict)
    """Grid id → id of its saved plan."""
    on_saved: Callable[[FeatureStore, int, int], None] | None = None
    """Called with (store, grid id, plan id) as each plan is saved (the CLI audits there)."""
    seconds: float = 0.0


def plan_summary(body: dict[str, Any]) -> dict[str, Any]:
    """A plan body's figures: stops, households planned and left out, length, duration."""
    routes = body.get("routes", [])
    return {
        "grid_id": body["grid_id"],
        "households_open": body.get("households_open", 0),
        "routes": len(routes),
        "stops": sum(len(r["stops"]) for r in routes),
        "households": sum(len(s["households"]) for r in routes for s in r["stops"]),
        "unassigned": len(body.get("unassigned", [])),
        "distance_m": round(sum(r["distance_m"] for r in routes), 1),
        "duration_s": sum(r["duration_s"] for r in routes),
        "solver_s": (body.get("solver") or {}).get("seconds", 0.0),
        "note": body.get("note"),
    }


def _plan_task(reqs: tuple[plans.PlanRequest, ...], url: str, keep: bool) -> list[dict[str, Any]]:
    """In a worker: each grid's plan (computed, not saved, under that grid's scope, as its
    grid worker would plan it), in brief, with its body if kept."""
    store = worker_store(url)  # solved in this process: a Dask worker is a daemon
    out = []
    for req in reqs:
        started = time.perf_counter()
        try:  # the grid's own scope: its households' ledger only, not the campaign's
            body = plans.compute(store, req, scope=Scope(grid_ids=frozenset({req.grid_id})))
        except GridmapError as exc:
            out.append({"grid_id": req.grid_id, "error": str(exc), "body": None})
            continue
        row = plan_summary(body)
        row.update(seconds=round(time.perf_counter() - started, 3), error=None)
        row["body"] = body if keep else None
        out.append(row)
    return out


def campaign_grids(
    store: FeatureStore, campaign_id: int, grid_ids: Sequence[int] | None
) -> list[int]:
    """The grids of a campaign (every grid for a campaign of all), or those of ``grid_ids``
    among them; FeatureNotFoundError for no such campaign, BatchError for a grid not in it."""
    c = camp.get(store, campaign_id)
    every = store.query_ids("grids", Query(order_by=["id"]))[0].tolist()
    mine = [g for g in every if c.grid_ids is None or g in c.grid_ids]
    if grid_ids is None:
        return mine
    outside = sorted(set(grid_ids) - set(mine))
    if outside:
        msg = f"grid(s) {', '.join(map(str, outside[:10]))} are not grids of campaign {c.id}"
        raise BatchError(msg)
    return sorted(set(grid_ids))


def visit_plans(
    url: str | os.PathLike[str],
    campaign_id: int,
    day: dt.date,
    *,
    grid_ids: Sequence[int] | None = None,
    walkers: int = 1,
    time_limit_s: float = 2.0,
    save: bool = False,
    by: str | None = None,
    keep: bool = False,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    per_task: int = 1,
    progress: Progress | None = None,
    on_saved: Callable[[FeatureStore, int, int], None] | None = None,
) -> PlanRun:
    """The plan of every grid of a campaign (or of ``grid_ids``) for one day, ``walkers``
    grid workers each, computed on the cluster ``per_task`` grids to a task; with ``save``
    stored here through :func:`gridmap.plans.save` as each task's plans arrive (then
    ``on_saved(store, grid id, plan id)`` for each)."""
    if per_task < 1:
        raise BatchError("per_task must be at least 1")
    url = _canonical(url)
    with _opened(url) as store:
        grids = campaign_grids(store, campaign_id, grid_ids)
        reqs = [
            plans.PlanRequest(campaign_id, g, day, workers=walkers, time_limit_s=time_limit_s)
            for g in grids
        ]
        if not reqs:
            raise BatchError(f"campaign {campaign_id} has no grid to plan")
        plans.check(store, reqs[0], scope=Scope.ALL)  # open, and the day within it
        batches = [tuple(reqs[k : k + per_task]) for k in range(0, len(reqs), per_task)]
        run = PlanRun(pd.DataFrame(), on_saved=on_saved)
        rows: list[dict[str, Any]] = []
        with _using(client, scheduler, workers) as c:
            started = time.perf_counter()
            for _, got in _completed(c, _plan_task, batches, url, keep or save, progress=progress):
                _take(store, got, rows, run, save=save, keep=keep, by=by)
            run.seconds = time.perf_counter() - started
    run.summary = pd.DataFrame(rows).set_index("grid_id").sort_index()
    return run


def _take(
    store: FeatureStore,
    got: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    run: PlanRun,
    *,
    save: bool,
    keep: bool,
    by: str | None,
) -> None:
    """One task's plans into the run: saved in one transaction if asked, bodies if kept."""
    bodies = [r.pop("body") for r in got]
    done = [b for b in bodies if b is not None]
    if save and done:
        for doc in plans.save(store, done, by=by):
            run.saved[int(doc["grid_id"])] = int(doc["id"])
            if run.on_saved is not None:
                run.on_saved(store, int(doc["grid_id"]), int(doc["id"]))
    if keep:
        run.bodies.update({int(b["grid_id"]): b for b in done})
    for r in got:
        r["plan_id"] = run.saved.get(int(r["grid_id"]))
    rows.extend(got)
