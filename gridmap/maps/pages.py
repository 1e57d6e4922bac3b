"""The map pages: the overview of the subdistrict and one grid's sheet (网格作战图)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import folium
import numpy as np
import shapely

from gridmap import campaigns as camp
from gridmap.errors import FeatureNotFoundError
from gridmap.escape import html_text
from gridmap.layers import FACILITY_KIND_ZH, RENOVATION_STATUS_ZH, VISIT_STATUS_ZH, get_layer
from gridmap.maps.assets import ASSET_PREFIX
from gridmap.maps.base import Lang, MapFrame, base_map
from gridmap.maps.elements import Control, Tooltip
from gridmap.maps.layers import (
    FACILITY_MARK,
    RENOVATION_COLOUR,
    VISIT_COLOUR,
    add_camera_sectors,
    add_grid_choropleth,
    add_households,
    add_labels,
    add_layer,
    add_toilet_service_areas,
    title,
)
from gridmap.maps.widgets import (
    add_legend,
    add_measure_picker,
    add_page_css,
    add_title,
    add_tools,
)
from gridmap.store.base import Query, Scope, Store

MEASURES: dict[str, tuple[str, str, str]] = {
    "households": ("户数", "Households", "{:.0f}"),
    "visit_coverage": ("近30天走访率", "Visited in 30 days", "{:.0%}"),
    "hardship": ("困难户", "Hardship households", "{:.0f}"),
    "elderly_alone": ("独居老人", "Elderly living alone", "{:.0f}"),
}
"""Grid choropleth measures: id → (Chinese, English, number format)."""

GROUPS = {
    "zh": {
        "areas": "治理单元",
        "sites": "设施",
        "projects": "项目",
        "people": "住户",
        "base": "底图",
    },
    "en": {
        "areas": "Areas",
        "sites": "Facilities",
        "projects": "Projects",
        "people": "Households",
        "base": "Base",
    },
}


CAMPAIGN_MEASURES = 8
"""How many campaigns (the latest the caller may see) the measure picker offers."""


def campaign_measures(store: Store, scope: Scope) -> dict[str, tuple[str, str, str]]:
    """Measures of the latest campaigns the scope may see: ``campaign:{id}`` → its share
    of households done (the campaign's names are the labels)."""
    seen = [c for c in camp.all_campaigns(store) if camp.visible_to(c, scope)]
    return {
        f"campaign:{c.id}": (f"{c.name}·完成率", f"{c.name}: done", "{:.0%}")
        for c in seen[-CAMPAIGN_MEASURES:]
    }


def measure_of(store: Store, measure: str, scope: Scope) -> tuple[str, str, str]:
    """A measure's labels and format: a fixed one, or any campaign the scope may see (else
    FeatureNotFoundError); ValueError for what is neither."""
    if measure in MEASURES:
        return MEASURES[measure]
    kind, _, cid = measure.partition(":")
    if kind != "campaign" or not cid.isascii() or not cid.isdigit() or len(cid) > 15:
        msg = f"unknown measure {measure[:30]!r}; use one of {', '.join(MEASURES)} or campaign:ID"
        raise ValueError(msg)
    c = camp.get(store, int(cid))
    if not camp.visible_to(c, scope):
        raise FeatureNotFoundError(f"no campaign {cid}")
    return (f"{c.name}·完成率", f"{c.name}: done", "{:.0%}")


def _drawn(store: Store, layer_id: str, query: Query | None = None, *, scope: Scope) -> Any:
    """The features of a layer that can be drawn (see :meth:`FeatureSet.with_geometry`)."""
    return store.query(layer_id, query or Query(), scope=scope).with_geometry()


def _name(group: str, label: str, lang: Lang) -> str:
    return f"{GROUPS[lang][group]} · {label}"


def measure_values(rows: Sequence[Mapping[str, Any]], measure: str) -> dict[int, float | None]:
    """Per-grid numbers for a measure from household statistics rows ("<5" → None)."""

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) else None

    out: dict[int, float | None] = {}
    for r in rows:
        if measure.startswith("campaign:"):
            out[r["id"]] = num((r.get("campaign") or {}).get("coverage"))
        elif measure == "households":
            out[r["id"]] = num(r["households"])
        elif measure == "visit_coverage":
            out[r["id"]] = num(r.get("visit_coverage"))
        else:
            out[r["id"]] = num(r["tags"].get(measure))
    return out


