"""The overview's layers as data the browser fetches: GeoJSON in the basemap's datum, with
each feature's style, its popup and tooltip fields, and the layer's legend.

The overview page (:mod:`gridmap.maps.shell`) holds no features: each layer here is
fetched by the page and cached on the server by its own change stamps, so an edit to a
toilet re-encodes the toilets, not the page. Values go to the browser as JSON and are
put into the page with ``textContent`` only (``gridmap-layers.js``), never as markup.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import shapely

from gridmap.crs import CRS84, from_metric, to_metric, transform_geometries
from gridmap.geojson import geometry_fragments
from gridmap.layers import get_layer
from gridmap.maps.base import BASEMAPS, Lang
from gridmap.maps.layers import (
    CHOROPLETH,
    FACILITY_MARK,
    POINT_COLOUR,
    STYLE,
    _area_style,
    _point_style,
    camera_sectors,
    popup_fields,
    ramp,
    title,
)
from gridmap.store.base import BBox, FeatureSet, Query, Scope, Store

HOUSEHOLD_POINT_ZOOM = 16
"""From this zoom on, households in view are drawn one by one; below it, per grid."""
MAX_VIEW_FEATURES = 20_000
"""The most features one fetch by view returns; more are aggregated (or left out)."""
ROADS_ZOOM = 13
BUILDINGS_ZOOM = 15
SITES_ZOOM = 13
"""Layers by view show nothing below their zoom: a city's roads or cameras at once would be
tens of megabytes (the subdistrict opens at zoom 15, a city at 11)."""
LABEL_ZOOM = {"gm-label": 13, "gm-label-small": 16}
COMMUNITY_COUNTS_BELOW = 13
"""Below this zoom households are counted per community, from it per grid."""
PRECISION = 1e-6
"""Coordinates sent to the browser are rounded to this (about 0.1 m)."""


@dataclass(frozen=True)
class MapLayer:
    """One layer of the overview: its key in URLs, the stored layer it draws, its group in
    the layer control, whether it starts shown, and whether it is fetched by view."""

    key: str
    source: str
    group: str
    show: bool = True
    by_view: bool = False
    min_zoom: int = 0
    label_css: str | None = None
    searchable: bool = False
    zh: str | None = None
    en: str | None = None

    def name(self, lang: Lang) -> str:
        """Its label in the layer control (``group · title``)."""
        own = self.zh if lang == "zh" else self.en
        return own or title(get_layer(self.source), lang)


OVERVIEW: tuple[MapLayer, ...] = (
    MapLayer("roads", "roads", "base", by_view=True, min_zoom=ROADS_ZOOM),
    MapLayer("buildings", "buildings", "base", show=False, by_view=True, min_zoom=BUILDINGS_ZOOM),
    MapLayer("grids", "grids", "areas", label_css="gm-label-small", searchable=True),
    MapLayer("communities", "communities", "areas", label_css="gm-label", searchable=True),
    MapLayer("zones", "zones", "areas", searchable=True),
    MapLayer("old_neighbourhoods", "old_neighbourhoods", "projects", searchable=True),
    MapLayer(
        "toilet_areas",
        "toilets",
        "sites",
        by_view=True,
        min_zoom=SITES_ZOOM,
        zh="公厕服务半径 300 米",
        en="Toilet service radius 300 m",
    ),
    MapLayer("toilets", "toilets", "sites", searchable=True),
    MapLayer("facilities", "facilities", "sites", by_view=True, min_zoom=SITES_ZOOM),
    MapLayer(
        "camera_views",
        "cameras",
        "sites",
        show=False,
        by_view=True,
        min_zoom=SITES_ZOOM,
        zh="监控视域",
        en="Camera fields of view",
    ),
    MapLayer("cameras", "cameras", "sites", show=False, by_view=True, min_zoom=SITES_ZOOM),
    MapLayer("households", "households", "people", by_view=True),
)
MAP_LAYERS = {m.key: m for m in OVERVIEW}

STATS_TABLES = (
    "grids",
    "households",
    "visits",
    "gridmap_documents",
    "toilets",
    "roads",
    "buildings",
)
"""What grid figures are counted from: a choropleth moves with any of them."""


def depends_on(key: str) -> tuple[str, ...]:
    """The tables whose change stamps key a layer's cached data (a choropleth's figures
    are keyed apart: :class:`gridmap.maps.cache.Figures`)."""
    if key == "households":
        return ("households", "grids")  # grid aggregates are placed on the grids
    return (MAP_LAYERS[key].source,)


@dataclass(frozen=True)
class View:
    """What the caller looks at: the basemap datum, language and (for layers fetched by
    view) the box in the basemap's datum and the zoom."""

    lang: Lang = "zh"
    basemap: str = "none"
    bbox: BBox | None = None
    zoom: int | None = None

    @property
    def datum(self) -> str:
        return BASEMAPS[self.basemap].datum


