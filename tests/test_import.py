"""Importing files as Chinese offices exchange them (issue 13): encodings, CRSs, topology,
all-or-nothing, idempotency; checked by reading the store back as another client would
(GDAL on the GeoPackage, SQL on PostGIS), never through gridmap's own reader."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import openpyxl
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from gridmap.crs import wgs84_to_gcj02
from gridmap.io.importer import Options, run
from gridmap.io.report import ImportRefusedError
from gridmap.io.text import mojibake, normalise
from gridmap.security import Principal, Role
from gridmap.store import FeatureStore, open_store
from tests.conftest import raw_sql

ADMIN = Principal("import-test", Role.SUBDISTRICT_ADMIN)
NAMES = ["中心路第一公厕", "颐和园公厕", "张三丰纪念厕所", "广场东公厕"]
POINTS = [(113.2921, 34.8101), (113.2950, 34.8080), (113.2880, 34.8120), (113.2990, 34.8150)]


def stored(target: Path | str, layer: str, columns: list[str]) -> list[tuple[Any, ...]]:
    """Rows of a layer as SQL reads them: (fid, *columns, WKB), ordered by fid."""
    geom = "ST_AsBinary(geom)" if str(target).startswith("postgresql") else "geom"
    rows = raw_sql(target, f"SELECT fid, {', '.join(columns)}, {geom} FROM {layer} ORDER BY fid")
    if str(target).startswith("postgresql"):
        return [(*r[:-1], shapely.from_wkb(bytes(r[-1]))) for r in rows]
    from gridmap.geometry import from_gpkg_blobs

    shapes = from_gpkg_blobs([r[-1] for r in rows])
    return [(*r[:-1], g) for r, g in zip(rows, shapes, strict=True)]


def count(target: Path | str, layer: str) -> int:
    return int(raw_sql(target, f"SELECT COUNT(*) FROM {layer}")[0][0])


def imp(target: Path | str, path: Path, layer: str, **kw: Any) -> Any:
    store = open_store(target)
    try:
        return run(store, path, Options(layer=layer, **kw), principal=ADMIN)
    finally:
        store.close()


def refused(target: Path | str, path: Path, layer: str, match: str, **kw: Any) -> Any:
    before = count(target, layer)
    with pytest.raises(ImportRefusedError, match=match) as exc:
        imp(target, path, layer, **kw)
    assert count(target, layer) == before  # nothing written
    return exc.value.report


def toilet_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"名称": NAMES, "等级": ["一类", "二类", "II", "三类"], "厕位数": [12, 8, 6, 10]},
        geometry=[shapely.Point(p) for p in POINTS],
        crs=4326,
    )


# ------------------------------------------------------------------ encodings


def test_mojibake_is_recognised_and_full_width_text_normalised() -> None:
    assert mojibake("张三".encode("gbk").decode("latin-1")) == "gbk"  # ÕÅÈý
    assert mojibake("张三".encode().decode("gb18030")) == "utf-8"  # 寮犱笁
    assert mojibake("张三") is None and mojibake("Café du Nord") is None
    assert normalise("第１２号\u3000楼（东）") == "第12号 楼（东）"


def _gbk_shapefile(folder: Path, *, cpg: bool) -> Path:
    folder.mkdir()
    path = folder / "toilets.shp"
    pyogrio.write_dataframe(toilet_frame(), path, encoding="GBK")
    if not cpg:
        (folder / "toilets.cpg").unlink()
    head = (folder / "toilets.dbf").read_bytes()
    assert head[29] == 0  # no language byte: nothing in the file names the encoding
    return path


@pytest.mark.parametrize("cpg", [True, False], ids=["with-cpg", "without-cpg"])
def test_gbk_shapefile_imports_with_its_chinese_intact(
    edit_path: Any, tmp_path: Path, cpg: bool
) -> None:
    shp = _gbk_shapefile(tmp_path / "shp", cpg=cpg)
    with zipfile.ZipFile(tmp_path / "toilets.zip", "w") as zf:  # as a contractor sends it
        for f in shp.parent.iterdir():
            zf.write(f, f"toilets/{f.name}")
    before = count(edit_path, "toilets")
    report = imp(edit_path, tmp_path / "toilets.zip", "toilets")
    assert report.inserted == 4 and report.encoding == "gb18030"
    rows = stored(edit_path, "toilets", ["name", "grade", "units"])[before:]
    assert [r[1] for r in rows] == NAMES
    assert [r[2] for r in rows] == ["I", "II", "II", "III"]
    assert [(round(r[-1].x, 6), round(r[-1].y, 6)) for r in rows] == POINTS


def test_a_shapefile_read_with_the_wrong_encoding_is_refused_with_the_right_one(
    edit_path: Any, tmp_path: Path
) -> None:
    shp = _gbk_shapefile(tmp_path / "shp", cpg=False)
    report = refused(edit_path, shp, "toilets", "--encoding gbk", encoding="latin1")
    assert report.problems[0].kind == "file"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "utf-16"])
def test_a_csv_in_any_of_four_encodings_imports_alike(
    edit_path: Any, tmp_path: Path, encoding: str
) -> None:
    sep = "\t" if encoding == "utf-16" else ","  # Excel's "Unicode text" is tab-separated
    out = io.StringIO()
    w = csv.writer(out, delimiter=sep)
    w.writerow(["名称", "等级", "厕位数", "经度", "纬度", "备注"])
    for name, (x, y) in zip(NAMES, POINTS, strict=True):
        w.writerow([name.replace("一", "一 "), "二类", "１２", x, y, "来自区里"])
    path = tmp_path / "toilets.csv"
    path.write_bytes(out.getvalue().encode(encoding))
    report = imp(edit_path, path, "toilets", crs="wgs84")
    assert report.inserted == 4 and report.ignored_columns == ["备注"]
    rows = stored(edit_path, "toilets", ["name", "units"])[-4:]
    assert [r[1] for r in rows] == [n.replace("一", "一 ") for n in NAMES]
    assert {r[2] for r in rows} == {12}  # full-width digits read as digits


def test_text_in_an_unrecognised_encoding_is_refused_until_declared(
    edit_path: Any, tmp_path: Path
) -> None:
    path = tmp_path / "big5.csv"
    body = "名稱,經度,緯度\n臺灣廁所甲,113.2921,34.8101\n舊區廁所乙,113.2950,34.8080\n"
    path.write_bytes(body.encode("big5"))
    refused(edit_path, path, "toilets", "encoding", crs="wgs84")
    report = imp(edit_path, path, "toilets", crs="wgs84", encoding="big5", dry_run=True)
    assert report.ok and report.inserted == 2


# ------------------------------------------------------------------ coordinates


def test_a_file_without_a_crs_needs_one_declared(edit_path: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("名称,经度,纬度\n甲公厕,113.2921,34.8101\n", encoding="utf-8")
    refused(edit_path, path, "toilets", "--crs")


def _gcj_roster(store: FeatureStore, path: Path, n: int = 30, *, grid: bool = True) -> list[int]:
    """An Excel roster of new households at existing buildings' entrances, with the grid
    each is in (unless not ``grid``), coordinates picked on Amap (GCJ-02). Returns the
    grid ids expected."""
    b = store.query("buildings")
    g = store.query("grids")
    grids = {int(i): p["code"] for i, p in zip(g.ids.tolist(), g.properties, strict=True)}
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["户主", "身份证号", "联系电话", "门牌", "网格", "经度", "纬度"])
    expected = []
    for k in range(n):
        p = b.properties[k * 7]
        x, y = p["entrance_lon"], p["entrance_lat"]
        gx, gy = wgs84_to_gcj02(np.array([x]), np.array([y]))
        ws.append(
            [
                f"测某{k}",
                None,
                f"100{k:08d}",
                f"{k + 1}-101",
                grids[p["grid_id"]] if grid else None,
                float(gx[0]),
                float(gy[0]),
            ]
        )
        expected.append(p["grid_id"])
    wb.save(path)
    return expected


def test_an_undeclared_gcj02_roster_is_caught_and_imported_when_declared(
    edit_path: Any, tmp_path: Path
) -> None:
    store = open_store(edit_path)
    expected = _gcj_roster(store, tmp_path / "roster.xlsx")
    store.close()
    report = refused(edit_path, tmp_path / "roster.xlsx", "households", "outside", crs="wgs84")
    assert any("--crs gcj02" in w for w in report.warnings), report.warnings
    assert {p.kind for p in report.problems} == {"outside"}
    before = count(edit_path, "households")
    report = imp(edit_path, tmp_path / "roster.xlsx", "households", crs="gcj02")
    assert report.inserted == len(expected)
    new = raw_sql(edit_path, "SELECT grid_id FROM households ORDER BY fid")[before:]
    assert [g for (g,) in new] == expected
    # each new household lies within ~1 m of its building's entrance (independent inverse)
    rows = stored(edit_path, "households", ["room"])[before:]
    t = Transformer.from_crs(4326, 4547, always_xy=True)
    b = stored(edit_path, "buildings", ["entrance_lon", "entrance_lat"])
    entrances = [(r[1], r[2]) for r in b[: len(expected) * 7 : 7]]
    for r, (x, y) in zip(rows, entrances, strict=True):
        ax, ay = t.transform(r[-1].x, r[-1].y)
        bx, by = t.transform(x, y)
        assert np.hypot(ax - bx, ay - by) < 1.0


def test_an_undeclared_gcj02_roster_without_grids_is_caught_by_its_buildings(
    edit_path: Any, tmp_path: Path
) -> None:
    """No 网格 column and every point still inside the subdistrict and some grid: only
    that the households lie in no building (and would, read as GCJ-02) gives it away."""
    store = open_store(edit_path)
    b = store.query("buildings")
    lon = np.array([p["entrance_lon"] for p in b.properties])
    lat = np.array([p["entrance_lat"] for p in b.properties])
    gx, gy = wgs84_to_gcj02(lon, lat)
    shifted = shapely.points(gx, gy)
    fits = (store.derive_grid_ids(shifted) >= 0) & shapely.covers(store.service_area, shifted)
    store.close()
    pick = np.flatnonzero(fits)[:30]
    path = tmp_path / "roster.csv"
    rows = ["户主,门牌,经度,纬度"] + [
        f"测某{k},{k}-1,{gx[i]:.8f},{gy[i]:.8f}" for k, i in enumerate(pick)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = refused(edit_path, path, "households", "--crs gcj02", crs="wgs84")
    msg = report.problems[0].message  # (a shifted point may land in a neighbouring building)
    assert "of 30 rows lie in no building" in msg and "30 would" in msg
    assert imp(edit_path, path, "households", crs="gcj02").inserted == 30


def test_rows_are_refused_where_they_lie_outside_the_subdistrict(
    edit_path: Any, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("名称,经度,纬度\n远方公厕,116.39,39.9\n近处公厕,113.2921,34.8101\n", "utf-8")
    report = refused(edit_path, path, "toilets", "outside", crs="wgs84")
    assert [p.row for p in report.problems] == [2]


# ------------------------------------------------------------------ values and modes


def test_every_bad_row_is_listed_and_nothing_is_written(edit_path: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "名称,等级,厕位数,无障碍,经度,纬度\n"
        "好公厕,一类,10,是,113.2921,34.8101\n"
        "坏等级,五类,10,是,113.2921,34.8101\n"
        "坏数字,一类,很多,是,113.2921,34.8101\n"
        ",一类,10,否,113.2921,34.8101\n"
        "坏布尔,一类,10,也许,113.2921,34.8101\n",
        encoding="utf-8",
    )
    report = refused(edit_path, path, "toilets", "row 3", crs="wgs84")
    assert [p.row for p in report.problems] == [3, 4, 5, 6]
    audit = raw_sql(edit_path, "SELECT action, result FROM gridmap_audit ORDER BY id DESC LIMIT 1")
    assert audit == [("import", "refused")]


def test_the_same_file_twice_writes_nothing_the_second_time(edit_path: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.geojson"
    toilet_frame().rename(columns={"名称": "name"}).to_file(path)
    first = imp(edit_path, path, "toilets")
    n = count(edit_path, "toilets")
    second = imp(edit_path, path, "toilets")
    assert (first.inserted, second.inserted, second.unchanged) == (4, 0, 4)
    assert count(edit_path, "toilets") == n
    kept = raw_sql(edit_path, "SELECT COUNT(*) FROM gridmap_documents WHERE kind = 'import'")
    assert kept[0][0] == 2  # both runs recorded, with the file's digest


def test_modes_append_upsert_replace(edit_path: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("名称,厕位数,经度,纬度\n甲公厕,4,113.2921,34.8101\n", encoding="utf-8")
    imp(edit_path, path, "toilets", crs="wgs84")
    path.write_text("名称,厕位数,经度,纬度\n甲公厕,9,113.2921,34.8101\n", encoding="utf-8")
    refused(edit_path, path, "toilets", "--mode upsert", crs="wgs84")
    report = imp(edit_path, path, "toilets", crs="wgs84", mode="upsert")
    assert (report.inserted, report.updated) == (0, 1)
    assert raw_sql(edit_path, "SELECT units FROM toilets WHERE name = '甲公厕'") == [(9,)]
    report = imp(edit_path, path, "toilets", crs="wgs84", mode="replace", dry_run=True)
    assert report.deleted == count(edit_path, "toilets") - 1 and not report.committed
    imp(edit_path, path, "toilets", crs="wgs84", mode="replace")
    assert raw_sql(edit_path, "SELECT name FROM toilets") == [("甲公厕",)]


def test_duplicates_within_a_file_are_refused(edit_path: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "名称,经度,纬度\n甲公厕,113.2921,34.8101\n乙公厕,113.2922,34.8102\n甲公厕,113.2923,34.8103\n",
        encoding="utf-8",
    )
    report = refused(edit_path, path, "toilets", "repeats row 2", crs="wgs84")
    assert [p.kind for p in report.problems] == ["duplicate"]


def test_id_numbers_stored_as_numbers_in_excel_are_refused(edit_path: Any, tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["户主", "身份证号", "经度", "纬度"])
    ws.append(["测某甲", 410106197001011234, 113.2921, 34.8101])  # Excel keeps 15 digits
    ws.append(["测某乙", 4.10106197001011e17, 113.2921, 34.8101])
    wb.save(tmp_path / "r.xlsx")
    report = refused(edit_path, tmp_path / "r.xlsx", "households", "as text", crs="wgs84")
    assert 3 in [p.row for p in report.problems]


def test_a_roster_of_addresses_is_matched_to_buildings(edit_path: Any, tmp_path: Path) -> None:
    b = stored(edit_path, "buildings", ["address", "grid_id"])[:3]
    path = tmp_path / "r.csv"
    lines = ["户主,楼栋,门牌"] + [f"测某{k},{r[1]},{k}-201" for k, r in enumerate(b)]
    path.write_text("\n".join(lines) + "\n", encoding="gbk")
    before = count(edit_path, "households")
    report = imp(edit_path, path, "households")
    assert report.inserted == 3 and report.columns["楼栋"] == "address"
    got = raw_sql(edit_path, "SELECT building_id, grid_id FROM households ORDER BY fid")[before:]
    assert got == [(r[0], r[2]) for r in b]
    path.write_text("户主,地址\n测某丁,不存在路99号\n", encoding="utf-8")
    refused(edit_path, path, "households", "matches no building")


def test_a_kmz_from_a_phone_app_imports(edit_path: Any, tmp_path: Path) -> None:
    kml = tmp_path / "doc.kml"
    toilet_frame().rename(columns={"名称": "Name"})[["Name", "geometry"]].to_file(
        kml, driver="LIBKML"
    )
    with zipfile.ZipFile(tmp_path / "toilets.kmz", "w") as zf:
        zf.write(kml, "doc.kml")
    report = imp(edit_path, tmp_path / "toilets.kmz", "toilets")
    assert report.inserted == 4 and report.format == "KMZ"
    assert [r[1] for r in stored(edit_path, "toilets", ["name"])[-4:]] == NAMES


def test_only_a_subdistrict_admin_imports(edit_path: Any, tmp_path: Path) -> None:
    from gridmap.errors import PermissionDeniedError

    path = tmp_path / "t.csv"
    path.write_text("名称,经度,纬度\n甲公厕,113.2921,34.8101\n", encoding="utf-8")
    store = open_store(edit_path)
    try:
        for role in (Role.COMMUNITY_ADMIN, Role.PLANNER, Role.GRID_WORKER, Role.AUDITOR):
            with pytest.raises(PermissionDeniedError):
                run(
                    store,
                    path,
                    Options(layer="toilets", crs="wgs84"),
                    principal=Principal("x", role),
                )
    finally:
        store.close()


# ------------------------------------------------------------------ topology


def _square(x0: float, y0: float, x1: float, y1: float) -> shapely.Polygon:
    return shapely.box(x0, y0, x1, y1)


def test_t_junction_slivers_are_snapped_and_reported(store: FeatureStore, tmp_path: Path) -> None:
    """One community, three grids: A across the top, B and C below it. A's lower edge has
    no vertex where B and C meet; B's top corner there is 0.3 m too high (an overlap
    sliver), C's 0.3 m too low (a gap)."""
    d = 0.3 / 111_320  # 0.3 m in degrees of latitude
    x0, x1, xm, y0, y1, ym = 113.280, 113.300, 113.290, 34.800, 34.820, 34.810
    store.insert(
        "communities", [shapely.MultiPolygon([_square(x0, y0, x1, y1)])], [{"name": "测试社区"}]
    )
    a = shapely.Polygon([(x0, ym), (x1, ym), (x1, y1), (x0, y1)])
    b = shapely.Polygon([(x0, y0), (xm, y0), (xm, ym + d), (x0, ym)])
    c = shapely.Polygon([(xm, y0), (x1, y0), (x1, ym), (xm, ym - d)])
    frame = gpd.GeoDataFrame(
        {
            "网格编码": ["A", "B", "C"],
            "名称": ["甲网格", "乙网格", "丙网格"],
            "所属社区": [1, 1, 1],
        },
        geometry=[a, b, c],
        crs=4326,
    )
    path = tmp_path / "grids.gpkg"
    frame.to_file(path, layer="grids")
    report = refused(store.url, path, "grids", "gap|overlap", snap_m=0.0)
    assert {p.kind for p in report.problems} == {"topology"}
    assert sorted(p.message.split()[0] for p in report.problems) == ["a", "row"]  # gap, overlap
    assert any("overlap" in p.message for p in report.problems)
    report = imp(store.url, path, "grids")
    assert report.inserted == 3 and len(report.snapped) >= 2
    got = [r[-1] for r in stored(store.url, "grids", ["code"])]
    t = Transformer.from_crs(4326, 4547, always_xy=True)

    def m2(g: shapely.Geometry) -> float:  # cut in degrees, measured in metres
        return shapely.transform(g, lambda xy: np.column_stack(t.transform(*xy.T))).area

    for i in range(3):
        for j in range(i + 1, 3):
            assert m2(shapely.intersection(got[i], got[j])) < 0.01
    assert m2(shapely.difference(_square(x0, y0, x1, y1), shapely.union_all(got))) < 0.01