def overview_frame(
    store: Store,
    scope: Scope,
    basemap: str,
    lang: Lang,
    tianditu_key: str | None,
    prefix: str,
) -> tuple[MapFrame, Any]:
    """The overview's base map centred on the areas the scope sees, and their extent."""
    extent = store.extent("grids", scope=scope) or store.extent("zones", scope=scope)
    centre = ((extent[1] + extent[3]) / 2, (extent[0] + extent[2]) / 2) if extent else None
    frame = base_map(
        location=centre or (34.8096, 113.2919),
        basemap=basemap,
        lang=lang,
        tianditu_key=tianditu_key,
        prefix=prefix,
    )
    add_page_css(frame)
    return frame, extent


def overview_map(
    store: Store,
    *,
    scope: Scope = Scope.ALL,
    lang: Lang = "zh",
    measure: str = "households",
    basemap: str = "none",
    grid_stats: Sequence[Mapping[str, Any]] | None = None,
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> folium.Map:
    """Every layer the scope allows, grouped, with legends, search and tools.

    ``grid_stats`` (rows of :func:`gridmap.queries.household_stats` per grid) colour the
    grids by ``measure``; without them grids are drawn plain.
    """
    zh_name, en_name, fmt = measure_of(store, measure, scope)
    zh = lang == "zh"
    frame, extent = overview_frame(store, Scope.ALL, basemap, lang, tianditu_key, prefix)
    allowed = scope.allows_layer
    search: list[tuple[str, str, float, float]] = []

    def remember(layer_id: str, fs: Any, field: str = "name") -> None:
        pts = frame.to_display(shapely.point_on_surface(fs.geometries))
        kind = title(get_layer(layer_id), lang)
        for pt, p in zip(pts, fs.properties, strict=True):
            if p.get(field):
                search.append((str(p[field]), kind, round(pt.y, 6), round(pt.x, 6)))

    if allowed("roads"):
        add_layer(
            frame,
            _drawn(store, "roads", scope=scope),
            name=_name("base", title(get_layer("roads"), lang), lang),
        )
    if allowed("buildings"):
        add_layer(
            frame,
            _drawn(store, "buildings", scope=scope),
            show=False,
            name=_name("base", title(get_layer("buildings"), lang), lang),
        )
    if allowed("grids"):
        grids = _drawn(store, "grids", scope=scope)
        remember("grids", grids)
        if grid_stats is not None:
            label = zh_name if zh else en_name
            entries = add_grid_choropleth(
                frame,
                grids,
                measure_values(grid_stats, measure),
                name=_name("areas", title(grids.layer, lang), lang),
                fmt=fmt,
            )
            add_legend(
                frame,
                f"{title(grids.layer, lang)}：{label}"
                if zh
                else f"{title(grids.layer, lang)}: {label}",
                entries,
            )
        else:
            add_layer(frame, grids, name=_name("areas", title(grids.layer, lang), lang))
        add_labels(frame, grids, field="name", name="grid labels", css_class="gm-label-small")
    for layer_id in ("communities", "zones"):
        if allowed(layer_id):
            fs = _drawn(store, layer_id, scope=scope)
            remember(layer_id, fs)
            add_layer(frame, fs, name=_name("areas", title(fs.layer, lang), lang))
            if layer_id == "communities":
                add_labels(frame, fs, field="name", name="community labels")
    if allowed("old_neighbourhoods"):
        fs = _drawn(store, "old_neighbourhoods", scope=scope)
        remember("old_neighbourhoods", fs)
        add_layer(frame, fs, name=_name("projects", title(fs.layer, lang), lang))
        add_legend(
            frame,
            "老旧小区改造" if zh else "Renovation",
            [
                (RENOVATION_COLOUR[k], v if zh else k.replace("_", " "))
                for k, v in RENOVATION_STATUS_ZH.items()
            ],
            position="bottomright",
        )
    if allowed("toilets"):
        fs = _drawn(store, "toilets", scope=scope)
        remember("toilets", fs)
        add_toilet_service_areas(
            frame,
            fs,
            name=_name(
                "sites", "公厕服务半径 300 米" if zh else "Toilet service radius 300 m", lang
            ),
        )
        add_layer(frame, fs, name=_name("sites", title(fs.layer, lang), lang))
    if allowed("facilities"):
        fs = _drawn(store, "facilities", scope=scope)
        remember("facilities", fs)
        add_layer(frame, fs, name=_name("sites", title(fs.layer, lang), lang))
        add_legend(
            frame,
            title(fs.layer, lang),
            [
                (c, f"{m} {FACILITY_KIND_ZH[k] if zh else k.replace('_', ' ')}")
                for k, (m, c) in FACILITY_MARK.items()
            ],
            position="bottomright",
        )
    if allowed("cameras"):
        fs = _drawn(store, "cameras", scope=scope)
        add_camera_sectors(
            frame, fs, name=_name("sites", "监控视域" if zh else "Camera fields of view", lang)
        )
        add_layer(frame, fs, show=False, name=_name("sites", title(fs.layer, lang), lang))
    if allowed("households"):
        fs = _drawn(store, "households", scope=scope)
        add_households(frame, fs, name=_name("people", title(fs.layer, lang), lang), prefix=prefix)
    if extent:
        corners = frame.to_display([shapely.box(*extent)])[0].bounds
        frame.map.fit_bounds([[corners[1], corners[0]], [corners[3], corners[2]]])
    add_tools(frame, search)
    if grid_stats is not None:
        offered = {**MEASURES, **campaign_measures(store, scope)}
        offered.setdefault(measure, (zh_name, en_name, fmt))
        add_measure_picker(frame, measure, {k: (v[0] if zh else v[1]) for k, v in offered.items()})
    folium.LayerControl(collapsed=False).add_to(frame.map)
    add_title(frame, "中心路街道网格化管理总览" if zh else "Zhongxinlu subdistrict overview")
    return frame.map


def grid_sheet(
    store: Store,
    grid_id: int,
    *,
    scope: Scope = Scope.ALL,
    lang: Lang = "zh",
    basemap: str = "none",
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> folium.Map:
    """One grid for its worker (网格作战图): boundary, buildings, households by visit status
    and tags, nearby facilities and toilets, a header with the grid's figures; printable."""
    zh = lang == "zh"
    grid = store.get("grids", grid_id, scope=scope)  # FeatureNotFoundError outside the scope
    if grid.geometry is None or grid.geometry.is_empty:
        msg = f"grid {grid_id} has no geometry to draw; redraw it first"
        raise FeatureNotFoundError(msg)
    minx, miny, maxx, maxy = grid.geometry.bounds
    frame = base_map(
        location=((miny + maxy) / 2, (minx + maxx) / 2),
        zoom=17,
        basemap=basemap,
        lang=lang,
        tianditu_key=tianditu_key,
        prefix=prefix,
    )
    add_page_css(frame)
    grids = _drawn(store, "grids", Query(ids=[grid_id]), scope=scope)
    add_layer(
        frame,
        grids,
        name=_name("areas", title(grids.layer, lang), lang),
        style={"weight": 3, "fillOpacity": 0.05},
    )
    near = shapely.buffer(grid.geometry, 0.005)  # ≈ 450 m around the grid
    if scope.allows_layer("roads"):
        add_layer(
            frame,
            _drawn(store, "roads", Query(bbox=near.bounds), scope=scope),
            name=_name("base", title(get_layer("roads"), lang), lang),
        )
    buildings = None
    if scope.allows_layer("buildings"):
        buildings = _drawn(store, "buildings", Query(equals={"grid_id": grid_id}), scope=scope)
        add_layer(frame, buildings, name=_name("base", title(buildings.layer, lang), lang))
    for layer_id in ("toilets", "facilities"):
        if scope.allows_layer(layer_id):
            fs = _drawn(store, layer_id, Query(geometry=near), scope=scope)
            add_layer(frame, fs, name=_name("sites", title(fs.layer, lang), lang))
    visited = total = 0
    if scope.allows_layer("households"):
        hh = _drawn(store, "households", Query(equals={"grid_id": grid_id}), scope=scope)
        total = len(hh)
        visited = sum(1 for p in hh.properties if p.get("last_visit_status") == "visited")
        _add_households_by_status(frame, hh, buildings)
        add_legend(
            frame,
            "走访结果" if zh else "Last visit",
            [
                (VISIT_COLOUR[k], VISIT_STATUS_ZH[k] if zh else k.replace("_", " "))
                for k in ("visited", "not_home", "refused", "follow_up")
            ]
            + [(VISIT_COLOUR[None], "未走访" if zh else "not visited")],
        )
    p = {k: html_text(v) for k, v in grid.properties.items()}
    head = (
        f"<h4>{p['name']}（{p['code']}）</h4>"
        f"<div>网格员：{p['worker_name']} {p['worker_phone']}</div>"
        f"<div>住户：{total} 户，已走访 {visited} 户</div>"
        if zh
        else f"<h4>{p['name']} ({p['code']})</h4>"
        f"<div>Grid worker: {p['worker_name']} {p['worker_phone']}</div>"
        f"<div>Households: {total}, visited {visited}</div>"
    )
    frame.map.add_child(Control(head, position="topright", css="gm-sheet-head"))
    shown = frame.to_display([grid.geometry])[0].bounds
    frame.map.fit_bounds([[shown[1], shown[0]], [shown[3], shown[2]]])
    folium.LayerControl(collapsed=True).add_to(frame.map)
    name = grid.properties["name"]
    add_title(frame, f"网格作战图 · {name}" if zh else f"Grid sheet · {name}")
    return frame.map


def _spread(hh: Any, buildings: Any) -> Any:
    """Display positions: each building's households on a lattice inside its footprint.

    Households of one entrance share nearly one point; spread out, each can be seen and
    clicked. Households without a known building keep their own position.
    """
    if buildings is None or len(buildings) == 0:
        return hh.geometries
    boxes = {int(i): g.bounds for i, g in zip(buildings.ids, buildings.geometries, strict=True)}
    members: dict[int, list[int]] = {}
    for k, p in enumerate(hh.properties):
        if p.get("building_id") in boxes:
            members.setdefault(p["building_id"], []).append(k)
    out = hh.geometries.copy()
    for bid, idx in members.items():
        minx, miny, maxx, maxy = boxes[bid]
        n = len(idx)
        cols = max(1, int(np.ceil(np.sqrt(n * (maxx - minx) / max(maxy - miny, 1e-12)))))
        rows = int(np.ceil(n / cols))
        for j, k in enumerate(idx):
            r, c = divmod(j, cols)
            out[k] = shapely.Point(
                minx + (c + 0.5) * (maxx - minx) / cols, miny + (r + 0.5) * (maxy - miny) / rows
            )
    return out


def _add_households_by_status(frame: MapFrame, hh: Any, buildings: Any = None) -> None:
    """Households as dots coloured by last visit; a dark ring marks hardship or elderly alone."""
    zh = frame.lang == "zh"
    shown = frame.to_display(_spread(hh, buildings))
    group = folium.FeatureGroup(name=_name("people", title(hh.layer, frame.lang), frame.lang))
    for pt, p in zip(shown, hh.properties, strict=True):
        status = p.get("last_visit_status")
        tags = p.get("tags") if isinstance(p.get("tags"), list) else []
        ring = "#000000" if {"hardship", "elderly_alone"} & set(tags) else "#ffffff"
        text = html_text(
            f"{p.get('room') or ''} · "
            + (VISIT_STATUS_ZH.get(status, "未走访") if zh else (status or "not visited"))
        )
        dot = folium.CircleMarker(
            [pt.y, pt.x],
            radius=4,
            color=ring,
            weight=1.5,
            fill=True,
            fill_color=VISIT_COLOUR.get(status, VISIT_COLOUR[None]),
            fill_opacity=0.9,
        )
        dot.add_child(Tooltip(text))
        dot.add_to(group)
    group.add_to(frame.map)
