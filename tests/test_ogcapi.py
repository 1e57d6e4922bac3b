"""OGC API – Features Parts 1–4 over real HTTP clients (GDAL OAPIF, OWSLib) and TestClient."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
from fastapi.testclient import TestClient
from owslib.ogcapi.features import Features

from api.routes.features import CONFORMANCE
from gridmap import crs as gcrs
from gridmap.layers import LAYERS
from gridmap.store import FeatureStore, Query
from tests.conftest import eventually, raw_sql

M_PER_DEG = 111_320.0

# ----------------------------------------------------------------------------- real clients


@pytest.fixture
def gdal_as_admin(admin_headers: dict[str, str]) -> Iterator[None]:
    """GDAL sends the admin's bearer token with every HTTP request (as QGIS would)."""
    token = admin_headers["Authorization"].split()[1]
    pyogrio.set_gdal_config_options({"GDAL_HTTP_AUTH": "BEARER", "GDAL_HTTP_BEARER": token})
    yield
    pyogrio.set_gdal_config_options({"GDAL_HTTP_AUTH": None, "GDAL_HTTP_BEARER": None})


def test_gdal_oapif_reads_every_collection(
    live_server: str, sample_store: FeatureStore, gdal_as_admin: None
) -> None:
    url = f"OAPIF:{live_server}"
    listed = dict(pyogrio.list_layers(url).tolist())
    assert listed == {layer.id: layer.geometry_type for layer in LAYERS}
    for layer in LAYERS:
        df = pyogrio.read_dataframe(url, layer=layer.id)
        fs = sample_store.query(layer.id)
        assert len(df) == len(fs), layer.id
        got = shapely.normalize(df.geometry.values)
        want = shapely.normalize(fs.geometries)
        assert shapely.equals_exact(got, want, tolerance=1e-9).all(), layer.id
        name = layer.properties[0].name
        assert df[name].tolist() == [p[name] for p in fs.properties], layer.id


def test_gdal_oapif_bbox_request(
    live_server: str, sample_store: FeatureStore, gdal_as_admin: None
) -> None:
    bbox = (113.28, 34.80, 113.30, 34.82)
    df = pyogrio.read_dataframe(f"OAPIF:{live_server}", layer="households", bbox=bbox)
    assert len(df) == sample_store.count("households", Query(bbox=bbox)) > 0


def test_owslib_pages_through_every_collection(
    live_server: str, sample_store: FeatureStore, admin_headers: dict[str, str]
) -> None:
    w = Features(live_server, headers=admin_headers)
    assert {c["id"] for c in w.collections()["collections"]} == {la.id for la in LAYERS}
    assert (
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
        in (w.conformance()["conformsTo"])
    )
    for layer in LAYERS:
        ids: list[int] = []
        offset = 0
        while True:
            page = w.collection_items(layer.id, limit=1000, offset=offset)
            ids += [f["id"] for f in page["features"]]
            offset += 1000
            if not any(link["rel"] == "next" for link in page["links"]):
                break
        assert ids == sample_store.query(layer.id).ids.tolist(), layer.id
    q = w.collection_queryables("households")
    assert "tags" in q["properties"]


def test_qgis_style_requests(client: TestClient, sample_store: FeatureStore) -> None:
    """bbox in EPSG:4326 (lat-first) + output EPSG:3857 + paging, as QGIS sends them."""
    bbox = (34.80, 113.28, 34.82, 113.30)  # lat, lon order for EPSG:4326
    expected = sample_store.query("households", Query(bbox=(113.28, 34.80, 113.30, 34.82)))
    seen: list[int] = []
    offset = 0
    while True:
        r = client.get(
            "/collections/households/items",
            params={
                "bbox": ",".join(map(str, bbox)),
                "bbox-crs": "http://www.opengis.net/def/crs/EPSG/0/4326",
                "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
                "limit": 500,
                "offset": offset,
            },
        )
        assert r.status_code == 200
        assert r.headers["content-crs"] == "<http://www.opengis.net/def/crs/EPSG/0/3857>"
        body = r.json()
        assert body["numberMatched"] == len(expected)
        seen += [f["id"] for f in body["features"]]
        x, y = body["features"][0]["geometry"]["coordinates"]
        assert 1.26e7 < x < 1.27e7 and 4.1e6 < y < 4.2e6  # metres
        offset += 500
        if offset >= body["numberMatched"]:
            break
    assert seen == expected.ids.tolist()


# ----------------------------------------------------------------------------- Part 1 core


def test_conformance_declares_what_is_tested(client: TestClient) -> None:
    assert client.get("/conformance").json()["conformsTo"] == CONFORMANCE
    api = client.get("/openapi.json").json()
    paths = api["paths"]
    for p in ("/collections/{collection_id}/items", "/collections/{collection_id}/queryables"):
        assert p in paths
    assert {"post"} <= set(paths["/collections/{collection_id}/items"])
    assert {"get", "put", "patch", "delete"} <= set(
        paths["/collections/{collection_id}/items/{feature_id}"]
    )


