"""The toilet planning map (公厕服务覆盖与选址): grids by the share of households within a walk
of a toilet, each toilet's walking catchment, where the unserved live (squares, never
points) and, when asked, the sites chosen for new toilets with their catchments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import folium
import numpy as np
import shapely

from gridmap.analysis import toilets as tl
from gridmap.maps.assets import ASSET_PREFIX
from gridmap.maps.base import Lang
from gridmap.maps.layers import add_grid_choropleth, add_layer, add_shapes, add_toilet_service_areas
from gridmap.maps.pages import overview_frame
from gridmap.maps.widgets import add_legend, add_title
from gridmap.store.base import Query, Scope, Store

SITE_COLOUR = "#d7301f"
FEW_COLOUR = "#fff5f0"
BAND_COLOUR = ["#fee5d9", "#fcae91", "#fb6a4a", "#de2d26", "#a50f15"]


def _shade(value: int | str) -> str:
    """A density square's fill: by band (5–9 … 100+), counts put into the same bands."""
    lo = int(value.split("–")[0].rstrip("+")) if isinstance(value, str) else value
    if lo < tl.BANDS[0][0]:  # 1–4: drawn for roles that see them, paler than any band
        return FEW_COLOUR
    edges = [lo_ for lo_, _ in tl.BANDS]
    return BAND_COLOUR[max(0, int(np.searchsorted(edges, lo, side="right")) - 1)]


def toilet_map(
    store: Store,
    *,
    scope: Scope,
    count_scope: Scope,
    small_cells: int | None,
    grid_rows: Sequence[Mapping[str, Any]],
    distance: int = 300,
    sites: Sequence[Mapping[str, Any]] = (),
    lang: Lang = "zh",
    basemap: str = "none",
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> folium.Map:
    """The page. ``grid_rows`` come from the toilet-access statistics (protected as the
    caller's role needs); ``count_scope`` is where households are counted; ``sites`` are
    a siting answer's (rank, lon, lat, gain)."""
    zh = lang == "zh"
    frame, _ = overview_frame(store, scope, basemap, lang, tianditu_key, prefix)
    grids = store.query("grids", Query(), scope=scope).with_geometry()
    shares = {int(r["id"]): r["toilets"][str(distance)]["existing_share"] for r in grid_rows}
    label = f"{distance}米内有公厕的住户比例" if zh else f"Households within {distance} m"
    entries = add_grid_choropleth(frame, grids, shares, name=label, fmt="{:.0%}")
    add_legend(frame, label, entries, position="bottomleft")
    toilets = store.query("toilets", Query(), scope=scope).with_geometry()
    xy = shapely.get_coordinates(toilets.geometries)
    areas = tl.catchments(store, xy[:, 0], xy[:, 1], distance)
    add_toilet_service_areas(
        frame,
        toilets,
        name=f"步行{distance}米服务范围" if zh else f"{distance} m walk",
        areas=np.asarray(areas, dtype=object),
    )
    add_layer(frame, toilets, name="公厕" if zh else "Toilets")
    acc = tl.access(store, count_scope, limit=distance)
    squares = tl.unserved_density(acc, distance, small_cells=small_cells)
    if squares:
        geoms = [g for g, _ in squares]
        props = [{"households": n, "_fill": _shade(n)} for _, n in squares]
        add_shapes(
            frame,
            geoms,
            props,
            name="未覆盖住户（密度）" if zh else "Unserved households (density)",
            style=lambda f: {
                "color": "#99000d",
                "weight": 0,
                "fillColor": f["properties"]["_fill"],
                "fillOpacity": 0.4,
            },
            tooltip=(["households"], ["未覆盖住户" if zh else "Unserved households"]),
        )
        add_legend(
            frame,
            "未覆盖住户（每格）" if zh else "Unserved per square",
            [
                (c, f"{lo}+" if hi is None else f"{lo}–{hi}")
                for c, (lo, hi) in zip(BAND_COLOUR, tl.BANDS, strict=True)
            ],
        )
    if sites:
        _add_sites(frame, store, sites, distance, zh)
    add_legend(
        frame,
        "公厕" if zh else "Toilets",
        [
            ("#2166ac", "现状" if zh else "existing"),
            ("#f46d43", "规划、在建" if zh else "planned, under construction"),
            *([(SITE_COLOUR, "建议新建" if zh else "proposed")] if sites else []),
        ],
        position="topleft",
    )
    folium.LayerControl(collapsed=False).add_to(frame.map)
    add_title(frame, "公厕服务覆盖与选址" if zh else "Toilet access and siting")
    return frame.map


def _add_sites(
    frame: Any, store: Store, sites: Sequence[Mapping[str, Any]], distance: int, zh: bool
) -> None:
    """The chosen sites: numbered marks and their walking catchments."""
    pts = [shapely.Point(s["lon"], s["lat"]) for s in sites]
    props = [
        {
            "name": (f"选址{s['rank']}" if zh else f"Site {s['rank']}"),
            "gain": s["gain"],
        }
        for s in sites
    ]
    areas = tl.catchments(store, [p.x for p in pts], [p.y for p in pts], distance)
    add_shapes(
        frame,
        areas,
        props,
        name="选址服务范围" if zh else "Proposed sites' catchments",
        style=lambda f: {"color": SITE_COLOUR, "weight": 2, "dashArray": "6 4", "fillOpacity": 0.1},
        tooltip=(
            ["name", "gain"],
            ["选址" if zh else "Site", "新增覆盖住户" if zh else "Newly served"],
        ),
    )
    add_shapes(
        frame,
        pts,
        props,
        name="建议新建公厕" if zh else "Proposed toilets",
        style=lambda f: {"color": "#ffffff", "weight": 2, "fillColor": SITE_COLOUR},
        marker=folium.CircleMarker(radius=10, fill=True, fill_opacity=1),
        tooltip=(
            ["name", "gain"],
            ["选址" if zh else "Site", "新增覆盖住户" if zh else "Newly served"],
        ),
    )
