"""Read replicas (PostgreSQL streaming replication, started here): reads go to a replica
that has caught up, a write is readable by its author at once, and a replica that lags or
is gone hands its reads to the primary."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import shapely
from fastapi.testclient import TestClient

from api.app import create_app
from gridmap.errors import StoreError
from gridmap.settings import Settings
from gridmap.store import Query, open_store
from gridmap.transfer import copy_store
from tests import postgres
from tests.conftest import psycopg_dbname, raw_sql, require_postgis, tokens_for

pytestmark = [pytest.mark.postgis, pytest.mark.slow]

TOILET = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [113.2905, 34.8105]},
    "properties": {"name": "副本测试公厕", "status": "planned", "units": 6},
}


def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def primary(
    sample_gpkg: tuple[Path, dict[str, tuple[str, str]]],
) -> Iterator[tuple[postgres.Cluster, str]]:
    """A server of its own holding the sample: (cluster, database URL)."""
    require_postgis()
    cluster = postgres.start()
    url = cluster.new_database("gm_replicated")
    copy_store(sample_gpkg[0], url)
    yield cluster, url
    cluster.stop()


@pytest.fixture(scope="module")
def replica(primary: tuple[postgres.Cluster, str]) -> Iterator[str]:
    """The URL of the sample's database on a streaming replica of that server."""
    cluster, url = primary
    standby = postgres.start_replica(cluster)
    yield standby.url(psycopg_dbname(url))
    standby.stop()


def _replica_ran(replica_url: str, table: str) -> bool:
    """True if one of gridmap's connections to the replica last ran a query of ``table``
    (as the replica's own activity view shows it)."""
    with psycopg.connect(replica_url, autocommit=True) as c:
        rows = c.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = 'gridmap' "
            "AND datname = current_database()"
        ).fetchall()
    return any(f'FROM "{table}"' in q for (q,) in rows)


def _replay(replica_url: str, paused: bool) -> None:
    with psycopg.connect(replica_url, autocommit=True) as c:
        c.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")


def test_reads_go_to_a_replica_that_has_caught_up(
    primary: tuple[postgres.Cluster, str], replica: str
) -> None:
    """Counts and pages of a layer are answered by the replica (its activity shows them)
    and agree with the primary as psql reads it."""
    _, url = primary
    store = open_store(url, replicas=[replica])
    try:
        _until(lambda: (store.count("cameras"), _replica_ran(replica, "cameras"))[1])
        (n,) = raw_sql(url, "SELECT count(*) FROM cameras")[0]
        assert store.count("cameras") == n
        ids, matched = store.query_ids("households", Query(bbox=(113.28, 34.80, 113.29, 34.81)))
        box = "ST_MakeEnvelope(113.28, 34.80, 113.29, 34.81, 4326)"
        (m,) = raw_sql(url, f"SELECT count(*) FROM households WHERE ST_Intersects(geom, {box})")[0]
        assert matched == m and len(ids) == m
        box_query = Query(bbox=(113.28, 34.80, 113.29, 34.81))
        # the replica's poller may have run on that connection since: ask until seen
        _until(
            lambda: (store.query_ids("households", box_query), _replica_ran(replica, "households"))[
                1
            ]
        )
    finally:
        store.close()


def test_a_write_is_read_at_once_while_the_replica_lags(
    primary: tuple[postgres.Cluster, str], replica: str
) -> None:
    """Replay paused on the replica: the author reads a new toilet at once, a change by
    another client (psql) is read as soon as its notification arrives; both from the
    primary. Replay resumed: reads go back to the replica."""
    _, url = primary
    store = open_store(url, replicas=[replica])
    _replay(replica, paused=True)
    try:
        before = store.count("toilets")
        (fid,) = store.insert("toilets", [shapely.Point(113.2905, 34.8105)], [TOILET["properties"]])
        assert store.count("toilets") == before + 1
        assert store.get("toilets", fid).properties["name"] == "副本测试公厕"
        raw_sql(url, "UPDATE toilets SET name = '另一客户改名' WHERE fid = ?", fid)
        _until(lambda: store.get("toilets", fid).properties["name"] == "另一客户改名", 5.0)
        (on_replica,) = raw_sql(replica, "SELECT count(*) FROM toilets WHERE fid = ?", fid)[0]
        assert on_replica == 0  # the replica still lacks it: the primary answered
    finally:
        _replay(replica, paused=False)
    try:
        _until(lambda: raw_sql(replica, "SELECT count(*) FROM toilets WHERE fid = ?", fid)[0][0])
        _until(lambda: (store.count("toilets"), _replica_ran(replica, "toilets"))[1])
        assert store.count("toilets") == before + 1
    finally:
        store.close()