def test_openapi_documents_every_items_parameter(client: TestClient) -> None:
    """The items routes read their query parameters themselves; the schema still lists
    each with its rules, as clients (and schemathesis) generate requests from it."""
    paths = client.get("/openapi.json").json()["paths"]
    got = {
        p["name"]: p["schema"]
        for p in paths["/collections/{collection_id}/items"]["get"]["parameters"]
        if p["in"] == "query"
    }
    assert set(got) == {
        "bbox", "bbox-crs", "crs", "limit", "offset", "datetime", "properties", "sortby",
        "filter", "filter-lang", "filter-crs", "f",
    }  # fmt: skip
    assert got["limit"] == {"type": "integer", "minimum": 1}
    assert got["offset"] == {"type": "integer", "minimum": 0, "maximum": 100_000_000, "default": 0}
    assert got["filter"] == {"type": "string", "maxLength": 20_000}
    one = paths["/collections/{collection_id}/items/{feature_id}"]["get"]["parameters"]
    assert {p["name"] for p in one if p["in"] == "query"} == {"crs", "properties", "f"}
    r = client.get("/collections/grids/items?limit=2&limit=3")
    assert len(r.json()["features"]) == 3  # the last of a repeated parameter, as before
    detail = client.get("/collections/grids/items?offset=x").json()["detail"]
    assert "offset" in detail


def test_collection_metadata(client: TestClient, sample_store: FeatureStore) -> None:
    c = client.get("/collections/households").json()
    assert c["itemType"] == "feature"
    assert c["storageCrs"] == gcrs.CRS84
    assert set(gcrs.SUPPORTED_CRS) == set(c["crs"])
    lo, hi = c["extent"]["temporal"]["interval"][0]
    assert (lo, hi) == sample_store.time_extent("households")
    assert "temporal" not in client.get("/collections/grids").json()["extent"]


def test_property_filters_selection_and_sorting(
    client: TestClient, sample_store: FeatureStore
) -> None:
    r = client.get("/collections/toilets/items?status=planned&properties=name,status&sortby=-name")
    body = r.json()
    names = [f["properties"]["name"] for f in body["features"]]
    expected = sorted(
        (p["name"] for p in sample_store.query("toilets").properties if p["status"] == "planned"),
        reverse=True,
    )
    assert names == expected
    assert all(set(f["properties"]) == {"name", "status"} for f in body["features"])
    r = client.get("/collections/households/items?tags=hardship&limit=1")
    assert r.json()["numberMatched"] == 240
    r = client.get("/collections/households/items?members=6&limit=1")
    want = sum(1 for p in sample_store.query("households").properties if p["members"] == 6)
    assert r.json()["numberMatched"] == want


def test_datetime_parameter(client: TestClient, sample_store: FeatureStore) -> None:
    props = sample_store.query("households").properties
    since = "2026-11-20T00:00:00"
    want = sum(1 for p in props if p["last_visit_at"] and p["last_visit_at"] >= since)
    r = client.get("/collections/households/items", params={"datetime": f"{since}/..", "limit": 1})
    assert r.json()["numberMatched"] == want
    r = client.get("/collections/households/items", params={"datetime": "2026-11-20", "limit": 1})
    day = sum(1 for p in props if (p["last_visit_at"] or "").startswith("2026-11-20"))
    assert r.json()["numberMatched"] == day
    r = client.get("/collections/grids/items", params={"datetime": "2026-11-20"})
    assert r.status_code == 400 and "time dimension" in r.json()["detail"]


def test_html_views(client: TestClient) -> None:
    for url in (
        "/?f=html",
        "/collections?f=html",
        "/collections/grids?f=html",
        "/collections/grids/items?f=html&limit=5",
        "/collections/grids/items/1?f=html",
    ):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), url
        assert "<html" in r.text and ("网格" in r.text or "图层" in r.text)
    r = client.get("/collections/grids/items", headers={"Accept": "text/html"})
    assert "网格员" in r.text and "下一页" not in r.text
    r = client.get("/collections/households/items?f=html&limit=5")
    assert "下一页" in r.text


# ----------------------------------------------------------------------------- Part 2 CRS


EPSG_OFFERED = [u for u in gcrs.SUPPORTED_CRS if "/EPSG/" in u]


@pytest.mark.parametrize("crs_uri", EPSG_OFFERED)
def test_coordinates_follow_each_crs_own_axis_order(
    client: TestClient, sample_store: FeatureStore, crs_uri: str
) -> None:
    """Absolute coordinates against PROJ in the authority's axis order (not always_xy):
    EPSG:4326/4490 lat, lon; EPSG:4547 northing, easting; EPSG:3857 x, y."""
    from pyproj import Transformer

    code = int(crs_uri.rsplit("/", 1)[1])
    to_crs = Transformer.from_crs("EPSG:4326", f"EPSG:{code}")  # authority order both ways
    p = sample_store.get("toilets", 1).geometry
    want = to_crs.transform(p.y, p.x)
    got = client.get("/collections/toilets/items/1", params={"crs": crs_uri}).json()
    assert got["geometry"]["coordinates"] == pytest.approx(list(want), abs=1e-6)
    # a bbox in that CRS, in its axis order, finds the toilet; the swapped box does not
    d = 20.0 if code in (3857, 4547) else 2e-4
    box = [want[0] - d, want[1] - d, want[0] + d, want[1] + d]
    swapped = [box[1], box[0], box[3], box[2]]
    for b, hit in ((box, True), (swapped, False)):
        r = client.get(
            "/collections/toilets/items",
            params={"bbox": ",".join(map(str, b)), "bbox-crs": crs_uri},
        )
        assert (
            r.status_code in (200, 400)
            and (1 in [f["id"] for f in r.json().get("features", [])]) is hit
        )
    # a filter geometry in that CRS, in its axis order
    r = client.get(
        "/collections/toilets/items",
        params={
            "filter": f"S_DWITHIN(geom, POINT({want[0]} {want[1]}), 1)",
            "filter-crs": crs_uri,
        },
    )
    assert [f["id"] for f in r.json()["features"]] == [1]