@dataclass(frozen=True)
class Colouring:
    """Grid figures for a choropleth: value per grid id, the measure's label and format."""

    values: Mapping[int, float | None]
    label: str
    fmt: str = "{:.0f}"


def layer_data(
    store: Store,
    key: str,
    view: View,
    *,
    scope: Scope = Scope.ALL,
    colouring: Colouring | None = None,
) -> dict[str, Any]:
    """One overview layer as a FeatureCollection with a ``gm`` member saying how to draw it.

    Raises KeyError for a key that is not an overview layer.
    """
    ml = MAP_LAYERS[key]
    if key == "households":
        return _households(store, view, scope)
    fs = store.query(ml.source, Query(), scope=scope).with_geometry()
    if key == "toilet_areas":
        return _toilet_areas(view, fs)
    if key == "camera_views":
        return _camera_views(view, fs)
    if key == "grids" and colouring is not None:
        return _choropleth(view, fs, colouring)
    return _plain(view, ml, fs)


def clip(data: dict[str, Any], view: View, min_zoom: int = 0) -> dict[str, Any]:
    """The features of a whole layer's data that meet the view (none when zoomed out
    below ``min_zoom``; none and a note when more than :data:`MAX_VIEW_FEATURES`)."""
    bounds = data["gm"].get("_bounds")
    out = {k: v for k, v in data.items() if k != "features"}
    out["gm"] = {k: v for k, v in data["gm"].items() if k != "_bounds"}
    if view.bbox is None or view.zoom is None or view.zoom < min_zoom or bounds is None:
        out["features"] = []
        out["gm"]["note"] = "zoom_in"
        return out
    minx, miny, maxx, maxy = view.bbox
    hit = np.flatnonzero(
        (bounds[:, 0] <= maxx)
        & (bounds[:, 2] >= minx)
        & (bounds[:, 1] <= maxy)
        & (bounds[:, 3] >= miny)
    )
    if len(hit) > MAX_VIEW_FEATURES:
        out["features"] = []
        out["gm"]["note"] = "too_many"
        return out
    feats = data["features"]
    out["features"] = [feats[i] for i in hit.tolist()]
    return out


def encoded(data: dict[str, Any]) -> bytes:
    """A layer's data as JSON (without the feature bounds kept for :func:`clip`)."""
    gm = {k: v for k, v in data.get("gm", {}).items() if k != "_bounds"}
    return orjson.dumps({**data, "gm": gm})


CHINA = (72.0, 0.8, 137.9, 55.9)
"""Where GCJ-02 differs from WGS84 (outside, the two are the same)."""


