"""Shared fixtures: the sample subdistrict built once per session, empty stores, API clients."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely
from fastapi.testclient import TestClient

from api.app import create_app
from api.server import gridmap_server
from gridmap.sample import build_demo
from gridmap.settings import Settings
from gridmap.store import GeoPackageStore

REFERENCE_DATE = dt.date(2026, 11, 24)
SERVICE_AREA = shapely.box(113.25, 34.78, 113.33, 34.84)


@pytest.fixture(scope="session")
def sample_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample subdistrict, built once (read-only for tests: copy it to edit)."""
    path = tmp_path_factory.mktemp("sample") / "zhongxinlu.gpkg"
    build_demo(path, today=REFERENCE_DATE).close()
    return path


@pytest.fixture(scope="session")
def sample_store(sample_path: Path) -> Iterator[GeoPackageStore]:
    """The sample opened read-only by convention."""
    store = GeoPackageStore.open(sample_path)
    yield store
    store.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GeoPackageStore]:
    """A new, empty store with a service area around the sample."""
    s = GeoPackageStore.create(tmp_path / "t.gpkg", service_area=SERVICE_AREA)
    yield s
    s.close()


@pytest.fixture(scope="session")
def client(sample_path: Path) -> Iterator[TestClient]:
    """An API client over the sample (read-only by convention)."""
    app = create_app(Settings(database=str(sample_path)))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def edit_path(sample_path: Path, tmp_path: Path) -> Path:
    """A private copy of the sample, for tests that write."""
    path = tmp_path / "edit.gpkg"
    shutil.copy(sample_path, path)
    return path


@pytest.fixture
def edit_client(edit_path: Path) -> Iterator[TestClient]:
    """An API client over a private copy of the sample."""
    app = create_app(Settings(database=str(edit_path), max_body_bytes=200_000))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def live_server(sample_path: Path) -> Iterator[str]:
    """A real uvicorn server over the sample on a free loopback port (for real clients)."""
    with gridmap_server(sample_path) as url:
        yield url


def external_connection(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection with the ST_* functions GDAL and QGIS register."""
    from gridmap import geometry as geo

    conn = sqlite3.connect(path)
    conn.create_function("ST_IsEmpty", 1, geo.blob_is_empty)
    for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(name, 1, lambda b, i=i: geo.blob_envelope(b)[i])
    return conn
