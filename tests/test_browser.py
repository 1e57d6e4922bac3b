"""The map pages in real headless Chromium (Debian's), with every non-loopback request blocked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chromium import launch, open_page, require_chromium, wait_for_layers
from tests.test_maps import ADMIN_LAYERS_EN, ADMIN_LAYERS_ZH, PUBLIC_LAYERS_ZH

pytestmark = pytest.mark.browser
require_chromium()

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def server(live_server: str) -> str:
    return live_server


@pytest.fixture(scope="module")
def browser() -> Any:
    yield from launch()


def _open(browser, url: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    page, w = open_page(browser, url, headers, wait_for=".leaflet-control-layers label")
    wait_for_layers(page)
    return page, w.errors, w.blocked, w.failed


@pytest.mark.parametrize(
    ("lang", "names"),
    [("zh", ADMIN_LAYERS_ZH), ("en", ADMIN_LAYERS_EN)],
)
def test_overview_renders_offline(
    browser, server: str, lang: str, names: set[str], admin_headers, sample_store
) -> None:  # type: ignore[no-untyped-def]
    page, errors, blocked, failed = _open(browser, f"{server}/map?lang={lang}", admin_headers)
    labels = {t.strip() for t in page.locator(".leaflet-control-layers label").all_inner_texts()}
    assert labels == names
    assert errors == [] and blocked == [] and failed == []
    # every grid drawn, household clusters shown
    grids = page.evaluate(
        """() => {
            let n = 0;
            for (const k in window) {
                const v = window[k];
                if (v && v instanceof L.GeoJSON) {
                    v.eachLayer((l) => { if (l.feature && l.feature.properties.code
                        && l.feature.properties.worker_name) n++; });
                }
            }
            return n;
        }"""
    )
    assert grids == 40
    # zoomed out, households are a figure per grid (their sum is every household) …
    figures = page.locator(".gm-count").all_inner_texts()
    assert len(figures) == 40 and sum(map(int, figures)) == sample_store.count("households")
    # … zoomed in, dots for those in view only
    wait_for_layers(page, zoom=18)
    assert page.locator(".gm-count").count() == 0
    assert 0 < page.evaluate("() => window.gmLoaded.households") < sum(map(int, figures))
    options = page.locator("#gm-measure option").evaluate_all("els => els.map(e => e.value)")
    # the four household measures and the sample's autumn campaign
    assert options == ["households", "visit_coverage", "hardship", "elderly_alone", "campaign:1"]
    wait_for_layers(page, zoom=15)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"overview-{lang}.png"))
    page.close()


def test_public_map_shows_public_layers_only(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    page, errors, blocked, failed = _open(browser, f"{server}/map")
    labels = {t.strip() for t in page.locator(".leaflet-control-layers label").all_inner_texts()}
    assert labels == PUBLIC_LAYERS_ZH
    assert page.locator(".gm-count").count() == 0  # no households
    assert "households" not in page.evaluate("() => window.gmLoaded")
    assert errors == [] and blocked == [] and failed == []
    page.close()


def test_popup_opens_on_click(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    page, errors, _, _ = _open(browser, f"{server}/map")
    # find a planned toilet and click its marker with the mouse, where it is drawn
    point = page.evaluate(
        """() => {
            let map = null;
            for (const k in window) { if (window[k] instanceof L.Map) { map = window[k]; } }
            for (const k in window) {
                const v = window[k];
                if (v && v instanceof L.GeoJSON) {
                    for (const layer of v.getLayers()) {
                        const f = layer.feature;
                        if (f && f.geometry.type === 'Point' && f.properties.status === 'planned') {
                            map.setView(layer.getLatLng(), 18, {animate: false});
                            const p = map.latLngToContainerPoint(layer.getLatLng());
                            const r = map.getContainer().getBoundingClientRect();
                            return [r.left + p.x, r.top + p.y];
                        }
                    }
                }
            }
            return null;
        }"""
    )
    assert point is not None
    page.mouse.click(point[0], point[1])
    popup = page.locator(".leaflet-popup-content")
    popup.wait_for()
    assert "规划公厕" in popup.inner_text()
    assert errors == []
    page.close()


_LATLNGS = """(name) => {
    const out = [];
    for (const k in window) {
        const v = window[k];
        if (v && v instanceof L.GeoJSON) {
            v.eachLayer((l) => {
                if (l.feature && l.feature.properties.name === name && l.getLatLng) {
                    const p = l.getLatLng(); out.push([p.lng, p.lat]);
                }
            });
        }
    }
    return out;
}"""


def test_grid_sheet_renders_for_its_worker(browser, server: str, auth, sample_store) -> None:  # type: ignore[no-untyped-def]
    from gridmap.store import Query

    page, errors, blocked, failed = _open(browser, f"{server}/map/grids/1", auth["grid_worker"])
    dots = page.evaluate(
        """() => {
            let n = 0;
            for (const k in window) {
                const v = window[k];
                if (v && v instanceof L.Map) {
                    v.eachLayer((l) => { if (l instanceof L.CircleMarker && !l.feature) n++; });
                }
            }
            return n;
        }"""
    )
    # every household of grid 1 as a dot
    assert dots == sample_store.count("households", Query(equals={"grid_id": 1}))
    assert "颐苑社区第1网格" in page.locator(".gm-sheet-head").inner_text()
    assert errors == [] and blocked == [] and failed == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "grid-sheet.png"))
    page.close()


def test_amap_mode_draws_points_at_gcj02(browser, server: str, sample_store) -> None:  # type: ignore[no-untyped-def]
    from gridmap.crs import wgs84_to_gcj02

    page, errors, blocked, _ = _open(browser, f"{server}/map?basemap=amap")
    toilet = sample_store.get("toilets", 1)
    got = page.evaluate(_LATLNGS, toilet.properties["name"])
    gx, gy = wgs84_to_gcj02([toilet.geometry.x], [toilet.geometry.y])
    assert len(got) == 1
    # sent rounded to 1e-6 degrees (~0.1 m), far below the ~500 m GCJ-02 shift
    assert abs(got[0][0] - gx[0]) <= 6e-7 and abs(got[0][1] - gy[0]) <= 6e-7
    assert all("autonavi.com" in u for u in blocked)  # only the tiles were off the machine
    assert [e for e in errors if "autonavi" not in e and "Failed to load" not in e] == []
    page.close()


def test_pages_run_under_a_strict_policy(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    """No 'unsafe-inline' for scripts: every page's own inline scripts are named by hash and
    run (Swagger UI draws itself, the map draws its layers), with no policy violation."""
    for path, ready in (("/docs", ".swagger-ui .info"), ("/map", ".leaflet-control-layers")):
        page, w = open_page(browser, server + path, wait_for=ready)
        csp = page.evaluate("() => window.__csp")
        page.close()
        assert csp == [] and w.errors == [], path
    import httpx

    policy = httpx.get(server + "/map").headers["content-security-policy"]
    scripts = policy.split("script-src ")[1].split(";")[0]
    assert "'unsafe-inline'" not in scripts and "'sha256-" in scripts


def test_toilet_map_for_a_planner_shows_squares_and_sites_never_households(
    browser, server: str, auth
) -> None:  # type: ignore[no-untyped-def]
    page, errors, blocked, failed = _open(browser, f"{server}/map/toilets?k=3", auth["planner"])
    assert errors == [] and blocked == [] and failed == []
    labels = {t.strip() for t in page.locator(".leaflet-control-layers label").all_inner_texts()}
    assert {"建议新建公厕", "选址服务范围", "未覆盖住户（密度）", "公厕"} <= labels
    found = page.evaluate(
        """() => {
            const out = {sites: 0, squares: [], points: 0};
            for (const k in window) {
                const v = window[k];
                if (v && v instanceof L.GeoJSON) {
                    v.eachLayer((l) => {
                        const p = l.feature && l.feature.properties;
                        if (!p) return;
                        const point = l.feature.geometry.type === "Point";
                        if (point && !("status" in p) && !("gain" in p)) out.points++;
                        if ("households" in p) out.squares.push(p.households);
                        if ("gain" in p) out.sites++;
                    });
                }
            }
            return out;
        }"""
    )
    assert found["points"] == 0  # toilets are the only points
    assert found["squares"] and all(isinstance(v, str) for v in found["squares"])
    assert found["sites"] == 6  # three marks and three catchments
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "toilets.png"))
    page.close()


def test_camera_map_draws_views_blind_spots_and_proposals(browser, server: str, auth) -> None:  # type: ignore[no-untyped-def]
    page, errors, blocked, failed = _open(
        browser, f"{server}/map/cameras?k=2", auth["subdistrict_admin"]
    )
    assert errors == [] and blocked == [] and failed == []
    labels = {t.strip() for t in page.locator(".leaflet-control-layers label").all_inner_texts()}
    assert {"监控视域（遮挡后）", "监控盲区路段", "建议新增监控", "道路监控覆盖率"} <= labels
    found = page.evaluate(
        """() => {
            const out = {blind: 0, views: 0, proposed: 0};
            for (const k in window) {
                const v = window[k];
                if (v && v instanceof L.GeoJSON) {
                    v.eachLayer((l) => {
                        const p = l.feature && l.feature.properties;
                        if (!p) return;
                        if ("length_m" in p) out.blind++;
                        if ("camera_id" in p) out.views++;
                        if ("gain" in p && l.feature.geometry.type === "Point") out.proposed++;
                    });
                }
            }
            return out;
        }"""
    )
    assert found["blind"] == 200 and found["views"] > 100 and found["proposed"] == 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "cameras.png"))
    page.close()
    # a planner may not see cameras at all
    page, *_ = open_page(browser, f"{server}/map/cameras", auth["planner"], wait_for="body")
    assert "监控视域" not in page.content()
    page.close()


def test_renovation_map_moves_through_the_months(browser, server: str, auth) -> None:  # type: ignore[no-untyped-def]
    page, errors, blocked, failed = _open(
        browser, f"{server}/map/renovation?on=2026-06-01", auth["planner"]
    )
    assert errors == [] and blocked == [] and failed == []
    assert page.locator("#gm-month-shown").inner_text() == "2026-06"
    slider = page.locator("#gm-month")
    value = int(slider.input_value())
    with page.expect_navigation():
        slider.evaluate(
            "(el, v) => { el.value = v; el.dispatchEvent(new Event('change')); }", value + 1
        )
    page.wait_for_selector(".leaflet-control-layers label")
    assert "on=2026-07-01" in page.url
    assert page.locator("#gm-month-shown").inner_text() == "2026-07"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "renovation.png"))
    page.close()
