"""Exporting layers as files (issue 13) and the round trip back: what GDAL and openpyxl read
from each format, masking and scope by role, formula safety, uploads over HTTP."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pyogrio
import pytest
from fastapi.testclient import TestClient

from gridmap.io.importer import Options, run
from gridmap.security import Principal, Role
from gridmap.store import open_store
from tests.conftest import raw_sql

ADMIN = Principal("export-test", Role.SUBDISTRICT_ADMIN)
FILES = {
    "gpkg": "gpkg",
    "shp": "zip",
    "geojson": "geojson",
    "csv": "csv",
    "xlsx": "xlsx",
    "kml": "kml",
}


def _export(
    client: TestClient, layer: str, fmt: str, headers: dict[str, str], **params: Any
) -> bytes:
    r = client.get(f"/collections/{layer}/export", params={"f": fmt, **params}, headers=headers)
    assert r.status_code == 200, r.text
    return r.content


@pytest.mark.parametrize("fmt", list(FILES))
@pytest.mark.parametrize("layer", ["households", "grids", "toilets"])
def test_export_then_import_changes_nothing(
    edit_client: TestClient, edit_path: Any, tmp_path: Path, layer: str, fmt: str
) -> None:
    """Every format that can carry a layer brings it back whole: the import finds every
    row identical to the feature it came from (masked values included), on this backend."""
    data = _export(edit_client, layer, fmt, {})
    path = tmp_path / f"{layer}.{FILES[fmt]}"
    path.write_bytes(data)
    n = int(raw_sql(edit_path, f"SELECT COUNT(*) FROM {layer}")[0][0])
    store = open_store(edit_path)
    try:
        report = run(store, path, Options(layer=layer, mode="upsert"), principal=ADMIN)
    finally:
        store.close()
    assert (report.inserted, report.updated, report.deleted, report.unchanged) == (0, 0, 0, n)
    assert report.problem_count == 0


def test_formats_are_what_gdal_and_excel_read(edit_client: TestClient, tmp_path: Path) -> None:
    names = sorted(n for (n,) in _names(edit_client))
    gpkg = tmp_path / "t.gpkg"
    gpkg.write_bytes(_export(edit_client, "toilets", "gpkg", {}))
    info = pyogrio.read_info(gpkg, layer="toilets")
    assert info["crs"] == "EPSG:4326" and info["geometry_type"] == "Point"
    assert sorted(pyogrio.read_dataframe(gpkg)["name"]) == names
    for enc, cpg in (("utf-8", "UTF-8"), ("gbk", "GBK")):
        z = zipfile.ZipFile(io.BytesIO(_export(edit_client, "toilets", "shp", {}, encoding=enc)))
        assert z.read("toilets.cpg").decode().strip() == cpg
        z.extractall(tmp_path / enc)
        shp = pyogrio.read_dataframe(tmp_path / enc / "toilets.shp")  # GDAL honours the .cpg
        assert sorted(shp["name"]) == names
    kml = tmp_path / "t.kml"
    kml.write_bytes(_export(edit_client, "toilets", "kml", {}))
    assert sorted(pyogrio.read_dataframe(kml)["Name"]) == names
    wb = openpyxl.load_workbook(io.BytesIO(_export(edit_client, "toilets", "xlsx", {})))
    ws = wb.active
    assert ws.freeze_panes == "A2"
    head = [c.value for c in ws[1]]
    assert head[:3] == ["要素编号", "名称", "状态"] and head[-2:] == ["经度(WGS84)", "纬度(WGS84)"]
    assert {c.value for c in ws["C"][1:]} <= {"现有", "规划", "在建"}
    gcj = openpyxl.load_workbook(
        io.BytesIO(_export(edit_client, "toilets", "xlsx", {}, crs="gcj02"))
    )
    assert [c.value for c in gcj.active[1]][-1] == "纬度(GCJ-02)"


def _names(client: TestClient) -> list[tuple[str]]:
    r = client.get("/collections/toilets/items", params={"limit": 1000})
    return [(f["properties"]["name"],) for f in r.json()["features"]]


def test_no_cell_of_an_export_runs_as_a_formula(edit_client: TestClient, tmp_path: Path) -> None:
    hostile = ['=HYPERLINK("http://x","点我")', "+1+1", "@SUM(A1)", "-2+3"]
    for name in hostile:
        body = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [113.2921, 34.8101]},
            "properties": {"name": name},
        }
        assert edit_client.post("/collections/toilets/items", json=body).status_code == 201
    wb = openpyxl.load_workbook(io.BytesIO(_export(edit_client, "toilets", "xlsx", {})))
    cells = [c for c in wb.active["B"] if c.value in hostile]
    assert len(cells) == len(hostile) and {c.data_type for c in cells} == {"s"}
    csv_text = _export(edit_client, "toilets", "csv", {}).decode("utf-8-sig")
    assert all(f"'{h[0]}" in csv_text for h in hostile)
    # and the round trip takes the names back exactly
    path = tmp_path / "t.xlsx"
    path.write_bytes(_export(edit_client, "toilets", "xlsx", {}))
    store = open_store(edit_client.app.state.settings.database)
    try:
        report = run(store, path, Options(layer="toilets", mode="upsert"), principal=ADMIN)
    finally:
        store.close()
    assert report.updated == 0 and report.inserted == 0


def test_exports_are_scoped_masked_and_audited(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Any, tmp_path: Path
) -> None:
    worker = edit_auth["grid_worker"]
    path = tmp_path / "hh.gpkg"
    path.write_bytes(_export(edit_client, "households", "gpkg", worker))
    hh = pyogrio.read_dataframe(path)
    mine = {g for (g,) in raw_sql(edit_path, "SELECT grid_id FROM households")}
    assert 0 < len(hh) < len(raw_sql(edit_path, "SELECT fid FROM households"))
    assert set(hh["grid_id"]) < mine
    assert hh["id_number"].str.contains(r"^\d{3}\*+\w{4}$").all()
    assert hh["phone"].str.contains(r"\*").all()
    last = raw_sql(edit_path, "SELECT role, action FROM gridmap_audit ORDER BY id DESC LIMIT 1")
    assert last == [("grid_worker", "export")]
    for role in ("planner", "auditor"):
        r = edit_client.get("/collections/households/export?f=csv", headers=edit_auth[role])
        assert r.status_code == 404, role
    with TestClient(edit_client.app) as public:  # no token at all
        assert public.get("/collections/households/export?f=csv").status_code == 404
        assert public.get("/collections/toilets/export?f=csv").status_code == 200
    assert edit_client.get("/collections/toilets/export?f=pdf").status_code == 400
    assert edit_client.get("/collections/roads/export?f=gpx").status_code == 400
    assert edit_client.get("/collections/toilets/export?f=csv&encoding=gbk").status_code == 400


def _upload(
    client: TestClient,
    layer: str,
    name: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Any:
    return client.post(
        f"/collections/{layer}/import", params=params, files={"file": (name, data)}, headers=headers
    )


def test_import_over_http(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Any
) -> None:
    csv_body = "名称,经度,纬度\n新公厕甲,113.2921,34.8101\n".encode("gbk")
    n = len(raw_sql(edit_path, "SELECT fid FROM toilets"))
    r = _upload(edit_client, "toilets", "t.csv", csv_body, crs="wgs84", dry_run="true")
    assert r.status_code == 200 and r.json()["inserted"] == 1 and not r.json()["committed"]
    assert len(raw_sql(edit_path, "SELECT fid FROM toilets")) == n
    r = _upload(edit_client, "toilets", "t.csv", csv_body, crs="wgs84")
    assert r.status_code == 200 and r.json()["committed"] and r.json()["encoding"] == "gb18030"
    assert raw_sql(edit_path, "SELECT name FROM toilets WHERE name = '新公厕甲'") == [("新公厕甲",)]
    # refused: 422 with the problems by row, nothing written
    bad = "名称,经度,纬度\n新公厕乙,113.2921,34.8101\n新公厕丙,116.39,39.9\n".encode()
    r = _upload(edit_client, "toilets", "t.csv", bad, crs="wgs84")
    assert r.status_code == 422 and r.json()["report"]["problems"][0]["row"] == 3
    assert raw_sql(edit_path, "SELECT COUNT(*) FROM toilets WHERE name = '新公厕乙'") == [(0,)]
    r = _upload(edit_client, "toilets", "t.csv", csv_body)  # no CRS declared
    assert r.status_code == 422 and "--crs" in r.json()["detail"]
    assert _upload(edit_client, "toilets", "t.exe", b"MZ").status_code == 422
    assert _upload(edit_client, "toilets", "t.csv", csv_body, mode="merge").status_code == 400
    # who may import
    for role in ("grid_worker", "planner", "community_admin"):
        r = _upload(edit_client, "toilets", "t.csv", csv_body, edit_auth[role])
        assert r.status_code == 403, role
    # the auditor sees the audit log only: to them the collection does not exist
    assert (
        _upload(edit_client, "toilets", "t.csv", csv_body, edit_auth["auditor"]).status_code == 404
    )
    with TestClient(edit_client.app) as public:
        assert _upload(public, "toilets", "t.csv", csv_body).status_code == 401
    assert _upload(edit_client, "visits", "v.csv", csv_body).status_code == 403
    r = edit_client.post(
        "/collections/toilets/import", content=csv_body, headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 415
    r = edit_client.post("/collections/toilets/import", files={"other": ("a", b"x")})
    assert r.status_code == 400


def test_an_upload_over_the_cap_is_refused_before_it_is_read(edit_path: Any) -> None:
    from api.app import create_app
    from gridmap.settings import Settings
    from tests.conftest import tokens_for

    app = create_app(Settings(database=str(edit_path), max_upload_bytes=10_000))
    with TestClient(app, headers=tokens_for(edit_path)["subdistrict_admin"]) as c:
        r = _upload(c, "toilets", "big.csv", b"x" * 20_000, crs="wgs84")
        assert r.status_code == 413
        small = "名称,经度,纬度\n小公厕,113.2921,34.8101\n".encode()
        assert _upload(c, "toilets", "s.csv", small, crs="wgs84").status_code == 200


def test_what_the_review_found_is_refused_clearly(
    edit_client: TestClient, edit_path: Any, tmp_path: Path
) -> None:
    """Each of these once wrote something wrong, lost rows or answered 500."""
    n = int(raw_sql(edit_path, "SELECT COUNT(*) FROM toilets")[0][0])
    # a header-only file would have deleted the whole layer in replace mode
    r = _upload(
        edit_client, "toilets", "t.csv", "名称,经度,纬度\n".encode(), crs="wgs84", mode="replace"
    )
    assert r.status_code == 422 and "delete every toilet" in r.json()["detail"]
    # GeoJSON, KML and GPX hold WGS84 only: a GCJ-02 one would come back 600 m off
    for f in ("geojson", "kml", "gpx"):
        assert edit_client.get(f"/collections/toilets/export?f={f}&crs=gcj02").status_code == 400
    # a cut export would delete the rest when imported with replace
    from api.app import create_app
    from gridmap.settings import Settings
    from tests.conftest import tokens_for

    small = create_app(Settings(database=str(edit_path), max_export=5))
    with TestClient(small, headers=tokens_for(edit_path)["subdistrict_admin"]) as c:
        assert c.get("/collections/toilets/export?f=csv").status_code == 400
        assert c.get("/collections/toilets/export?f=csv&limit=5").status_code == 200
    # a CSV cell beyond the field limit, a file named "..", two file parts
    big = ('名称,经度,纬度\n"' + "长" * 1_100_000 + '",113.29,34.81\n').encode()
    assert _upload(edit_client, "toilets", "t.csv", big, crs="wgs84").status_code == 422
    ok = "名称,经度,纬度\n点点公厕,113.2921,34.8101\n".encode()
    assert _upload(edit_client, "toilets", "..", ok, crs="wgs84").status_code == 422
    r = edit_client.post(
        "/collections/toilets/import",
        files=[("file", ("a.csv", ok)), ("file", ("b.csv", ok))],
        params={"crs": "wgs84"},
    )
    assert r.status_code == 400
    assert int(raw_sql(edit_path, "SELECT COUNT(*) FROM toilets")[0][0]) == n
    # a mapping sent as a text field is used
    body = "站名,X,Y\n映射字段公厕,113.2921,34.8101\n".encode()
    r = edit_client.post(
        "/collections/toilets/import",
        files={"file": ("t.csv", body)},
        data={"mapping": '[columns]\n"站名" = "name"\n"X" = "lon"\n"Y" = "lat"\n'},
        params={"crs": "wgs84"},
    )
    assert r.status_code == 200 and r.json()["columns"]["站名"] == "name"


@pytest.mark.parametrize("fmt", ["shp", "kml"])
def test_multipolygon_layers_come_back_unchanged_from_formats_that_drop_multi(
    edit_client: TestClient, edit_path: Any, tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"c.{FILES[fmt]}"
    path.write_bytes(_export(edit_client, "communities", fmt, {}))
    store = open_store(edit_path)
    try:
        report = run(store, path, Options(layer="communities", mode="upsert"), principal=ADMIN)
    finally:
        store.close()
    assert report.updated == 0 and report.unchanged == report.rows > 0


def test_zips_and_workbooks_that_lied_about_themselves(edit_path: Any, tmp_path: Path) -> None:
    from gridmap.io.report import ImportRefusedError

    store = open_store(edit_path)
    try:
        z = tmp_path / "two.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("a/t.csv", "名称,经度,纬度\n甲,113.29,34.81\n")
            zf.writestr("b/t.csv", "名称,经度,纬度\n乙,113.29,34.81\n")
        with pytest.raises(ImportRefusedError, match=r"two files named t\.csv"):
            run(store, z, Options(layer="toilets", crs="wgs84"), principal=ADMIN)
        # a workbook whose stated size is one row short: every row is still read
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(["名称", "经度", "纬度"])
        for k in range(3):
            ws.append([f"尺寸公厕{k}", 113.2921 + k * 1e-4, 34.8101])
        wb.save(tmp_path / "w.xlsx")
        _shrink_dimension(tmp_path / "w.xlsx", "A1:C2")
        report = run(
            store,
            tmp_path / "w.xlsx",
            Options(layer="toilets", crs="wgs84", dry_run=True),
            principal=ADMIN,
        )
        assert report.rows == 3 and report.inserted == 3
    finally:
        store.close()


def _shrink_dimension(path: Path, ref: str) -> None:
    """Rewrite the sheet's <dimension> as some tools write it: wrong."""
    import re

    src = zipfile.ZipFile(path)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = re.sub(rb'<dimension ref="[^"]*"', f'<dimension ref="{ref}"'.encode(), data)
            dst.writestr(item, data)
    path.write_bytes(out.getvalue())
