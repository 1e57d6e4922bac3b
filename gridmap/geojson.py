"""GeoJSON output: feature sets encoded to bytes in bulk (the API's hot path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import shapely

from gridmap.crs import CRS84, to_output
from gridmap.store.base import Feature, FeatureSet


def geometry_fragments(geoms: Any, crs: str = CRS84) -> list[orjson.Fragment]:
    """Pre-encoded GeoJSON geometries in ``crs`` (vectorised through shapely.to_geojson)."""
    if len(geoms) == 0:
        return []
    arr = np.asarray(geoms, dtype=object)
    if crs != CRS84:
        arr = to_output(arr, crs)
    return [orjson.Fragment(g) for g in shapely.to_geojson(arr).tolist()]


def feature_dicts(
    fs: FeatureSet, *, properties: Sequence[str] | None = None, crs: str = CRS84
) -> list[dict[str, Any]]:
    """GeoJSON Feature objects (geometry pre-encoded) for every feature of ``fs``."""
    geoms = geometry_fragments(fs.geometries, crs)
    props = fs.properties
    if properties is not None:
        keep = list(properties)
        props = [{k: p.get(k) for k in keep} for p in props]
    return [
        {"type": "Feature", "id": fid, "geometry": g, "properties": p}
        for fid, g, p in zip(fs.ids.tolist(), geoms, props, strict=True)
    ]


def feature_collection(
    fs: FeatureSet,
    *,
    links: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
    properties: Sequence[str] | None = None,
    crs: str = CRS84,
) -> bytes:
    """A GeoJSON FeatureCollection with OGC paging members, encoded to bytes."""
    body: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": feature_dicts(fs, properties=properties, crs=crs),
        "numberReturned": len(fs),
    }
    if fs.number_matched is not None:
        body["numberMatched"] = fs.number_matched
    if extra:
        body.update(extra)
    body["links"] = list(links)
    return orjson.dumps(body)


def feature(
    f: Feature,
    *,
    links: Sequence[Mapping[str, Any]] = (),
    properties: Sequence[str] | None = None,
    crs: str = CRS84,
) -> bytes:
    """One GeoJSON Feature, encoded to bytes."""
    props = f.properties if properties is None else {k: f.properties.get(k) for k in properties}
    body = {
        "type": "Feature",
        "id": f.id,
        "geometry": geometry_fragments([f.geometry], crs)[0],
        "properties": props,
        "links": list(links),
    }
    return orjson.dumps(body)