@pytest.mark.parametrize("crs_uri", list(gcrs.SUPPORTED_CRS))
def test_every_crs_round_trips(edit_client: TestClient, crs_uri: str) -> None:
    """Read a toilet in crs X, write it back with Content-Crs X: it stays where it was."""
    r = edit_client.get("/collections/toilets/items/1", params={"crs": crs_uri})
    assert r.headers["content-crs"] == f"<{crs_uri}>"
    feature = r.json()
    x, y = feature["geometry"]["coordinates"]
    if gcrs.is_lat_lon_order(crs_uri):
        assert 34 < x < 35 and 113 < y < 114
    if crs_uri.endswith("/4547"):
        assert 3_800_000 < x < 3_900_000 and 400_000 < y < 500_000  # northing, easting
    original = edit_client.get("/collections/toilets/items/1").json()["geometry"]["coordinates"]
    r2 = edit_client.put(
        "/collections/toilets/items/1",
        json={
            "type": "Feature",
            "geometry": feature["geometry"],
            "properties": feature["properties"],
        },
        headers={"If-Match": r.headers["etag"], "Content-Crs": f"<{crs_uri}>"},
    )
    assert r2.status_code == 200, r2.text
    back = edit_client.get("/collections/toilets/items/1").json()["geometry"]["coordinates"]
    err_m = np.hypot(back[0] - original[0], back[1] - original[1]) * M_PER_DEG
    assert err_m < 0.01


def test_gcj02_point_round_trips_within_a_centimetre(edit_client: TestClient) -> None:
    lon, lat = 113.29, 34.81
    gx, gy = gcrs.wgs84_to_gcj02([lon], [lat])
    body = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [gx[0], gy[0]]},
        "properties": {"name": "高德选点公厕"},
    }
    r = edit_client.post("/collections/toilets/items", json=body, headers={"Content-Crs": "gcj02"})
    assert r.status_code == 201, r.text
    stored = r.json()["geometry"]["coordinates"]
    assert np.hypot(stored[0] - lon, stored[1] - lat) * M_PER_DEG < 0.01
    fid = r.json()["id"]
    out = edit_client.get(f"/collections/toilets/items/{fid}?crs=gcj02").json()
    assert (
        np.hypot(
            out["geometry"]["coordinates"][0] - gx[0], out["geometry"]["coordinates"][1] - gy[0]
        )
        * M_PER_DEG
        < 0.01
    )


def test_undeclared_gcj02_is_refused(edit_client: TestClient) -> None:
    """GCJ-02 sent as WGS84 lands ~500 m off; outside the subdistrict it is refused."""
    gx, gy = gcrs.wgs84_to_gcj02([113.3285], [34.7965])  # near the south-east edge
    body = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [gx[0], gy[0]]},
        "properties": {"name": "x"},
    }
    r = edit_client.post("/collections/toilets/items", json=body)
    assert r.status_code == 422 and "gcj02" in r.json()["detail"]


@pytest.mark.parametrize("crs_uri", list(gcrs.SUPPORTED_CRS))
def test_bbox_crs_selects_the_same_area(
    client: TestClient, sample_store: FeatureStore, crs_uri: str
) -> None:
    area = shapely.box(113.28, 34.80, 113.30, 34.82)
    ring = gcrs.to_output([shapely.segmentize(area, 0.0005)], crs_uri)[0]
    inner = ring.bounds  # this envelope in crs X contains the area
    r = client.get(
        "/collections/households/items",
        params={"bbox": ",".join(map(str, inner)), "bbox-crs": crs_uri, "limit": 1},
    )
    assert r.status_code == 200, r.text
    poly = gcrs.bbox_to_wgs84(inner, crs_uri)[1] or shapely.box(
        *gcrs.bbox_to_wgs84(inner, crs_uri)[0]
    )
    want = sample_store.count("households", Query(geometry=poly))
    assert r.json()["numberMatched"] == want
    assert want >= sample_store.count("households", Query(bbox=(113.28, 34.80, 113.30, 34.82)))


# ----------------------------------------------------------------------------- Part 3 CQL2

