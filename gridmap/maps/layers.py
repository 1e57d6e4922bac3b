"""Map layers: features by layer style, grid choropleths, camera sectors, service areas, labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import folium
import numpy as np
import orjson
import shapely
from folium.plugins import FastMarkerCluster

from gridmap.analysis.cameras import sector
from gridmap.crs import from_metric, to_metric
from gridmap.escape import html_text
from gridmap.geojson import geometry_fragments
from gridmap.layers import Layer
from gridmap.maps.assets import ASSET_PREFIX, markercluster_css, markercluster_js
from gridmap.maps.base import Lang, MapFrame
from gridmap.maps.elements import Popup, Tooltip
from gridmap.store.base import FeatureSet

STYLE: dict[str, dict[str, Any]] = {
    "zones": {"color": "#7b3294", "weight": 3, "fill": False, "dashArray": "8 4"},
    "communities": {"color": "#9970ab", "weight": 2, "fillOpacity": 0.03},
    "grids": {"color": "#1b7837", "weight": 1, "fillColor": "#a6dba0", "fillOpacity": 0.2},
    "buildings": {"color": "#666666", "weight": 0.5, "fillColor": "#bbbbbb", "fillOpacity": 0.8},
    "old_neighbourhoods": {"color": "#b2182b", "weight": 2, "fillOpacity": 0.45},
    "roads": {"color": "#8c8c8c", "weight": 3},
}
POINT_COLOUR = {
    "toilets": "#2166ac",
    "cameras": "#b2182b",
    "facilities": "#e08214",
    "households": "#4575b4",
}
RENOVATION_COLOUR = {
    "planned": "#fddbc7",
    "approved": "#f4a582",
    "in_progress": "#d6604d",
    "accepted": "#4d9221",
}
FACILITY_MARK = {
    "mediation_room": ("调", "#e08214"),
    "psych_service": ("心", "#8073ac"),
    "elderly_care": ("老", "#1b7837"),
    "party_service": ("党", "#d73027"),
    "community_office": ("社", "#4575b4"),
    "health_station": ("医", "#35978f"),
}
VISIT_COLOUR = {
    "visited": "#1a9850",
    "not_home": "#fdae61",
    "refused": "#d73027",
    "follow_up": "#7570b3",
    None: "#969696",
}


def title(layer: Layer, lang: Lang) -> str:
    """A layer's display name in the page language."""
    return layer.zh if lang == "zh" else layer.en


def popup_fields(layer: Layer, lang: Lang, limit: int = 7) -> tuple[list[str], list[str]]:
    """Properties shown in popups (personal fields never), with their labels."""
    keep = [p for p in layer.properties if not p.sensitive][:limit]
    return [p.name for p in keep], [p.zh if lang == "zh" else p.en for p in keep]


def _collection(
    frame: MapFrame,
    geoms: Any,
    props: Sequence[Mapping[str, Any]],
    ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """GeoJSON for a map layer; text values HTML-escaped, lists joined.

    folium's GeoJsonTooltip and GeoJsonPopup put property values into ``innerHTML``, so
    every text value of a drawn feature is escaped here, once, for all of them.
    """
    shown = frame.to_display(geoms)
    frags = geometry_fragments(shown)
    feats = [
        {
            "type": "Feature",
            "id": None if ids is None else ids[i],
            "geometry": g,
            "properties": {k: _shown_value(v) for k, v in p.items()},
        }
        for i, (g, p) in enumerate(zip(frags, props, strict=True))
    ]
    return orjson.loads(orjson.dumps({"type": "FeatureCollection", "features": feats}))


def _shown_value(v: Any) -> Any:
    """A value for map data: numbers, booleans and null as they are, everything else as
    escaped text (whatever another program stored: a dict, bytes …). folium compiles its
    output as a template, so no value may reach it unescaped."""
    if v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, list):
        v = "、".join(map(str, v))
    return html_text(v if isinstance(v, str) else str(v))


def geojson_tooltip(fields: Sequence[str], aliases: Sequence[str]) -> folium.GeoJsonTooltip:
    """folium's per-feature tooltip; its labels go into ``innerHTML`` too, so they are escaped."""
    return folium.GeoJsonTooltip(fields=list(fields), aliases=[html_text(a) for a in aliases])


