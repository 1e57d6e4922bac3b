"""The store's contract, the same on every backend: CRUD, queries, ordering, versions,
transactions, scope, masking, located references, stamps, accounts, audit and documents;
and the GeoPackage and PostGIS backends giving the same answers on the sample.

Each test runs on the backend under test (``GRIDMAP_TEST_BACKEND``); the cross-backend
tests need PostGIS and run in both passes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely

from gridmap.cql import check_filter
from gridmap.errors import (
    FeatureNotFoundError,
    HiddenLayerError,
    IntegrityError,
    InvalidFeatureError,
    InvalidGeometryError,
    OutOfScopeError,
    PermissionDeniedError,
    StoreError,
    VersionConflictError,
)
from gridmap.layers import LAYERS, get_layer
from gridmap.store import FeatureStore, Query, Scope, create_store, open_store
from gridmap.transfer import copy_store
from tests import postgres
from tests.conftest import (
    SERVICE_AREA,
    copy_database,
    eventually,
    raw_sql,
    refused_by_database,
)

P = shapely.Point


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


def test_dwithin_measures_metres_exactly(store: FeatureStore) -> None:
    """S_DWITHIN against distances computed here with pyproj in EPSG:4547 (not by gridmap),
    distance 0 included: a feature at the literal point, and a polygon literal (then it is
    S_INTERSECTS)."""
    rng = np.random.default_rng(11)
    cx, cy = 113.29, 34.81
    xs = np.append(cx + rng.uniform(-0.004, 0.004, 300), cx)
    ys = np.append(cy + rng.uniform(-0.004, 0.004, 300), cy)
    store.insert("cameras", shapely.points(xs, ys), [{"name": f"c{i}"} for i in range(301)])
    to4547 = pyproj.Transformer.from_crs(4326, 4547, always_xy=True)
    mx, my = to4547.transform(xs, ys)
    px, py = to4547.transform(cx, cy)
    d = np.hypot(np.asarray(mx) - px, np.asarray(my) - py)
    cameras = get_layer("cameras")
    for r in (0.0, 50.0, 150.0, 333.3):
        assert not np.any((np.abs(d - r) < 1e-3) & (d > 0))  # no point on the circle
        f = check_filter(f"S_DWITHIN(geom, POINT({cx} {cy}), {r})", cameras)
        got = store.query_ids("cameras", Query(filters=[f]))[0].tolist()
        assert got == (np.flatnonzero(d <= r) + 1).tolist(), r
    assert store.query_ids("cameras", Query(filters=[check_filter(
        f"S_DWITHIN(geom, POINT({cx} {cy}), 0)", cameras)]))[0].tolist() == [301]  # fmt: skip
    square = "POLYGON((113.288 34.808, 113.291 34.808, 113.291 34.811, 113.288 34.808))"
    within0 = check_filter(f"S_DWITHIN(geom, {square}, 0)", cameras)
    touching = check_filter(f"S_INTERSECTS(geom, {square})", cameras)
    a = store.query_ids("cameras", Query(filters=[within0]))[0].tolist()
    assert a and a == store.query_ids("cameras", Query(filters=[touching]))[0].tolist()


def test_dwithin_a_long_line_is_exact(store: FeatureStore) -> None:
    """Review: a 1,170-point line in S_DWITHIN took seconds of CPU per request (a buffer of
    the line for the index box, every row projected as a geometry). Answers against
    pyproj-projected distances to the line computed here, for points near its ends and
    bends (where a box too small would lose them)."""
    n = 1170
    lx = np.round(np.linspace(113.25, 113.33, n), 4)  # within the filter's 20,000 characters
    ly = np.round(34.78 + 0.04 * np.abs(np.sin(np.arange(n) / 7)), 4)
    rng = np.random.default_rng(5)
    xs, ys = rng.uniform(113.2501, 113.3299, 400), rng.uniform(34.7801, 34.8399, 400)
    store.insert("cameras", shapely.points(xs, ys), [{"name": f"c{i}"} for i in range(400)])
    to4547 = pyproj.Transformer.from_crs(4326, 4547, always_xy=True)
    line = shapely.LineString(np.c_[to4547.transform(lx, ly)])
    d = shapely.distance(shapely.points(np.c_[to4547.transform(xs, ys)]), line)
    wkt = "LINESTRING(" + ",".join(f"{x:.4f} {y:.4f}" for x, y in zip(lx, ly, strict=True)) + ")"
    cameras = get_layer("cameras")
    for r in (0.0, 120.0, 700.0):
        assert not np.any(np.abs(d - r) < 1e-3)
        f = check_filter(f"S_DWITHIN(geom, {wkt}, {r})", cameras)
        got = store.query_ids("cameras", Query(filters=[f]))[0].tolist()
        assert got == (np.flatnonzero(d <= r) + 1).tolist(), r
        assert r == 0.0 or got


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


# ----------------------------------------------------------------------------- new in the contract


def test_nulls_sort_first_ascending_and_text_by_code_point(store: FeatureStore) -> None:
    names = ["b", "B", "é", "a", "Z", "中"]
    store.insert(
        "toilets",
        [P(113.28, 34.80)] * (len(names) + 1),
        [{"name": n, "units": i} for i, n in enumerate(names)] + [{"name": "x"}],
    )
    asc = store.query("toilets", Query(order_by=["units"]))
    assert [p["units"] for p in asc.properties] == [None, 0, 1, 2, 3, 4, 5]
    desc = store.query("toilets", Query(order_by=["-units"]))
    assert [p["units"] for p in desc.properties] == [5, 4, 3, 2, 1, 0, None]
    by_name = store.query("toilets", Query(order_by=["name"]))
    assert [p["name"] for p in by_name.properties] == sorted([*names, "x"])  # code points
    page = store.query("toilets", Query(order_by=["-name"], limit=2, offset=1))
    assert [p["name"] for p in page.properties] == sorted([*names, "x"], reverse=True)[1:3]
    assert page.number_matched == len(names) + 1


def test_a_failed_transaction_writes_nothing(store: FeatureStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
        store.add_document("note", {"n": 1})
        raise RuntimeError("stop")
    assert store.count("toilets") == 0 and store.documents("note") == []
    with store.transaction():
        store.insert("toilets", [P(113.28, 34.80)], [{"name": "kept"}])
        with pytest.raises(InvalidFeatureError):  # a nested failure is rolled back alone
            store.insert("toilets", [P(113.28, 34.80)], [{"name": "a", "units": "x"}])
    assert [p["name"] for p in store.query("toilets").properties] == ["kept"]


def test_stamps_move_on_every_write_by_any_client(store: FeatureStore) -> None:
    before = store.stamp("toilets")
    (fid,) = store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
    after_insert = store.stamp("toilets")
    assert after_insert != before
    assert store.stamp("cameras") == store.stamp("cameras")  # untouched layers stand still
    raw_sql(store.url, "UPDATE toilets SET name = 'by psql or QGIS' WHERE fid = ?", fid)
    assert eventually(lambda: store.stamp("toilets") != after_insert)
    f = store.get("toilets", fid)  # another client's edit moves the version too
    assert f.properties["name"] == "by psql or QGIS" and f.version == 2


def test_the_audit_log_is_append_only_in_the_database(store: FeatureStore) -> None:
    entry = {"at": "2026-11-24T10:00:00", "action": "read", "result": "ok", "username": "u"}
    store.audit_append(entry)
    store.audit_append({**entry, "action": "update"})
    rows, total = store.audit_entries(limit=10)
    assert total == 2 and [r["action"] for r in rows] == ["update", "read"]
    assert store.audit_entries(equals={"action": "read"})[1] == 1
    assert store.audit_entries(equals={"username": "u\x00"}) == ([], 0)  # was a 400 on PG
    with pytest.raises(InvalidFeatureError, match="no field"):
        store.audit_entries(equals={"nope; DROP TABLE x": 1})
    refused_by_database(store.url, "UPDATE gridmap_audit SET result = 'x'", "append-only")
    refused_by_database(store.url, "DELETE FROM gridmap_audit", "append-only")
    assert store.audit_entries()[1] == 2


def test_documents_keep_ids_order_and_bodies(store: FeatureStore) -> None:
    body = {"zeta": 1, "alpha": {"nested": [1, "二", None]}, "b": "中心路"}
    a = store.add_document("campaign", body, created_by="admin")
    b = store.add_document("plan", {"k": 1}, parent=a, grid_id=3)
    assert (a, b) == (1, 2)
    doc = store.document("campaign", a)
    assert doc is not None and doc["body"] == body
    assert list(doc["body"]) == ["zeta", "alpha", "b"]  # key order as written
    assert doc["created_by"] == "admin" and doc["created_at"]
    assert [d["id"] for d in store.documents("plan", parent=a)] == [b]
    assert store.documents("plan", parent=99) == [] and store.document("plan", a) is None
    store.replace_document("campaign", a, {"closed": True})
    assert store.document("campaign", a)["body"] == {"closed": True}  # type: ignore[index]
    with pytest.raises(FeatureNotFoundError):
        store.replace_document("campaign", 77, {})
    refused_by_database(store.url, "DELETE FROM gridmap_documents", "kept")


def test_users_round_trip(store: FeatureStore) -> None:
    rec = {
        "username": "w1", "password_hash": "h", "role": "grid_worker", "grid_ids": [3, 1],
        "community_id": None, "disabled": False, "failed_logins": 0, "locked_until": None,
        "created_at": "2026-11-24T10:00:00", "password_changed_at": "2026-11-24T10:00:00",
    }  # fmt: skip
    store.save_user(rec)
    store.save_user({**rec, "username": "a0", "role": "auditor", "grid_ids": []})
    got = store.user("w1")
    assert got == {**rec, "grid_ids": [1, 3]}
    store.save_user({**rec, "disabled": True, "failed_logins": 2})
    assert store.user("w1")["disabled"] is True  # type: ignore[index]
    assert [u["username"] for u in store.users()] == ["a0", "w1"]
    assert all("password_hash" not in u for u in store.users())
    assert store.user("nobody") is None


def test_masked_fields_are_masked_and_cannot_filter_or_sort(store: FeatureStore) -> None:
    _grid(store)
    store.insert("households", [P(113.27, 34.80)], [{"room": "1", "phone": "13800138000"}])
    scope = Scope(masked=frozenset({("households", "phone")}))
    shown = store.get("households", 1, scope=scope).properties["phone"]
    assert shown != "13800138000" and shown.startswith("138")
    assert store.get("households", 1).properties["phone"] == "13800138000"
    with pytest.raises(PermissionDeniedError):
        store.query("households", Query(equals={"phone": "13800138000"}), scope=scope)
    with pytest.raises(PermissionDeniedError):
        store.query("households", Query(order_by=["phone"]), scope=scope)
    f = check_filter("phone LIKE '138%'", get_layer("households"))
    with pytest.raises(PermissionDeniedError):
        store.count("households", Query(filters=[f]), scope=scope)
    # the masked value sent back unchanged keeps what is stored
    store.update("households", 1, properties={"phone": shown, "room": "2"}, scope=scope)
    assert store.get("households", 1).properties["phone"] == "13800138000"


def test_extents_and_counts_by_value(store: FeatureStore) -> None:
    g1, g2 = _grid(store)
    store.insert(
        "households",
        [P(113.27, 34.80), P(113.275, 34.805), P(113.29, 34.80)],
        [{"room": "1"}, {"room": "2"}, {"room": "3"}],
    )
    ext = store.extent("households")
    assert ext is not None and np.allclose(ext, (113.27, 34.80, 113.29, 34.805), atol=1e-5)
    mine = store.extent("households", scope=Scope(grid_ids=frozenset({g1})))
    assert mine is not None and np.allclose(mine, (113.27, 34.80, 113.275, 34.805), atol=1e-5)
    assert store.extent("cameras") is None
    assert store.count_by("households", "grid_id") == {g1: 2, g2: 1}
    assert store.count_by("households", "grid_id", scope=Scope(grid_ids=frozenset({g2}))) == {g2: 1}


def test_references_are_checked_both_ways(store: FeatureStore) -> None:
    g1, _ = _grid(store)
    (b,) = store.insert(
        "buildings", [shapely.box(113.27, 34.80, 113.271, 34.801)], [{"address": "1号楼"}]
    )
    with pytest.raises(InvalidFeatureError, match="names no feature"):
        store.insert("households", [P(113.2705, 34.8005)], [{"room": "1", "building_id": 99}])
    (h,) = store.insert("households", [P(113.2705, 34.8005)], [{"room": "1", "building_id": b}])
    with pytest.raises(IntegrityError, match="still named"):
        store.delete("buildings", b)
    with pytest.raises(IntegrityError, match="still named"):
        store.delete("grids", g1)
    store.delete("households", h)
    store.delete("buildings", b)
    assert store.count("buildings") == 0


# ----------------------------------------------------------------------------- across backends


def _two_stores(request: pytest.FixtureRequest) -> tuple[FeatureStore, FeatureStore]:
    """The sample as a GeoPackage and as its PostGIS copy."""
    from tests.conftest import require_postgis

    require_postgis()
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    template: str = request.getfixturevalue("sample_template")
    gpkg = open_store(request.getfixturevalue("sample_gpkg")[0])
    pg = open_store(cluster.new_database("gm_same", template=template))
    return gpkg, pg


TRIANGLE = "113.28 34.80, 113.30 34.80, 113.30 34.82, 113.28 34.80"
SAME_FILTERS = [
    ("households", "members >= 4 AND tags IS NOT NULL"),
    ("households", "head_name LIKE '测%' OR room LIKE '1_0%'"),
    ("households", "CASEI(head_name) = CASEI('测试一') OR ACCENTI(room) LIKE '%2%'"),
    ("households", "members * 2 - 1 > 5 AND members / 2 < 3 AND members % 2 = 1"),
    ("households", "members DIV 2 = 1 OR members ^ 2 > 30"),
    ("households", "A_CONTAINS(tags, ('elderly_alone'))"),
    ("households", "A_OVERLAPS(tags, ('hardship', 'disabled'))"),
    ("households", "A_CONTAINEDBY(tags, ('hardship', 'elderly_alone', 'disabled'))"),
    ("households", "T_AFTER(last_visit_at, TIMESTAMP('2026-10-01T00:00:00Z'))"),
    ("households", "T_DURING(last_visit_at, INTERVAL('2026-09-01', '2026-11-01'))"),
    ("households", "last_visit_status IN ('visited', 'not_home') AND NOT members BETWEEN 2 AND 3"),
    ("households", f"S_INTERSECTS(geom, POLYGON(({TRIANGLE})))"),
    ("households", "S_DWITHIN(geom, POINT(113.29 34.81), 150)"),
    ("buildings", "S_WITHIN(geom, BBOX(113.27, 34.79, 113.30, 34.82))"),
    ("buildings", "floors > 5 AND S_DISJOINT(geom, POINT(113.29 34.81))"),
    ("grids", "S_CONTAINS(geom, POINT(113.29 34.81)) OR name LIKE '%1%'"),
    ("old_neighbourhoods", "planned_start < DATE('2027-01-01') OR budget_wan IS NULL"),
    ("toilets", "id > 3 AND id <= 20"),
    # found by review: text literals against text ranges, dates and times; a LIKE pattern
    # ending in a backslash; arithmetic in doubles; powers with no real value
    ("households", "room BETWEEN '1' AND '2'"),
    ("households", "last_visit_at >= '2026-11-01T08:00:00' OR last_visit_at IN ('20261101')"),
    ("cameras", "installed_at = '2024-01-01' OR '2024-01-01' < installed_at"),
    ("households", "head_name LIKE '%\\' OR room LIKE '1\\'"),
    ("households", "0.1 + 0.2 = 0.3 OR members / 3 * 3 = members"),
    ("households", "(0 - members) ^ 0.5 > 1 OR 0 ^ (0 - members) > 1 OR members ^ 2 > 20"),
]  # fmt: skip


@pytest.mark.postgis
def test_both_backends_give_the_same_answers(request: pytest.FixtureRequest) -> None:
    gpkg, pg = _two_stores(request)
    try:
        for layer_id, text in SAME_FILTERS:
            f = check_filter(text, get_layer(layer_id))
            a = gpkg.query_ids(layer_id, Query(filters=[f]))
            b = pg.query_ids(layer_id, Query(filters=[f]))
            assert a[0].tolist() == b[0].tolist() and a[1] == b[1], text
        counted = [
            gpkg.count(lay, Query(filters=[check_filter(t, get_layer(lay))]))
            for lay, t in SAME_FILTERS
        ]
        assert sum(1 for n in counted if n > 0) >= len(SAME_FILTERS) - 2  # the filters select
        box = (113.28, 34.80, 113.29, 34.81)
        for q in (
            Query(bbox=box, limit=100),
            Query(bbox=box, order_by=["-members", "room"], limit=50, offset=10),
            Query(equals={"grid_id": 7}, order_by=["head_name"]),
            Query(geometry=shapely.box(*box).buffer(0.002), predicate="within"),
        ):
            a, b = gpkg.query("households", q), pg.query("households", q)
            assert a.ids.tolist() == b.ids.tolist() and a.number_matched == b.number_matched
            assert a.properties == b.properties
            assert shapely.to_wkb(a.geometries).tolist() == shapely.to_wkb(b.geometries).tolist()
            assert a.versions.tolist() == b.versions.tolist()
        worker = Scope(grid_ids=frozenset({1, 2}), masked=frozenset({("households", "phone")}))
        assert (
            gpkg.query("households", scope=worker).properties
            == pg.query("households", scope=worker).properties
        )
        assert gpkg.time_extent("households") == pg.time_extent("households")
        assert gpkg.count_by("households", "grid_id") == pg.count_by("households", "grid_id")
    finally:
        gpkg.close()
        pg.close()


def _gdal_layers(path: Path) -> dict[str, Any]:
    """Every layer of a GeoPackage as GDAL reads it (not through gridmap)."""
    return {
        lay.id: pyogrio.read_dataframe(path, layer=lay.id, fid_as_index=True).sort_index()
        for lay in LAYERS
    }


@pytest.mark.postgis
def test_a_copy_there_and_back_is_exact(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """GeoPackage → PostGIS → GeoPackage: GDAL reads the same rows from both files, and the
    accounts, documents and audit log came along."""
    from tests.conftest import require_postgis

    require_postgis()
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    # a private file: GDAL (its own SQLite) closing the shared sample would drop this
    # process's locks on it (see conftest.copy_database)
    src = copy_database(request.getfixturevalue("sample_gpkg")[0], tmp_path / "src.gpkg")
    url = cluster.new_database("gm_copy")
    seen: list[tuple[str, int, int]] = []
    there = copy_store(src, url, batch=997, progress=lambda p, d, t: seen.append((p, d, t)))
    back = copy_store(url, tmp_path / "back.gpkg")
    assert there.rows == back.rows and there.rows["households"] == 15_024
    assert ("households", 15_024, 15_024) in seen and ("households", 997, 15_024) in seen
    before, after = _gdal_layers(src), _gdal_layers(tmp_path / "back.gpkg")
    for layer_id, df in before.items():
        other = after[layer_id]
        assert df.index.tolist() == other.index.tolist(), layer_id
        assert df.drop(columns="geometry").equals(other.drop(columns="geometry")), layer_id
        assert df.geometry.to_wkb().tolist() == other.geometry.to_wkb().tolist(), layer_id
    a, b = open_store(src), open_store(tmp_path / "back.gpkg")
    try:
        assert [a.user(u["username"]) for u in a.users()] == [
            b.user(u["username"]) for u in b.users()
        ]
        assert a.backend.all_documents() == b.backend.all_documents()
        assert a.audit_entries(limit=10**6) == b.audit_entries(limit=10**6)
        assert a.service_area.equals(b.service_area) and b.synthetic  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


@pytest.mark.postgis
def test_an_interrupted_copy_resumes_and_never_mixes_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tests.conftest import require_postgis

    require_postgis()
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    src: Path = request.getfixturevalue("sample_gpkg")[0]
    url = cluster.new_database("gm_resume")

    def stop_in_households(part: str, done: int, total: int) -> None:
        if part == "households" and done > 3000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_store(src, url, progress=stop_in_households)
    half = open_store(url)
    assert half.count("households") == 0  # the layer's transaction rolled back whole
    assert half.count("buildings") == 721  # layers before it stay copied
    half.close()
    report = copy_store(src, url)
    assert "buildings" in report.skipped and report.rows["households"] == 15_024
    assert copy_store(src, url).rows == {}  # a finished copy run again does nothing
    other = create_store(tmp_path / "mine.gpkg", service_area=SERVICE_AREA)
    other.insert("toilets", [P(113.28, 34.80)], [{"name": "mine"}])
    other.close()
    with pytest.raises(StoreError, match="already holds 1 toilets"):
        copy_store(src, tmp_path / "mine.gpkg")
    mine = open_store(tmp_path / "mine.gpkg")  # refused before anything was written
    assert mine.count("zones") == 0 and mine.count("toilets") == 1
    mine.close()


def test_aggregates_are_counted_in_the_database_and_noted(store: FeatureStore) -> None:
    """Per-grid figures from one GROUP BY equal a count over the rows; the read log notes
    what was counted (no ids: no row left the database)."""
    from gridmap.access import ReadLog
    from gridmap.cql import tree as ct
    from gridmap.cql.tree import Filter
    from gridmap.store.backend import Measure

    g1, g2 = _grid(store)
    rng = np.random.default_rng(5)
    n = 60
    xs = np.where(np.arange(n) % 3 == 0, 113.29, 113.27) + rng.uniform(0, 0.005, n)
    tags = [["hardship"] if i % 4 == 0 else [] for i in range(n)]
    members = [int(m) for m in rng.integers(0, 6, n)]
    store.insert(
        "households",
        shapely.points(xs, rng.uniform(34.795, 34.805, n)),
        [{"room": str(i), "members": members[i], "tags": tags[i]} for i in range(n)],
    )
    hardship = Filter(
        "households",
        ct.Array("contains", ct.Prop("tags", "list"), ("hardship",)),
        frozenset({"tags"}),
    )
    measures = {
        "n": Measure(),
        "people": Measure("sum", "members"),
        "hard": Measure(where=hardship),
    }
    log = ReadLog()
    got = store.aggregate("households", "grid_id", measures, scope=Scope(reads=log))
    rows = store.query("households")
    want: dict[int, dict[str, int]] = {}
    for p in rows.properties:
        w = want.setdefault(p["grid_id"], {"n": 0, "people": 0, "hard": 0})
        w["n"] += 1
        w["people"] += p["members"]
        w["hard"] += "hardship" in p["tags"]
    assert got == want and set(got) == {g1, g2}
    assert log.summary() == [] and log.counts() == [("households", n, None)]
    masked = Scope(masked=frozenset({("households", "tags")}))
    with pytest.raises(PermissionDeniedError):
        store.aggregate("households", "grid_id", measures, scope=masked)


def test_a_bbox_is_exact_at_its_edges(store: FeatureStore) -> None:
    """On the edge counts as inside; a hair outside (far below a 32-bit float's step, where
    index boxes round) does not, for points and for polygons."""
    box = (113.28, 34.80, 113.29, 34.81)
    hair = 1e-9
    pts = [P(113.28, 34.805), P(113.29, 34.81), P(113.28 - hair, 34.805), P(113.285, 34.81 + hair)]
    store.insert("cameras", pts, [{"name": str(i)} for i in range(len(pts))])
    assert store.query("cameras", Query(bbox=box)).ids.tolist() == [1, 2]
    assert store.count("cameras", Query(bbox=box)) == 2
    polys = [
        shapely.box(113.27, 34.80, 113.28, 34.805),  # shares the west edge
        shapely.box(113.27, 34.80, 113.28 - hair, 34.805),  # a hair short of it
    ]
    store.insert("old_neighbourhoods", polys, [{"name": "a"}, {"name": "b"}])
    assert store.query("old_neighbourhoods", Query(bbox=box)).ids.tolist() == [1]


def test_a_refused_grid_edit_leaves_no_trace_in_later_writes(store: FeatureStore) -> None:
    """Review: a grid edit refused inside its transaction must not leave its shape behind
    in the service's lookup of grids (a later household would be filed in the wrong one)."""
    g1, g2 = _grid(store)
    (b,) = store.insert(
        "buildings", [shapely.box(113.295, 34.80, 113.296, 34.801)], [{"address": "x"}]
    )
    # grid 1 grows over grid 2's west half, and grid 2 shrinks away from its building: refused
    with pytest.raises(IntegrityError, match="in no grid"), store.transaction():
        store.update("grids", g1, geometry=shapely.box(113.26, 34.79, 113.29, 34.81))
        store.update("grids", g2, geometry=shapely.box(113.29, 34.79, 113.294, 34.81))
    assert store.get("buildings", b).properties["grid_id"] == g2
    store.update("grids", g2, properties={"name": "二网格（改名）"})  # moves the stamp on
    (h,) = store.insert("households", [P(113.285, 34.80)], [{"room": "1"}])
    assert store.get("households", h).properties["grid_id"] == g2