def test_a_feature_changed_while_the_import_was_checked_refuses_it_whole(
    edit_path: Any, tmp_path: Path
) -> None:
    from gridmap.errors import VersionConflictError

    path = tmp_path / "t.csv"
    path.write_text("名称,厕位数,经度,纬度\n改前公厕,4,113.2921,34.8101\n", encoding="utf-8")
    imp(edit_path, path, "toilets", crs="wgs84")
    (fid,) = raw_sql(edit_path, "SELECT fid FROM toilets WHERE name = '改前公厕'")[0]
    path.write_text(
        "名称,厕位数,经度,纬度\n改前公厕,9,113.2921,34.8101\n新来公厕,2,113.2925,34.8105\n",
        encoding="utf-8",
    )
    store = open_store(edit_path)

    def meanwhile(stage: str) -> None:  # another editor, between the checks and the writes
        if stage == "writing":
            other = open_store(edit_path)
            other.update("toilets", fid, properties={"units": 6})
            other.close()

    try:
        with pytest.raises(VersionConflictError):
            run(store, path, Options(layer="toilets", crs="wgs84", mode="upsert"),
                principal=ADMIN, progress=meanwhile)  # fmt: skip
    finally:
        store.close()
    assert raw_sql(edit_path, "SELECT units FROM toilets WHERE fid = ?", fid) == [(6,)]
    assert raw_sql(edit_path, "SELECT COUNT(*) FROM toilets WHERE name = '新来公厕'") == [(0,)]
    last = raw_sql(edit_path, "SELECT action, result FROM gridmap_audit ORDER BY id DESC LIMIT 1")
    assert last == [("import", "refused")]


