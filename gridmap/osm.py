"""Streets from an OpenStreetMap extract (.osm or .pbf, read by GDAL's OSM driver) into
the ``roads`` layer, so that walking routes follow the real streets of a deployment."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap.errors import InvalidFeatureError
from gridmap.store.base import Progress, Query, Scope, Store

ROAD_CLASS = {
    **dict.fromkeys(("motorway", "motorway_link", "trunk", "trunk_link"), "arterial"),
    **dict.fromkeys(("primary", "primary_link"), "arterial"),
    **dict.fromkeys(("secondary", "secondary_link", "tertiary", "tertiary_link"), "secondary"),
    **dict.fromkeys(("residential", "unclassified", "living_street", "service", "road"), "lane"),
    **dict.fromkeys(
        ("pedestrian", "footway", "path", "steps", "track", "cycleway", "corridor"), "footpath"
    ),
}
"""OSM ``highway`` values that are streets, and their class in the roads layer."""

NOT_ON_FOOT = frozenset(("motorway", "motorway_link", "trunk", "trunk_link"))
"""Ways nobody walks along unless tagged otherwise (``foot=yes`` or a sidewalk)."""

UNNAMED_ZH = {
    "arterial": "无名主干道",
    "secondary": "无名次干道",
    "lane": "无名街巷",
    "footpath": "无名步道",
}

_TAG = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')


def other_tags(text: Any) -> dict[str, str]:
    """GDAL's ``other_tags`` (an hstore string ``"k"=>"v",…``) as a dict."""
    if not isinstance(text, str):
        return {}
    return {k.replace('\\"', '"'): v.replace('\\"', '"') for k, v in _TAG.findall(text)}


@dataclass
class Streets:
    """Streets read from an extract: geometries (LineStrings, WGS84) and road properties."""

    geometries: list[BaseGeometry]
    properties: list[dict[str, Any]]
    skipped: int
    """Ways that are not streets (buildings, rivers, …) or were empty after clipping."""


def read_streets(path: str | Path, *, clip: BaseGeometry | None = None) -> Streets:
    """The streets of an .osm/.pbf extract, clipped to ``clip`` (WGS84) if given."""
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    p = Path(path)
    if p.suffix.lower() not in (".osm", ".pbf"):
        raise InvalidFeatureError(f"{p.name}: an OpenStreetMap extract ends in .osm or .pbf")
    if not p.is_file():
        raise InvalidFeatureError(f"no file {p}")
    bbox = tuple(clip.bounds) if clip is not None else None
    try:
        df = pyogrio.read_dataframe(
            p, layer="lines", columns=["name", "highway", "other_tags"], bbox=bbox
        )
    except (DataSourceError, DataLayerError, RuntimeError) as exc:
        msg = f"{p.name} is not a readable OpenStreetMap extract ({str(exc)[:200]})"
        raise InvalidFeatureError(msg) from None
    geoms: list[BaseGeometry] = []
    props: list[dict[str, Any]] = []
    skipped = 0
    for geom, name, highway, tags_text in zip(
        df.geometry.values, df["name"], df["highway"], df["other_tags"], strict=True
    ):
        tags = other_tags(tags_text)
        planned = highway == "construction"  # a street being built: kept as planned
        kind = tags.get("construction", "road") if planned else highway
        road_class = ROAD_CLASS.get(kind) if isinstance(kind, str) else None
        if road_class is None or geom is None:
            skipped += 1
            continue
        parts = _parts(geom if clip is None else shapely.intersection(geom, clip))
        if clip is not None:
            parts = [g for g in parts if clip.covers(g)]
        if not parts:
            skipped += 1
            continue
        label = name if isinstance(name, str) and name.strip() else tags.get("name:zh")
        prop = {
            "name": (label or UNNAMED_ZH[road_class]).strip()[:100],
            "road_class": road_class,
            "walkable": _walkable(kind, tags),
            "oneway": tags.get("oneway") in ("yes", "1", "true", "-1"),
            "status": "planned" if planned else "existing",
        }
        geoms += parts
        props += [dict(prop) for _ in parts]
    return Streets(geoms, props, skipped)


def _walkable(highway: str, tags: dict[str, str]) -> bool:
    if tags.get("foot") in ("no", "private") or tags.get("access") == "no":
        return tags.get("foot") in ("yes", "designated")
    if highway in NOT_ON_FOOT:
        has_sidewalk = tags.get("sidewalk", "no") not in ("no", "none")
        return tags.get("foot") in ("yes", "designated") or has_sidewalk
    return True


def _parts(geom: BaseGeometry) -> list[BaseGeometry]:
    """The non-empty LineStrings of a (clipped) way."""
    if geom.is_empty:
        return []
    parts = shapely.get_parts(shapely.line_merge(geom) if geom.geom_type != "LineString" else geom)
    return [g for g in parts if g.geom_type == "LineString" and not g.is_empty and g.length > 0]


def import_streets(
    store: Store,
    streets: Streets,
    *,
    replace: bool = False,
    scope: Scope = Scope.ALL,
    progress: Progress | None = None,
) -> list[int]:
    """Add the streets to ``roads`` in one transaction (``replace``: instead of the roads
    there were). All or nothing; returns the new ids."""
    if not streets.geometries:
        raise InvalidFeatureError("the extract has no streets here (nothing was written)")
    with store.transaction():
        if replace:
            for fid in store.query_ids("roads", Query(), scope=scope)[0].tolist():
                store.delete("roads", int(fid), scope=scope)
        return store.insert(
            "roads",
            np.asarray(streets.geometries, dtype=object),
            streets.properties,
            scope=scope,
            progress=progress,
        )


def clip_area(service_area: BaseGeometry) -> BaseGeometry:
    """Where streets are kept: the subdistrict (the roads layer holds nothing outside it),
    a hair inside its edge so that a street cut there still lies within it."""
    return shapely.buffer(service_area, -1e-7)


def import_osm(
    store: Store,
    path: str | Path,
    *,
    replace: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[int], Streets]:
    """Read an extract's streets (clipped to the subdistrict) and import them."""
    area = store.service_area
    streets = read_streets(path, clip=None if area is None else clip_area(area))
    return import_streets(store, streets, replace=replace, progress=progress), streets
