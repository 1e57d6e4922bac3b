"""A visit plan's page (走访路线图): the routes, numbered stops and a printable run sheet."""

from __future__ import annotations

from typing import Any

import folium
import shapely

from gridmap import campaigns as camp
from gridmap.escape import html_text
from gridmap.layers import HOUSEHOLD_TAG_ZH, VISIT_STATUS_ZH, get_layer
from gridmap.maps.assets import ASSET_PREFIX
from gridmap.maps.base import Lang, MapFrame, base_map
from gridmap.maps.elements import Control, Popup, Sheet, Tooltip
from gridmap.maps.layers import add_layer, title
from gridmap.maps.widgets import add_legend, add_page_css, add_title
from gridmap.plan_output import MARKED_TAGS, details, stop_label, when
from gridmap.store.base import Query, Scope, Store

ROUTE_COLOURS = ("#d7301f", "#2171b5", "#238b45", "#6a51a3", "#ec7014", "#01665e")
"""One colour per route (cycled)."""

REASON_ZH = {
    "unreachable": "无法步行到达（无位置或不通路）",
    "outside_shift": "计划期内无工作班次",
    "time_window": "可走访时段内到不了",
    "capacity": "本计划人手时间不足，留待下次",
}
"""Why a household was left out of a plan, in Chinese."""

SHIFT_ZH = {"day": "白天", "evening": "晚间"}

PLAN_CSS = """<style>
.gm-stop { width: 22px; height: 22px; line-height: 20px; border-radius: 50%; color: #fff;
  font: bold 12px sans-serif; text-align: center; border: 2px solid #fff;
  box-shadow: 0 0 2px #333; box-sizing: border-box; }
.gm-stop.gm-must { border-radius: 3px; }
.gm-stop.gm-care { border: 3px solid #000; line-height: 16px; }
.gm-sheet { font: 13px "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; padding: 8px 12px; }
.gm-sheet h2 { font-size: 16px; margin: 4px 0; }
.gm-sheet h3 { font-size: 14px; margin: 12px 0 4px; }
.gm-sheet table { border-collapse: collapse; width: 100%; }
.gm-sheet th, .gm-sheet td { border: 1px solid #999; padding: 2px 5px; vertical-align: top;
  text-align: left; }
.gm-sheet td.gm-blank { width: 18%; }
.gm-care-text { font-weight: bold; }
@media print { .leaflet-control-layers, .leaflet-control-zoom { display: none; }
  .folium-map { height: 120mm !important; } .gm-sheet h3 { page-break-after: avoid; }
  .gm-sheet tr { page-break-inside: avoid; } }
</style>"""


