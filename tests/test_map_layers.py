"""The overview's layers as the browser fetches them (/map/layers/{key}), checked against
computations that are not the endpoint's: geopandas joins, boxes over every row, the
layers' own counts, each role's scope."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from gridmap.maps.layer_data import HOUSEHOLD_POINT_ZOOM, OVERVIEW
from gridmap.store import FeatureStore, Query


def _get(client, key: str, headers=None, **params):  # type: ignore[no-untyped-def]
    return client.get(f"/map/layers/{key}", params=params, headers=headers or {})


def test_every_layer_the_admin_sees(client, sample_store: FeatureStore) -> None:  # type: ignore[no-untyped-def]
    view = {"bbox": "113.0,34.6,113.6,35.0", "zoom": 17}
    for ml in OVERVIEW:
        r = _get(client, ml.key, **(view if ml.by_view else {}))
        assert r.status_code == 200, ml.key
        body = r.json()
        if ml.key == "households":
            continue
        want = sample_store.count(ml.source)
        assert len(body["features"]) == want > 0, ml.key
        assert all("_s" in f["properties"] for f in body["features"])
        personal = {p.name for p in sample_store.query(ml.source).layer.properties if p.sensitive}
        assert not personal & set().union(*(f["properties"] for f in body["features"]))


def test_household_counts_per_grid_equal_a_spatial_join(client, sample_store) -> None:  # type: ignore[no-untyped-def]
    """Zoomed out: one figure per grid, equal to geopandas' point-in-polygon join."""
    body = _get(client, "households", bbox="113.0,34.6,113.6,35.0", zoom=13).json()
    assert body["type"] == "Counts"
    homes = sample_store.query("households").to_geodataframe()
    grids = sample_store.query("grids").to_geodataframe()
    polys = grids[["geometry"]].reset_index(drop=True)
    joined = gpd.sjoin(homes[["geometry"]].reset_index(drop=True), polys, predicate="within")
    want = sorted(joined.groupby("index_right").size().tolist())
    assert sorted(c[2] for c in body["counts"]) == want
    assert sum(c[2] for c in body["counts"]) == len(homes)
    # each figure sits inside its grid
    for lat, lon, _ in body["counts"]:
        assert grids.contains(shapely.Point(lon, lat)).sum() == 1


def test_zoomed_in_households_are_exactly_those_in_view(client, sample_store) -> None:  # type: ignore[no-untyped-def]
    homes = sample_store.query("households").to_geodataframe()
    x, y = homes.geometry.x.to_numpy(), homes.geometry.y.to_numpy()
    cx, cy = float(np.median(x)), float(np.median(y))
    box = (cx - 0.003, cy - 0.002, cx + 0.003, cy + 0.002)
    body = _get(
        client, "households", bbox=",".join(map(str, box)), zoom=HOUSEHOLD_POINT_ZOOM + 1
    ).json()
    assert body["type"] == "Points"
    inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    got = sorted((round(p[1], 6), round(p[0], 6)) for p in body["points"])
    want = sorted(zip(np.round(x[inside], 6), np.round(y[inside], 6), strict=True))
    assert len(got) == int(inside.sum()) > 50
    assert np.allclose(np.asarray(got), np.asarray(want), atol=2e-6)
    assert set(body) == {"type", "points", "gm"}  # positions only


def test_amap_view_is_in_gcj02(client, sample_store) -> None:  # type: ignore[no-untyped-def]
    """Over Amap, features come shifted to GCJ-02 (gridmap.crs, itself checked against
    published pairs in test_crs), and a GCJ-02 view box finds the WGS84 rows under it."""
    from gridmap.crs import wgs84_to_gcj02

    plain = {f["id"]: f for f in _get(client, "toilets").json()["features"]}
    amap = {f["id"]: f for f in _get(client, "toilets", basemap="amap").json()["features"]}
    for fid, f in plain.items():
        lon, lat = f["geometry"]["coordinates"]
        glon, glat = map(float, wgs84_to_gcj02(lon, lat))
        assert amap[fid]["geometry"]["coordinates"] == pytest.approx([glon, glat], abs=1e-6)
        shift = np.hypot((glon - lon) * 91_000, (glat - lat) * 111_000)
        assert 200 < shift < 900  # the ~500 m of Zhengzhou
    homes = sample_store.query("households").to_geodataframe()
    cx, cy = float(homes.geometry.x.median()), float(homes.geometry.y.median())
    gx, gy = map(float, wgs84_to_gcj02(cx, cy))
    box = (gx - 0.002, gy - 0.0015, gx + 0.002, gy + 0.0015)
    pts = _get(client, "households", basemap="amap", bbox=",".join(map(str, box)), zoom=18)
    shown = np.asarray(pts.json()["points"])[:, ::-1]  # (lon, lat)
    hx, hy = wgs84_to_gcj02(homes.geometry.x.to_numpy(), homes.geometry.y.to_numpy())
    inside = (hx >= box[0]) & (hx <= box[2]) & (hy >= box[1]) & (hy <= box[3])
    want = np.column_stack([hx[inside], hy[inside]])
    gap = np.abs(want[:, None, :] - shown[None, :, :]).max(axis=2).min(axis=1)
    assert len(want) > 10 and gap.max() < 2e-6  # every household in view, in GCJ-02
    assert len(shown) < 2 * len(want)  # and not many more (the box's small margin)


