"""GeoJSON output: feature sets encoded to bytes in bulk (the API's hot path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import shapely

from gridmap.store.base import Feature, FeatureSet


def geometry_fragments(geoms: Any) -> list[orjson.Fragment]:
    """Pre-encoded GeoJSON geometries (vectorised through shapely.to_geojson)."""
    if len(geoms) == 0:
        return []
    return [orjson.Fragment(g) for g in shapely.to_geojson(geoms).tolist()]


def feature_dicts(
    fs: FeatureSet, *, properties: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """GeoJSON Feature objects (geometry pre-encoded) for every feature of ``fs``."""
    geoms = geometry_fragments(fs.geometries)
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
) -> bytes:
    """A GeoJSON FeatureCollection with OGC paging members, encoded to bytes."""
    body: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": feature_dicts(fs),
        "numberReturned": len(fs),
    }
    if fs.number_matched is not None:
        body["numberMatched"] = fs.number_matched
    if extra:
        body.update(extra)
    body["links"] = list(links)
    return orjson.dumps(body)


def feature(f: Feature, *, links: Sequence[Mapping[str, Any]] = ()) -> bytes:
    """One GeoJSON Feature, encoded to bytes."""
    body = {
        "type": "Feature",
        "id": f.id,
        "geometry": orjson.Fragment(shapely.to_geojson(f.geometry)),
        "properties": f.properties,
        "links": list(links),
    }
    return orjson.dumps(body)
