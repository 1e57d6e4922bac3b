"""The front-end files the maps load, installed from PyPI packages and served by gridmap."""

from __future__ import annotations

from pathlib import Path

ASSET_PREFIX = "/static"
"""URL prefix under which the API serves :func:`asset_dirs`."""


def asset_dirs() -> dict[str, Path]:
    """Local directories of the front-end packages (XStatic packages from PyPI)."""
    import xstatic.pkg.jquery as jquery
    import xstatic.pkg.leaflet as leaflet
    import xstatic.pkg.leaflet_markercluster as markercluster

    return {
        "leaflet": Path(leaflet.BASE_DIR),
        "markercluster": Path(markercluster.BASE_DIR),
        "jquery": Path(jquery.BASE_DIR),
        "gridmap": Path(__file__).parent / "static",  # gridmap's own page scripts
    }


def leaflet_js(prefix: str = ASSET_PREFIX) -> list[tuple[str, str]]:
    """folium ``default_js``: the local Leaflet, and jQuery (folium's popups build with it)."""
    return [
        ("leaflet", f"{prefix}/leaflet/leaflet.js"),
        ("jquery", f"{prefix}/jquery/jquery.min.js"),
    ]


def leaflet_css(prefix: str = ASSET_PREFIX) -> list[tuple[str, str]]:
    """folium ``default_css`` pointing at the local Leaflet stylesheet."""
    return [("leaflet_css", f"{prefix}/leaflet/leaflet.css")]


def markercluster_js(prefix: str = ASSET_PREFIX) -> list[tuple[str, str]]:
    """Local Leaflet.markercluster script."""
    return [("markerclusterjs", f"{prefix}/markercluster/leaflet.markercluster.js")]


def markercluster_css(prefix: str = ASSET_PREFIX) -> list[tuple[str, str]]:
    """Local Leaflet.markercluster stylesheets."""
    return [
        ("markerclustercss", f"{prefix}/markercluster/MarkerCluster.css"),
        ("markerclusterdefaultcss", f"{prefix}/markercluster/MarkerCluster.Default.css"),
    ]