CQL_PAIRS: list[tuple[str, dict[str, Any]]] = [
    ("members > 4", {"op": ">", "args": [{"property": "members"}, 4]}),
    ("room LIKE '1单元%'", {"op": "like", "args": [{"property": "room"}, "1单元%"]}),
    ("members IN (1, 6)", {"op": "in", "args": [{"property": "members"}, [1, 6]]}),
    ("members BETWEEN 2 AND 3", {"op": "between", "args": [{"property": "members"}, 2, 3]}),
    ("last_visit_status IS NULL", {"op": "isNull", "args": [{"property": "last_visit_status"}]}),
    (
        "NOT (members = 1) AND last_visit_status = 'refused'",
        {
            "op": "and",
            "args": [
                {"op": "not", "args": [{"op": "=", "args": [{"property": "members"}, 1]}]},
                {"op": "=", "args": [{"property": "last_visit_status"}, "refused"]},
            ],
        },
    ),
    (
        "members = 5 OR last_visit_status = 'follow_up'",
        {
            "op": "or",
            "args": [
                {"op": "=", "args": [{"property": "members"}, 5]},
                {"op": "=", "args": [{"property": "last_visit_status"}, "follow_up"]},
            ],
        },
    ),
    (
        "T_AFTER(last_visit_at, TIMESTAMP('2026-11-20T00:00:00Z'))",
        {
            "op": "t_after",
            "args": [{"property": "last_visit_at"}, {"timestamp": "2026-11-20T00:00:00Z"}],
        },
    ),
    (
        "A_CONTAINS(tags, ('hardship', 'heating_subsidy'))",
        {"op": "a_contains", "args": [{"property": "tags"}, ["hardship", "heating_subsidy"]]},
    ),
    (
        "S_INTERSECTS(geom, POLYGON((113.28 34.80, 113.29 34.80, 113.29 34.81, "
        "113.28 34.81, 113.28 34.80)))",
        {
            "op": "s_intersects",
            "args": [
                {"property": "geom"},
                {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [113.28, 34.80],
                            [113.29, 34.80],
                            [113.29, 34.81],
                            [113.28, 34.81],
                            [113.28, 34.80],
                        ]
                    ],
                },
            ],
        },
    ),
    (
        "S_WITHIN(geom, POLYGON((113.28 34.80, 113.29 34.80, 113.29 34.81, 113.28 34.80)))",
        {
            "op": "s_within",
            "args": [
                {"property": "geom"},
                {
                    "type": "Polygon",
                    "coordinates": [
                        [[113.28, 34.80], [113.29, 34.80], [113.29, 34.81], [113.28, 34.80]]
                    ],
                },
            ],
        },
    ),
    (
        "S_DWITHIN(geom, POINT(113.2919 34.8096), 150)",
        {
            "op": "s_dwithin",
            "args": [
                {"property": "geom"},
                {"type": "Point", "coordinates": [113.2919, 34.8096]},
                150,
            ],
        },
    ),
]


def _python_filter(props: dict[str, Any], geom: shapely.Geometry, text: str) -> bool | None:
    """An independent evaluation of some of the filters above, for cross-checking."""
    m = props["members"]
    if text == "members > 4":
        return m > 4
    if text == "members IN (1, 6)":
        return m in (1, 6)
    if text == "members BETWEEN 2 AND 3":
        return 2 <= m <= 3
    if text.startswith("A_CONTAINS"):
        return {"hardship", "heating_subsidy"} <= set(props["tags"])
    if text.startswith("S_DWITHIN"):
        a, b = gcrs.to_metric([geom, shapely.Point(113.2919, 34.8096)])
        return a.distance(b) <= 150
    return None


@pytest.mark.parametrize(("text", "tree"), CQL_PAIRS, ids=[p[0][:40] for p in CQL_PAIRS])
def test_cql2_text_and_json_agree(
    client: TestClient, sample_store: FeatureStore, text: str, tree: dict[str, Any]
) -> None:
    a = client.get("/collections/households/items", params={"filter": text, "limit": 1000})
    b = client.get(
        "/collections/households/items",
        params={"filter": json.dumps(tree), "filter-lang": "cql2-json", "limit": 1000},
    )
    assert a.status_code == 200, a.text
    assert b.status_code == 200, b.text
    ids_a = [f["id"] for f in a.json()["features"]]
    ids_b = [f["id"] for f in b.json()["features"]]
    assert ids_a == ids_b
    assert a.json()["numberMatched"] == b.json()["numberMatched"] > 0
    fs = sample_store.query("households")
    expected = [
        int(i)
        for i, p, g in zip(fs.ids, fs.properties, fs.geometries, strict=True)
        if _python_filter(p, g, text)
    ]
    if _python_filter(fs.properties[0], fs.geometries[0], text) is not None:
        assert a.json()["numberMatched"] == len(expected)
        assert ids_a == expected[:1000]


def test_filter_crs_gcj02(client: TestClient) -> None:
    gx, gy = gcrs.wgs84_to_gcj02([113.2919], [34.8096])
    plain = client.get(
        "/collections/households/items",
        params={"filter": "S_DWITHIN(geom, POINT(113.2919 34.8096), 150)"},
    ).json()
    shifted = client.get(
        "/collections/households/items",
        params={"filter": f"S_DWITHIN(geom, POINT({gx[0]} {gy[0]}), 150)", "filter-crs": "gcj02"},
    ).json()
    assert plain["numberMatched"] == shifted["numberMatched"] > 0


def test_queryables(client: TestClient) -> None:
    r = client.get("/collections/households/queryables")
    assert r.headers["content-type"] == "application/schema+json"
    q = r.json()
    assert q["type"] == "object" and q["properties"]["geom"]["format"] == "geometry-point"
    assert q["properties"]["tags"]["items"]["enum"][0] == "elderly_alone"
    assert q["properties"]["grid_id"]["readOnly"] is True


# ----------------------------------------------------------------------------- Part 4 editing


def _version(path: Path, layer: str) -> tuple[int, int]:
    (row,) = raw_sql(path, f'SELECT count(*), coalesce(sum(version), 0) FROM "{layer}"')
    return int(row[0]), int(row[1])


