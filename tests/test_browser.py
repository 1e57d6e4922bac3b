"""The map pages in real headless Chromium (Debian's), with every non-loopback request blocked."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.test_maps import ADMIN_LAYERS_EN, ADMIN_LAYERS_ZH, PUBLIC_LAYERS_ZH

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have Debian's chromium installed (.ci/run installs it)")
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def server(live_server: str) -> str:
    return live_server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def _open(browser, url: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, extra_http_headers=headers)
    errors: list[str] = []
    blocked: list[str] = []
    failed: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(r.url))

    def guard(route) -> None:  # type: ignore[no-untyped-def]
        host = urlparse(route.request.url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(url, wait_until="load")
    page.locator(".leaflet-control-layers label").first.wait_for(state="attached")
    return page, errors, blocked, failed


@pytest.mark.parametrize(
    ("lang", "names"),
    [("zh", ADMIN_LAYERS_ZH), ("en", ADMIN_LAYERS_EN)],
)
def test_overview_renders_offline(
    browser, server: str, lang: str, names: set[str], admin_headers
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
    assert page.locator(".marker-cluster").count() > 10
    assert page.locator("#gm-measure option").count() == 4
    page.locator(".marker-cluster").first.wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"overview-{lang}.png"))
    page.close()


def test_public_map_shows_public_layers_only(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    page, errors, blocked, failed = _open(browser, f"{server}/map")
    labels = {t.strip() for t in page.locator(".leaflet-control-layers label").all_inner_texts()}
    assert labels == PUBLIC_LAYERS_ZH
    assert page.locator(".marker-cluster").count() == 0  # no households
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
    assert abs(got[0][0] - gx[0]) < 1e-7 and abs(got[0][1] - gy[0]) < 1e-7
    assert all("autonavi.com" in u for u in blocked)  # only the tiles were off the machine
    assert [e for e in errors if "autonavi" not in e and "Failed to load" not in e] == []
    page.close()
