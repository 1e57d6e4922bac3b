"""City-wide batch jobs on Dask (gridmap.batch, ``gridmap batch``): a local cluster of
three worker processes gives the answers one process gives, and an independent brute
force (shapely ``covers`` over every grid, geopandas.sjoin); statistics equal
``household_stats``; plans equal ``plans.compute``."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
from distributed import Client
from typer.testing import CliRunner

import gridmap.cli_batch  # noqa: F401  (registers `gridmap batch`)
from gridmap import batch, plans, queries
from gridmap.assign import assign_points
from gridmap.cli import app
from gridmap.geometry import to_gpkg_blobs
from gridmap.layers import HOUSEHOLD_TAGS
from gridmap.store import Query, Scope, open_store
from tests.conftest import REFERENCE_DATE, raw_sql

runner = CliRunner()
CAMPAIGN = 1  # the sample's campaign, open until REFERENCE_DATE


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    """A local cluster of three single-threaded worker processes (batch.connect)."""
    with batch.connect(None, 3) as client:
        yield client


def _grids(url: Path | str) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    store = open_store(url)
    fs = store.query("grids", Query(order_by=["id"]))
    store.close()
    return fs.ids, fs.geometries, [p["community_id"] for p in fs.properties]


def _points(url: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Every household's id and location, read in one go."""
    store = open_store(url)
    fs = store.query("households", Query(order_by=["id"]))
    store.close()
    return fs.ids, fs.geometries


