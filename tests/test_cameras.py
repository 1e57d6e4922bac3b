"""Camera coverage: hand-built views with known covered road lengths, the sample's road
lengths per grid against geopandas' overlay, and the HTTP answers per role."""

from __future__ import annotations

import math
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from gridmap.analysis import cameras as cm
from gridmap.store.base import Query, Scope

ROAD = shapely.LineString([(-100, 0), (100, 0)])
NONE = np.empty(0, dtype=object)


def _seen(view: shapely.Geometry) -> float:
    return float(shapely.intersection(ROAD, view).length)


def test_a_sector_sees_the_road_between_its_edges() -> None:
    # 10 m south of the road, looking north, 90° wide: its edges cross the road at x = ±10
    (view,) = cm.views(np.array([[0.0, -10.0]]), [0.0], [90.0], [50.0], NONE)
    assert _seen(view) == pytest.approx(20.0, abs=1e-6)
    # looking away: nothing
    (away,) = cm.views(np.array([[0.0, -10.0]]), [180.0], [90.0], [50.0], NONE)
    assert _seen(away) == 0
    # too short to reach
    (short,) = cm.views(np.array([[0.0, -10.0]]), [0.0], [90.0], [9.0], NONE)
    assert _seen(short) == 0


def test_a_building_in_the_way_hides_what_is_behind_it() -> None:
    # a block at x 2..8, y −6..−4 hides the rays that reach the road between x = 10/3 and 20
    block = np.array([shapely.box(2, -6, 8, -4)], dtype=object)
    (view,) = cm.views(np.array([[0.0, -10.0]]), [0.0], [90.0], [50.0], block)
    assert _seen(view) == pytest.approx(10 + 10 / 3, abs=0.8)
    # the building a camera hangs on does not block it
    wall = np.array([shapely.box(-5, -15, 5, -10)], dtype=object)
    (mounted,) = cm.views(np.array([[0.0, -10.0]]), [0.0], [90.0], [50.0], wall)
    assert _seen(mounted) == pytest.approx(20.0, abs=1e-6)


def test_a_ptz_camera_sees_a_full_circle() -> None:
    (view,) = cm.views(np.array([[0.0, -10.0]]), [123.0], [360.0], [30.0], NONE)
    assert _seen(view) == pytest.approx(2 * math.sqrt(30**2 - 10**2), abs=0.3)
    assert view.area == pytest.approx(math.pi * 30**2, rel=0.01)


def test_road_lengths_per_grid_match_a_geopandas_overlay(sample_store: Any) -> None:
    cov = cm.coverage(sample_store, Scope.ALL)
    roads = sample_store.query("roads", Query()).with_geometry()
    keep = [
        p.get("walkable") is not False and p.get("status") != "planned" for p in roads.properties
    ]
    lines = gpd.GeoDataFrame(geometry=roads.geometries[keep], crs=4326).to_crs(4547)
    grids = sample_store.query("grids", Query()).with_geometry()
    polys = gpd.GeoDataFrame({"gid": grids.ids}, geometry=grids.geometries, crs=4326).to_crs(4547)
    polys["geometry"] = polys.buffer(cm.EDGE_M)  # a road along a grid's edge counts for it
    parts = gpd.overlay(lines, polys, how="intersection", keep_geom_type=True)
    theirs = parts.assign(m=parts.length).groupby("gid")["m"].sum()
    ours = {g: f["road_m"] for g, f in cov.per_grid.items()}
    for g, m in theirs.items():
        assert ours[int(g)] == pytest.approx(m, rel=0.02, abs=5), g
    # what is seen: the same overlay against the union of the views
    seen = gpd.GeoDataFrame(geometry=[cov.seen], crs=4547)
    seen_parts = gpd.overlay(parts, seen, how="intersection", keep_geom_type=True)
    theirs_seen = seen_parts.assign(m=seen_parts.length).groupby("gid")["m"].sum()
    for g, m in theirs_seen.items():
        assert cov.per_grid[int(g)]["road_seen_m"] == pytest.approx(m, rel=0.02, abs=5), g
    assert 0 < sum(f["road_seen_m"] for f in cov.per_grid.values()) < sum(ours.values())
    # blind pieces: at most 50 m, and none inside a view
    lengths = shapely.length(cov.blind)
    assert lengths.max() <= cm.PIECE_M + 1e-6
    mids = shapely.line_interpolate_point(cov.blind, 0.5, normalized=True)
    assert not shapely.contains(cov.seen, mids).any()


