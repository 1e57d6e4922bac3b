"""Maps built from the library render with every layer and no external URL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import shapely

import gridmap.maps
from gridmap.maps import asset_dirs, overview_map
from gridmap.store import FeatureStore, Query, Scope, open_store

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


def test_overview_has_every_layer_and_local_assets(sample_store: FeatureStore) -> None:
    html = overview_map(sample_store).get_root().render()
    names = layer_control_names(html)
    assert names == ADMIN_LAYERS_ZH
    assert "<title>中心路街道网格化管理总览</title>" in html
    urls = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert urls and all(u.startswith("/static/") for u in urls)
    for u in urls:
        package, name = u.removeprefix("/static/").split("/", 1)
        assert (asset_dirs()[package] / name).is_file()


def test_scope_hides_layers(sample_store: FeatureStore) -> None:
    public = Scope(layers=frozenset({"zones", "communities", "grids", "toilets", "facilities"}))
    html = overview_map(sample_store, scope=public).get_root().render()
    assert layer_control_names(html) == PUBLIC_LAYERS_ZH
    assert "markercluster" not in html  # no households
    assert "\\u5929\\u7f51" not in html and "天网" not in html  # no camera names


def has_text(html: str, text: str) -> bool:
    """True if ``text`` is in the page, as is or as folium's JSON-escaped form."""
    return text in html or json.dumps(text)[1:-1] in html


def _points_in(html: str) -> list[tuple[float, float]]:
    """(lat, lon) of every circle marker folium wrote into a page."""
    return [
        (float(a), float(b))
        for a, b in re.findall(r"L\.circleMarker\(\s*\[([-0-9.]+),\s*([-0-9.]+)\]", html)
    ]


def test_grid_sheet_for_its_worker(client, auth, sample_store: FeatureStore) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/map/grids/1", headers=auth["grid_worker"])
    assert r.status_code == 200
    html = r.text
    grid = sample_store.get("grids", 1)
    n = sample_store.count("households", Query(equals={"grid_id": 1}))
    assert has_text(html, grid.properties["name"]) and has_text(html, f"住户：{n} 户")
    pts = _points_in(html)
    assert len(pts) == n  # one dot per household of the grid, none from elsewhere
    assert shapely.covered_by(
        shapely.points([(x, y) for y, x in pts]), grid.geometry.buffer(1e-9)
    ).all()
    assert "<title>网格作战图" in html and "@media print" in html
    # another grid's sheet shows what the public sees of it: no households
    other = client.get("/map/grids/2", headers=auth["grid_worker"])
    assert other.status_code == 200 and _points_in(other.text) == []
    en = client.get("/map/grids/1?lang=en", headers=auth["grid_worker"]).text
    assert has_text(en, "Households: ") and has_text(en, "Last visit")


def test_amap_basemap_shifts_overlays_to_gcj02(sample_store: FeatureStore) -> None:
    from gridmap.crs import wgs84_to_gcj02
    from gridmap.maps import overview_map

    toilets = sample_store.query("toilets")
    html = (
        overview_map(sample_store, scope=Scope(layers=frozenset({"toilets"})), basemap="amap")
        .get_root()
        .render()
    )
    drawn = {
        (round(x, 7), round(y, 7))
        for x, y in re.findall(r'"coordinates":\s*\[([-0-9.]+),\s*([-0-9.]+)\]', html)
        for x, y in [(float(x), float(y))]
    }
    gx, gy = wgs84_to_gcj02(shapely.get_x(toilets.geometries), shapely.get_y(toilets.geometries))
    for x, y in zip(gx, gy, strict=True):
        assert (round(float(x), 7), round(float(y), 7)) in drawn
    assert "autonavi.com" in html and "gmToWgs" in html  # tiles, and the read-out converts back


def _layer(client, key: str, headers: dict[str, str] | None = None, **params: object):  # type: ignore[no-untyped-def]
    r = client.get(f"/map/layers/{key}", params=params, headers=headers or {})
    assert r.status_code == 200, (key, r.text[:200])
    return r.json()