def test_replace_cannot_leave_a_gap_or_delete_what_is_named(edit_path: Any, tmp_path: Path) -> None:
    from gridmap.errors import IntegrityError

    store = open_store(edit_path)
    g, b = store.query("grids"), store.query("buildings")
    store.close()
    for layer, fs, cols in (
        ("grids", g, ("code", "name", "community_id")),
        ("buildings", b, ("address", "floors")),
    ):
        frame = gpd.GeoDataFrame(
            [{k: p[k] for k in cols} for p in fs.properties[:-1]],
            geometry=list(fs.geometries[:-1]),
            crs=4326,
        )
        frame.to_file(tmp_path / f"{layer}.gpkg", layer=layer)
    n = count(edit_path, "grids")
    report = refused(edit_path, tmp_path / "grids.gpkg", "grids", "gap", mode="replace")
    assert report.deleted == 1 and [p.kind for p in report.problems] == ["topology"]
    report = imp(edit_path, tmp_path / "buildings.gpkg", "buildings", mode="replace", dry_run=True)
    assert report.deleted == 1 and report.unchanged == len(b) - 1
    with pytest.raises(IntegrityError, match="still named by"):
        imp(edit_path, tmp_path / "buildings.gpkg", "buildings", mode="replace")
    assert (count(edit_path, "grids"), count(edit_path, "buildings")) == (n, len(b))