def wgs84_box(bbox: BBox, datum: str) -> BBox:
    """A box in the basemap's datum as a WGS84 box that covers it (GCJ-02 shifts by a few
    hundred metres, smoothly: the transformed outline and a small margin cover it). Only
    the part over China is shifted; 33 points a side whatever the box's size."""
    if datum == CRS84:
        return bbox
    minx, miny, maxx, maxy = bbox
    inside = (max(minx, CHINA[0]), max(miny, CHINA[1]), min(maxx, CHINA[2]), min(maxy, CHINA[3]))
    if inside[0] > inside[2] or inside[1] > inside[3]:
        return bbox  # nothing of it over China: the datums agree
    ring = shapely.box(*inside)
    size = max(inside[2] - inside[0], inside[3] - inside[1])
    ring = ring.segmentize(size / 32) if size > 0 else ring
    back = transform_geometries(np.asarray([ring], dtype=object), src=datum, dst=CRS84)[0]
    bx = back.bounds
    pad = 0.0005
    if inside == (minx, miny, maxx, maxy):
        return (bx[0] - pad, bx[1] - pad, bx[2] + pad, bx[3] + pad)
    return (  # part of it outside China, where the datums agree
        min(minx, bx[0] - pad),
        min(miny, bx[1] - pad),
        max(maxx, bx[2] + pad),
        max(maxy, bx[3] + pad),
    )


def _display(view: View, geoms: Any) -> Any:
    """Geometries in the basemap's datum, rounded to :data:`PRECISION`."""
    arr = np.asarray(geoms, dtype=object)
    if view.datum != CRS84:
        arr = transform_geometries(arr, src=CRS84, dst=view.datum)
    return shapely.set_precision(arr, PRECISION, mode="pointwise")


def _lat_lon(view: View, geoms: Any) -> list[list[float]]:
    """[lat, lon] of each geometry's representative point, in the basemap's datum."""
    pts = np.asarray(shapely.point_on_surface(np.asarray(geoms, dtype=object)), dtype=object)
    if view.datum != CRS84:
        pts = transform_geometries(pts, src=CRS84, dst=view.datum)
    xy = shapely.get_coordinates(pts)
    return [[round(y, 6), round(x, 6)] for x, y in xy.tolist()]