def plan_sheet(
    store: Store,
    doc: dict[str, Any],
    *,
    scope: Scope = Scope.ALL,
    lang: Lang = "zh",
    basemap: str = "none",
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> folium.Map:
    """A stored plan as a map (routes, numbered stops, households needing care marked) with
    the run sheet under it: stops in order with arrival times and who lives there.

    Households are read through ``scope`` (audited, masked as the caller sees them).
    """
    zh = lang == "zh"
    b = doc["body"]
    people, addresses, standing = details(store, doc, scope)
    c = camp.get(store, b["campaign_id"])
    lon, lat = b["start"]
    frame = base_map(
        location=(lat, lon),
        zoom=17,
        basemap=basemap,
        lang=lang,
        tianditu_key=tianditu_key,
        prefix=prefix,
    )
    frame.map.height = (62.0, "%")
    add_page_css(frame)
    frame.map.get_root().header.add_child(folium.Element(PLAN_CSS), name="gm_plan_css")
    grid_name = _context(frame, store, doc, scope)
    bounds: list[tuple[float, float]] = [(lon, lat)]
    for k, r in enumerate(b["routes"], start=1):
        colour = ROUTE_COLOURS[(k - 1) % len(ROUTE_COLOURS)]
        _add_route(frame, doc, k, r, colour)
        group = folium.FeatureGroup(
            name=(f"路线{k} 站点" if zh else f"Route {k} stops"), control=True
        )
        for n, s in enumerate(r["stops"], start=1):
            _add_stop(frame, group, doc, (k, n), s, colour, addresses, people, standing)
            bounds.append((s["lon"], s["lat"]))
        group.add_to(frame.map)
        bounds += [tuple(p) for p in r["line"]]
    start = frame.to_display([shapely.Point(lon, lat)])[0]
    folium.CircleMarker(
        [start.y, start.x], radius=7, color="#000", weight=2, fill=True, fill_color="#ffd92f"
    ).add_child(Tooltip("出发点" if zh else "Start")).add_to(frame.map)
    box = frame.to_display([shapely.MultiPoint(bounds).envelope])[0].bounds
    frame.map.fit_bounds([[box[1], box[0]], [box[3], box[2]]], padding=(20, 20))
    _add_legend(frame, len(b["routes"]))
    heading = _heading(doc, c, grid_name, lang)
    frame.map.add_child(Control(heading, position="topright", css="gm-sheet-head"))
    frame.map.add_child(
        Sheet(heading + _run_sheet(doc, addresses, people, standing, lang), css="gm-sheet")
    )
    folium.LayerControl(collapsed=True).add_to(frame.map)
    add_title(frame, f"走访路线图 · {grid_name} · {b['date']}" if zh else f"Visit plan {doc['id']}")
    return frame.map


def _context(frame: MapFrame, store: Store, doc: dict[str, Any], scope: Scope) -> str:
    """The grid's boundary, its buildings and the roads around; returns the grid's name."""
    lang = frame.lang
    grid_id = doc["grid_id"]
    name = f"网格{grid_id}"
    if scope.allows_layer("grids"):
        grids = store.query("grids", Query(ids=[grid_id]), scope=scope).with_geometry()
        if len(grids):
            name = str(grids.properties[0].get("name") or name)
            add_layer(
                frame,
                grids,
                name=title(grids.layer, lang),
                style={"weight": 3, "fillOpacity": 0.03},
            )
            near = shapely.buffer(grids.geometries[0], 0.004)
            if scope.allows_layer("roads"):
                roads = store.query("roads", Query(bbox=near.bounds), scope=scope)
                add_layer(frame, roads.with_geometry(), name=title(get_layer("roads"), lang))
    if scope.allows_layer("buildings"):
        bs = store.query("buildings", Query(equals={"grid_id": grid_id}), scope=scope)
        add_layer(frame, bs.with_geometry(), name=title(bs.layer, lang))
    return name


def _add_route(
    frame: MapFrame, doc: dict[str, Any], k: int, r: dict[str, Any], colour: str
) -> None:
    zh = frame.lang == "zh"
    line = frame.to_display([shapely.LineString(r["line"])])[0] if len(r["line"]) > 1 else None
    if line is None:
        return
    text = html_text(
        f"路线{k} · {SHIFT_ZH.get(r['shift'], r['shift'])} · 网格员{r['worker']} · "
        f"{when(doc, r['depart'])}–{when(doc, r['back'])[-5:]} · {r['distance_m'] / 1000:.1f} 公里"
        if zh
        else f"Route {k} · {r['shift']} · worker {r['worker']} · "
        f"{when(doc, r['depart'])}–{when(doc, r['back'])[-5:]} · {r['distance_m'] / 1000:.1f} km"
    )
    poly = folium.PolyLine(
        [[y, x] for x, y in shapely.get_coordinates(line).tolist()],
        color=colour,
        weight=4,
        opacity=0.8,
    )
    poly.add_child(Tooltip(text))
    poly.add_to(frame.map)


def _marks(people: dict[int, dict[str, Any]], households: list[int]) -> dict[str, int]:
    """How many of the households carry each tag that needs care at the door."""
    out: dict[str, int] = {}
    for h in households:
        for t in (people.get(h) or {}).get("tags") or ():
            if t in MARKED_TAGS:
                out[t] = out.get(t, 0) + 1
    return out


def _marks_text(marks: dict[str, int], zh: bool) -> str:
    return "、".join(
        f"{HOUSEHOLD_TAG_ZH[t] if zh else t.replace('_', ' ')}{n}" for t, n in marks.items()
    )


def _add_stop(
    frame: MapFrame,
    group: folium.FeatureGroup,
    doc: dict[str, Any],
    kn: tuple[int, int],
    s: dict[str, Any],
    colour: str,
    addresses: dict[int, str],
    people: dict[int, dict[str, Any]],
    standing: dict[int, camp.Standing],
) -> None:
    zh = frame.lang == "zh"
    k, n = kn
    marks = _marks(people, s["households"])
    css = "gm-stop" + (" gm-must" if s["must"] else "") + (" gm-care" if marks else "")
    pt = frame.to_display([shapely.Point(s["lon"], s["lat"])])[0]
    marker = folium.Marker(
        [pt.y, pt.x],
        icon=folium.DivIcon(
            html=f'<div class="{css}" style="background:{colour}">{n}</div>',
            icon_size=(22, 22),
            icon_anchor=(11, 11),
            class_name="gm-stop-icon",
        ),
    )
    label = stop_label(s, addresses)
    arrival = when(doc, s["arrival"])[-5:]
    tip = (
        f"{k}-{n} {label} · {arrival} 到 · {len(s['households'])}户"
        if zh
        else f"{k}-{n} {label} · arrive {arrival} · {len(s['households'])} households"
    )
    if marks:
        tip += " · " + _marks_text(marks, zh)
    marker.add_child(Tooltip(html_text(tip)))
    marker.add_child(Popup(_households_table(s["households"], people, standing, zh)))
    marker.add_to(group)


def _households_table(
    households: list[int],
    people: dict[int, dict[str, Any]],
    standing: dict[int, camp.Standing],
    zh: bool,
    *,
    blank: bool = False,
) -> str:
    """The households of a stop: room, head (as the scope shows it), care marks, standing."""
    head = ("门牌", "户主", "关注", "本次结果") if zh else ("Room", "Head", "Care", "So far")
    rows = []
    for h in households:
        p = people.get(h) or {}
        st = standing.get(h)
        marks = [t for t in MARKED_TAGS if t in (p.get("tags") or ())]
        care = "、".join(HOUSEHOLD_TAG_ZH[t] if zh else t for t in marks)
        so_far = (VISIT_STATUS_ZH.get(st.outcome, st.outcome) if zh else st.outcome) if st else ""
        rows.append(
            f"<tr><td>{html_text(p.get('room') or f'#{h}')}</td>"
            f"<td>{html_text(p.get('head_name'))}</td>"
            f'<td class="gm-care-text">{html_text(care)}</td><td>{html_text(so_far)}</td>'
            + ('<td class="gm-blank"></td>' if blank else "")
            + "</tr>"
        )
    extra = f"<th>{'走访结果' if zh else 'Result'}</th>" if blank else ""
    ths = "".join(f"<th>{x}</th>" for x in head)
    return f"<table><tr>{ths}{extra}</tr>{''.join(rows)}</table>"


def _heading(doc: dict[str, Any], c: camp.Campaign, grid_name: str, lang: Lang) -> str:
    """The plan's title and figures (campaign, grid, days, households planned)."""
    b = doc["body"]
    planned = sum(len(s["households"]) for r in b["routes"] for s in r["stops"])
    km = sum(r["distance_m"] for r in b["routes"]) / 1000
    if lang == "zh":
        lines = [
            f"<h4>{html_text(c.name)}</h4>",
            f"<div>{html_text(grid_name)} · {b['date']} 起 {b['days']} 天 · "
            f"{b['workers']} 名网格员</div>",
            f"<div>计划走访 {planned} 户（待访 {b['households_open']} 户），"
            f"{len(b['routes'])} 条路线，步行 {km:.1f} 公里</div>",
        ]
        if b.get("note"):
            lines.append(f"<div>注意：{html_text(b['note'])}</div>")
    else:
        lines = [
            f"<h4>{html_text(c.name)}</h4>",
            f"<div>{html_text(grid_name)} · from {b['date']}, {b['days']} day(s) · "
            f"{b['workers']} worker(s)</div>",
            f"<div>{planned} households planned of {b['households_open']} open, "
            f"{len(b['routes'])} route(s), {km:.1f} km on foot</div>",
        ]
        if b.get("note"):
            lines.append(f"<div>Note: {html_text(b['note'])}</div>")
    return "".join(lines)


def _run_sheet(
    doc: dict[str, Any],
    addresses: dict[int, str],
    people: dict[int, dict[str, Any]],
    standing: dict[int, camp.Standing],
    lang: Lang,
) -> str:
    """Every route's stops in order with arrival times and households, then who was left out."""
    zh = lang == "zh"
    parts = []
    for k, r in enumerate(doc["body"]["routes"], start=1):
        head = (
            f"路线{k} · {SHIFT_ZH.get(r['shift'], r['shift'])} · 网格员{r['worker']} · "
            f"{when(doc, r['depart'])} 出发，{when(doc, r['back'])[-5:]} 返回 · "
            f"{r['distance_m'] / 1000:.1f} 公里"
            if zh
            else f"Route {k} · {r['shift']} · worker {r['worker']} · leave "
            f"{when(doc, r['depart'])}, back {when(doc, r['back'])[-5:]} · "
            f"{r['distance_m'] / 1000:.1f} km"
        )
        cols = (
            ("站", "到达", "楼栋单元", "住户")
            if zh
            else ("Stop", "Arrive", "Entrance", "Households")
        )
        rows = "".join(
            f"<tr><td>{n}{'（必访）' if s['must'] and zh else ' (must)' if s['must'] else ''}</td>"
            f"<td>{when(doc, s['arrival'])[-5:]}</td>"
            f"<td>{html_text(stop_label(s, addresses))}</td>"
            f"<td>{_households_table(s['households'], people, standing, zh, blank=True)}</td></tr>"
            for n, s in enumerate(r["stops"], start=1)
        )
        ths = "".join(f"<th>{x}</th>" for x in cols)
        parts.append(f"<h3>{html_text(head)}</h3><table><tr>{ths}</tr>{rows}</table>")
    left = doc["body"]["unassigned"]
    if left:
        counts: dict[str, int] = {}
        for u in left:
            counts[u["reason"] or ""] = counts.get(u["reason"] or "", 0) + 1
        items = "".join(
            f"<li>{html_text(REASON_ZH.get(why, why) if zh else why)}：{n}</li>"
            for why, n in counts.items()
        )
        parts.append(f"<h3>{'未排入本计划的住户' if zh else 'Left out'}</h3><ul>{items}</ul>")
    elif not doc["body"]["routes"]:
        parts.append(f"<p>{'没有待走访的住户。' if zh else 'No household left to visit.'}</p>")
    return "".join(parts)


def _add_legend(frame: MapFrame, n_routes: int) -> None:
    zh = frame.lang == "zh"
    entries = [
        (ROUTE_COLOURS[(k - 1) % len(ROUTE_COLOURS)], f"路线{k}" if zh else f"Route {k}")
        for k in range(1, n_routes + 1)
    ]
    entries.append(("#000000", "粗黑边：困难户/独居老人/残疾" if zh else "thick ring: needs care"))
    entries.append(("#ffffff", "方形：必访" if zh else "square: must visit"))
    add_legend(frame, "走访路线" if zh else "Routes", entries, position="bottomleft")
