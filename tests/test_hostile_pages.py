"""Stored values are hostile: written into every text property of every layer, they stay text
in every page, in real Chromium, with every tooltip and popup opened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.server import gridmap_server
from gridmap.escape import html_text, js_string, js_template, script_json
from gridmap.layers import LAYERS
from tests.chromium import launch, open_page, require_chromium, wait_for_layers
from tests.conftest import copy_of_sample, raw_sql, tokens_for

pytestmark = pytest.mark.browser
require_chromium()

# Each payload tries another context; all set window.__xss if they ever run.
PAYLOADS = (
    "${window.__xss='tpl'}",
    "`);window.__xss='tick';//",
    "</script><script>window.__xss='script'</script>",
    "<img src=x onerror=\"window.__xss='img'\">",
    "\"'><svg onload=window.__xss='svg'>",
    "a\u2028b\u2029c",
    "C:\\users\\x\\u0041 {{7*7}}",
    "{{'ev'~'al'}}{%set x=1%}{#",  # folium/branca compile scripts as templates: must stay text
)
HOSTILE = "恶意" + "".join(PAYLOADS)


def _poison(path: Path | str) -> dict[str, list[str]]:
    """Write HOSTILE into every text property of every feature, as an outside client (QGIS,
    psql) would (no validation on the way in). Returns the poisoned properties per layer."""
    done: dict[str, list[str]] = {}
    for layer in LAYERS:
        names = [p.name for p in layer.properties if p.type == "str"]
        if not names:
            continue
        sets = ", ".join(f'"{n}" = CAST(? AS TEXT) || fid' for n in names)
        raw_sql(path, f'UPDATE "{layer.id}" SET {sets}', *([HOSTILE] * len(names)))
        done[layer.id] = names
    return done


@pytest.fixture(scope="module")
def hostile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    path = copy_of_sample(request, tmp_path_factory.mktemp("hostile") / "hostile.gpkg")
    poisoned = _poison(path)
    auth = tokens_for(path)
    with gridmap_server(path, household_reads_per_minute="100000") as url:
        yield url, auth, poisoned


@pytest.fixture(scope="module")
def browser() -> Any:
    yield from launch()


# Open every tooltip and popup of every layer on the map (events propagate to the groups
# that bind per-feature tooltips), and collect what they show.
_OPEN_ALL = """async () => {
    let map = null;
    for (const k in window) { if (window[k] instanceof L.Map) { map = window[k]; } }
    const layers = [];
    map.eachLayer((l) => layers.push(l));
    const shown = new Set();
    let opened = 0;
    const grab = () => document.querySelectorAll('.leaflet-tooltip, .leaflet-popup-content')
        .forEach((el) => shown.add(el.textContent));
    for (const l of layers) {
        if (!(l.getLatLng || l.getBounds) || (l.getLayers && !l.feature)) continue;
        const ll = l.getLatLng ? l.getLatLng() : l.getBounds().getCenter();
        l.fire('mouseover', {latlng: ll, originalEvent: {}}, true);
        l.fire('click', {latlng: ll, originalEvent: {}}, true);
        opened += document.querySelectorAll('.leaflet-tooltip, .leaflet-popup').length ? 1 : 0;
        grab();
        l.fire('mouseout', {latlng: ll, originalEvent: {}}, true);
        map.closePopup();
    }
    document.querySelectorAll('.gm-box').forEach((el) => shown.add(el.textContent));
    await new Promise((r) => setTimeout(r, 300));  // let any <img onerror> fire
    return {opened, shown: Array.from(shown), xss: window.__xss || null, csp: window.__csp};
}"""


def _check_map(browser: Any, url: str, headers: dict[str, str]) -> dict[str, Any]:
    page, w = open_page(browser, url, headers, wait_for=".leaflet-container")
    try:
        wait_for_layers(page, every=True, zoom=17)  # every layer, households one by one
        out = page.evaluate(_OPEN_ALL)
    finally:
        page.close()
    assert out["xss"] is None, (url, out["xss"])
    assert out["csp"] == [], (url, out["csp"])
    assert w.errors == [] and w.blocked == [] and w.failed == [], (url, w.errors)
    return out  # type: ignore[no-any-return]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_overview_keeps_hostile_values_as_text(hostile: Any, browser: Any, lang: str) -> None:
    url, auth, _ = hostile
    for role in ("subdistrict_admin", "public"):
        out = _check_map(browser, f"{url}/map?lang={lang}", auth[role])
        assert out["opened"] > 50
        # the values were shown, literally, in tooltips and popups
        assert any(PAYLOADS[0] in t and PAYLOADS[3] in t for t in out["shown"]), role


def test_every_grid_sheet_keeps_hostile_values_as_text(hostile: Any, browser: Any) -> None:
    url, auth, _ = hostile
    for gid in range(1, 41):
        out = _check_map(browser, f"{url}/map/grids/{gid}", auth["subdistrict_admin"])
        rooms = [t for t in out["shown"] if t.startswith("恶意") and "·" in t]
        assert rooms, gid  # household tooltips show the hostile room number as text
        assert all(PAYLOADS[1] in t and PAYLOADS[2] in t for t in rooms)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_plan_page_keeps_hostile_values_as_text(hostile: Any, browser: Any, lang: str) -> None:
    url, auth, _ = hostile
    admin = auth["subdistrict_admin"]
    with httpx.Client(base_url=url, headers=admin, timeout=60) as c:
        body = {"name": HOSTILE[:100], "starts": "2026-11-01", "ends": "2026-12-31"}
        cid = c.post("/campaigns", json=body).json()["id"]
        r = c.post(
            f"/campaigns/{cid}/plans",
            json={"grid_ids": [3], "date": "2026-11-24", "workers": 2, "time_limit_s": 1},
        )
        assert r.status_code == 201, r.text
        pid = r.json()["plans"][0]["id"]
    for role in ("subdistrict_admin", "community_admin"):
        page, _ = open_page(browser, f"{url}/map/plans/{pid}?lang={lang}", auth[role])
        sheet = page.inner_text("section.gm-sheet")
        page.close()
        assert PAYLOADS[2] in sheet and PAYLOADS[4] in sheet  # rooms and addresses, as text
        out = _check_map(browser, f"{url}/map/plans/{pid}?lang={lang}", auth[role])
        assert out["opened"] > 5
        assert any(PAYLOADS[0] in t and PAYLOADS[1] in t for t in out["shown"]), role


def test_html_views_keep_hostile_values_as_text(hostile: Any, browser: Any) -> None:
    url, auth, poisoned = hostile
    pages = ["/?f=html", "/collections?f=html"]
    for layer_id in poisoned:
        pages += [
            f"/collections/{layer_id}?f=html",
            f"/collections/{layer_id}/items?f=html&limit=20",
            f"/collections/{layer_id}/items/1?f=html",
        ]
    for path in pages:
        page, w = open_page(browser, url + path, auth["subdistrict_admin"])
        text = page.inner_text("body")
        got = page.evaluate("() => [window.__xss || null, window.__csp]")
        page.close()
        assert got == [None, []], path
        assert w.errors == [], (path, w.errors)
        if "/items" in path:
            assert PAYLOADS[3] in text and PAYLOADS[0] in text, path


@settings(max_examples=1, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=40), min_size=300, max_size=300))
def test_escaping_helpers_round_trip_in_chromium(browser: Any, values: list[str]) -> None:
    """Chromium's own JavaScript parser reads every escaped value back unchanged."""
    values = [*values, *PAYLOADS, HOSTILE, "\\", "`", "${", "</script>", "\u2028"]
    page = browser.new_page()
    page.set_content("<!DOCTYPE html><body></body>")
    literals = [f"[{js_string(v)}, `{js_template(v)}`, {script_json({'v': v})}.v]" for v in values]
    got = page.evaluate("() => [" + ",".join(literals) + "]")
    shown = page.evaluate(
        "(html) => { const d = document.createElement('div'); d.innerHTML = html;"
        " return d.textContent; }",
        "".join(f"<p>{html_text(v)}</p>" for v in values),
    )
    page.close()
    assert got == [[v, v, v] for v in values]
    # HTML parsing itself turns NUL into U+FFFD and CR into LF; nothing else may change
    assert shown == "".join(values).replace("\0", "\ufffd").replace("\r\n", "\n").replace(
        "\r", "\n"
    )