def test_a_replica_that_is_gone_hands_its_reads_to_the_primary(
    primary: tuple[postgres.Cluster, str],
) -> None:
    """A second replica serves, then stops: reads go on, answered by the primary."""
    cluster, url = primary
    standby = postgres.start_replica(cluster)
    second = standby.url(psycopg_dbname(url))
    store = open_store(url, replicas=[second])
    try:
        _until(lambda: (store.count("grids"), _replica_ran(second, "grids"))[1])
        standby.stop()
        (n,) = raw_sql(url, "SELECT count(*) FROM grids")[0]
        for _ in range(5):
            assert store.count("grids") == n
    finally:
        store.close()
        standby.stop()


def test_the_api_reads_its_writes_through_a_lagging_replica(
    primary: tuple[postgres.Cluster, str], replica: str
) -> None:
    """GRIDMAP_DATABASE_REPLICAS set: a created toilet is served at once by the same API
    while the replica has not replayed it; household pages are served as without it."""
    _, url = primary
    headers = tokens_for(url)["subdistrict_admin"]
    settings = Settings(database=url, database_replicas=replica, household_reads_per_minute=10**5)
    _replay(replica, paused=True)
    try:
        with TestClient(create_app(settings), headers=headers) as c:
            r = c.post("/collections/toilets/items", json=TOILET)
            assert r.status_code == 201, r.text
            got = c.get(r.headers["location"].replace("http://testserver", ""))
            assert got.status_code == 200 and got.json()["properties"]["name"] == "副本测试公厕"
            page = c.get("/collections/households/items", params={"limit": 5})
            (n,) = raw_sql(url, "SELECT count(*) FROM households")[0]
            assert page.status_code == 200 and page.json()["numberMatched"] == n
    finally:
        _replay(replica, paused=False)


def test_a_replica_must_be_a_postgresql_url(primary: tuple[postgres.Cluster, str]) -> None:
    """A replica named as a file, or replicas of a GeoPackage, are refused with advice."""
    _, url = primary
    with pytest.raises(StoreError, match="postgresql:// URL"):
        open_store(url, replicas=["/tmp/replica.gpkg"])
    with pytest.raises(StoreError, match="GeoPackage has none"):
        open_store("/tmp/none.gpkg", replicas=[url])


def test_only_a_standby_of_this_primary_gets_reads(
    primary: tuple[postgres.Cluster, str], replica: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL that names a primary (here: the primary itself), or a standby of another
    cluster (its identifier differs), is left out with a warning; the primary answers."""
    from gridmap.store.pg_replicas import Replicas
    from gridmap.store.postgis import _new_pool

    _, url = primary
    store = open_store(url, replicas=[url])
    try:
        (n,) = raw_sql(url, "SELECT count(*) FROM cameras")[0]
        assert store.count("cameras") == n
        member = store.backend._replicas.members[0]  # type: ignore[attr-defined]
        time.sleep(0.3)  # several polls
        assert member.stamps is None and "not a standby" in caplog.text
    finally:
        store.close()
    caplog.clear()
    foreign = Replicas([replica], lambda u: _new_pool(u, 1, "probe", opened=True), identity=42)
    try:
        time.sleep(0.3)
        assert foreign.members[0].stamps is None and foreign.pick("cameras", 0) is None
        assert "standby of another cluster" in caplog.text
    finally:
        foreign.close()
    right = open_store(url, replicas=[replica])
    try:
        _until(lambda: right.backend._replicas.members[0].stamps is not None)  # type: ignore[attr-defined]
    finally:
        right.close()