def _value(v: Any) -> Any:
    """A property value for the browser: numbers, booleans, null and text (lists joined)."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list):
        return "、".join(map(str, v))
    return str(v)


def _collection_of(
    view: View,
    geoms: Any,
    features: Sequence[dict[str, Any]],
    *,
    kind: str,
    ids: Sequence[int] | None = None,
    **gm: Any,
) -> dict[str, Any]:
    """A FeatureCollection of ``features`` (property dicts) drawn on ``geoms``."""
    shown = _display(view, geoms) if len(features) else np.empty(0, dtype=object)
    frags = geometry_fragments(shown)
    out = [
        {
            "type": "Feature",
            "id": None if ids is None else int(ids[i]),
            "geometry": g,
            "properties": p,
        }
        for i, (g, p) in enumerate(zip(frags, features, strict=True))
    ]
    bounds = shapely.bounds(shown) if len(shown) else np.empty((0, 4))
    meta = {"kind": kind, **gm, "_bounds": bounds}
    return {"type": "FeatureCollection", "features": out, "gm": meta}


def _fields(ml: MapLayer, lang: Lang) -> tuple[list[str], list[list[str]]]:
    names, aliases = popup_fields(get_layer(ml.source), lang)
    return names, [list(p) for p in zip(names, aliases, strict=True)]


def _plain(view: View, ml: MapLayer, fs: FeatureSet) -> dict[str, Any]:
    """A layer drawn with its own style, tooltip (first two fields) and popup."""
    layer_id = ml.source
    names, pairs = _fields(ml, view.lang)
    point = get_layer(layer_id).geometry_type == "Point"
    style: Callable[[Mapping[str, Any]], dict[str, Any]]
    if point:
        style = _point_style(layer_id)
    else:
        style = _area_style(layer_id, dict(STYLE.get(layer_id, {})))
    props = []
    for p in fs.properties:
        shown = {n: _value(p.get(n)) for n in names}
        s = style({"properties": p})
        if layer_id == "facilities":
            mark, colour = FACILITY_MARK.get(p.get("kind"), ("站", "#333333"))
            s = {"mark": mark, "colour": colour}
        elif point:
            s = {"fillColor": POINT_COLOUR.get(layer_id, "#333333"), **s}
        props.append({**shown, "_s": s})
    extra: dict[str, Any] = {}
    if ml.label_css:
        zoom = LABEL_ZOOM[ml.label_css]
        extra["labels"] = {"css": ml.label_css, "field": "name", "min_zoom": zoom}
        for p, ll in zip(props, _lat_lon(view, fs.geometries), strict=True):
            p["_lp"] = ll
    quiet = layer_id in ("roads", "buildings")
    return _collection_of(
        view,
        fs.geometries,
        props,
        kind="icon" if layer_id == "facilities" else "point" if point else "area",
        ids=fs.ids.tolist(),
        tooltip=[] if layer_id == "buildings" else pairs[:2],
        popup=[] if quiet else pairs,
        search=ml.searchable,
        title=title(get_layer(layer_id), view.lang),
        **extra,
    )


def _choropleth(view: View, grids: FeatureSet, colouring: Colouring) -> dict[str, Any]:
    """Grids coloured by a figure per grid, with the legend's classes."""
    zh = view.lang == "zh"
    vals = [colouring.values.get(int(i)) for i in grids.ids]
    colours, breaks = ramp([np.nan if v is None else float(v) for v in vals], CHOROPLETH)
    fmt = colouring.fmt
    props = []
    for p, v, c in zip(grids.properties, vals, colours, strict=True):
        props.append(
            {
                "name": _value(p.get("name")),
                "code": _value(p.get("code")),
                "worker_name": _value(p.get("worker_name")),
                "value": None if v is None else fmt.format(v),
                "_s": {"color": "#1b7837", "weight": 1, "fillColor": c, "fillOpacity": 0.7},
            }
        )
    for p, ll in zip(props, _lat_lon(view, grids.geometries), strict=True):
        p["_lp"] = ll
    entries = [
        [CHOROPLETH[min(i, len(CHOROPLETH) - 1)], f"{fmt.format(lo)} – {fmt.format(hi)}"]
        for i, (lo, hi) in enumerate(itertools.pairwise(breaks))
    ]
    layer_title = title(grids.layer, view.lang)
    labels = ["网格", "编码", "网格员"] if zh else ["Grid", "Code", "Grid worker"]
    popup = [*map(list, zip(["name", "code", "worker_name"], labels, strict=True))]
    return _collection_of(
        view,
        grids.geometries,
        props,
        kind="area",
        ids=grids.ids.tolist(),
        tooltip=[["name", labels[0]], ["value", colouring.label]],
        popup=[*popup, ["value", colouring.label]],
        search=True,
        title=layer_title,
        labels={"css": "gm-label-small", "field": "name", "min_zoom": LABEL_ZOOM["gm-label-small"]},
        legend={
            "title": f"{layer_title}{'：' if zh else ': '}{colouring.label}",
            "entries": entries,
        },
    )


def _areas(view: View, polygons: Any, fs: FeatureSet, styles: list[dict[str, Any]], **gm: Any):  # type: ignore[no-untyped-def]
    props = [
        {"name": _value(p.get("name")), "status": _value(p.get("status")), "_s": s}
        for p, s in zip(fs.properties, styles, strict=True)
    ]
    return _collection_of(view, polygons, props, kind="area", ids=fs.ids.tolist(), **gm)


def _toilet_areas(view: View, toilets: FeatureSet, radius_m: float = 300.0) -> dict[str, Any]:
    """Straight-line service radius around each toilet (planned ones dashed)."""
    polys = from_metric(shapely.buffer(to_metric(toilets.geometries), radius_m, quad_segs=8))
    styles = [
        {"color": "#2166ac", "weight": 1, "fillOpacity": 0.08}
        if p.get("status") == "existing"
        else {"color": "#f46d43", "weight": 1, "fillOpacity": 0.08, "dashArray": "6 4"}
        for p in toilets.properties
    ]
    return _areas(view, polys, toilets, styles, tooltip=[], popup=[], interactive=False)