def test_choropleth_measures_and_legends(client, auth) -> None:  # type: ignore[no-untyped-def]
    html = client.get("/map?measure=hardship").text
    assert has_text(html, "老旧小区改造") and has_text(html, "矛盾纠纷调处化解工作室")
    assert _layer(client, "grids", measure="hardship")["gm"]["legend"]["title"] == "网格：困难户"
    en = _layer(client, "grids", measure="visit_coverage", lang="en")
    assert en["gm"]["legend"]["title"] == "Grid cells: Visited in 30 days"
    assert client.get("/map?measure=nonsense").status_code == 400
    assert client.get("/map/layers/grids?measure=nonsense").status_code == 400
    planner = client.get("/map?measure=hardship", headers=auth["planner"]).text
    assert not has_text(planner, "住户 · 住户")
    legend = _layer(client, "grids", auth["planner"], measure="hardship")["gm"]["legend"]
    assert legend["title"] == "网格：困难户"
    public = client.get("/map", headers={"Authorization": ""}).text
    assert has_text(public, "治理单元 · 网格") and "gm-measure" not in public
    grids = _layer(client, "grids", {"Authorization": ""}, measure="households")
    assert "legend" not in grids["gm"] and all(
        "value" not in f["properties"] for f in grids["features"]
    )


def test_a_campaign_colours_the_grids_by_its_share_done(client, auth) -> None:  # type: ignore[no-untyped-def]
    """The sample's autumn campaign (id 1) as a measure: each grid's share equals /stats's
    (itself checked against a direct count in test_campaigns), offered in the picker."""
    rows = client.get("/stats/grids?campaign=1").json()["areas"]
    want = {r["id"]: f"{r['campaign']['coverage']:.0%}" for r in rows}
    got = {
        f["id"]: f["properties"]["value"]
        for f in _layer(client, "grids", measure="campaign:1")["features"]
    }
    assert got == want and len(rows) == 40
    html = client.get("/map?measure=campaign:1").text
    assert has_text(html, "秋季常态化入户走访·完成率") and 'value=\\"campaign:1\\" selected' in html
    en = _layer(client, "grids", measure="campaign:1", lang="en")
    assert en["gm"]["legend"]["title"].endswith("done")
    # planners see it too (protected figures); an unknown campaign is 404, a bad id 400
    assert client.get("/map?measure=campaign:1", headers=auth["planner"]).status_code == 200
    assert client.get("/map?measure=campaign:999").status_code == 404
    assert client.get("/map/layers/grids?measure=campaign:999").status_code == 404
    assert client.get("/map?measure=campaign:x").status_code == 400
    assert client.get("/map?measure=campaign:1", headers={"Authorization": ""}).status_code == 403


