"""Maps built from the library render with every layer and no external URL."""

from __future__ import annotations

import json
import re

from gridmap.maps import asset_dirs, overview_map
from gridmap.store import GeoPackageStore, Scope

ADMIN_LAYERS_ZH = {
    "底图 · 道路", "底图 · 楼栋", "治理单元 · 网格", "治理单元 · 社区", "治理单元 · 联合片区",
    "项目 · 老旧小区", "设施 · 公厕服务半径 300 米", "设施 · 公厕", "设施 · 服务阵地",
    "设施 · 监控视域", "设施 · 监控点位", "住户 · 住户",
}  # fmt: skip
ADMIN_LAYERS_EN = {
    "Base · Roads", "Base · Buildings", "Areas · Grid cells", "Areas · Communities",
    "Areas · Joint district zones", "Projects · Old neighbourhoods",
    "Facilities · Toilet service radius 300 m", "Facilities · Public toilets",
    "Facilities · Service facilities", "Facilities · Camera fields of view",
    "Facilities · Cameras", "Households · Households",
}  # fmt: skip
PUBLIC_LAYERS_ZH = {
    "治理单元 · 网格", "治理单元 · 社区", "治理单元 · 联合片区", "设施 · 公厕服务半径 300 米",
    "设施 · 公厕", "设施 · 服务阵地",
}  # fmt: skip


def layer_control_names(html: str) -> set[str]:
    """Names in the layer control (folium writes them as JSON string keys)."""
    block = html[html.index("_layers = {") : html.index("L.control.layers(")]
    return {json.loads(k) for k in re.findall(r'("(?:[^"\\]|\\.)*")\s*:\s*\w+,', block)}


def test_overview_has_every_layer_and_local_assets(sample_store: GeoPackageStore) -> None:
    html = overview_map(sample_store).get_root().render()
    names = layer_control_names(html)
    assert names == ADMIN_LAYERS_ZH
    assert "<title>中心路街道网格化管理总览</title>" in html
    urls = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert urls and all(u.startswith("/static/") for u in urls)
    for u in urls:
        package, name = u.removeprefix("/static/").split("/", 1)
        assert (asset_dirs()[package] / name).is_file()


def test_scope_hides_layers(sample_store: GeoPackageStore) -> None:
    public = Scope(layers=frozenset({"zones", "communities", "grids", "toilets", "facilities"}))
    html = overview_map(sample_store, scope=public).get_root().render()
    assert layer_control_names(html) == PUBLIC_LAYERS_ZH
    assert "markercluster" not in html  # no households
    assert "\\u5929\\u7f51" not in html and "天网" not in html  # no camera names
