"""GeoJSON output: feature sets encoded to bytes in bulk (the API's hot path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import shapely

from gridmap.crs import CRS84, to_output
from gridmap.store.base import Feature, FeatureSet, Query, Scope, Store


def geometry_fragments(geoms: Any, crs: str = CRS84) -> list[orjson.Fragment]:
    """Pre-encoded GeoJSON geometries in ``crs`` (vectorised through shapely.to_geojson)."""
    if len(geoms) == 0:
        return []
    arr = np.asarray(geoms, dtype=object)
    if crs != CRS84:
        arr = to_output(arr, crs)
    # a feature without geometry (written by another program) is "geometry": null
    return [orjson.Fragment(g or "null") for g in shapely.to_geojson(arr).tolist()]


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


class FeatureCache:
    """Encoded GeoJSON Features (CRS84, all properties) per layer and view, for one stamp.

    A page of features is served by joining cached bytes; only features not yet cached are
    read from the store and encoded. When the layer's stamp moves (any write by anyone),
    the features the store logged as changed since are dropped (all of the layer's when
    the store cannot tell, or too many changed). Entries are kept per view (which fields
    are masked), so a role never gets bytes encoded for another; ids come from a scoped
    query and uncached features are read with the caller's scope.

    Threads: a stamp's features are held in a dictionary of their own; a newer stamp gets
    a copy less the changed features, so bytes a slower request read before the change
    can only land in the older one, which no longer serves.
    """

    def __init__(self, max_features: int = 300_000) -> None:
        """Keep at most ``max_features`` encoded features; 0 keeps none (always cold)."""
        self.max_features = max_features
        self._layers: dict[str, tuple[int, dict[int, bytes]]] = {}

    def page(self, store: Store, layer_id: str, ids: Sequence[int], *, scope: Scope) -> list[bytes]:
        """Encoded features for ``ids`` (in that order)."""
        stamp = store.stamp(layer_id)
        key = f"{layer_id}|{','.join(map(str, scope.view_key))}"
        entry = self._layers.get(key)
        if entry is not None and entry[0] > stamp:  # moved on since this request began
            entry = (stamp, {})  # read and encoded here, kept nowhere
        elif entry is None or entry[0] != stamp:
            entry = (stamp, self._kept_across(store, layer_id, entry))
            self._layers[key] = entry
        items = entry[1]
        missing = [i for i in ids if i not in items]
        if missing:
            fs = store.query(layer_id, Query(ids=missing), scope=scope)
            fresh = {d["id"]: orjson.dumps(d) for d in feature_dicts(fs)}
            page = [items[i] if i in items else fresh[i] for i in ids if i in items or i in fresh]
            if sum(len(v[1]) for v in self._layers.values()) + len(fs) > self.max_features:
                items.clear()
            if self.max_features > 0:
                items.update(fresh)
            return page
        return [items[i] for i in ids if i in items]

    @staticmethod
    def _kept_across(
        store: Store, layer_id: str, entry: tuple[int, dict[int, bytes]] | None
    ) -> dict[int, bytes]:
        """A copy of an older stamp's features less those changed since (empty when
        there are none, the store cannot tell, or more than a quarter changed)."""
        if entry is None or not entry[1]:
            return {}
        old, items = entry
        changed = store.changed_since(layer_id, old, max(64, len(items) // 4))
        if not changed:  # unknown; or none though the stamp moved: the log is not kept
            return {}
        kept = dict(items)
        for i in changed:
            kept.pop(i, None)
        return kept


def collection_bytes(
    parts: Sequence[bytes], *, matched: int, links: Sequence[Mapping[str, Any]]
) -> bytes:
    """A FeatureCollection assembled from pre-encoded features."""
    tail = orjson.dumps(
        {"numberReturned": len(parts), "numberMatched": matched, "links": list(links)}
    )
    return b'{"type":"FeatureCollection","features":[' + b",".join(parts) + b"]," + tail[1:]
