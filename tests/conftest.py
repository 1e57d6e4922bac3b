"""Shared fixtures: the sample subdistrict built once per session, empty stores, API clients."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely
from fastapi.testclient import TestClient

from api.app import create_app
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
    """An API client over the sample."""
    app = create_app(Settings(database=str(sample_path)))
    with TestClient(app) as c:
        yield c
