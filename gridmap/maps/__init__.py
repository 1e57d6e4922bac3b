"""Interactive maps (folium/Leaflet) drawn from the store, usable offline and from notebooks."""

from gridmap.maps.assets import ASSET_PREFIX, asset_dirs
from gridmap.maps.base import BASEMAPS, Basemap, MapFrame, base_map
from gridmap.maps.layers import (
    add_camera_sectors,
    add_grid_choropleth,
    add_households,
    add_labels,
    add_layer,
    add_toilet_service_areas,
)
from gridmap.maps.pages import MEASURES, grid_sheet, overview_map
from gridmap.maps.plan_page import plan_sheet
from gridmap.maps.render import Page, render_page
from gridmap.maps.widgets import add_legend, add_tools

__all__ = [
    "ASSET_PREFIX",
    "BASEMAPS",
    "MEASURES",
    "Basemap",
    "MapFrame",
    "Page",
    "add_camera_sectors",
    "add_grid_choropleth",
    "add_households",
    "add_labels",
    "add_layer",
    "add_legend",
    "add_toilet_service_areas",
    "add_tools",
    "asset_dirs",
    "base_map",
    "grid_sheet",
    "overview_map",
    "plan_sheet",
    "render_page",
]