def _brute_force(points: np.ndarray, ids: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """The lowest id of the grids that cover each point (shapely, every grid), or -1."""
    out = np.full(len(points), -1, dtype=np.int64)
    for gid, g in sorted(zip(ids.tolist(), geoms, strict=True), key=lambda t: -t[0]):
        out[shapely.covers(g, points)] = gid
    return out


def _sjoin(points: np.ndarray, ids: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """The same by geopandas.sjoin (intersects, lowest grid id where several)."""
    pts = gpd.GeoDataFrame(geometry=list(points), crs=4326)
    polys = gpd.GeoDataFrame({"gid": ids}, geometry=list(geoms), crs=4326)
    joined = gpd.sjoin(pts, polys, how="left", predicate="intersects")
    best = joined.groupby(level=0)["gid"].min()
    return best.reindex(range(len(points))).fillna(-1).astype(np.int64).to_numpy()


def _shared_vertex(ids: np.ndarray, geoms: np.ndarray, comm: list[Any]) -> tuple[Any, int, int]:
    """A corner shared by two grids of different communities: (point, lower id, higher id)."""
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if comm[i] == comm[j] or not geoms[i].touches(geoms[j]):
                continue
            for x, y in shapely.get_coordinates(geoms[i]):
                p = shapely.Point(x, y)
                if geoms[j].covers(p):
                    return p, int(ids[i]), int(ids[j])
    raise AssertionError("no two grids of different communities share a corner")


def _stored(url: Path | str, fid: int) -> int:
    store = open_store(url)
    grid = store.get("households", fid).properties["grid_id"]
    store.close()
    return int(grid)


def _set_households(url: Path | str, rows: list[tuple[int, Any, int | None]]) -> None:
    """Move households and set their stored grid as another program would (raw SQL)."""
    for fid, point, grid in rows:
        if str(url).startswith("postgresql://"):
            raw_sql(
                url,
                "UPDATE households SET geom = ST_SetSRID(ST_MakePoint(?, ?), 4326), grid_id = ? "
                "WHERE fid = ?",
                point.x, point.y, grid, fid,
            )  # fmt: skip
        else:
            blob = to_gpkg_blobs([point])[0]
            raw_sql(
                url, "UPDATE households SET geom = ?, grid_id = ? WHERE fid = ?", blob, grid, fid
            )


@pytest.mark.slow
def test_assignment_equals_one_process_and_brute_force(cluster: Client, edit_path: Path) -> None:
    """Households on a corner of grids of two communities, stored in the wrong grid, in
    none and outside every grid: three workers find for each one the grid one process
    finds, and shapely and geopandas find, each household once."""
    ids, geoms, comm = _grids(edit_path)
    hh_ids, hh_geoms = _points(edit_path)
    corner, low, high = _shared_vertex(ids, geoms, comm)
    a, b, c, d, e = (int(h) for h in hh_ids[[0, 100, 5000, 9000, -1]])
    far = shapely.Point(113.2501, 34.7801)  # in the service area, in no grid
    here = {int(h): g for h, g in zip(hh_ids, hh_geoms, strict=True)}
    other = next(int(g) for g in ids if g != _stored(edit_path, c))
    _set_households(
        edit_path,
        [
            (a, corner, high),  # on the corner, stored in the higher grid (other community)
            (b, corner, low),  # on the corner, stored right
            (c, here[c], other),  # stored in another grid than where it lies
            (d, here[d], None),  # stored in no grid
            (e, far, low),  # in no grid at all
        ],
    )
    progress: list[tuple[int, int]] = []
    got = batch.assign_households(
        edit_path, client=cluster, progress=lambda n, t: progress.append((n, t))
    )
    hh_ids, hh_geoms = _points(edit_path)
    assert got.ids.tolist() == hh_ids.tolist()  # each household once, in id order
    x, y = shapely.get_x(hh_geoms), shapely.get_y(hh_geoms)
    pos = assign_points(x, y, geoms)  # one process, no partitions
    one = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
    brute = _brute_force(hh_geoms, ids, geoms)
    assert (brute == _sjoin(hh_geoms, ids, geoms)).all()
    assert got.grid_ids.tolist() == one.tolist() == brute.tolist()
    where = dict(zip(got.ids.tolist(), got.grid_ids.tolist(), strict=True))
    assert where[a] == where[b] == low and where[e] == -1
    assert sorted(got.mismatched.tolist()) == sorted([a, c, d, e])
    assert (got.mismatches, got.outside) == (4, 1)
    parts = len(set(comm)) + 1  # a task per community and one for households in no grid
    assert got.tasks == parts and progress[0] == (0, parts) and progress[-1] == (parts, parts)
    again = batch.assign_households(edit_path, client=cluster, per_task=3)
    assert again.grid_ids.tolist() == got.grid_ids.tolist() and again.tasks < got.tasks


@pytest.mark.slow
def test_statistics_equal_household_stats(cluster: Client, sample_path: Path) -> None:
    store = open_store(sample_path)
    for days in (30, 7):
        want = queries.household_stats(store, "grids", today=REFERENCE_DATE, days=days)
        got = batch.grid_statistics(sample_path, today=REFERENCE_DATE, days=days, client=cluster)
        assert got.index.tolist() == [r["id"] for r in want]
        for r in want:
            row = got.loc[r["id"]]
            assert row["name"] == r["name"]
            assert int(row["households"]) == r["households"]
            assert int(row["population"]) == r["population"]
            assert int(row[f"visited_last_{days}_days"]) == r[f"visited_last_{days}_days"]
            assert {t: int(row[t]) for t in HOUSEHOLD_TAGS} == r["tags"]
            assert row["visit_coverage"] == r["visit_coverage"]
    store.close()
    assert int(got["households"].sum()) == 15024


def _stops(body: dict[str, Any]) -> list[list[tuple[str, list[int]]]]:
    return [[(s["stop"], s["households"]) for s in r["stops"]] for r in body["routes"]]


@pytest.mark.slow
def test_visit_plans_equal_plans_compute(
    cluster: Client, sample_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each grid's plan made on a worker is the plan ``plans.compute`` makes here, the
    solver run in the calling thread as a worker runs it."""
    grids = [1, 23]
    run = batch.visit_plans(
        sample_path, CAMPAIGN, REFERENCE_DATE, grid_ids=grids, keep=True, client=cluster
    )
    assert run.summary.index.tolist() == grids and not run.saved
    from gridmap.routing import pool

    monkeypatch.setattr(pool, "processes", lambda: 1)
    store = open_store(sample_path)
    for g in grids:
        body = plans.compute(store, plans.PlanRequest(CAMPAIGN, g, REFERENCE_DATE), scope=Scope.ALL)
        assert _stops(run.bodies[g]) == _stops(body) and _stops(body)[0]
        assert run.bodies[g]["unassigned"] == body["unassigned"]
        row = run.summary.loc[g]
        assert row["stops"] == sum(len(r) for r in _stops(body))
        assert row["distance_m"] == round(sum(r["distance_m"] for r in body["routes"]), 1)
        assert row["seconds"] > 0 and row["error"] is None
    store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_scheduler_that_does_not_answer_is_said_quickly(sample_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with (
        pytest.raises(batch.BatchError, match="no Dask scheduler answers at"),
        batch.connect(address, timeout=1.0),
    ):
        pass
    assert time.monotonic() - started < 5
    r = runner.invoke(
        app, ["batch", "stats", "--database", str(sample_path), "--scheduler", address]
    )
    assert r.exit_code == 2 and "no Dask scheduler answers" in " ".join(r.output.split())


def test_bad_store_and_unknown_campaign_exit_2(sample_path: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["batch", "assign", "--database", str(tmp_path / "none.gpkg")])
    assert r.exit_code == 2 and "no database at" in r.output
    r = runner.invoke(app, ["batch", "stats", "--database", "http://nowhere/x"])
    assert r.exit_code == 2 and "unknown store" in r.output
    for args, said in (
        (["--campaign", "999", "--day", "2026-11-24"], "no campaign 999"),
        (["--campaign", "1", "--day", "2026-13-01"], "--day must be YYYY-MM-DD"),
        (["--campaign", "1", "--day", "2027-01-01"], "outside the campaign"),
        (["--campaign", "1", "--day", "2026-11-24", "--grid", "9999"], "not grids of campaign"),
    ):
        r = runner.invoke(app, ["batch", "plans", "--database", str(sample_path), *args])
        assert r.exit_code == 2 and said in " ".join(r.output.split()), r.output
    r = runner.invoke(
        app, ["batch", "stats", "--database", str(sample_path), "--output", str(tmp_path / "x.txt")]
    )
    assert r.exit_code == 2 and "--output must end in" in r.output


@pytest.fixture(scope="module")
def open_scheduler() -> Iterator[str]:
    """A plain (tcp://, no TLS) Dask cluster such as `dask scheduler` starts: its address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as plain:
        yield plain.scheduler_address


@pytest.mark.slow
def test_the_local_cluster_takes_no_stranger(cluster: Client) -> None:
    """gridmap's own cluster speaks mutual TLS on loopback: a client without its
    throw-away certificate (another user of the machine) cannot submit code to it."""
    address = cluster.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    probe = "import sys; from distributed import Client; Client(sys.argv[1], timeout=3)"
    for stranger in (address, address.replace("tls://", "tcp://")):
        # in a process of its own, as a stranger would be (a refused Client may hang
        # when it is collected in a process that holds another)
        r = subprocess.run(
            [sys.executable, "-c", probe, stranger], capture_output=True, text=True, timeout=60
        )
        assert r.returncode != 0, stranger
    assert cluster.submit(sum, [1, 2]).result() == 3


@pytest.mark.slow
def test_cli_commands_on_a_running_scheduler(
    open_scheduler: str, sample_path: Path, edit_path: Path, tmp_path: Path
) -> None:
    """``gridmap batch`` stats, assign --write and plans --save over a running scheduler."""
    on = ["--scheduler", open_scheduler]
    out = tmp_path / "stats.json"
    r = runner.invoke(
        app,
        ["batch", "stats", "--database", str(sample_path), *on, "--today", "2026-11-24",
         "--output", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert len(rows) == 40 and sum(x["households"] for x in rows) == 15024
    assert "15,024 households" in r.output

    hh_ids, hh_geoms = _points(edit_path)
    a, b = (int(h) for h in hh_ids[[10, 20]])
    home = _stored(edit_path, a), _stored(edit_path, b)
    wrong = 40 if home[0] != 40 else 39
    _set_households(edit_path, [(a, hh_geoms[10], wrong), (b, hh_geoms[20], None)])
    r = runner.invoke(app, ["batch", "assign", "--database", str(edit_path), *on, "--write"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "15,024 households" in said and "2 stored in another grid" in said
    assert "wrote the grid of 2 households" in said
    store = open_store(edit_path)
    assert store.get("households", a).properties["grid_id"] == home[0]
    assert store.get("households", b).properties["grid_id"] == home[1]
    entries, _ = store.audit_entries(equals={"object": f"collections/households/items/{a}"})
    assert entries and f"batch assign: grid_id {wrong} → {home[0]}" in entries[0]["detail"]
    store.close()
    r = runner.invoke(app, ["batch", "assign", "--database", str(edit_path), *on])
    assert r.exit_code == 0 and "0 stored in another grid" in " ".join(r.output.split())

    summary = tmp_path / "plans.csv"
    r = runner.invoke(
        app,
        ["batch", "plans", "--database", str(edit_path), *on, "--campaign", "1",
         "--day", "2026-11-24", "--grid", "2", "--grid", "3", "--save", "--output", str(summary)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "2 grids planned" in r.output and "2 plans saved" in r.output
    assert summary.read_text(encoding="utf-8-sig").startswith("grid_id,")
    store = open_store(edit_path)
    made = plans.of_campaign(store, CAMPAIGN, scope=Scope.ALL)
    assert sorted(p["grid_id"] for p in made) == [2, 3]
    assert all(p["stops"] > 0 and p["created_by"].startswith("cli:") for p in made)
    store.close()


def test_parts_cover_every_grid_once(sample_path: Path) -> None:
    store = open_store(sample_path)
    grids = batch.read_grids(store)
    store.close()
    for per_task in (1, 3, 100):
        parts = batch.community_parts(grids, per_task)
        flat = [g for p in parts for g in p.grid_ids]
        assert sorted(flat) == grids.ids.tolist() and len(flat) == len(set(flat))
        assert len(parts) == -(-8 // per_task)  # the sample's 8 communities
    with pytest.raises(batch.BatchError):
        batch.community_parts(grids, 0)


def test_household_figures_read_times_as_the_database_does() -> None:
    """Visits count from midnight ``days`` before today, Beijing time (an offset converted)."""
    since = dt.datetime(2026, 10, 25)
    assert batch._instant("2026-10-25T00:00:00") == since
    assert batch._instant("2026-10-24T16:00:00+00:00") == since
    assert batch._instant("2026-10-24T23:59:59") < since
    assert batch._instant(None) is None and batch._instant("yesterday") is None
