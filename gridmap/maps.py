"""folium maps drawn from the store, with every script and stylesheet served locally (offline)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import folium
import orjson
from folium.plugins import FastMarkerCluster

from gridmap.geojson import feature_dicts
from gridmap.layers import (
    FACILITY_KIND_ZH,
    RENOVATION_STATUS_ZH,
    Layer,
    get_layer,
)
from gridmap.store.base import FeatureSet, Scope, Store

Lang = Literal["zh", "en"]

ASSET_PREFIX = "/static"
"""URL prefix under which the API serves :func:`asset_dirs`."""


def asset_dirs() -> dict[str, Path]:
    """Local directories of the front-end packages (installed from PyPI's XStatic packages)."""
    import xstatic.pkg.leaflet as leaflet
    import xstatic.pkg.leaflet_markercluster as markercluster

    return {
        "leaflet": Path(leaflet.BASE_DIR),
        "markercluster": Path(markercluster.BASE_DIR),
    }


def _local_js(prefix: str) -> list[tuple[str, str]]:
    return [("leaflet", f"{prefix}/leaflet/leaflet.js")]


def _local_css(prefix: str) -> list[tuple[str, str]]:
    return [("leaflet_css", f"{prefix}/leaflet/leaflet.css")]


_STYLE: dict[str, dict[str, Any]] = {
    "zones": {"color": "#7b3294", "weight": 3, "fill": False, "dashArray": "8 4"},
    "communities": {"color": "#c2a5cf", "weight": 2, "fillOpacity": 0.04},
    "grids": {"color": "#1b7837", "weight": 1, "fillColor": "#a6dba0", "fillOpacity": 0.25},
    "buildings": {"color": "#666666", "weight": 0.5, "fillColor": "#bbbbbb", "fillOpacity": 0.7},
    "old_neighbourhoods": {"color": "#d6604d", "weight": 2, "fillOpacity": 0.25},
    "roads": {"color": "#888888", "weight": 2},
}
_POINT_COLOUR = {"toilets": "#2166ac", "cameras": "#b2182b", "facilities": "#e08214"}
_RENOVATION_COLOUR = {
    "planned": "#fddbc7",
    "approved": "#f4a582",
    "in_progress": "#d6604d",
    "accepted": "#4d9221",
}


def _title(layer: Layer, lang: Lang) -> str:
    return layer.zh if lang == "zh" else layer.en


def _fields(layer: Layer, lang: Lang) -> tuple[list[str], list[str]]:
    keep = [p for p in layer.properties if not p.sensitive and p.type != "list"][:6]
    return [p.name for p in keep], [p.zh if lang == "zh" else p.en for p in keep]


def base_map(
    *, location: tuple[float, float] | None = None, zoom: int = 15, prefix: str = ASSET_PREFIX
) -> folium.Map:
    """A folium map with no tiles whose Leaflet comes from ``prefix`` (no CDN)."""
    m = folium.Map(
        location=location, zoom_start=zoom, tiles=None, control_scale=True, prefer_canvas=True
    )
    # With no tile layer Leaflet has no zoom range; clustering needs one.
    m.options["max_zoom"] = 20
    m.options["min_zoom"] = 10
    m.default_js = _local_js(prefix)
    m.default_css = _local_css(prefix)
    return m


def add_layer(
    m: folium.Map,
    fs: FeatureSet,
    *,
    lang: Lang = "zh",
    show: bool = True,
) -> folium.FeatureGroup:
    """Draw one layer's features on ``m`` with styles, tooltips and popups by layer."""
    layer = fs.layer
    group = folium.FeatureGroup(name=_title(layer, lang), show=show)
    names, aliases = _fields(layer, lang)
    data = {"type": "FeatureCollection", "features": feature_dicts(fs, properties=names)}
    geojson = orjson.loads(orjson.dumps(data))
    if layer.geometry_type == "Point":
        colour = _POINT_COLOUR.get(layer.id, "#333333")
        gj = folium.GeoJson(
            geojson,
            name=_title(layer, lang),
            marker=folium.CircleMarker(radius=5, color=colour, fill=True, fill_opacity=0.9),
            tooltip=folium.GeoJsonTooltip(fields=names[:2], aliases=aliases[:2]),
            popup=folium.GeoJsonPopup(fields=names, aliases=aliases),
        )
    else:
        style = _STYLE.get(layer.id, {})

        def style_fn(
            feature: Mapping[str, Any], _s: dict[str, Any] = style, _id: str = layer.id
        ) -> dict[str, Any]:
            out = dict(_s)
            props = feature["properties"]
            if _id == "old_neighbourhoods":
                out["fillColor"] = _RENOVATION_COLOUR.get(props.get("renovation_status"), "#999")
            if _id == "roads" and props.get("status") == "planned":
                out["dashArray"] = "6 6"
            if _id == "roads" and props.get("road_class") == "footpath":
                out["weight"] = 1
            return out

        gj = folium.GeoJson(
            geojson,
            name=_title(layer, lang),
            style_function=style_fn,
            tooltip=folium.GeoJsonTooltip(fields=names[:2], aliases=aliases[:2]),
            popup=folium.GeoJsonPopup(fields=names, aliases=aliases)
            if layer.id not in ("roads", "buildings")
            else None,
        )
    gj.add_to(group)
    group.add_to(m)
    return group


def add_households(
    m: folium.Map, fs: FeatureSet, *, lang: Lang = "zh", prefix: str = ASSET_PREFIX
) -> FastMarkerCluster:
    """Households as a fast marker cluster (positions only, no personal data)."""
    import shapely

    pts = [[round(y, 6), round(x, 6)] for x, y in shapely.get_coordinates(fs.geometries).tolist()]
    cluster = FastMarkerCluster(pts, name=_title(fs.layer, lang), callback=_HOUSEHOLD_MARKER)
    cluster.default_js = [("markerclusterjs", f"{prefix}/markercluster/leaflet.markercluster.js")]
    cluster.default_css = [
        ("markerclustercss", f"{prefix}/markercluster/MarkerCluster.css"),
        ("markerclusterdefaultcss", f"{prefix}/markercluster/MarkerCluster.Default.css"),
    ]
    cluster.add_to(m)
    return cluster


# A dot drawn with CSS: no icon images, no plugin beyond markercluster.
_HOUSEHOLD_MARKER = """function (row) {
    return L.marker(new L.LatLng(row[0], row[1]),
                    {icon: L.divIcon({className: "gm-household", iconSize: [8, 8]})});
}"""
_PAGE_CSS = """<style>
.gm-household { background: #4575b4; border: 1px solid #fff; border-radius: 50%; }
</style>"""

_OVERVIEW_ORDER = [
    ("roads", True),
    ("zones", True),
    ("communities", True),
    ("grids", True),
    ("old_neighbourhoods", True),
    ("buildings", False),
    ("toilets", True),
    ("facilities", True),
    ("cameras", False),
]


def overview_map(
    store: Store, *, scope: Scope = Scope.ALL, lang: Lang = "zh", prefix: str = ASSET_PREFIX
) -> folium.Map:
    """Every layer the scope allows on one page, with a layer control (Chinese by default)."""
    extent = store.extent("grids") or store.extent("zones")
    centre = (
        ((extent[1] + extent[3]) / 2, (extent[0] + extent[2]) / 2)
        if extent
        else (34.8096, 113.2919)
    )
    m = base_map(location=centre, zoom=15, prefix=prefix)
    for layer_id, show in _OVERVIEW_ORDER:
        if scope.allows_layer(layer_id):
            add_layer(m, store.query(layer_id, scope=scope), lang=lang, show=show)
    if scope.allows_layer("households"):
        add_households(m, store.query("households", scope=scope), lang=lang, prefix=prefix)
    if extent:
        m.fit_bounds([[extent[1], extent[0]], [extent[3], extent[2]]])
    folium.LayerControl(collapsed=False).add_to(m)
    title = "中心路街道网格化管理总览" if lang == "zh" else "Zhongxinlu subdistrict overview"
    m.get_root().header.add_child(folium.Element(f"<title>{title}</title>{_PAGE_CSS}"))
    return m


def legend_labels(lang: Lang = "zh") -> dict[str, dict[str, str]]:
    """Category labels used in legends and popups."""
    if lang == "zh":
        return {"renovation_status": dict(RENOVATION_STATUS_ZH), "kind": dict(FACILITY_KIND_ZH)}
    return {
        "renovation_status": {k: k.replace("_", " ") for k in RENOVATION_STATUS_ZH},
        "kind": {k: k.replace("_", " ") for k in FACILITY_KIND_ZH},
    }


__all__ = ["add_households", "add_layer", "asset_dirs", "base_map", "get_layer", "overview_map"]
