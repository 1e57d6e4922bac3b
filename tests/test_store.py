"""The GeoPackage store: CRUD, queries, versions, scope, validation, and GDAL interoperability."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from gridmap.errors import (
    FeatureNotFoundError,
    HiddenLayerError,
    IntegrityError,
    InvalidFeatureError,
    InvalidGeometryError,
    OutOfScopeError,
    StoreError,
    VersionConflictError,
)
from gridmap.layers import LAYERS
from gridmap.store import FeatureStore, Query, Scope, create_store, open_store
from tests.conftest import external_connection

P = shapely.Point

pytestmark = (
    pytest.mark.gpkg_only
)  # the GeoPackage file itself (GDAL, SQLite); test_contract.py runs the shared rules on both


def _grid(store: FeatureStore) -> list[int]:
    """Two grids side by side in one community (which the grids must name)."""
    (community,) = store.insert(
        "communities", [shapely.box(113.26, 34.79, 113.30, 34.81)], [{"name": "社区"}]
    )
    return store.insert(
        "grids",
        [shapely.box(113.26, 34.79, 113.28, 34.81), shapely.box(113.28, 34.79, 113.30, 34.81)],
        [
            {"code": "g1", "name": "一网格", "community_id": community},
            {"code": "g2", "name": "二网格", "community_id": community},
        ],
    )


def test_new_file_is_a_geopackage_with_every_layer(store: FeatureStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ext = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM gpkg_extensions WHERE extension_name = 'gpkg_rtree_index'"
        )
    }
    assert ext == {layer.id for layer in LAYERS}
    conn.close()
    layers = dict(pyogrio.list_layers(store.path).tolist())
    for layer in LAYERS:
        assert layers[layer.id] == layer.geometry_type
    assert (store.path.stat().st_mode & 0o777) == 0o600


def test_insert_get_and_gdal_reads_the_same(store: FeatureStore) -> None:
    geoms = [P(113.28 + i * 0.001, 34.80 + i * 0.0005) for i in range(50)]
    props = [
        {"name": f"厕{i}", "status": "existing", "units": i, "accessible": i % 2 == 0}
        for i in range(50)
    ]
    ids = store.insert("toilets", geoms, props)
    assert ids == list(range(1, 51))
    f = store.get("toilets", 7)
    assert f.properties["name"] == "厕6" and f.properties["accessible"] is True
    assert f.version == 1
    gdf = gpd.read_file(store.path, layer="toilets", fid_as_index=True)
    assert len(gdf) == 50
    assert list(gdf.index) == ids
    assert all(a.equals_exact(b, 0) for a, b in zip(gdf.geometry, geoms, strict=True))
    assert list(gdf["name"]) == [p["name"] for p in props]
    assert list(gdf["units"]) == list(range(50))


def test_polygons_round_trip_through_gdal(store: FeatureStore) -> None:
    ring = shapely.Polygon(
        [(113.27, 34.79), (113.29, 34.79), (113.29, 34.81), (113.27, 34.81)],
        [[(113.275, 34.795), (113.28, 34.795), (113.28, 34.80), (113.275, 34.795)]],
    )
    store.insert("zones", [ring], [{"name": "甲", "community_ids": ["1", "2"]}])
    gdf = gpd.read_file(store.path, layer="zones")
    assert gdf.geometry[0].geom_type == "MultiPolygon"
    assert gdf.geometry[0].equals_exact(shapely.MultiPolygon([ring]), 0)
    assert store.get("zones", 1).properties["community_ids"] == ["1", "2"]


def test_bbox_query_uses_rtree_and_paging(store: FeatureStore) -> None:
    rng = np.random.default_rng(3)
    xs = rng.uniform(113.26, 113.32, 500)
    ys = rng.uniform(34.79, 34.83, 500)
    store.insert("cameras", shapely.points(xs, ys), [{"name": f"c{i}"} for i in range(500)])
    bbox = (113.28, 34.80, 113.30, 34.81)
    expected = np.flatnonzero((xs >= 113.28) & (xs <= 113.30) & (ys >= 34.80) & (ys <= 34.81)) + 1
    fs = store.query("cameras", Query(bbox=bbox))
    assert sorted(fs.ids.tolist()) == expected.tolist()
    assert fs.number_matched == len(expected)
    page = store.query("cameras", Query(bbox=bbox, limit=5, offset=5))
    assert page.ids.tolist() == sorted(expected.tolist())[5:10]
    assert page.number_matched == len(expected)
    assert store.count("cameras", Query(bbox=bbox)) == len(expected)


def test_exact_spatial_predicates(store: FeatureStore) -> None:
    store.insert(
        "toilets",
        [P(113.28, 34.80), P(113.2899, 34.8099), P(113.30, 34.82)],
        [{"name": "a"}, {"name": "b"}, {"name": "c"}],
    )
    tri = shapely.Polygon([(113.27, 34.79), (113.295, 34.79), (113.27, 34.815)])
    # b lies in tri's bounding box but outside the triangle
    fs = store.query("toilets", Query(geometry=tri, predicate="intersects"))
    assert fs.ids.tolist() == [1]
    assert store.count("toilets", Query(geometry=tri)) == 1


def test_equality_filters_and_ordering(store: FeatureStore) -> None:
    store.insert(
        "toilets",
        [P(113.28, 34.80)] * 3,
        [
            {"name": "b", "status": "planned"},
            {"name": "a", "status": "existing"},
            {"name": "c", "status": "planned"},
        ],
    )
    fs = store.query("toilets", Query(equals={"status": "planned"}, order_by=["-name"]))
    assert [p["name"] for p in fs.properties] == ["c", "b"]
    with pytest.raises(InvalidFeatureError, match="unknown property"):
        store.query("toilets", Query(equals={"nope": 1}))
    with pytest.raises(InvalidFeatureError, match="cannot sort"):
        store.query("toilets", Query(order_by=["x; DROP TABLE toilets"]))


def test_update_bumps_version_and_checks_expected(store: FeatureStore) -> None:
    store.insert("toilets", [P(113.28, 34.80)], [{"name": "a", "units": 3}])
    f = store.update("toilets", 1, properties={"units": 4}, expected_version=1)
    assert f.version == 2 and f.properties == {**f.properties, "name": "a", "units": 4}
    with pytest.raises(VersionConflictError, match="version 2"):
        store.update("toilets", 1, properties={"units": 9}, expected_version=1)
    assert store.get("toilets", 1).properties["units"] == 4
    f = store.update(
        "toilets", 1, geometry=P(113.29, 34.81), properties={"name": "z"}, replace=True
    )
    assert f.properties["units"] is None and f.properties["name"] == "z" and f.version == 3
    # the R-tree followed the move
    assert store.query("toilets", Query(bbox=(113.289, 34.809, 113.291, 34.811))).ids.tolist() == [
        1
    ]
    assert len(store.query("toilets", Query(bbox=(113.279, 34.799, 113.281, 34.801)))) == 0


def test_delete(store: FeatureStore) -> None:
    store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
    with pytest.raises(VersionConflictError):
        store.delete("toilets", 1, expected_version=5)
    store.delete("toilets", 1, expected_version=1)
    with pytest.raises(FeatureNotFoundError):
        store.get("toilets", 1)
    assert store.query("toilets", Query(bbox=(113, 34, 114, 35))).ids.tolist() == []
    with pytest.raises(FeatureNotFoundError):
        store.delete("toilets", 1)


def test_household_grid_id_is_derived_from_location(store: FeatureStore) -> None:
    g1, g2 = _grid(store)
    ids = store.insert(
        "households", [P(113.27, 34.80), P(113.29, 34.80)], [{"room": "1"}, {"room": "2"}]
    )
    assert [store.get("households", i).properties["grid_id"] for i in ids] == [g1, g2]
    f = store.update("households", ids[0], geometry=P(113.295, 34.805))
    assert f.properties["grid_id"] == g2
    with pytest.raises(InvalidFeatureError, match="computed by the server"):
        store.insert("households", [P(113.27, 34.80)], [{"room": "3", "grid_id": g2}])
    with pytest.raises(InvalidGeometryError, match="lies in no grid"):
        store.insert("households", [P(113.31, 34.80)], [{"room": "4"}])
    assert store.count("households") == 2


def test_scope_limits_reads_and_writes(store: FeatureStore) -> None:
    g1, _g2 = _grid(store)
    store.insert("households", [P(113.27, 34.80), P(113.29, 34.80)], [{"room": "1"}, {"room": "2"}])
    mine = Scope(grid_ids=frozenset({g1}))
    assert store.query("households", scope=mine).ids.tolist() == [1]
    assert store.count("households", Query(bbox=(113, 34, 114, 35)), scope=mine) == 1
    # the grid restriction is for features that belong to grids; grids are public
    assert store.query("grids", scope=mine).ids.tolist() == [g1, _g2]
    # outside the scope: refused like a missing feature, marked as out of scope
    with pytest.raises(OutOfScopeError, match="no feature 2 in collection households"):
        store.get("households", 2, scope=mine)
    with pytest.raises(OutOfScopeError):
        store.update("households", 2, properties={"room": "x"}, scope=mine)
    with pytest.raises(FeatureNotFoundError) as missing:
        store.get("households", 99, scope=mine)
    assert not isinstance(missing.value, OutOfScopeError)
    # moving one's own household into another grid is refused and changes nothing
    with pytest.raises(OutOfScopeError):
        store.update("households", 1, geometry=P(113.29, 34.805), scope=mine)
    assert store.get("households", 1).geometry.equals(P(113.27, 34.80))
    with pytest.raises(OutOfScopeError):
        store.insert("households", [P(113.29, 34.80)], [{"room": "3"}], scope=mine)
    with pytest.raises(HiddenLayerError):
        store.query("cameras", scope=Scope(layers=frozenset({"grids"})))
    assert store.count("households") == 2


def test_personal_rows_read_under_a_scope_are_noted(store: FeatureStore) -> None:
    """Every way of reading personal rows notes them in the scope's read log; other layers
    and counts do not."""
    from gridmap.access import ReadLog

    _g1, g2 = _grid(store)
    store.insert("households", [P(113.27, 34.80), P(113.29, 34.80)], [{"room": "1"}, {"room": "2"}])
    store.insert("toilets", [P(113.28, 34.80)], [{"name": "t"}])
    hits = []
    log = ReadLog(on_first_read=lambda: hits.append(1))
    scope = Scope(reads=log)
    store.query("toilets", scope=scope)
    store.count("households", scope=scope)
    assert log.summary() == [] and hits == []
    store.get("households", 2, scope=scope)
    store.query("households", Query(bbox=(113.26, 34.79, 113.28, 34.81)), scope=scope)
    store.query_ids("households", Query(bbox=(113.28, 34.79, 113.30, 34.81)), scope=scope)
    store.query_ids("households", Query(equals={"room": "1"}), scope=scope)
    assert log.summary() == [("households", [1, 2], None)]
    assert hits == [1]  # the rate limit is asked once per request
    one = ReadLog()
    store.query("households", Query(equals={"room": "2"}), scope=Scope(reads=one))
    assert one.summary() == [("households", [2], g2)]
    assert Scope(reads=one) == Scope() and hash(Scope(reads=one)) == hash(Scope())


BAD_GEOMETRIES = [
    (
        "bowtie polygon",
        "zones",
        shapely.Polygon([(113.27, 34.79), (113.29, 34.81), (113.29, 34.79), (113.27, 34.81)]),
        "Self-intersection",
    ),
    ("wrong type", "toilets", shapely.box(113.27, 34.79, 113.28, 34.80), "not accepted"),
    ("NaN coordinates", "toilets", P(float("nan"), 34.8), "finite"),
    ("infinite coordinates", "toilets", P(113.28, float("inf")), "finite"),
    ("outside the subdistrict", "toilets", P(113.5, 34.8), "outside the service area"),
    ("swapped lat/lon", "toilets", P(34.8, 113.28), "outside the service area"),
    ("empty", "toilets", shapely.Point(), "empty"),
    ("missing", "toilets", None, "missing"),
]


@pytest.mark.parametrize(
    ("case", "layer", "geom", "message"), BAD_GEOMETRIES, ids=[b[0] for b in BAD_GEOMETRIES]
)
def test_bad_geometry_raises_and_writes_nothing(
    store: FeatureStore, case: str, layer: str, geom: object, message: str
) -> None:
    good = P(113.28, 34.80) if layer == "toilets" else shapely.box(113.27, 34.79, 113.28, 34.80)
    with pytest.raises(InvalidGeometryError, match=message):
        store.insert(layer, [good, geom], [{"name": "ok"}, {"name": "bad"}])
    assert store.count(layer) == 0


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"name": "a", "units": "3"}, "valid integer"),
        ({"name": "a", "units": 3.5}, "valid integer"),
        ({"name": "a", "status": "demolished"}, "status"),
        ({"name": "a", "colour": "red"}, "unknown properties"),
        ({"units": 3}, "name"),
        ({"name": "a", "units": -1}, "greater than or equal"),
        ({"name": "a", "accessible": "yes"}, "valid boolean"),
    ],
)
def test_bad_properties_raise_and_write_nothing(
    store: FeatureStore, props: dict, message: str
) -> None:
    with pytest.raises(InvalidFeatureError, match=message):
        store.insert("toilets", [P(113.28, 34.80), P(113.28, 34.80)], [{"name": "ok"}, props])
    assert store.count("toilets") == 0


def test_feature_appended_by_gdal_is_indexed(store: FeatureStore) -> None:
    store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
    store.close()
    new = gpd.GeoDataFrame({"name": ["gdal"], "units": [3]}, geometry=[P(113.30, 34.82)], crs=4326)
    pyogrio.write_dataframe(new, store.path, layer="toilets", append=True)
    reopened = open_store(store.path)
    hit = reopened.query("toilets", Query(bbox=(113.299, 34.819, 113.301, 34.821)))
    assert hit.ids.tolist() == [2]
    assert hit.properties[0]["name"] == "gdal" and hit.versions.tolist() == [1]
    reopened.close()


def test_external_update_keeps_index_and_bumps_version(store: FeatureStore) -> None:
    """An UPDATE from another SQLite client (as QGIS issues it) fires the GeoPackage triggers."""
    from gridmap import geometry as geo

    store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
    conn = external_connection(store.path)
    blob = geo.to_gpkg_blobs([P(113.31, 34.83)])[0]
    conn.execute("UPDATE toilets SET geom = ?, name = 'moved' WHERE fid = 1", (blob,))
    conn.commit()
    conn.close()
    f = store.get("toilets", 1)
    assert f.properties["name"] == "moved" and f.version == 2
    assert store.query("toilets", Query(bbox=(113.309, 34.829, 113.311, 34.831))).ids.tolist() == [
        1
    ]
    assert len(store.query("toilets", Query(bbox=(113.279, 34.799, 113.281, 34.801)))) == 0


def test_open_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="gridmap demo"):
        open_store(tmp_path / "none.gpkg")
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a GeoPackage"):
        open_store(junk)
    with pytest.raises(StoreError, match="already exists"):
        create_store(junk)


def test_moving_a_grid_boundary_rederives_grid_ids(store: FeatureStore) -> None:
    g1, g2 = _grid(store)
    ids = store.insert(
        "households", [P(113.275, 34.80), P(113.285, 34.80)], [{"room": "1"}, {"room": "2"}]
    )
    assert [store.get("households", i).properties["grid_id"] for i in ids] == [g1, g2]
    # the shared edge moves east past household 2: it now lies in grid 1
    store.update("grids", g1, geometry=shapely.box(113.26, 34.79, 113.29, 34.81))
    store.update("grids", g2, geometry=shapely.box(113.29, 34.79, 113.30, 34.81))
    assert [store.get("households", i).properties["grid_id"] for i in ids] == [g1, g1]
    # an edit that would leave a household in no grid is refused, nothing changes
    with pytest.raises(IntegrityError, match="in no grid"):
        store.update("grids", g1, geometry=shapely.box(113.26, 34.79, 113.27, 34.81))
    assert store.get("grids", g1).geometry.equals(shapely.box(113.26, 34.79, 113.29, 34.81))
    # a grid that still holds households cannot be deleted
    with pytest.raises(IntegrityError, match="still named by"):
        store.delete("grids", g1)
    store.delete("grids", g2)  # empty now
    assert store.count("grids") == 1
