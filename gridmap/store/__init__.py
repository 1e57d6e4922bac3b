"""Storage behind one Store interface; the GeoPackage backend is the embedded default."""

from gridmap.store.base import BBox, Feature, FeatureSet, Query, Scope, Store
from gridmap.store.geopackage import GeoPackageStore, open_store

__all__ = [
    "BBox",
    "Feature",
    "FeatureSet",
    "GeoPackageStore",
    "Query",
    "Scope",
    "Store",
    "open_store",
]