def _camera_views(view: View, cameras: FeatureSet) -> dict[str, Any]:
    """Each camera's field of view from its direction, field of view and range."""
    styles = [
        {
            "color": "#b2182b" if p.get("status") == "online" else "#969696",
            "weight": 1,
            "fillOpacity": 0.15,
        }
        for p in cameras.properties
    ]
    return _areas(view, camera_sectors(cameras), cameras, styles, tooltip=[["name", ""]], popup=[])


def _households(store: Store, view: View, scope: Scope) -> dict[str, Any]:
    """Households in view: positions only (no personal data) when zoomed in and not too
    many, otherwise counted (see :func:`household_counts` and :func:`clip_counts`)."""
    if points_in_view(view):
        assert view.bbox is not None
        box = wgs84_box(view.bbox, view.datum)
        if store.count("households", Query(bbox=box), scope=scope) <= MAX_VIEW_FEATURES:
            fs = store.query("households", Query(bbox=box), scope=scope).with_geometry()
            xy = shapely.get_coordinates(_display(view, fs.geometries))
            pts = [[round(y, 6), round(x, 6)] for x, y in xy.tolist()]
            return {"type": "Points", "points": pts, "gm": {"kind": "households"}}
    return clip_counts(household_counts(store, view, scope), view)


def points_in_view(view: View) -> bool:
    """True if households are drawn one by one at this view (else counted)."""
    return view.bbox is not None and view.zoom is not None and view.zoom >= HOUSEHOLD_POINT_ZOOM


def household_counts(store: Store, view: View, scope: Scope) -> dict[str, Any]:
    """Households per grid and per community in the scope, counted by the database, each
    figure at its area's representative point: the same for every view (cache it, then
    :func:`clip_counts`)."""
    from gridmap.store.backend import Measure

    figures = store.aggregate("households", "grid_id", {"n": Measure()}, Query(), scope=scope)
    counts = {int(g): int(f["n"]) for g, f in figures.items() if g is not None and f["n"]}
    levels: dict[str, Any] = {}
    grids = store.query("grids", Query(ids=sorted(counts)), scope=scope) if counts else None
    if grids is None or not len(grids):
        return {"type": "Counts", "levels": {}}
    grids = grids.with_geometry()
    levels["grids"] = _placed(view, grids, [counts[int(g)] for g in grids.ids])
    per: dict[int, int] = {}
    for g, p in zip(grids.ids.tolist(), grids.properties, strict=True):
        if p.get("community_id") is not None:
            per[int(p["community_id"])] = per.get(int(p["community_id"]), 0) + counts[g]
    if scope.allows_layer("communities") and per:
        comms = store.query("communities", Query(ids=sorted(per)), scope=scope).with_geometry()
        levels["communities"] = _placed(view, comms, [per[int(c)] for c in comms.ids])
    return {"type": "Counts", "levels": levels}


def _placed(view: View, areas: FeatureSet, figures: list[int]) -> np.ndarray:
    """Rows (lat, lon, figure) at each area's representative point, in display datum."""
    at = np.asarray(_lat_lon(view, areas.geometries), dtype=float).reshape(-1, 2)
    return np.column_stack([at, np.asarray(figures, dtype=float)])


def clip_counts(data: dict[str, Any], view: View) -> dict[str, Any]:
    """The household figures for a view: per community when zoomed out (or no view), per
    grid from :data:`COMMUNITY_COUNTS_BELOW`, only those in the view's box."""
    levels = data["levels"]
    zoomed_out = view.zoom is None or view.zoom < COMMUNITY_COUNTS_BELOW
    level = "communities" if zoomed_out and "communities" in levels else "grids"
    rows = levels.get(level, np.empty((0, 3)))
    if view.bbox is not None and len(rows):
        minx, miny, maxx, maxy = view.bbox
        keep = (
            (rows[:, 0] >= miny)
            & (rows[:, 0] <= maxy)
            & (rows[:, 1] >= minx)
            & (rows[:, 1] <= maxx)
        )
        rows = rows[keep]
    out = [[round(r[0], 6), round(r[1], 6), int(r[2])] for r in rows.tolist()]
    return {"type": "Counts", "counts": out, "gm": {"kind": "household_counts", "per": level}}
