"""A visit plan's map page (/map/plans/{id}): numbered stops, routes and the run sheet,
for the roles that plan — checked against the plan's GeoJSON and, in real Chromium,
against what the page draws."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.server import gridmap_server
from tests.chromium import launch, open_page, require_chromium
from tests.conftest import REFERENCE_DATE, copy_of_sample, tokens_for

DAY = REFERENCE_DATE.isoformat()


def _make_plan(post: Any, get: Any, workers: int = 2) -> tuple[int, dict[str, Any]]:
    """A campaign over every household and a plan of grid 1; the plan's id and GeoJSON."""
    body = {"name": "冬季走访", "starts": DAY, "ends": "2026-12-31"}
    r = post("/campaigns", json=body)
    assert r.status_code == 201, r.text
    r = post(
        f"/campaigns/{r.json()['id']}/plans",
        json={"grid_ids": [1], "date": DAY, "workers": workers, "time_limit_s": 1},
    )
    assert r.status_code == 201, r.text
    pid = r.json()["plans"][0]["id"]
    return pid, get(f"/plans/{pid}").json()


def _stops(geo: dict[str, Any]) -> list[dict[str, Any]]:
    return [f["properties"] for f in geo["features"] if f["properties"]["kind"] == "stop"]


def test_the_page_lists_every_stop_in_order(edit_client: TestClient) -> None:
    pid, geo = _make_plan(edit_client.post, edit_client.get)
    stops = _stops(geo)
    assert len(stops) > 5
    r = edit_client.get(f"/map/plans/{pid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    page = r.text
    # one numbered marker per stop, numbered 1..n within each route
    numbers = re.findall(
        r'class=\\"gm-stop[^"\\]*\\" style=\\"background:#[0-9a-f]{6}\\"\\u003e(\d+)\\u003c', page
    )
    per_route: dict[int, int] = {}
    for s in stops:
        per_route[s["route"]] = per_route.get(s["route"], 0) + 1
    assert sorted(map(int, numbers)) == sorted(
        n for k in per_route.values() for n in range(1, k + 1)
    )
    # arrival times of every stop are on the sheet (HH:MM of the GeoJSON's arrival)
    for s in stops:
        assert s["arrival"][-5:] in page
    # must-visit stops are square
    must = sum(1 for s in stops if s["must"])
    assert page.count("gm-stop gm-must") == must
    en = edit_client.get(f"/map/plans/{pid}?lang=en")
    assert en.status_code == 200 and "Route 1" in en.text and "路线1" not in en.text


def test_only_the_plan_s_grid_and_roles_that_plan_see_it(
    edit_client: TestClient, edit_app: Any, edit_auth: dict[str, dict[str, str]]
) -> None:
    pid, _ = _make_plan(edit_client.post, edit_client.get, workers=1)
    want = {
        "subdistrict_admin": 200,
        "community_admin": 200,  # grid 1 is in their community
        "grid_worker": 200,  # the sample's first grid worker works grid 1
        "planner": 403,
        "auditor": 403,
        "public": 401,
    }
    with TestClient(edit_app) as anonymous:
        got = {
            role: anonymous.get(f"/map/plans/{pid}", headers=h).status_code
            for role, h in edit_auth.items()
            if role in want
        }
        assert got == want
    # a plan of another grid is, to grid 1's worker, as if there were no such plan
    cid = edit_client.get(f"/plans/{pid}").json()["plan"]["campaign_id"]
    r = edit_client.post(f"/campaigns/{cid}/plans", json={"grid_ids": [2], "date": DAY})
    other = r.json()["plans"][0]["id"]
    assert (
        edit_client.get(f"/map/plans/{other}", headers=edit_auth["grid_worker"]).status_code == 404
    )
    assert edit_client.get("/map/plans/999999").status_code == 404
    assert edit_client.get("/map/plans/abc").status_code in (400, 422)
    assert edit_client.get(f"/map/plans/{pid}?lang=fr").status_code in (400, 422)


# ------------------------------------------------------------------ in Chromium

browser_only = pytest.mark.browser


@pytest.fixture(scope="module")
def planned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    require_chromium()
    path = copy_of_sample(request, tmp_path_factory.mktemp("plan") / "plan.gpkg")
    auth = tokens_for(path)
    with gridmap_server(path, household_reads_per_minute="100000") as url:
        with httpx.Client(base_url=url, headers=auth["subdistrict_admin"], timeout=60) as c:
            pid, geo = _make_plan(c.post, c.get)
        yield url, auth, pid, geo


@browser_only
def test_chromium_draws_every_stop_route_and_sheet_row(planned: Any) -> None:
    url, auth, pid, geo = planned
    stops = _stops(geo)
    routes = [f for f in geo["features"] if f["properties"]["kind"] == "route"]
    for browser in launch():
        page, w = open_page(
            browser, f"{url}/map/plans/{pid}", auth["grid_worker"], wait_for=".gm-stop"
        )
        drawn = page.locator(".gm-stop").count()
        lines = page.evaluate(
            "() => { let n = 0; for (const k in window) { const v = window[k];"
            " if (v instanceof L.Polyline && !(v instanceof L.Polygon)) n++; } return n; }"
        )
        sheet_rows = page.locator("section.gm-sheet > table > tbody > tr").count()
        sheet = page.inner_text("section.gm-sheet")
        csp = page.evaluate("() => window.__csp")
        Path("test-artifacts").mkdir(exist_ok=True)
        page.screenshot(path="test-artifacts/plan.png", full_page=True)
        page.close()
    assert drawn == len(stops)
    assert lines == len(routes)
    assert sheet_rows == len(stops) + len(routes)  # a header row per route's table
    assert all(s["name"] in sheet for s in stops)
    assert csp == [] and w.errors == [] and w.blocked == []