def geojson_popup(fields: Sequence[str], aliases: Sequence[str]) -> folium.GeoJsonPopup:
    """folium's per-feature popup, labels escaped like :func:`geojson_tooltip`'s."""
    return folium.GeoJsonPopup(fields=list(fields), aliases=[html_text(a) for a in aliases])


def _display_props(fs: FeatureSet, names: list[str]) -> list[dict[str, Any]]:
    """The properties a popup shows (raw; :func:`_collection` escapes them)."""
    return [{n: p.get(n) for n in names} for p in fs.properties]


def add_layer(
    frame: MapFrame,
    fs: FeatureSet,
    *,
    show: bool = True,
    name: str | None = None,
    style: Mapping[str, Any] | None = None,
) -> folium.FeatureGroup:
    """Draw one layer with its style, tooltip and popup (labels in the page language)."""
    layer = fs.layer
    lang = frame.lang
    group = folium.FeatureGroup(name=name or title(layer, lang), show=show)
    names, aliases = popup_fields(layer, lang)
    data = _collection(frame, fs.geometries, _display_props(fs, names), fs.ids.tolist())
    # folium refuses per-feature tooltips on an empty layer (no fields to check against)
    tooltip = geojson_tooltip(names[:2], aliases[:2]) if len(fs) else None
    popup = geojson_popup(names, aliases) if len(fs) else None
    if layer.geometry_type == "Point":
        if layer.id == "facilities":
            _add_facility_icons(group, data, names, aliases)
            group.add_to(frame.map)
            return group
        colour = POINT_COLOUR.get(layer.id, "#333333")
        folium.GeoJson(
            data,
            name=title(layer, lang),
            marker=folium.CircleMarker(
                radius=6, color="#ffffff", weight=1, fill=True, fill_color=colour, fill_opacity=0.95
            ),
            style_function=_point_style(layer.id),
            tooltip=tooltip,
            popup=popup,
        ).add_to(group)
    else:
        base = dict(STYLE.get(layer.id, {}), **(style or {}))
        folium.GeoJson(
            data,
            name=title(layer, lang),
            style_function=_area_style(layer.id, base),
            tooltip=tooltip,
            popup=popup if layer.id not in ("roads", "buildings") else None,
        ).add_to(group)
    group.add_to(frame.map)
    return group


def _point_style(layer_id: str):  # type: ignore[no-untyped-def]
    def style(feature: Mapping[str, Any]) -> dict[str, Any]:
        p = feature["properties"]
        if layer_id == "toilets" and p.get("status") != "existing":
            return {"fillColor": "#f46d43", "color": "#ffffff"}
        if layer_id == "cameras" and p.get("status") == "offline":
            return {"fillColor": "#969696"}
        return {}

    return style


