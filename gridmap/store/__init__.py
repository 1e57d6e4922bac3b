"""Storage: the feature service (:mod:`.core`) over one backend, picked by URL.

``open_store("data/zhongxinlu.gpkg")`` opens the embedded GeoPackage backend;
``open_store("postgresql://…")`` the PostGIS backend. Both move rows only; every rule is in
:class:`~gridmap.store.core.FeatureStore`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from shapely.geometry.base import BaseGeometry

from gridmap.errors import StoreError
from gridmap.store.backend import Backend
from gridmap.store.base import ID_LIMIT, BBox, Feature, FeatureSet, Query, Scope, Store
from gridmap.store.core import SYNTHETIC, UNFINISHED, FeatureStore

__all__ = [
    "ID_LIMIT",
    "SYNTHETIC",
    "UNFINISHED",
    "BBox",
    "Feature",
    "FeatureSet",
    "FeatureStore",
    "Query",
    "Scope",
    "Store",
    "create_store",
    "is_server_url",
    "open_store",
]


def is_server_url(url: str | os.PathLike[str]) -> bool:
    """True if ``url`` names a database server (postgresql://…) rather than a file."""
    return str(url).startswith(("postgresql://", "postgres://"))


_CONNINFO = re.compile(r"(^|\s)(dbname|host|user|port|service)=")
"""libpq's key=value form, which would otherwise become a file of that name."""


def _backend(url: str | os.PathLike[str], *, create: bool, replicas: Sequence[str] = ()) -> Backend:
    text = str(url)
    if is_server_url(text):
        from gridmap.store.postgis import PostGISBackend

        return (
            PostGISBackend.create(text) if create else PostGISBackend.open(text, replicas=replicas)
        )
    if replicas:
        msg = "read replicas belong to a PostgreSQL store; a GeoPackage has none"
        raise StoreError(msg)
    if "://" in text:
        msg = f"unknown store {text[:60]!r}: give a GeoPackage path or a postgresql:// URL"
        raise StoreError(msg)
    if _CONNINFO.search(text) and not text.lower().endswith(".gpkg"):
        msg = (
            f"{text[:60]!r} looks like a PostgreSQL connection string, not a file; write it "
            "as a URL: postgresql://user:password@host:port/dbname"
        )
        raise StoreError(msg)
    from gridmap.store.geopackage import GeoPackageBackend

    return GeoPackageBackend.create(text) if create else GeoPackageBackend.open(text)


def open_store(url: str | os.PathLike[str], *, replicas: Sequence[str] = ()) -> FeatureStore:
    """Open the store named by a setting: ``data/zhongxinlu.gpkg`` or ``postgresql://…``
    (whose reads may go to ``replicas``, its streaming replicas, when they have caught up)."""
    return FeatureStore(_backend(url, create=False, replicas=replicas))


def create_store(
    url: str | os.PathLike[str], *, service_area: BaseGeometry | None = None
) -> FeatureStore:
    """Create a new, empty store with every registered layer (a new GeoPackage file, or the
    schema in an empty PostgreSQL database)."""
    backend = _backend(url, create=True)
    try:
        store = FeatureStore(backend)
        if service_area is not None:
            store.set_service_area(service_area)
    except BaseException:
        backend.close()
        raise
    return store