def test_roles_see_their_own_layers_only(client, auth, sample_store) -> None:  # type: ignore[no-untyped-def]
    public = {"Authorization": ""}
    assert _get(client, "households", public).status_code == 404
    assert _get(client, "cameras", public).status_code == 404
    assert _get(client, "toilets", public).status_code == 200
    assert _get(client, "grids", auth["auditor"]).status_code == 403
    worker = _get(client, "households", auth["grid_worker"], zoom=12).json()
    admin = _get(client, "households", zoom=12).json()
    assert 0 < len(worker["counts"]) < len(admin["counts"])
    assert _get(client, "nope").status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"bbox": "1,2,3"},
        {"bbox": "a,b,c,d"},
        {"bbox": "113.3,34.8,113.2,34.9"},
        {"bbox": "200,34.8,201,34.9"},
        {"zoom": "99"},
        {"zoom": "x"},
        {"basemap": "google"},
        {"lang": "fr"},
        {"measure": "<script>"},
    ],
)
def test_bad_views_are_refused(client, params) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/map/layers/households", params=params)
    assert 400 <= r.status_code < 500, (params, r.status_code)


def test_households_zoomed_out_are_cached_and_zoomed_in_are_not(client) -> None:  # type: ignore[no-untyped-def]
    counts = _get(client, "households", zoom=12)
    assert "etag" in counts.headers
    points = _get(client, "households", bbox="113.28,34.80,113.29,34.81", zoom=18)
    assert points.headers["cache-control"] == "private, no-store"


def test_a_view_too_wide_for_roads_returns_none(client, sample_store) -> None:  # type: ignore[no-untyped-def]
    far = _get(client, "roads", bbox="113.0,34.6,113.6,35.0", zoom=10).json()
    assert far["features"] == [] and far["gm"]["note"] == "zoom_in"
    box = (113.285, 34.805, 113.295, 34.812)
    near = _get(client, "roads", bbox=",".join(map(str, box)), zoom=16).json()
    want = sample_store.count("roads", Query(bbox=box))
    assert len(near["features"]) == want > 0


def _figures(c, headers) -> dict[int, str]:  # type: ignore[no-untyped-def]
    body = c.get("/map/layers/grids", params={"measure": "households"}, headers=headers).json()
    return {f["id"]: f["properties"]["value"] for f in body["features"]}


@pytest.mark.parametrize("max_age", [0.0, 3600.0])
def test_map_colours_lag_an_edit_by_at_most_their_age(edit_path, edit_auth, max_age) -> None:  # type: ignore[no-untyped-def]
    """A household deleted: /stats is exact at once; the map's colours follow at once
    with GRIDMAP_MAP_FIGURES_MAX_AGE=0, and not before the age with an hour."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from gridmap.settings import Settings

    admin = edit_auth["subdistrict_admin"]
    app = create_app(
        Settings(
            database=str(edit_path),
            map_figures_max_age=max_age,
            household_reads_per_minute=100_000,
        )
    )
    with TestClient(app) as c:
        before = _figures(c, admin)
        cached = c.get("/stats/grids", headers=admin).json()  # /stats keeps its answer …
        assert c.get("/stats/grids", headers=admin).json() == cached
        page = c.get("/collections/households/items", params={"limit": 1}, headers=admin).json()
        hid = page["features"][0]["id"]
        item = c.get(f"/collections/households/items/{hid}", headers=admin)
        gid = item.json()["properties"]["grid_id"]
        gone = c.delete(
            f"/collections/households/items/{hid}",
            headers={**admin, "If-Match": item.headers["etag"]},
        )
        assert gone.status_code == 204, gone.text
        stats = {
            r["id"]: r["households"] for r in c.get("/stats/grids", headers=admin).json()["areas"]
        }
        assert stats[gid] == int(before[gid]) - 1  # … only while nothing it counts changed
        after = _figures(c, admin)
        if max_age == 0:
            assert after[gid] == str(stats[gid])
        else:
            assert after == before  # the colours of a minute ago, by design


def test_misses_at_once_draw_once() -> None:
    """Eight requests missing the same layer at once: it is drawn once, all get it."""
    import threading
    import time

    from gridmap.maps.cache import PageCache

    cache = PageCache()
    drawn = []

    def draw() -> str:
        drawn.append(1)
        time.sleep(0.2)
        return "page"

    got: list[str] = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.get_or_render("k", draw)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert drawn == [1] and got == ["page"] * 8


@pytest.mark.parametrize(
    "bbox",
    ["113.3,34.8,113.3,34.8", "0,0,0,0", "105,35,105,35", "-180,-90,180,90", "150,60,170,70"],
)
def test_odd_views_over_amap_answer_quickly(client, bbox: str) -> None:  # type: ignore[no-untyped-def]
    """A box with no area, the whole world, a box outside China: an answer, not a 500,
    and the world box costs no more than a few conversions (GCJ-02 only over China)."""
    import time

    started = time.perf_counter()
    r = _get(client, "households", basemap="amap", bbox=bbox, zoom=16)
    assert r.status_code == 200, r.text
    assert time.perf_counter() - started < 5  # it took 5-10 s of CPU before


def test_a_tag_changes_only_with_what_the_caller_sees(edit_client, edit_auth, edit_path) -> None:  # type: ignore[no-untyped-def]
    """A grid worker's household figures keep their ETag when a household of another grid
    changes (no activity elsewhere shows), and change when one of theirs does."""
    from gridmap.store import Query, open_store

    worker = edit_auth["grid_worker"]
    first = _get(edit_client, "households", worker, zoom=14)
    mine = {c[2] for c in first.json()["counts"]}
    store = open_store(edit_path)
    try:
        other = store.query("households", Query(limit=1, equals={"grid_id": 20})).ids[0]
        store.update("households", int(other), properties={"members": 6})
    finally:
        store.close()
    again = _get(
        edit_client, "households", {**worker, "If-None-Match": first.headers["etag"]}, zoom=14
    )
    assert again.status_code == 304 and mine
