"""The renovation map (老旧小区改造): old neighbourhoods coloured by their status on a chosen
day, with a month slider, their buildings, and popups with the figures and the reasons they
rank where they do."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import folium

from gridmap.analysis import renovation as rn
from gridmap.layers import RENOVATION_STATUS, RENOVATION_STATUS_ZH
from gridmap.maps.assets import ASSET_PREFIX
from gridmap.maps.base import Lang, base_map
from gridmap.maps.layers import RENOVATION_COLOUR, add_shapes
from gridmap.maps.widgets import add_legend, add_month_slider, add_page_css, add_title
from gridmap.store.base import Query, Scope, Store

UNKNOWN = "#bdbdbd"


def _months(found: Sequence[rn.Profile], store: Store, day: dt.date) -> list[str]:
    """First days of the months around the works and events: from six before the earliest
    date to six after the latest, at most ten years either side of ``day`` (dates outside
    1950–2100, which no renovation has, are left out)."""
    dates = [d for p in found for d in (p.planned_start, p.planned_end) if d]
    dates += [e["on"] for e in rn.events(store)]
    seen = [day]
    for d in dates:
        try:
            when = dt.date.fromisoformat(str(d))
        except ValueError:
            continue
        if rn.EARLIEST <= when <= rn.LATEST:
            seen.append(when)
    lo = max(min(seen), day - dt.timedelta(days=3653)) - dt.timedelta(days=183)
    hi = min(max(seen), day + dt.timedelta(days=3653)) + dt.timedelta(days=183)
    out: list[str] = []
    y, m = lo.year, lo.month
    while dt.date(y, m, 1) <= hi:
        out.append(dt.date(y, m, 1).isoformat())
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def renovation_map(
    store: Store,
    found: Sequence[rn.Profile],
    *,
    scope: Scope = Scope.ALL,
    day: dt.date,
    ranking: Sequence[dict[str, Any]],
    lang: Lang = "zh",
    basemap: str = "none",
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> folium.Map:
    """The page for ``day``; ``found`` are the neighbourhoods' profiles as the caller may
    see them, ``ranking`` the "renovate next" rows."""
    zh = lang == "zh"
    hoods = store.query("old_neighbourhoods", Query()).with_geometry()
    extent = store.extent("old_neighbourhoods") or store.extent("grids")
    centre = ((extent[1] + extent[3]) / 2, (extent[0] + extent[2]) / 2) if extent else None
    frame = base_map(
        location=centre or (34.8096, 113.2919),
        zoom=15,
        basemap=basemap,
        lang=lang,
        tianditu_key=tianditu_key,
        prefix=prefix,
    )
    add_page_css(frame)
    status = rn.status_on(store, list(found), day)
    by_id = {p.id: p for p in found}
    ranks = {r["id"]: r for r in ranking}

    def label(s: str | None) -> str:
        if s is None:
            return "尚无记录" if zh else "no record yet"
        return RENOVATION_STATUS_ZH[s] if zh else s.replace("_", " ")

    props = []
    for fid in hoods.ids.tolist():
        p = by_id[int(fid)]
        r = ranks.get(p.id)
        props.append(
            {
                "name": p.name,
                "status": label(status.get(p.id)),
                "built_year": p.built_year,
                "households": p.households,
                "hardship": p.hardship,
                "elderly": p.elderly,
                "works": list(p.works),
                "rank": "" if r is None else f"{r['rank']}：{'，'.join(r['reasons'])}",
                "_fill": RENOVATION_COLOUR.get(status.get(p.id) or "", UNKNOWN),
            }
        )
    fields = ["name", "status", "built_year", "households", "hardship", "elderly", "works", "rank"]
    names = (
        ["小区", "状态", "建成年份", "住户", "困难户", "独居老人", "改造内容", "改造排序"]
        if zh
        else ["Name", "Status", "Built", "Households", "Hardship", "Elderly alone", "Works", "Rank"]
    )
    add_shapes(
        frame,
        hoods.geometries,
        props,
        name="老旧小区" if zh else "Old neighbourhoods",
        style=lambda f: {
            "color": "#67001f",
            "weight": 2,
            "fillColor": f["properties"]["_fill"],
            "fillOpacity": 0.75,
        },
        tooltip=(fields[:2], names[:2]),
        popup=(fields, names),
    )
    buildings = store.query("buildings", Query(), scope=scope).with_geometry()
    keep = [k for k, p in enumerate(buildings.properties) if p.get("neighbourhood_id") in by_id]
    add_shapes(
        frame,
        buildings.geometries[keep],
        [{"address": buildings.properties[k].get("address")} for k in keep],
        name="涉及楼栋" if zh else "Buildings",
        style=lambda f: {"color": "#333333", "weight": 1, "fillOpacity": 0.1},
        tooltip=(["address"], ["地址" if zh else "Address"]),
    )
    add_legend(
        frame,
        f"{day.isoformat()} 改造状态" if zh else f"Status on {day.isoformat()}",
        [(RENOVATION_COLOUR[s], label(s)) for s in RENOVATION_STATUS] + [(UNKNOWN, label(None))],
    )
    add_month_slider(
        frame,
        day.replace(day=1).isoformat(),
        _months(found, store, day),
        "月份" if zh else "Month",
    )
    folium.LayerControl(collapsed=False).add_to(frame.map)
    add_title(frame, "老旧小区改造进度" if zh else "Old neighbourhood renovation")
    return frame.map