def test_a_refused_edit_keeps_the_grids_lookup_built_before_it(store: FeatureStore) -> None:
    """A version conflict (a 412 under concurrent edits) threw away the service's lookup of
    grids, built from committed rows, so the next edits rebuilt it: a load test found it."""
    g1, _ = _grid(store)
    (h,) = store.insert("households", [P(113.27, 34.80)], [{"room": "1"}])
    built = store._located["grids"]
    with pytest.raises(VersionConflictError):
        store.update("households", h, properties={"room": "2"}, expected_version=7)
    assert store._located["grids"] is built
    store.update("households", h, geometry=P(113.27, 34.805))
    assert store._located["grids"] is built
    assert store.get("households", h).properties["grid_id"] == g1


def test_another_client_cannot_give_an_etag_to_other_content(store: FeatureStore) -> None:
    """Review: an outside edit that sets an older version still moves the version on."""
    (fid,) = store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
    store.update("toilets", fid, properties={"name": "b"})
    raw_sql(store.url, "UPDATE toilets SET name = 'c', version = 1 WHERE fid = ?", fid)
    f = store.get("toilets", fid)
    assert f.properties["name"] == "c" and f.version == 3


def test_ids_another_client_gave_are_not_handed_out_again(store: FeatureStore) -> None:
    """Review: a row stored with an explicit id by another client (QGIS, psql) made the
    next new feature collide with it on PostGIS (a 409 once)."""
    (first,) = store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
    raw_sql(store.url, "INSERT INTO toilets (fid, name) VALUES (?, 'outside')", first + 40)
    (nxt,) = store.insert("toilets", [P(113.28, 34.80)], [{"name": "b"}])
    assert nxt == first + 41
    assert store.get("toilets", first + 40).properties["name"] == "outside"