def test_a_declared_mapping_and_a_gpx_from_a_phone(edit_path: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("站名,X坐标,Y坐标,蹲位\n映射公厕,113.2921,34.8101,7\n", encoding="utf-8")
    mapping = tmp_path / "map.toml"
    mapping.write_text(
        '[columns]\n"站名" = "name"\n"X坐标" = "lon"\n"Y坐标" = "lat"\n"蹲位" = "units"\n'
    )
    report = imp(edit_path, path, "toilets", crs="wgs84", mapping=mapping)
    assert report.inserted == 1 and report.columns["蹲位"] == "units"
    assert raw_sql(edit_path, "SELECT units FROM toilets WHERE name = '映射公厕'") == [(7,)]
    mapping.write_text('[columns]\n"站名" = "nonsense"\n')
    refused(edit_path, path, "toilets", "nonsense", crs="wgs84", mapping=mapping)
    gpx = tmp_path / "phone.gpx"
    gpx.write_text(
        '<?xml version="1.0"?><gpx version="1.1" creator="奥维" xmlns="http://www.topografix.com/GPX/1/1">'
        '<wpt lat="34.8102" lon="113.2922"><name>手机标注公厕</name></wpt>'
        '<trk><name>走访轨迹</name><trkseg><trkpt lat="34.81" lon="113.29"/></trkseg></trk></gpx>',
        encoding="utf-8",
    )
    report = imp(edit_path, gpx, "toilets")
    assert report.inserted == 1 and report.format == "GPX"
    (row,) = stored(edit_path, "toilets", ["name"])[-1:]
    assert row[1] == "手机标注公厕" and (round(row[-1].x, 4), round(row[-1].y, 4)) == (
        113.2922,
        34.8102,
    )


@pytest.mark.gpkg_only  # the GeoPackage's own R-tree and triggers, read by GDAL and SQLite
def test_a_bulk_import_leaves_the_spatial_index_and_triggers_as_row_by_row_writes_do(
    edit_path: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    n = 3000  # above the bulk threshold: the insert triggers' work is done set-wise
    xs, ys = rng.uniform(113.280, 113.300, n), rng.uniform(34.800, 34.820, n)
    frame = gpd.GeoDataFrame(
        {"name": [f"批量公厕{k}" for k in range(n)]}, geometry=gpd.points_from_xy(xs, ys), crs=4326
    )
    frame.to_file(tmp_path / "many.gpkg", layer="toilets")
    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
    before = raw_sql(edit_path, triggers)
    stamp = raw_sql(edit_path, "SELECT stamp FROM gridmap_changes WHERE layer = 'toilets'")[0][0]
    old = count(edit_path, "toilets")
    imp(edit_path, tmp_path / "many.gpkg", "toilets")
    assert raw_sql(edit_path, triggers) == before  # created again exactly as they were
    after = raw_sql(edit_path, "SELECT stamp FROM gridmap_changes WHERE layer = 'toilets'")[0][0]
    assert after == stamp + n  # as n row-by-row inserts move it
    logged = raw_sql(
        edit_path,
        "SELECT COUNT(*) FROM gridmap_row_changes WHERE layer = 'toilets' AND stamp > ?",
        stamp,
    )
    assert logged[0][0] == n
    # GDAL answers a bbox through the R-tree: every new point in the box is found
    box = (113.285, 34.805, 113.295, 34.815)
    inside = int(((xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])).sum())
    got = pyogrio.read_dataframe(edit_path, layer="toilets", bbox=box)
    assert got["name"].str.startswith("批量公厕").sum() == inside
    assert count(edit_path, "rtree_toilets_geom") == old + n
    # and a later write by another program still goes through the triggers
    raw_sql(
        edit_path, "INSERT INTO toilets (geom, name) SELECT geom, '外来公厕' FROM toilets LIMIT 1"
    )
    assert count(edit_path, "rtree_toilets_geom") == old + n + 1


def test_the_import_and_export_commands(edit_path: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gridmap.cli import app

    db = str(edit_path)
    cli = CliRunner()
    out = tmp_path / "网格.zip"
    r = cli.invoke(
        app, ["export", "-l", "grids", "-f", "shp", "--encoding", "gbk", "-o", str(out), "-d", db]
    )
    assert r.exit_code == 0 and "exported 40 features" in r.output, r.output
    z = zipfile.ZipFile(out)
    assert z.read("grids.cpg").decode().strip() == "GBK"
    z.extractall(tmp_path / "shp")
    assert len(pyogrio.read_dataframe(tmp_path / "shp" / "grids.shp")) == 40  # GDAL reads it
    r = cli.invoke(
        app, ["import", str(out), "-l", "grids", "--mode", "upsert", "--dry-run", "-d", db]
    )
    assert r.exit_code == 0 and "40 unchanged" in " ".join(r.output.split()), r.output
    path = tmp_path / "t.csv"
    path.write_bytes("名称,经度,纬度\n命令行公厕,113.2921,34.8101\n".encode("gbk"))
    r = cli.invoke(app, ["import", str(path), "-l", "toilets", "-d", db])
    assert r.exit_code == 1 and "--crs" in r.output
    r = cli.invoke(app, ["import", str(path), "-l", "toilets", "--crs", "wgs84", "-d", db])
    assert r.exit_code == 0 and "wrote 1 new" in " ".join(r.output.split()), r.output
    assert raw_sql(edit_path, "SELECT COUNT(*) FROM toilets WHERE name = '命令行公厕'") == [(1,)]
    r = cli.invoke(app, ["export", "-l", "toilets", "-f", "geojson", "--crs", "gcj02", "-d", db])
    assert r.exit_code == 1 and "WGS84" in r.output
    r = cli.invoke(app, ["export", "-l", "toilets", "-f", "csv", "-o", str(tmp_path), "-d", db])
    assert r.exit_code == 1 and "is a folder" in " ".join(r.output.split())
