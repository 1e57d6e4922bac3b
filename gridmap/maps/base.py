"""The base map: no tiles (offline default) or a chosen basemap, and the datum it is drawn in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import folium
import numpy as np
import shapely

from gridmap.crs import CRS84, GCJ02, transform_geometries
from gridmap.maps.assets import ASSET_PREFIX, leaflet_css, leaflet_js

Lang = Literal["zh", "en"]


@dataclass(frozen=True)
class Basemap:
    """A basemap: tile URL (None for none), attribution, the datum its tiles are in."""

    id: str
    zh: str
    en: str
    tiles: str | None
    attribution: str
    datum: str
    hosts: tuple[str, ...] = ()
    """Tile hosts the page's content security policy must allow."""


BASEMAPS: dict[str, Basemap] = {
    b.id: b
    for b in (
        Basemap("none", "无底图（离线）", "None (offline)", None, "", CRS84),
        Basemap(
            "osm",
            "OpenStreetMap",
            "OpenStreetMap",
            "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
            "&copy; OpenStreetMap contributors",
            CRS84,
            ("https://tile.openstreetmap.org",),
        ),
        Basemap(
            "tianditu",
            "天地图（CGCS2000）",
            "Tianditu (CGCS2000)",
            "https://t0.tianditu.gov.cn/vec_w/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0"
            "&LAYER=vec&STYLE=default&TILEMATRIXSET=w&FORMAT=tiles&TILEMATRIX={z}"
            "&TILEROW={y}&TILECOL={x}&tk={key}",
            "&copy; 天地图",
            CRS84,
            ("https://t0.tianditu.gov.cn",),
        ),
        Basemap(
            "amap",
            "高德地图（GCJ-02）",
            "Amap (GCJ-02)",
            "https://webrd01.is.autonavi.com/appmaptile?lang=zh_cn&size=1&scale=1&style=8"
            "&x={x}&y={y}&z={z}",
            "&copy; 高德地图",
            GCJ02,
            ("https://webrd01.is.autonavi.com",),
        ),
    )
}


@dataclass
class MapFrame:
    """A folium map and the datum its overlays must be drawn in (to match the basemap)."""

    map: folium.Map
    basemap: Basemap
    lang: Lang

    @property
    def datum(self) -> str:
        """CRS84 or GCJ-02."""
        return self.basemap.datum

    def to_display(self, geoms: Any) -> np.ndarray:
        """WGS84 geometries in the basemap's datum (GCJ-02 for Amap). Vectorised."""
        return transform_geometries(np.asarray(geoms, dtype=object), src=CRS84, dst=self.datum)


def base_map(
    *,
    location: tuple[float, float] = (34.8096, 113.2919),
    zoom: int = 15,
    basemap: str = "none",
    lang: Lang = "zh",
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> MapFrame:
    """A map whose Leaflet comes from ``prefix`` (no CDN), with the chosen basemap.

    ``location`` is WGS84 (lat, lon); it is shifted to the basemap's datum.
    """
    if basemap not in BASEMAPS:
        msg = f"unknown basemap {basemap[:30]!r}; use one of {', '.join(BASEMAPS)}"
        raise ValueError(msg)
    b = BASEMAPS[basemap]
    if b.id == "tianditu" and not tianditu_key:
        msg = "the tianditu basemap needs a key (GRIDMAP_TIANDITU_KEY)"
        raise ValueError(msg)
    m = folium.Map(
        location=location, zoom_start=zoom, tiles=None, control_scale=True, prefer_canvas=True
    )
    # With no tile layer Leaflet has no zoom range; clustering needs one.
    m.options["max_zoom"] = 19
    m.options["min_zoom"] = 10
    m.default_js = leaflet_js(prefix)
    m.default_css = leaflet_css(prefix)
    frame = MapFrame(m, b, lang)
    if b.tiles:
        url = b.tiles.replace("{key}", tianditu_key or "")
        folium.TileLayer(
            tiles=url,
            attr=b.attribution,
            name=b.zh if lang == "zh" else b.en,
            max_zoom=19,
            overlay=False,
            control=False,
        ).add_to(m)
    if b.datum != CRS84:
        pt = frame.to_display([shapely.Point(location[1], location[0])])[0]
        m.location = [pt.y, pt.x]
    return frame