def _area_style(layer_id: str, base: dict[str, Any]):  # type: ignore[no-untyped-def]
    def style(feature: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        p = feature["properties"]
        if layer_id == "old_neighbourhoods":
            out["fillColor"] = RENOVATION_COLOUR.get(p.get("renovation_status"), "#999999")
        if layer_id == "roads":
            if p.get("status") == "planned":
                out.update({"dashArray": "8 6", "color": "#d6604d"})
            if p.get("road_class") == "footpath":
                out.update({"weight": 1, "color": "#bdbdbd"})
            elif p.get("road_class") == "lane":
                out["weight"] = 2
        return out

    return style


def _add_facility_icons(
    group: folium.FeatureGroup, data: dict[str, Any], names: list[str], aliases: list[str]
) -> None:
    for f in data["features"]:
        lon, lat = f["geometry"]["coordinates"]
        mark, colour = FACILITY_MARK.get(f["properties"].get("kind"), ("站", "#333333"))
        icon = f'<div class="gm-icon" style="background:{colour}">{mark}</div>'
        rows = "".join(  # values were escaped by _collection
            f"<tr><th>{html_text(a)}</th><td>{f['properties'].get(n) or ''}</td></tr>"
            for n, a in zip(names, aliases, strict=True)
        )
        marker = folium.Marker(
            [lat, lon],
            icon=folium.DivIcon(
                html=icon, icon_size=(22, 22), icon_anchor=(11, 11), class_name="gm-facility"
            ),
        )
        marker.add_child(Tooltip(f["properties"].get("name") or ""))
        marker.add_child(Popup(f"<table>{rows}</table>"))
        marker.add_to(group)


def add_households(
    frame: MapFrame, fs: FeatureSet, *, name: str | None = None, prefix: str = ASSET_PREFIX
) -> FastMarkerCluster:
    """Households as a fast marker cluster: positions only, no personal data in the page."""
    shown = frame.to_display(fs.geometries)
    pts = [[round(y, 6), round(x, 6)] for x, y in shapely.get_coordinates(shown).tolist()]
    cluster = FastMarkerCluster(
        pts, name=name or title(fs.layer, frame.lang), callback=_HOUSEHOLD_MARKER
    )
    cluster.default_js = markercluster_js(prefix)
    cluster.default_css = markercluster_css(prefix)
    cluster.add_to(frame.map)
    return cluster


# A dot drawn with CSS: no icon images, no plugin beyond markercluster.
_HOUSEHOLD_MARKER = """function (row) {
    return L.marker(new L.LatLng(row[0], row[1]),
                    {icon: L.divIcon({className: "gm-household", iconSize: [8, 8]})});
}"""


def ramp(values: Sequence[float], colours: Sequence[str]) -> tuple[list[str], list[float]]:
    """Colour per value on a quantile ramp, and the class breaks."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    k = len(colours)
    if finite.size == 0:
        return ["#cccccc"] * len(arr), []
    breaks = np.unique(np.quantile(finite, np.linspace(0, 1, k + 1))).tolist()
    out = []
    for v in arr:
        if not np.isfinite(v):
            out.append("#cccccc")
            continue
        i = int(np.searchsorted(breaks[1:-1], v, side="right"))
        out.append(colours[min(i, k - 1)])
    return out, breaks


CHOROPLETH = ["#edf8e9", "#bae4b3", "#74c476", "#31a354", "#006d2c"]


def add_grid_choropleth(
    frame: MapFrame,
    grids: FeatureSet,
    values: Mapping[int, float | None],
    *,
    name: str,
    fmt: str = "{:.0f}",
) -> list[tuple[str, str]]:
    """Grids coloured by a value per grid id; returns the legend entries (colour, label)."""
    vals = [values.get(int(i)) for i in grids.ids]
    nums = [float("nan") if v is None else float(v) for v in vals]
    colours, breaks = ramp(nums, CHOROPLETH)
    props = []
    for p, v in zip(grids.properties, vals, strict=True):
        props.append(
            {
                "name": p.get("name"),
                "code": p.get("code"),
                "worker_name": p.get("worker_name"),
                "value": None if v is None else fmt.format(v),
            }
        )
    data = _collection(frame, grids.geometries, props, grids.ids.tolist())
    for f, c in zip(data["features"], colours, strict=True):
        f["properties"]["_fill"] = c
    zh = frame.lang == "zh"
    group = folium.FeatureGroup(name=name, show=True)
    folium.GeoJson(
        data,
        style_function=lambda f: {
            "color": "#1b7837",
            "weight": 1,
            "fillColor": f["properties"]["_fill"],
            "fillOpacity": 0.7,
        },
        tooltip=geojson_tooltip(["name", "value"], ["网格" if zh else "Grid", name]),
        popup=geojson_popup(
            ["name", "code", "worker_name", "value"],
            ["网格", "编码", "网格员", name] if zh else ["Grid", "Code", "Grid worker", name],
        ),
    ).add_to(group)
    group.add_to(frame.map)
    entries = []
    for i in range(len(breaks) - 1):
        entries.append(
            (
                CHOROPLETH[min(i, len(CHOROPLETH) - 1)],
                f"{fmt.format(breaks[i])} – {fmt.format(breaks[i + 1])}",
            )
        )
    return entries


def camera_sectors(cameras: FeatureSet) -> Any:
    """Each camera's view (:func:`sector`) as a WGS84 polygon."""
    polys = [
        sector(
            pt.x,
            pt.y,
            float(p.get("direction_deg") or 0),
            float(p.get("fov_deg") or 60),
            float(p.get("range_m") or 50),
        )
        for pt, p in zip(to_metric(cameras.geometries), cameras.properties, strict=True)
    ]
    return from_metric(polys)


def add_camera_sectors(
    frame: MapFrame, cameras: FeatureSet, *, name: str, show: bool = False
) -> folium.FeatureGroup:
    """Each camera's field of view drawn from its direction, field of view and range."""
    return _add_areas(
        frame,
        camera_sectors(cameras),
        cameras,
        name=name,
        show=show,
        style=lambda f: {
            "color": "#b2182b" if f["properties"]["status"] == "online" else "#969696",
            "weight": 1,
            "fillOpacity": 0.15,
        },
        tooltip=True,
    )


def _add_areas(
    frame: MapFrame,
    polygons: Any,
    fs: FeatureSet,
    *,
    name: str,
    show: bool,
    style: Any,
    tooltip: bool = False,
) -> folium.FeatureGroup:
    """Areas derived from features (sectors, service radii) as one styled layer."""
    props = [{"name": p.get("name"), "status": p.get("status")} for p in fs.properties]
    group = folium.FeatureGroup(name=name, show=show)
    folium.GeoJson(
        _collection(frame, polygons, props),
        style_function=style,
        tooltip=geojson_tooltip(["name"], [""]) if tooltip and len(fs) else None,
    ).add_to(group)
    group.add_to(frame.map)
    return group


def add_toilet_service_areas(
    frame: MapFrame,
    toilets: FeatureSet,
    *,
    name: str,
    radius_m: float = 300.0,
    show: bool = True,
    areas: Any = None,
) -> folium.FeatureGroup:
    """Each toilet's service area (planned ones dashed): ``areas`` (WGS84, one per toilet,
    e.g. its walking catchment), else a straight-line radius."""
    if areas is None:
        areas = from_metric(shapely.buffer(to_metric(toilets.geometries), radius_m, quad_segs=16))
    return _add_areas(
        frame,
        areas,
        toilets,
        name=name,
        show=show,
        style=lambda f: {
            "color": "#2166ac" if f["properties"]["status"] == "existing" else "#f46d43",
            "weight": 1,
            "fillOpacity": 0.08,
            "dashArray": None if f["properties"]["status"] == "existing" else "6 4",
        },
    )


def add_labels(
    frame: MapFrame,
    fs: FeatureSet,
    *,
    field: str = "name",
    name: str,
    css_class: str = "gm-label",
    show: bool = True,
) -> folium.FeatureGroup:
    """Text labels at each feature's representative point."""
    pts = frame.to_display(shapely.point_on_surface(fs.geometries))
    group = folium.FeatureGroup(name=name, show=show, control=False)
    for pt, p in zip(pts, fs.properties, strict=True):
        text = html_text(p.get(field))
        folium.Marker(
            [pt.y, pt.x],
            icon=folium.DivIcon(
                html=f'<div class="{css_class}">{text}</div>',
                icon_size=(120, 20),
                icon_anchor=(60, 10),
            ),
            interactive=False,
        ).add_to(group)
    group.add_to(frame.map)
    return group


def add_shapes(
    frame: MapFrame,
    geoms: Any,
    props: Sequence[Mapping[str, Any]],
    *,
    name: str,
    style: Any,
    tooltip: tuple[Sequence[str], Sequence[str]] | None = None,
    show: bool = True,
    marker: folium.CircleMarker | None = None,
    popup: tuple[Sequence[str], Sequence[str]] | None = None,
) -> folium.FeatureGroup:
    """Any shapes with their own properties (escaped like every layer's), one style
    function, an optional tooltip and popup (fields, labels) and how points are marked."""
    group = folium.FeatureGroup(name=name, show=show)
    folium.GeoJson(
        _collection(frame, geoms, props),
        style_function=style,
        marker=marker,
        tooltip=geojson_tooltip(*tooltip) if tooltip and len(props) else None,
        popup=geojson_popup(*popup) if popup and len(props) else None,
    ).add_to(group)
    group.add_to(frame.map)
    return group
