"""The overview page served by the API: a shell whose layers the browser fetches.

The page holds the base map, the layer control, legends, tools and the measure picker;
each layer's features come from ``/map/layers/{key}`` (:mod:`gridmap.maps.layer_data`),
cached by that layer's change stamp. The shell itself changes only with the extent of
the areas and the campaigns on offer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import folium
import shapely

from gridmap.layers import FACILITY_KIND_ZH, RENOVATION_STATUS_ZH, get_layer
from gridmap.maps.assets import ASSET_PREFIX
from gridmap.maps.base import Lang
from gridmap.maps.elements import RemoteLayers
from gridmap.maps.layer_data import OVERVIEW, MapLayer
from gridmap.maps.layers import FACILITY_MARK, RENOVATION_COLOUR, title
from gridmap.maps.pages import GROUPS, MEASURES, campaign_measures, measure_of, overview_frame
from gridmap.maps.widgets import add_legend, add_measure_picker, add_title, add_tools
from gridmap.store.base import Scope, Store

SHELL_TABLES = ("grids", "zones", "gridmap_documents")
"""What the shell shows of the data: the extent it opens on and the campaigns offered."""
LAYERS_URL = "/map/layers"


def shell_layers(scope: Scope) -> list[MapLayer]:
    """The overview layers the scope may see, in drawing order."""
    return [m for m in OVERVIEW if scope.allows_layer(m.source)]


def overview_shell(
    store: Store,
    *,
    scope: Scope = Scope.ALL,
    lang: Lang = "zh",
    measure: str = "households",
    basemap: str = "none",
    coloured: bool = False,
    tianditu_key: str | None = None,
    prefix: str = ASSET_PREFIX,
    layers_url: str = LAYERS_URL,
) -> folium.Map:
    """The overview's page without its features: every layer the scope allows as an empty
    group the browser fills; ``coloured`` offers the measure picker (grid figures)."""
    zh_name, en_name, fmt = measure_of(store, measure, scope)
    zh = lang == "zh"
    frame, extent = overview_frame(store, scope, basemap, lang, tianditu_key, prefix)
    shown = shell_layers(scope)
    query = {"lang": lang, "basemap": basemap}
    if coloured:
        query["measure"] = measure
    specs: list[dict[str, Any]] = []
    groups = []
    for ml in shown:
        name = f"{GROUPS[lang][ml.group]} · {ml.name(lang)}"
        group = folium.FeatureGroup(name=name, show=ml.show)
        group.add_to(frame.map)
        groups.append(group)
        specs.append(
            {
                "key": ml.key,
                "url": f"{layers_url}/{ml.key}?{urlencode(query)}",
                "byView": ml.by_view,
            }
        )
    frame.map.add_child(RemoteLayers(specs, groups, prefix=prefix))
    keys = {m.key for m in shown}
    if "old_neighbourhoods" in keys:
        add_legend(
            frame,
            "老旧小区改造" if zh else "Renovation",
            [
                (RENOVATION_COLOUR[k], v if zh else k.replace("_", " "))
                for k, v in RENOVATION_STATUS_ZH.items()
            ],
        )
    if "facilities" in keys:
        add_legend(
            frame,
            title(get_layer("facilities"), lang),
            [
                (c, f"{m} {FACILITY_KIND_ZH[k] if zh else k.replace('_', ' ')}")
                for k, (m, c) in FACILITY_MARK.items()
            ],
        )
    if extent:
        corners = frame.to_display([shapely.box(*extent)])[0].bounds
        frame.map.fit_bounds([[corners[1], corners[0]], [corners[3], corners[2]]])
    add_tools(frame, [])
    if coloured:
        offered = {**MEASURES, **campaign_measures(store, scope)}
        offered.setdefault(measure, (zh_name, en_name, fmt))
        add_measure_picker(frame, measure, {k: (v[0] if zh else v[1]) for k, v in offered.items()})
    folium.LayerControl(collapsed=False).add_to(frame.map)
    add_title(frame, "中心路街道网格化管理总览" if zh else "Zhongxinlu subdistrict overview")
    return frame.map