def test_stored_markup_reaches_the_browser_as_data_only(edit_client, edit_path) -> None:  # type: ignore[no-untyped-def]
    """A stored name is not in the page at all: the layer's JSON carries it as the text it
    is, and gridmap-layers.js puts it into the page with textContent only."""
    store = open_store(edit_path)
    store.update("toilets", 1, properties={"name": "<img src=x onerror=alert(1)>"})
    store.close()
    html = edit_client.get("/map").text
    assert "onerror" not in html
    names = [f["properties"]["name"] for f in _layer(edit_client, "toilets")["features"]]
    assert "<img src=x onerror=alert(1)>" in names
    script = (Path(gridmap.maps.__file__).parent / "static" / "gridmap-layers.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script


def test_camera_sector_geometry() -> None:
    import math

    from gridmap.maps.layers import sector

    north = sector(0, 0, direction=0, fov=90, radius=100)
    assert north.area == pytest.approx(math.pi * 100**2 / 4, rel=0.01)
    assert north.centroid.y > 50 and abs(north.centroid.x) < 1e-6  # looks north
    east = sector(0, 0, direction=90, fov=60, radius=80)
    assert east.centroid.x > 40 and abs(east.centroid.y) < 1e-6  # clockwise from north
    ptz = sector(0, 0, direction=10, fov=360, radius=50)
    assert ptz.area == pytest.approx(math.pi * 50**2, rel=0.01)


def test_an_edit_re_encodes_its_layer_not_the_page(edit_client, edit_path) -> None:  # type: ignore[no-untyped-def]
    first = edit_client.get("/map").text
    assert edit_client.get("/map").text == first  # the same page, not drawn again
    assert edit_client.get("/map?lang=en").text != first
    toilets = edit_client.get("/map/layers/toilets")
    grids = edit_client.get("/map/layers/grids")
    again = edit_client.get("/map/layers/grids", headers={"If-None-Match": grids.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    store = open_store(edit_path)
    store.update("toilets", 1, properties={"name": "改名后的公厕"})
    store.close()
    assert edit_client.get("/map").text == first  # the shell holds no toilet
    after = edit_client.get("/map/layers/toilets")
    assert after.headers["etag"] != toilets.headers["etag"]
    assert "改名后的公厕" in {f["properties"]["name"] for f in after.json()["features"]}
    same = edit_client.get("/map/layers/grids", headers={"If-None-Match": grids.headers["etag"]})
    assert same.status_code == 304  # grids untouched: still the cached encoding


def test_stored_template_syntax_stays_text(edit_client, edit_path) -> None:  # type: ignore[no-untyped-def]
    """folium/branca compile rendered scripts as Jinja templates a second time: a stored
    ``{{ … }}`` or ``{% … %}`` must reach the page as text, never run on the server."""
    from gridmap.escape import html_text

    payload = "{{'ev'~'al'}}{%set x=1%}{{cycler.__init__}}{#"
    for layer, fid, field in (("grids", 3, "name"), ("toilets", 2, "name"), ("roads", 1, "name")):
        cur = edit_client.get(f"/collections/{layer}/items/{fid}")
        r = edit_client.patch(
            f"/collections/{layer}/items/{fid}",
            json={"properties": {field: payload}},
            headers={"If-Match": cur.headers["etag"]},
        )
        assert r.status_code == 200
    for key in ("grids", "toilets"):
        assert payload in {f["properties"]["name"] for f in _layer(edit_client, key)["features"]}
    roads = _layer(edit_client, "roads", bbox="113.2,34.7,113.4,34.9", zoom=16)["features"]
    assert payload in {f["properties"]["name"] for f in roads}
    for url in ("/map/grids/3", "/map/grids/3?lang=en"):
        page = edit_client.get(url)
        assert page.status_code == 200, url
        assert "eval" not in page.text and "<function" not in page.text, url
        assert html_text(payload) in page.text or "\\u007b\\u007b" in page.text, url
    title = re.findall(r"<title>(.*?)</title>", edit_client.get("/map/grids/3").text)[0]
    assert title == "网格作战图 · " + html_text(payload)


def test_page_policy_names_only_scripts_gridmap_wrote(sample_store: FeatureStore) -> None:
    """Hashes come from the parts gridmap rendered, not from reading the page back: a script
    that slipped into the page (an escaping bug, simulated here) is not approved."""
    from branca.element import Element

    from gridmap.maps import render_page
    from gridmap.maps.render import script_hash

    m = overview_map(sample_store, scope=Scope(layers=frozenset({"grids", "toilets"})))
    m.get_root().header.add_child(Element("<script>window.__xss = 1</script>"), name="bug")
    page = render_page(m)
    inline = re.findall(r"<script>(.*?)</script>", page.html, re.S)
    assert len(inline) == 3  # folium's switches, the injected one, the map script
    assert script_hash("window.__xss = 1") not in page.script_hashes
    approved = [s for s in inline if script_hash(s) in page.script_hashes]
    assert len(approved) == 2 and "window.__xss" not in "".join(approved)
