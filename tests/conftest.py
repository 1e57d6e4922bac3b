"""Shared fixtures: the sample subdistrict built once per session, empty stores, API clients."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

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

REFERENCE_DATE = dt.date(2026, 11, 24)
SERVICE_AREA = shapely.box(113.25, 34.78, 113.33, 34.84)


@pytest.fixture(scope="session")
def sample_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The sample subdistrict with its users, built once; (path, role → (username, password))."""
    path = tmp_path_factory.mktemp("sample") / "zhongxinlu.gpkg"
    store = build_demo(path, today=REFERENCE_DATE)
    creds = seed_sample_users(store)
    store.close()
    return path, {role.value: (name, pw) for name, (role, pw) in creds.items()}


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


def tokens_for(path: Path) -> dict[str, dict[str, str]]:
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
def store(tmp_path: Path) -> Iterator[FeatureStore]:
    """A new, empty store with a service area around the sample."""
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
def edit_path(sample_path: Path, tmp_path: Path) -> Path:
    """A private copy of the sample, for tests that write."""
    return copy_database(sample_path, tmp_path / "edit.gpkg")


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


def external_connection(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection with the ST_* functions GDAL and QGIS register."""
    from gridmap import geometry as geo

    conn = sqlite3.connect(path)
    conn.create_function("ST_IsEmpty", 1, geo.blob_is_empty)
    for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(name, 1, lambda b, i=i: geo.blob_envelope(b)[i])
    return conn