def test_proposed_cameras_cover_what_they_claim(sample_store: Any) -> None:
    cov = cm.coverage(sample_store, Scope.ALL)
    p = cm.propose(sample_store, Scope.ALL, k=3, cov=cov, spacing_m=50)
    assert p.exact.optimal and p.exact.objective >= p.greedy.objective > 0
    # recount from the returned views (WGS84 → metric) and the blind pieces
    from gridmap.crs import to_metric

    views = to_metric(np.asarray([p.views[i] for i in p.exact.chosen], dtype=object))
    mids = shapely.line_interpolate_point(cov.blind, 0.5, normalized=True)
    hit = np.zeros(len(mids), dtype=bool)
    for v in views:
        hit |= shapely.contains(shapely.buffer(v, 1e-6), mids)
    assert float(cov.blind_households[hit].sum()) == pytest.approx(p.exact.objective)


def _get(c: TestClient, url: str, headers: dict[str, str]) -> Any:
    r = c.get(url, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_camera_coverage_over_http_per_role(
    client: TestClient, public_client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    admin = _get(client, "/analysis/camera-coverage", auth["subdistrict_admin"])
    assert len(admin["grids"]) == 40 and admin["cameras"]["online"] > 0
    row = admin["grids"][0]
    assert row["road_seen_share"] == round(row["road_seen_m"] / row["road_m"], 4)
    spots = _get(
        client, "/analysis/camera-coverage/blind-spots?limit=20", auth["subdistrict_admin"]
    )
    households = [f["properties"]["households"] for f in spots["features"]]
    assert len(households) == 20 and households == sorted(households, reverse=True)
    views = _get(client, "/analysis/camera-coverage/views", auth["subdistrict_admin"])
    assert len(views["features"]) == admin["cameras"]["online"]
    # planners: shares only, nothing that places a camera
    planner = _get(client, "/analysis/camera-coverage", auth["planner"])
    assert set(planner["grids"][0]) == {"grid_id", "road_seen_share", "entrances_seen_share"}
    assert "cameras" not in planner
    for mine, exact in zip(planner["grids"], admin["grids"], strict=True):
        v = mine["road_seen_share"]  # 5 % steps: a planner's road edit cannot probe a view
        assert abs(v * 20 - round(v * 20)) < 1e-9
        assert abs(v - exact["road_seen_m"] / exact["road_m"]) <= 0.025 + 1e-9
    for url in ("/analysis/camera-coverage/blind-spots", "/analysis/camera-coverage/views"):
        assert client.get(url, headers=auth["planner"]).status_code == 404
        assert client.get(url, headers=auth["grid_worker"]).status_code == 404
    r = client.post("/analysis/camera-siting", json={"k": 2}, headers=auth["planner"])
    assert r.status_code == 404
    worker = _get(client, "/analysis/camera-coverage", auth["grid_worker"])
    assert 1 <= len(worker["grids"]) < 40 and "cameras" not in worker
    assert public_client.get("/analysis/camera-coverage").status_code == 401
    assert client.get("/analysis/camera-coverage", headers=auth["auditor"]).status_code == 403
    r = client.post(
        "/analysis/camera-siting", json={"k": 2, "spacing_m": 50}, headers=auth["subdistrict_admin"]
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["exact"]["optimal"] and out["exact"]["covered"] >= out["greedy"]["covered"]
    assert len(out["exact"]["sites"]) == 2 and out["exact"]["sites"][0]["view"]["type"] == "Polygon"
    for bad in ({"k": 0}, {"range_m": 1}, {"spacing_m": 1}, {"k": 2, "x": 1}):
        r = client.post("/analysis/camera-siting", json=bad, headers=auth["subdistrict_admin"])
        assert r.status_code in (400, 422), bad
