"""Shared fixtures: the sample subdistrict built once per session, empty stores, API clients.

``GRIDMAP_TEST_BACKEND=postgis`` runs the same tests over the PostGIS backend (a throw-away
cluster, see tests/postgres.py): the sample is copied into a template database and every
test that edits gets its own copy. Tests marked ``gpkg_only`` (they open the file with
GDAL or SQLite) are left out of that run.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely
from fastapi.testclient import TestClient

from api.app import create_app
from api.server import gridmap_server
from gridmap.accounts import Accounts, seed_sample_users, token_secret
from gridmap.sample import build_demo
from gridmap.security import Role
from gridmap.settings import Settings
from gridmap.store import FeatureStore, create_store, open_store
from tests import postgres

REFERENCE_DATE = dt.date(2026, 11, 24)
SERVICE_AREA = shapely.box(113.25, 34.78, 113.33, 34.84)
BACKEND = os.environ.get("GRIDMAP_TEST_BACKEND", "gpkg")
if BACKEND not in ("gpkg", "postgis"):
    raise pytest.UsageError(f"GRIDMAP_TEST_BACKEND={BACKEND!r}: use gpkg or postgis")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the PostGIS run, leave out the tests of the GeoPackage file itself."""
    if BACKEND != "postgis":
        return
    keep = [i for i in items if i.get_closest_marker("gpkg_only") is None]
    dropped = [i for i in items if i.get_closest_marker("gpkg_only") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def require_postgis() -> None:
    """Skip when no PostGIS server can be had here, but fail under CI (CI=true)."""
    reason = postgres.unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostGIS is required in CI: {reason}")
    pytest.skip(f"PostGIS tests skipped: {reason}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.Cluster]:
    """A PostgreSQL + PostGIS server for this test process."""
    require_postgis()
    c = postgres.start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def sample_gpkg(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The sample subdistrict as a GeoPackage with its users; (path, role → credentials)."""
    path = tmp_path_factory.mktemp("sample") / "zhongxinlu.gpkg"
    store = build_demo(path, today=REFERENCE_DATE)
    creds = seed_sample_users(store)
    store.close()
    return path, {role.value: (name, pw) for name, (role, pw) in creds.items()}


@pytest.fixture(scope="session")
def sample_template(
    sample_gpkg: tuple[Path, dict[str, tuple[str, str]]], pg_cluster: postgres.Cluster
) -> str:
    """The sample copied into a PostGIS database that serves as a template (never opened
    after: PostgreSQL copies a database only while no one is connected to it)."""
    from gridmap.transfer import copy_store

    url = pg_cluster.new_database("gm_sample_template")
    copy_store(sample_gpkg[0], url)
    return str(psycopg_dbname(url))


def psycopg_dbname(url: str) -> str:
    import psycopg

    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


def copy_of_sample(request: pytest.FixtureRequest, dst: Path) -> Path | str:
    """A private copy of the sample on the backend under test."""
    if BACKEND == "postgis":
        cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
        template: str = request.getfixturevalue("sample_template")
        return cluster.new_database("gm_edit", template=template)
    src: Path = request.getfixturevalue("sample_gpkg")[0]
    return copy_database(src, dst)


@pytest.fixture(scope="session")
def sample_build(
    request: pytest.FixtureRequest,
    sample_gpkg: tuple[Path, dict[str, tuple[str, str]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path | str, dict[str, tuple[str, str]]]:
    """The sample on the backend under test: (path or URL, role → (username, password))."""
    if BACKEND == "gpkg":
        return sample_gpkg
    return copy_of_sample(request, tmp_path_factory.mktemp("s")), sample_gpkg[1]


@pytest.fixture(scope="session")
def credentials(
    sample_build: tuple[Path, dict[str, tuple[str, str]]],
) -> dict[str, tuple[str, str]]:
    """Role → (username, password) of the sample users."""
    return sample_build[1]


@pytest.fixture(scope="session")
def sample_path(sample_build: tuple[Path, dict[str, tuple[str, str]]]) -> Path:
    """The sample database (read-only for tests: copy it to edit)."""
    return sample_build[0]


def tokens_for(path: Path | str) -> dict[str, dict[str, str]]:
    """Authorization headers per role for the sample users of a database (plus public)."""
    store = open_store(path)
    accounts = Accounts(store, secret=token_secret(store), token_minutes=120)
    out: dict[str, dict[str, str]] = {"public": {}}
    for rec in store.users():
        t = accounts.issue(rec["username"], Role(rec["role"]))
        out.setdefault(rec["role"], {"Authorization": f"Bearer {t.access_token}"})
    store.close()
    return out


@pytest.fixture(scope="session")
def auth(sample_path: Path) -> dict[str, dict[str, str]]:
    """Authorization headers by role name for the sample ({} for public)."""
    return tokens_for(sample_path)


@pytest.fixture(scope="session")
def admin_headers(auth: dict[str, dict[str, str]]) -> dict[str, str]:
    return auth["subdistrict_admin"]


@pytest.fixture(scope="session")
def sample_store(sample_path: Path) -> Iterator[FeatureStore]:
    """The sample opened read-only by convention."""
    store = open_store(sample_path)
    yield store
    store.close()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureStore]:
    """A new, empty store with a service area around the sample (backend under test)."""
    if BACKEND == "postgis":
        url = request.getfixturevalue("pg_cluster").new_database("gm_empty")
        s = create_store(url, service_area=SERVICE_AREA)
    else:
        s = create_store(tmp_path / "t.gpkg", service_area=SERVICE_AREA)
    yield s
    s.close()


@pytest.fixture(scope="session")
def sample_app(sample_path: Path):  # type: ignore[no-untyped-def]
    """The API app over the sample (generous rate limits for the test suite)."""
    return create_app(Settings(database=str(sample_path), household_reads_per_minute=100_000))


@pytest.fixture(scope="session")
def client(sample_app, admin_headers: dict[str, str]) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """An API client over the sample, logged in as the subdistrict admin (read-only use)."""
    with TestClient(sample_app, headers=admin_headers) as c:
        yield c


@pytest.fixture(scope="session")
def public_client(sample_app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """An API client over the sample without a token."""
    with TestClient(sample_app) as c:
        yield c


def copy_database(src: Path, dst: Path) -> Path:
    """Copy a GeoPackage that stores have open, through SQLite's backup API.

    Never ``shutil.copy`` a database this process has open: closing any other descriptor
    of the file drops every POSIX lock the process holds on it, after which another
    process closing its last connection deletes the write-ahead log under the open stores
    (SQLite's "how to corrupt" §2.2). GDAL, with its own SQLite library, does the same.
    """
    source = sqlite3.connect(src)
    target = sqlite3.connect(dst)
    source.backup(target)
    target.close()
    source.close()
    dst.chmod(0o600)
    return dst


@pytest.fixture
def edit_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A private copy of the sample, for tests that write (a URL on PostGIS)."""
    return copy_of_sample(request, tmp_path / "edit.gpkg")


@pytest.fixture
def edit_auth(edit_path: Path) -> dict[str, dict[str, str]]:
    """Authorization headers by role for the private copy."""
    return tokens_for(edit_path)


@pytest.fixture
def edit_app(edit_path: Path):  # type: ignore[no-untyped-def]
    return create_app(
        Settings(
            database=str(edit_path), max_body_bytes=200_000, household_reads_per_minute=100_000
        )
    )


@pytest.fixture
def edit_client(edit_app, edit_auth: dict[str, dict[str, str]]) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """An API client over a private copy of the sample, as the subdistrict admin."""
    with TestClient(edit_app, headers=edit_auth["subdistrict_admin"]) as c:
        yield c


@pytest.fixture(scope="session")
def live_server(sample_path: Path) -> Iterator[str]:
    """A real uvicorn server over the sample on a free loopback port (for real clients)."""
    with gridmap_server(sample_path, household_reads_per_minute="100000") as url:
        yield url


def raw_sql(target: Path | str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run SQL on a store's database as another client would (QGIS, psql), not through
    gridmap: SQLite with the functions GDAL registers, or psycopg. ``?`` marks parameters.
    Returns the rows of a query (none for a statement); writes are committed."""
    if str(target).startswith("postgresql://"):
        import psycopg

        sql = query.replace("%", "%%").replace("?", "%s") if args else query
        with psycopg.connect(str(target), autocommit=True) as pg:
            cur = pg.execute(sql, args or None)
            rows = cur.fetchall() if cur.description else []
        # times as the ISO text SQLite holds, so one assertion serves both backends
        return [tuple(v.isoformat() if isinstance(v, dt.date) else v for v in row) for row in rows]
    conn = external_connection(Path(target))
    try:
        cur = conn.execute(query, args)
        rows = cur.fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def eventually(check: Any, seconds: float = 5.0) -> Any:
    """``check()``'s first truthy answer within ``seconds`` (else its last answer). Another
    client's write reaches a PostGIS store's caches when the database's change notice
    arrives, milliseconds after the commit; the GeoPackage store sees it at once."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def refused_by_database(target: Path | str, query: str, match: str) -> None:
    """The database itself refuses ``query`` with a message matching ``match``."""
    import psycopg

    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match=match):
        raw_sql(target, query)


def external_connection(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection with the ST_* functions GDAL and QGIS register."""
    from gridmap import geometry as geo

    conn = sqlite3.connect(path)
    conn.create_function("ST_IsEmpty", 1, geo.blob_is_empty)
    for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(name, 1, lambda b, i=i: geo.blob_envelope(b)[i])
    return conn


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A folder to fill, then :func:`tests.test_readonly.lock`; writable again afterwards."""
    folder = tmp_path / "ro"
    folder.mkdir()
    yield folder
    folder.chmod(0o755)
    for p in folder.iterdir():
        p.chmod(0o644)