def test_create_replace_patch_delete_with_etags(edit_client: TestClient, edit_path: Path) -> None:
    body = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [113.2905, 34.8105]},
        "properties": {"name": "新建公厕", "status": "planned", "units": 8},
    }
    r = edit_client.post("/collections/toilets/items", json=body)
    assert r.status_code == 201
    loc = r.headers["location"]
    fid = r.json()["id"]
    assert loc.endswith(f"/collections/toilets/items/{fid}")
    tag1 = r.headers["etag"]
    assert tag1 == f'"toilets-{fid}-v1"'
    # reads give the same strong ETag
    assert edit_client.get(f"/collections/toilets/items/{fid}").headers["etag"] == tag1
    url = f"/collections/toilets/items/{fid}"
    # 428 without If-Match, nothing changes
    r = edit_client.patch(url, json={"properties": {"units": 9}})
    assert r.status_code == 428
    assert edit_client.get(url).json()["properties"]["units"] == 8
    r = edit_client.patch(
        url,
        json={"properties": {"units": 9, "grade": None}},
        headers={"If-Match": tag1, "Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200 and r.json()["properties"]["units"] == 9
    tag2 = r.headers["etag"]
    assert tag2 == f'"toilets-{fid}-v2"'
    # stale tag: 412, nothing changed
    r = edit_client.put(url, json=body, headers={"If-Match": tag1})
    assert r.status_code == 412
    assert edit_client.get(url).json()["properties"]["units"] == 9
    r = edit_client.put(
        url, json={**body, "properties": {"name": "改名"}}, headers={"If-Match": tag2}
    )
    assert r.status_code == 200
    assert r.json()["properties"]["units"] is None and r.json()["properties"]["name"] == "改名"
    tag3 = r.headers["etag"]
    assert edit_client.delete(url).status_code == 428
    assert edit_client.delete(url, headers={"If-Match": tag2}).status_code == 412
    assert edit_client.delete(url, headers={"If-Match": tag3}).status_code == 204
    assert edit_client.get(url).status_code == 404


def test_household_grid_id_is_derived_by_the_server(edit_client: TestClient) -> None:
    loc = edit_client.get("/locate?lon=113.2919&lat=34.8096").json()
    body = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [113.2919, 34.8096]},
        "properties": {"room": "新1室", "members": 2, "tags": ["elderly_alone"]},
    }
    r = edit_client.post("/collections/households/items", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["properties"]["grid_id"] == loc["grid"]["id"]
    body["properties"]["grid_id"] = 1
    r = edit_client.post("/collections/households/items", json=body)
    assert r.status_code == 422 and "computed by the server" in r.json()["detail"]


BIG = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [113.29, 34.81]},
    "properties": {"name": "x" * 300_000},
}
BAD_BODIES: list[tuple[str, Any, int]] = [
    ("not json", b"{nope", 400),
    (
        "NaN coordinate",
        b'{"type":"Feature","geometry":{"type":"Point","coordinates":[NaN,34.8]},'
        b'"properties":{"name":"x"}}',
        400,
    ),
    (
        "Infinity",
        b'{"type":"Feature","geometry":{"type":"Point","coordinates":[Infinity,34.8]},'
        b'"properties":{"name":"x"}}',
        400,
    ),
    (
        "huge number",
        b'{"type":"Feature","geometry":{"type":"Point","coordinates":[1e999,34.8]},'
        b'"properties":{"name":"x"}}',
        400,
    ),
    (
        "string coordinate",
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": ["113.29", 34.81]},
            "properties": {"name": "x"},
        },
        422,
    ),
    (
        "string number",
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [113.29, 34.81]},
            "properties": {"name": "x", "units": "8"},
        },
        422,
    ),
    (
        "unknown property",
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [113.29, 34.81]},
            "properties": {"name": "x", "colour": 1},
        },
        422,
    ),
    (
        "missing required",
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [113.29, 34.81]},
            "properties": {"units": 1},
        },
        422,
    ),
    (
        "wrong geometry type",
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[113.29, 34.81], [113.3, 34.81]]},
            "properties": {"name": "x"},
        },
        422,
    ),
    (
        "swapped lat/lon",
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [34.81, 113.29]},
            "properties": {"name": "x"},
        },
        422,
    ),
    ("no geometry", {"type": "Feature", "geometry": None, "properties": {"name": "x"}}, 422),
    ("not a feature", {"type": "FeatureCollection", "features": []}, 422),
    (
        "extra member",
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [113.29, 34.81]},
            "properties": {"name": "x"},
            "evil": 1,
        },
        422,
    ),
    ("too deep", json.loads("[" * 40 + "]" * 40), 400),
    ("oversized", BIG, 413),
]