def test_values_no_stored_one_can_equal_are_400_on_every_backend(store: FeatureStore) -> None:
    """Review: NUL characters and dates that are none were 400 on PostGIS only."""
    from gridmap.cql import FilterError
    from gridmap.errors import QueryError

    store.insert("cameras", [P(113.28, 34.80)], [{"name": "a", "installed_at": "2024-01-01"}])
    for equals in ({"name": "a\x00b"}, {"installed_at": "garbage"}, {"installed_at": "2026-02-30"}):
        with pytest.raises(QueryError):
            store.query("cameras", Query(equals=equals))
    assert store.count("cameras", Query(equals={"installed_at": "2024-01-01"})) == 1
    with pytest.raises(FilterError, match="NUL"):
        check_filter("name = 'a\x00'", get_layer("cameras"))
    assert store.user("adm\x00in") is None


@pytest.mark.postgis
def test_lost_connections_fail_one_request_at_most(request: pytest.FixtureRequest) -> None:
    """The server drops every connection (as a restart does): the pool's idle connections
    are dead; the first request to notice drops them all, so no later request fails."""
    from tests.conftest import require_postgis

    require_postgis()
    url = request.getfixturevalue("pg_cluster").new_database("gm_lost")
    store = create_store(url, service_area=SERVICE_AREA)
    try:
        together = threading.Barrier(4)

        def hold() -> None:
            with store.backend._conn() as c:  # type: ignore[attr-defined]
                together.wait(timeout=30)
                c.execute("SELECT 1")

        threads = [threading.Thread(target=hold) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        (killed,) = raw_sql(
            url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'gridmap'",
        )[0]
        assert killed >= 4
        failed = 0
        for _ in range(8):
            try:
                assert store.count("toilets") == 0
            except StoreError as exc:
                assert "try again" in str(exc)
                failed += 1
        assert failed <= 1
    finally:
        store.close()


def test_a_connection_string_is_not_taken_for_a_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """libpq's key=value form once became a GeoPackage named after it in the working
    folder; any other scheme than postgresql:// is refused too. Nothing is written."""
    monkeypatch.chdir(tmp_path)
    for bad in ("user=postgres dbname=gm host=127.0.0.1 port=5432", "dbname=gm", "mysql://x/y"):
        with pytest.raises(StoreError, match="postgresql://"):
            open_store(bad)
        with pytest.raises(StoreError, match="postgresql://"):
            create_store(bad)
    assert list(tmp_path.iterdir()) == []


def test_lists_are_not_sorted_by(store: FeatureStore) -> None:
    """Review: sorting by a list property gave different orders on the two backends."""
    from gridmap.errors import QueryError

    store.insert("toilets", [P(113.28, 34.80)], [{"name": "a"}])
    with pytest.raises(QueryError, match="holds a list"):
        store.query("households", Query(order_by=["-tags"]))
    assert store.query("toilets", Query(order_by=["-name", "id"])).ids.tolist() == [1]


def test_a_pattern_from_the_data_may_end_in_a_backslash(store: FeatureStore) -> None:
    """Review: `column LIKE column` with a stored trailing backslash was a 400 on PostGIS;
    a lone backslash at the end of a pattern stands for itself on both backends."""
    store.insert(
        "toilets",
        [P(113.28, 34.80)] * 3,
        [{"name": "a\\"}, {"name": "b\\\\"}, {"name": "c%"}],
    )
    toilets = get_layer("toilets")
    got = store.query_ids("toilets", Query(filters=[check_filter("name LIKE name", toilets)]))
    assert got[0].tolist() == [1, 3]  # "b\\\\" is an escaped backslash: matches "b\\" only


@pytest.mark.postgis
def test_a_database_in_use_is_left_untouched(request: pytest.FixtureRequest, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Review: creating a store (gridmap demo/copy) in a database holding another
    application's tables installed gridmap's schema and triggers there before refusing."""
    from tests.conftest import require_postgis

    require_postgis()
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database("gm_theirs")
    raw_sql(url, "CREATE TABLE roads (fid bigint PRIMARY KEY, name text)")
    raw_sql(url, "INSERT INTO roads VALUES (1, 'their road')")
    with pytest.raises(StoreError, match=r"not empty .*roads"):
        create_store(url, service_area=SERVICE_AREA)
    tables = raw_sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert tables == [("roads",)]
    assert raw_sql(url, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == [(0,)]
    raw_sql(url, "UPDATE roads SET name = 'still theirs'")
    for bad in ("postgresql://postgres:S3cret PW@127.0.0.1:1/gm", "postgresql://u:S3cretX@[::1/gm"):
        with pytest.raises(StoreError) as err:
            open_store(bad)
        assert "S3cret" not in str(err.value)
    monkeypatch.setenv("GRIDMAP_PG_POOL", "abc")
    with pytest.raises(StoreError, match="GRIDMAP_PG_POOL"):
        open_store(cluster.new_database("gm_pool"))
