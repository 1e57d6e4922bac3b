"""The camera coverage map (天网覆盖): grids by the share of road length seen, each online
camera's view cut by buildings, the blind road pieces with most households along them and,
when asked, proposed new cameras with their views. For roles that may see cameras only."""

from __future__ import annotations

import folium
import numpy as np
import shapely

from gridmap.analysis import cameras as cm
from gridmap.crs import from_metric
from gridmap.maps.assets import ASSET_PREFIX
from gridmap.maps.base import Lang
from gridmap.maps.layers import add_grid_choropleth, add_shapes
from gridmap.maps.pages import overview_frame
from gridmap.maps.widgets import add_legend, add_title
from gridmap.store.base import Query, Scope, Store

BLIND_COLOUR = "#d7301f"
VIEW_COLOUR = "#2166ac"
NEW_COLOUR = "#1a9850"


def camera_map(
    store: Store,
    cov: cm.Coverage,
    *,
    scope: Scope,
    blind: int = 200,
    proposal: cm.Proposal | None = None,
    lang: Lang = "zh",
    basemap: str = "none",
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
) -> folium.Map:
    """The page: ``cov`` from :func:`gridmap.analysis.cameras.coverage`, the ``blind``
    pieces with most households along them, and ``proposal``'s exact sites if given."""
    zh = lang == "zh"
    frame, _ = overview_frame(store, scope, basemap, lang, tianditu_key, prefix)
    grids = store.query("grids", Query(), scope=scope).with_geometry()
    shares = {int(r["grid_id"]): r["road_seen_share"] for r in cm.per_grid_shares(cov)}
    label = "道路监控覆盖率" if zh else "Road length seen"
    add_legend(frame, label, add_grid_choropleth(frame, grids, shares, name=label, fmt="{:.0%}"))
    if cov.cameras.views:
        add_shapes(
            frame,
            from_metric(np.asarray(cov.cameras.views, dtype=object)),
            [{"camera_id": int(i)} for i in cov.cameras.ids],
            name="监控视域（遮挡后）" if zh else "Camera views (line of sight)",
            style=lambda f: {"color": VIEW_COLOUR, "weight": 1, "fillOpacity": 0.25},
        )
    order = np.argsort(-cov.blind_households, kind="stable")[:blind]
    if len(order):
        add_shapes(
            frame,
            from_metric(cov.blind[order]),
            [
                {"households": int(cov.blind_households[i]), "length_m": round(cov.blind[i].length)}
                for i in order
            ],
            name="监控盲区路段" if zh else "Blind road pieces",
            style=lambda f: {"color": BLIND_COLOUR, "weight": 5, "opacity": 0.9},
            tooltip=(
                ["households", "length_m"],
                ["沿线住户", "长度（米）"] if zh else ["Households along", "Length (m)"],
            ),
        )
    if proposal is not None and proposal.exact.chosen:
        chosen = proposal.exact.chosen
        props = [
            {"name": f"新增点位{n}" if zh else f"New camera {n}", "gain": round(g)}
            for n, g in enumerate(proposal.exact.gains, start=1)
        ]
        add_shapes(
            frame,
            [proposal.views[i] for i in chosen],
            props,
            name="建议新增监控视域" if zh else "Proposed cameras' views",
            style=lambda f: {
                "color": NEW_COLOUR,
                "weight": 2,
                "dashArray": "6 4",
                "fillOpacity": 0.15,
            },
        )
        add_shapes(
            frame,
            [shapely.Point(proposal.lon[i], proposal.lat[i]) for i in chosen],
            props,
            name="建议新增监控" if zh else "Proposed cameras",
            style=lambda f: {"color": "#ffffff", "weight": 2, "fillColor": NEW_COLOUR},
            marker=folium.CircleMarker(radius=9, fill=True, fill_opacity=1),
            tooltip=(
                ["name", "gain"],
                ["点位", "新增覆盖住户"] if zh else ["Camera", "Newly seen"],
            ),
        )
    add_legend(
        frame,
        "天网" if zh else "Cameras",
        [
            (VIEW_COLOUR, "现有视域" if zh else "views"),
            (BLIND_COLOUR, "盲区路段" if zh else "blind road"),
            *([(NEW_COLOUR, "建议新增" if zh else "proposed")] if proposal is not None else []),
        ],
        position="topleft",
    )
    folium.LayerControl(collapsed=False).add_to(frame.map)
    add_title(frame, "天网监控覆盖与盲区" if zh else "Camera coverage and blind spots")
    return frame.map