def test_wrong_media_type_is_415(edit_client: TestClient, edit_path: Path) -> None:
    before = _version(edit_path, "toilets")
    r = edit_client.post(
        "/collections/toilets/items",
        content=b"name=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415 and "application/geo+json" in r.json()["detail"]
    assert _version(edit_path, "toilets") == before


TEMPORAL = [
    ("T_AFTER", lambda x, lo, hi: x > hi),
    ("T_BEFORE", lambda x, lo, hi: x < lo),
    ("T_DURING", lambda x, lo, hi: lo < x < hi),
    ("T_INTERSECTS", lambda x, lo, hi: lo <= x <= hi),
    ("T_DISJOINT", lambda x, lo, hi: x < lo or x > hi),
    ("T_CONTAINS", lambda x, lo, hi: x < lo and x > hi),
    ("T_MEETS", lambda x, lo, hi: x == lo),
    ("T_METBY", lambda x, lo, hi: x == hi),
    ("T_STARTS", lambda x, lo, hi: x == lo and x < hi),
    ("T_FINISHES", lambda x, lo, hi: x > lo and x == hi),
]


@pytest.mark.parametrize(("op", "rule"), TEMPORAL, ids=[t[0] for t in TEMPORAL])
def test_temporal_functions_follow_cql2(
    client: TestClient, sample_store: FeatureStore, op: str, rule: Any
) -> None:
    """Against an interval (Beijing time = UTC+8) and both argument orders."""
    visits = sorted(
        p["last_visit_at"]
        for p in sample_store.query("households").properties
        if p["last_visit_at"]
    )
    lo_local, hi_local = visits[len(visits) // 3], visits[2 * len(visits) // 3]

    def utc(t: str) -> str:
        return (dt.datetime.fromisoformat(t) - dt.timedelta(hours=8)).isoformat() + "Z"

    want = sum(1 for x in visits if rule(x, lo_local, hi_local))
    text = f"{op}(last_visit_at, INTERVAL('{utc(lo_local)}', '{utc(hi_local)}'))"
    r = client.get("/collections/households/items", params={"filter": text, "limit": 1})
    assert r.status_code == 200, r.text
    assert r.json()["numberMatched"] == want


def test_arithmetic_in_filters(client: TestClient, sample_store: FeatureStore) -> None:
    members = [p["members"] for p in sample_store.query("households").properties]
    for text, rule in [
        ("members % 2 = 1", lambda m: m % 2 == 1),
        ("members div 2 = 1", lambda m: m // 2 == 1),
        ("members / 2 = 1.5", lambda m: m / 2 == 1.5),
        ("members * 2 + 1 > 9", lambda m: m * 2 + 1 > 9),
        ("members ^ 2 = 9", lambda m: m**2 == 9),
    ]:
        r = client.get("/collections/households/items", params={"filter": text, "limit": 1})
        assert r.json()["numberMatched"] == sum(1 for m in members if rule(m)), text


@pytest.mark.parametrize(("case", "body", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_refused_and_nothing_is_written(
    edit_client: TestClient, edit_path: Path, case: str, body: Any, status: int
) -> None:
    before = _version(edit_path, "toilets")
    if isinstance(body, bytes):
        r = edit_client.post(
            "/collections/toilets/items", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        r = edit_client.post("/collections/toilets/items", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    assert "Traceback" not in detail and "SELECT" not in detail
    assert _version(edit_path, "toilets") == before


@pytest.mark.parametrize(
    ("geometry", "layer", "needle"),
    [
        (
            {
                "type": "Polygon",
                "coordinates": [
                    [
                        [113.28, 34.80],
                        [113.29, 34.81],
                        [113.29, 34.80],
                        [113.28, 34.81],
                        [113.28, 34.80],
                    ]
                ],
            },
            "old_neighbourhoods",
            "Self-intersection",
        ),
        (
            {
                "type": "Polygon",
                "coordinates": [[[113.28, 34.80], [113.29, 34.81], [113.29, 34.80]]],
            },
            "old_neighbourhoods",
            "at least 4",
        ),
        (
            {
                "type": "Polygon",
                "coordinates": [
                    [[113.28, 34.80], [113.29, 34.81], [113.29, 34.80], [113.281, 34.80]]
                ],
            },
            "old_neighbourhoods",
            "not closed",
        ),
        ({"type": "LineString", "coordinates": [[113.28, 34.80]]}, "roads", "at least 2"),
    ],
)
def test_invalid_geometries_say_why_and_where(
    edit_client: TestClient, edit_path: Path, geometry: dict, layer: str, needle: str
) -> None:
    before = _version(edit_path, layer)
    r = edit_client.post(
        f"/collections/{layer}/items",
        json={"type": "Feature", "geometry": geometry, "properties": {"name": "x"}},
    )
    assert r.status_code == 422 and needle in r.json()["detail"]
    assert _version(edit_path, layer) == before


BAD_QUERIES = [
    "bbox=1,2,3",
    "bbox=1,2,3,4,5,6",
    "bbox=a,b,c,d",
    "bbox=113.3,34.8,113.2,34.9",
    "bbox=nan,34.8,113.3,34.9",
    "bbox=34.8,113.2,34.9,113.3",
    "bbox=,,,",
    "crs=EPSG:9999",
    "crs=http://example.com/evil",
    "bbox-crs=urn:bogus",
    "filter-crs=EPSG:1",
    "limit=0",
    "limit=-5",
    "offset=-1",
    "limit=1e999",
    "limit=\u0663",
    "limit=1_000",
    "offset=100000001",
    "crs=" + "x" * 201,
    "nosuchparam=1",
    "name';DROP TABLE grids;--=1",
    "sortby=name;DROP TABLE grids",
    'properties=name,"evil"',
    "filter=name = 'x'; DROP TABLE grids",
    "filter=nosuch = 1",
    'filter="name\\"; DROP TABLE grids; --" = 1',
    "filter=S_INTERSECTS(geom, POINT(nan 1))",
    "filter=target_households > 'abc'",
    'filter-lang=cql2-json&filter={"op": "=", "args": [{"property": "x"}, 1]}',
    "filter-lang=cql2-json&filter=[",
    "filter-lang=sql&filter=1=1",
    "filter=" + "NOT " * 200 + "code = 'a'",
    "datetime=2026-11-20",
    "f=xml",
    "community_id=abc",
]


@pytest.mark.parametrize("query", BAD_QUERIES)
def test_malformed_queries_are_400(
    client: TestClient, sample_store: FeatureStore, query: str
) -> None:
    before = sample_store.count("grids")
    r = client.get(f"/collections/grids/items?{query}")
    assert r.status_code == 400, (query, r.status_code, r.text[:200])
    assert r.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in r.text
    assert sample_store.count("grids") == before


def test_lists_and_masked_fields_are_not_sorted_by(client: TestClient) -> None:
    """A list has no order both backends share; a masked field's order would leak it."""
    r = client.get("/collections/households/items?sortby=-tags")
    assert r.status_code == 400 and "holds a list" in r.json()["detail"]
    assert client.get("/collections/households/items?sortby=id_number").status_code in (400, 403)
    assert client.get("/collections/households/items?sortby=-members&limit=3").status_code == 200


def test_feature_not_found_paths(client: TestClient) -> None:
    for url in (
        "/collections/grids/items/0",
        "/collections/grids/items/-1",
        "/collections/grids/items/9999999999999999999999",
        "/collections/x/items/1",
    ):
        assert client.get(url).status_code == 404, url


# ----------------------------------------------------------------------------- domain queries


def test_locate(client: TestClient, sample_store: FeatureStore) -> None:
    r = client.get("/locate?lon=113.2919&lat=34.8096").json()
    assert r["zone"]["name"].endswith("联合片区")
    grid = sample_store.get("grids", r["grid"]["id"])
    assert grid.geometry.contains(shapely.Point(113.2919, 34.8096))
    assert r["grid"]["worker_name"] == grid.properties["worker_name"]
    comm = sample_store.get("communities", r["community"]["id"])
    assert grid.properties["community_id"] == comm.id
    outside = client.get("/locate?lon=113.20&lat=34.70").json()
    assert outside["zone"] is None and outside["grid"] is None
    gx, gy = gcrs.wgs84_to_gcj02([113.2919], [34.8096])
    same = client.get(f"/locate?lon={gx[0]}&lat={gy[0]}&crs=gcj02").json()
    assert same["grid"] == r["grid"]
    assert client.get("/locate?lon=abc&lat=1").status_code == 400
    assert client.get("/locate?lon=nan&lat=1").status_code == 400
    assert client.get("/locate?lon=200&lat=1").status_code == 422


def test_nearest_matches_brute_force(client: TestClient, sample_store: FeatureStore) -> None:
    r = client.get("/nearest?collection=toilets&lon=113.2919&lat=34.8096&k=4").json()
    got = [(f["id"], f["properties"]["distance_m"]) for f in r["features"]]
    fs = sample_store.query("toilets")
    pts = gcrs.to_metric([*fs.geometries, shapely.Point(113.2919, 34.8096)])
    d = shapely.distance(pts[:-1], pts[-1])
    order = np.argsort(d)[:4]
    assert [g[0] for g in got] == fs.ids[order].tolist()
    assert [g[1] for g in got] == pytest.approx(d[order].tolist(), abs=0.01)
    r = client.get("/nearest?collection=cameras&lon=113.2919&lat=34.8096&k=100").json()
    assert len(r["features"]) == 100
    dist = [f["properties"]["distance_m"] for f in r["features"]]
    assert dist == sorted(dist)
    assert client.get("/nearest?collection=nope&lon=1&lat=2").status_code == 404
    assert client.get("/nearest?collection=toilets&lon=1&lat=2&k=0").status_code == 400


def test_stats(client: TestClient, sample_store: FeatureStore) -> None:
    hh = sample_store.query("households").properties
    for level in ("grids", "communities", "zones"):
        rows = client.get(f"/stats/{level}").json()["areas"]
        assert sum(r["households"] for r in rows) == len(hh)
        assert sum(r["population"] for r in rows) == sum(p["members"] for p in hh)
        assert sum(r["tags"]["heating_subsidy"] for r in rows) == 186
        assert len(rows) == sample_store.count(level)
    assert client.get("/stats/planets").status_code == 400


def test_cached_pages_follow_every_write(edit_client: TestClient, edit_path: Path) -> None:
    """Items pages come from an encoded cache; edits by the API or by others show at once."""
    url = "/collections/toilets/items?bbox=113.2,34.7,113.4,34.9"

    def names() -> dict[int, str]:
        return {f["id"]: f["properties"]["name"] for f in edit_client.get(url).json()["features"]}

    before = names()
    fid = min(before)
    tag = edit_client.get(f"/collections/toilets/items/{fid}").headers["etag"]
    r = edit_client.patch(
        f"/collections/toilets/items/{fid}",
        json={"properties": {"name": "甲"}},
        headers={"If-Match": tag},
    )
    assert r.status_code == 200
    assert names()[fid] == "甲"
    # another client, e.g. QGIS editing the file or the database
    raw_sql(edit_path, "UPDATE toilets SET name = '乙' WHERE fid = ?", fid)
    assert eventually(lambda: names()[fid] == "乙")
    tag = edit_client.get(f"/collections/toilets/items/{fid}").headers["etag"]
    assert tag == f'"toilets-{fid}-v3"'  # the outside edit moved the version too
    r = edit_client.delete(f"/collections/toilets/items/{fid}", headers={"If-Match": tag})
    assert r.status_code == 204, r.text
    assert fid not in names() and len(names()) == len(before) - 1


def test_conditional_requests_and_head(edit_client: TestClient) -> None:
    """RFC 9110: If-Match * matches any existing feature, If-None-Match answers 304 for the
    current ETag, weak tags never satisfy If-Match, HEAD works wherever GET does."""
    url = "/collections/toilets/items/2"
    cur = edit_client.get(url)
    tag = cur.headers["etag"]
    r = edit_client.get(url, headers={"If-None-Match": tag})
    assert r.status_code == 304 and r.headers["etag"] == tag and r.content == b""
    assert edit_client.get(url, headers={"If-None-Match": f"W/{tag}"}).status_code == 304
    assert edit_client.get(url, headers={"If-None-Match": '"toilets-2-v999"'}).status_code == 200
    r = edit_client.patch(url, json={"properties": {"units": 7}}, headers={"If-Match": f"W/{tag}"})
    assert r.status_code == 412
    r = edit_client.patch(url, json={"properties": {"units": 7}}, headers={"If-Match": "*"})
    assert r.status_code == 200 and r.json()["properties"]["units"] == 7
    assert edit_client.get(url, headers={"If-None-Match": tag}).status_code == 200  # changed
    missing = edit_client.patch(
        "/collections/toilets/items/999999", json={"properties": {}}, headers={"If-Match": "*"}
    )
    assert missing.status_code == 404
    r = edit_client.delete(url, headers={"If-Match": "*"})
    assert r.status_code == 204 and edit_client.get(url).status_code == 404
    for path in (
        "/",
        "/conformance",
        "/collections",
        "/collections/toilets",
        "/collections/toilets/items?limit=3",
        "/collections/toilets/items/1",
        "/collections/toilets/queryables",
        "/map",
        "/openapi.json",
    ):
        get, head = edit_client.get(path), edit_client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        assert head.headers.get("etag") == get.headers.get("etag"), path
    assert edit_client.head("/collections/toilets/items/999999").status_code == 404


def test_feature_cache_serves_whole_pages_at_any_size(sample_store: FeatureStore) -> None:
    """A page crossing the cache's limit, or a cache of size 0 (always cold), still holds
    every feature asked for, in order, encoded as the store returns it."""
    import orjson

    from gridmap.geojson import FeatureCache, feature_dicts
    from gridmap.store import Scope

    ids = list(range(1, 31))
    want = [
        orjson.dumps(d) for d in feature_dicts(sample_store.query("toilets", Query(ids=ids[:15])))
    ]
    want = {orjson.loads(b)["id"]: b for b in want}
    for size in (0, 5, 1000):
        cache = FeatureCache(max_features=size)
        for page in (ids[:10], ids[5:15], ids[:15]):
            got = cache.page(sample_store, "toilets", page, scope=Scope())
            assert got == [want[i] for i in page if i in want], size
        kept = sum(len(v[1]) for v in cache._layers.values())
        assert kept <= max(size, 15) and (size > 0 or kept == 0)


@pytest.mark.parametrize("fid", ["²", "①", "１", "١", "1.0", "+1", " 1", "0x1", "1e0"])
def test_feature_ids_are_ascii_digits_only(public_client: TestClient, fid: str) -> None:
    """Unicode digits once gave 500 (²) or another URL for feature 1 (１, ١)."""
    from urllib.parse import quote

    url = f"/collections/toilets/items/{quote(fid)}"
    for method in ("GET", "HEAD"):
        assert public_client.request(method, url).status_code == 404, (method, fid)


def test_edits_that_change_nothing_keep_the_version(edit_client: TestClient) -> None:
    url = "/collections/toilets/items/4"
    cur = edit_client.get(url)
    same = {"properties": {"name": cur.json()["properties"]["name"]}}
    for body in ({}, {"properties": {}}, same, {"geometry": cur.json()["geometry"]}):
        r = edit_client.patch(url, json=body, headers={"If-Match": cur.headers["etag"]})
        assert r.status_code == 200 and r.headers["etag"] == cur.headers["etag"], body
    r = edit_client.patch(url, json={"properties": {"units": 99}}, headers={"If-Match": "*"})
    assert r.headers["etag"] != cur.headers["etag"]


def test_html_and_json_of_one_url_are_told_apart(edit_client: TestClient) -> None:
    url = "/collections/toilets/items/1"
    tag = edit_client.get(url).headers["etag"]
    r = edit_client.get(url, headers={"Accept": "text/html", "If-None-Match": tag})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Accept" in r.headers["vary"] and "Accept" in edit_client.get(url).headers["vary"]


def test_csv_export_holds_everything_asked_in_the_crs_asked(
    client: TestClient, auth: dict[str, dict[str, str]], sample_store: FeatureStore
) -> None:
    from pyproj import Transformer

    n = sample_store.count("households", Query(equals={"grid_id": 1}))
    r = client.get("/collections/households/items?f=csv", headers=auth["grid_worker"])
    rows = r.text.lstrip("\ufeff").splitlines()[1:]
    assert len(rows) == n == int(r.headers["ogc-numbermatched"]) > 100
    r = client.get("/collections/toilets/items?f=csv&crs=EPSG:4547", headers=auth["grid_worker"])
    first = r.text.lstrip("\ufeff").splitlines()[1]
    x, y = map(float, first.split("POINT (")[1].rstrip(")").split())
    p = sample_store.get("toilets", int(first.split(",")[0])).geometry
    want = Transformer.from_crs("EPSG:4326", "EPSG:4547").transform(p.y, p.x)
    assert (x, y) == pytest.approx(want, abs=0.001)  # northing, easting


def test_values_beyond_every_range_are_4xx(edit_client: TestClient) -> None:
    """Review: a projected bbox far beyond the Earth and a time that has no Beijing time
    were answered 500."""
    r = edit_client.get(
        "/collections/households/items",
        params={
            "bbox": "0,0,1e300,1e300",
            "bbox-crs": "http://www.opengis.net/def/crs/EPSG/0/4547",
        },
    )
    assert r.status_code == 400 and "bbox" in r.json()["detail"]
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"):
        tag = edit_client.get("/collections/households/items/1").headers["etag"]
        r = edit_client.patch(
            "/collections/households/items/1",
            json={"properties": {"last_visit_at": when}},
            headers={"If-Match": tag},
        )
        assert r.status_code in (400, 422) and "Beijing" in r.json()["detail"], r.text
