"""The grid balance map (网格调整): grids coloured by how their households stand against the
target today, the proposed new boundaries over them, and the buildings that would move."""

from __future__ import annotations

import folium
import numpy as np

from gridmap.analysis import balance as bl
from gridmap.crs import from_metric
from gridmap.maps.assets import ASSET_PREFIX
from gridmap.maps.base import Lang
from gridmap.maps.layers import add_shapes
from gridmap.maps.pages import overview_frame
from gridmap.maps.widgets import add_legend, add_title
from gridmap.store.base import Query, Scope, Store

FLAG_COLOUR = {"under": "#92c5de", "ok": "#a6dba0", "over": "#f4a582"}
MOVED = "#762a83"


def balance_map(
    store: Store,
    p: bl.Plan,
    summary: dict[str, object],
    *,
    lang: Lang = "zh",
    basemap: str = "none",
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> folium.Map:
    """Before (grids by flag, with their counts) and after (new boundaries dashed, with the
    new counts), and the moved buildings; ``summary`` is :func:`balance.describe`'s."""
    zh = lang == "zh"
    frame, _ = overview_frame(store, Scope.ALL, basemap, lang, tianditu_key, prefix)
    rows = {int(r["id"]): r for r in summary["grids"]}  # type: ignore[attr-defined]
    ids = sorted(p.shapes)
    before = from_metric(np.asarray([p.shapes[g] for g in ids], dtype=object))
    label = {"under": "偏少", "ok": "适中", "over": "偏多"} if zh else {}
    props = [
        {
            "name": rows[g]["name"],
            "before": rows[g]["before"],
            "after": rows[g]["after"],
            "flag": label.get(rows[g]["flag_before"], rows[g]["flag_before"]),
            "_fill": FLAG_COLOUR[rows[g]["flag_before"]],
        }
        for g in ids
    ]
    names = ["网格", "现有户数", "调整后户数"] if zh else ["Grid", "Households now", "After"]
    add_shapes(
        frame,
        before,
        props,
        name="现状网格" if zh else "Grids now",
        style=lambda f: {
            "color": "#1b7837",
            "weight": 1,
            "fillColor": f["properties"]["_fill"],
            "fillOpacity": 0.6,
        },
        tooltip=(["name", "before", "after"], names),
    )
    changed = sorted(p.after_shapes)
    if changed:
        add_shapes(
            frame,
            from_metric(np.asarray([p.after_shapes[g] for g in changed], dtype=object)),
            [{"name": rows[g]["name"], "after": rows[g]["after"]} for g in changed],
            name="调整后边界" if zh else "Proposed boundaries",
            style=lambda f: {"color": "#000000", "weight": 3, "dashArray": "8 5", "fill": False},
            tooltip=(["name", "after"], [names[0], names[2]]),
        )
    moved = {m.building for m in p.moves}
    if moved:
        b = store.query("buildings", Query(ids=sorted(moved))).with_geometry()
        to = {m.building: rows[m.target]["name"] for m in p.moves}
        add_shapes(
            frame,
            b.geometries,
            [
                {"address": q.get("address"), "to": to[int(i)]}
                for i, q in zip(b.ids, b.properties, strict=True)
            ],
            name="调整楼栋" if zh else "Buildings that move",
            style=lambda f: {"color": MOVED, "weight": 2, "fillColor": MOVED, "fillOpacity": 0.9},
            tooltip=(["address", "to"], ["楼栋", "调入网格"] if zh else ["Building", "Moves to"]),
        )
    lo, hi = p.lo, p.hi
    add_legend(
        frame,
        f"网格户数（目标{lo}–{hi}户）" if zh else f"Households per grid (target {lo}–{hi})",
        [
            (FLAG_COLOUR["under"], f"少于{lo}户" if zh else f"under {lo}"),
            (FLAG_COLOUR["ok"], f"{lo}–{hi}户" if zh else f"{lo}–{hi}"),
            (FLAG_COLOUR["over"], f"多于{hi}户" if zh else f"over {hi}"),
            (MOVED, "调整楼栋" if zh else "buildings that move"),
        ],
    )
    folium.LayerControl(collapsed=False).add_to(frame.map)
    add_title(frame, "网格户数均衡调整" if zh else "Grid balance")
    return frame.map
