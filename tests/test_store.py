"""The GeoPackage store: CRUD, queries, versions, scope, validation, and GDAL interoperability."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import orjson
import pyogrio
import pytest
import shapely

from gridmap.errors import (
    StoreError,
)
from gridmap.layers import LAYERS
from gridmap.store import FeatureStore, Query, create_store, open_store
from tests.conftest import external_connection

P = shapely.Point

# The GeoPackage file itself (GDAL, SQLite); test_contract.py runs the shared rules on both.
pytestmark = pytest.mark.gpkg_only


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


def test_a_point_blob_is_read_as_a_point() -> None:
    """The per-row fast path of S_DWITHIN reads a point's coordinates straight from the
    GeoPackage blob: the same as shapely's reading, either byte order; None otherwise."""
    import struct

    from gridmap.geometry import blob_point, from_gpkg_blobs, to_gpkg_blobs

    pts = [shapely.Point(113.2912345678, 34.8012345678), shapely.Point(-0.0, 90.0)]
    for blob, p in zip(to_gpkg_blobs(pts), pts, strict=True):
        assert blob_point(blob) == (p.x, p.y) == from_gpkg_blobs([blob])[0].coords[0]
    big = b"GP\x00\x00" + struct.pack("<i", 4326) + b"\x00" + struct.pack(">I2d", 1, 1.5, 2.5)
    assert blob_point(big) == from_gpkg_blobs([big])[0].coords[0] == (1.5, 2.5)
    others = [shapely.LineString([(0, 0), (1, 1)]), shapely.Point(), shapely.Point(1, 2, 3)]
    for blob in to_gpkg_blobs(others):
        assert blob_point(blob) is None
    assert blob_point(None) is None and blob_point(b"not a blob") is None


def test_layer_extent_follows_every_edit(store: FeatureStore) -> None:
    """gpkg_contents' extent (what GDAL and QGIS zoom to) stays the layer's bounds through
    moves and deletes of its outermost features, though a single edit rescans only when
    it must; another program's edits (which leave the extent as it was) are caught up
    with at gridmap's next edit. Checked against shapely's bounds of what is left and the
    R-tree's min/max."""
    import random

    from gridmap import geometry as geo

    def outside(step: int, feats: list) -> None:  # as QGIS or sqlite3 would: no refresh
        conn = external_connection(store.path)
        f = rng.choice(feats)
        if step % 2:
            conn.execute("DELETE FROM toilets WHERE fid = ?", (f.id,))
            alive.discard(f.id)
        else:
            blob = geo.to_gpkg_blobs([P(113.28 + rng.choice((-1, 1)) * 0.0199, 34.80)])[0]
            conn.execute("UPDATE toilets SET geom = ? WHERE fid = ?", (blob, f.id))
        conn.commit()
        conn.close()

    rng = random.Random(5)
    ids = store.insert(
        "toilets",
        [P(113.28 + rng.uniform(-0.01, 0.01), 34.80 + rng.uniform(-0.01, 0.01)) for _ in range(30)],
        [{"name": f"厕{i}"} for i in range(30)],
    )
    alive = set(ids)
    for step in range(80):
        feats = [store.get("toilets", i) for i in sorted(alive)]
        xs = [f.geometry.x for f in feats]
        if step % 7 == 6:
            outside(step, feats)
            continue
        if step % 5 == 4:  # delete the westernmost, an edge of the extent
            f = feats[xs.index(min(xs))]
            store.delete("toilets", f.id, expected_version=f.version)
            alive.discard(f.id)
        else:  # move one: sometimes the easternmost inwards, sometimes anything outwards
            f = feats[xs.index(max(xs))] if step % 3 == 0 else rng.choice(feats)
            spread = 0.005 if step % 3 == 0 else 0.02
            g = P(113.28 + rng.uniform(-spread, spread), 34.80 + rng.uniform(-spread, spread))
            store.update("toilets", f.id, geometry=g, expected_version=f.version)
        truth = shapely.MultiPoint([store.get("toilets", i).geometry for i in alive]).bounds
        with sqlite3.connect(store.path) as conn:
            got = conn.execute(
                "SELECT min_x, min_y, max_x, max_y FROM gpkg_contents WHERE table_name='toilets'"
            ).fetchone()
            rtree = conn.execute(
                "SELECT min(minx), min(miny), max(maxx), max(maxy) FROM rtree_toilets_geom"
            ).fetchone()
        conn.close()
        assert got == rtree, step
        # the R-tree holds float32 rounded outwards (one step is 7.6e-6° at 113°E)
        assert got[0] <= truth[0] and got[1] <= truth[1], step
        assert got[2] >= truth[2] and got[3] >= truth[3], step
        assert got == pytest.approx(truth, abs=2e-5), step


def test_record_writes_from_many_threads_commit_together_each_error_its_own(
    store: FeatureStore,
) -> None:
    """Audit entries and rate-limit turns from many threads at once (group commit): every
    one is in the file afterwards (read by plain SQLite), a refused turn is refused to its
    caller alone, and a statement that fails fails only its caller."""
    import threading

    backend = store.backend
    errors: list[BaseException] = []
    refused: list[float] = []

    def worker(t: int) -> None:
        for i in range(40):
            store.audit_append(
                {"at": "2026-12-03T00:00:00Z", "action": f"t{t}", "object": str(i), "result": "ok"}
            )
            if (wait := store.take_turn(f"k{t}", 1000.0 + i, 1.0, 0.0)) is not None:
                refused.append(wait)
            if i == 7:
                try:  # a broken statement among the others: the audit log takes no update
                    backend._run("UPDATE gridmap_audit SET action = 'x'", ())
                except sqlite3.Error as exc:
                    errors.append(exc)
            if i == 9:
                try:  # a value SQLite cannot take (a lone surrogate) fails its caller alone
                    store.audit_append({"at": "x", "action": "bad", "detail": "\ud800"})
                except UnicodeEncodeError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert (
        sorted(type(e).__name__ for e in errors)
        == ["IntegrityError"] * 8 + ["UnicodeEncodeError"] * 8
    )
    assert all("append-only" in str(e) for e in errors if isinstance(e, sqlite3.Error))
    assert len({id(e) for e in errors}) == 16  # each caller its own exception object
    assert refused == []  # one turn a second, taken a second apart
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT action, count(*) FROM gridmap_audit GROUP BY action").fetchall()
        turns = conn.execute("SELECT count(*) FROM gridmap_limits").fetchone()[0]
    conn.close()
    assert dict(rows) == {f"t{t}": 40 for t in range(8)}
    assert turns == 8
    assert store.take_turn("k0", 1039.0, 1.0, 0.0) is not None  # its turn is taken already


def _rows(path: Path, table: str) -> dict[int, tuple[object, ...]]:
    """Every row of a table, read with plain sqlite3."""
    with sqlite3.connect(path) as conn:
        got = {int(r[0]): tuple(r[1:]) for r in conn.execute(f'SELECT * FROM "{table}"')}
    conn.close()
    return got


def _edit_at_random(store: FeatureStore, rng: object, n: int) -> None:
    """``n`` edits of toilets, through the store and as another SQLite client would make
    them: moves, property changes, deletes, inserts, and a row given another id."""
    from gridmap import geometry as geo

    def point() -> shapely.Point:
        return P(113.28 + rng.uniform(-0.01, 0.01), 34.80 + rng.uniform(-0.01, 0.01))  # type: ignore[attr-defined]

    for step in range(n):
        alive = sorted(_rows(store.path, "toilets"))
        fid = rng.choice(alive)  # type: ignore[attr-defined]
        kind = step % 6
        if kind == 0:
            f = store.get("toilets", fid)
            store.update("toilets", fid, geometry=point(), expected_version=f.version)
        elif kind == 1:
            store.update("toilets", fid, properties={"units": step + 100})
        elif kind == 2:
            store.delete("toilets", fid)
        elif kind == 3:
            store.insert("toilets", [point()], [{"name": f"新{step}"}])
        else:
            conn = external_connection(store.path)
            if kind == 4:
                blob = geo.to_gpkg_blobs([point()])[0]
                conn.execute(
                    "UPDATE toilets SET geom = ?, name = 'QGIS' WHERE fid = ?", (blob, fid)
                )
            elif step % 12 == 5:
                conn.execute("UPDATE toilets SET fid = ? WHERE fid = ?", (max(alive) + 50, fid))
            else:
                blob = geo.to_gpkg_blobs([point()])[0]
                conn.execute("INSERT INTO toilets (geom, name) VALUES (?, 'GDAL')", (blob,))
            conn.commit()
            conn.close()


def test_row_change_log_names_the_rows_changed_since_a_stamp(store: FeatureStore) -> None:
    """What the log says changed since a stamp is what differs between two dumps of the
    table taken with plain sqlite3 (gridmap's edits and another client's alike), plus at
    most the row written just before the stamp was read (its trigger may log either the
    stamp before or after its change) and rows made and deleted in between."""
    import random

    rng = random.Random(11)
    store.insert(
        "toilets",
        [P(113.28 + i * 1e-4, 34.80) for i in range(40)],
        [{"name": f"厕{i}"} for i in range(40)],
    )
    for rounds in range(4):
        last = min(_rows(store.path, "toilets"))
        store.update("toilets", last, properties={"units": 7 + rounds})
        before, stamp = _rows(store.path, "toilets"), store.stamp("toilets")
        _edit_at_random(store, rng, 18)
        after = _rows(store.path, "toilets")
        diff = {i for i in before.keys() | after.keys() if before.get(i) != after.get(i)}
        got = store.changed_since("toilets", stamp, 1000)
        assert got is not None and diff <= got, rounds
        # beyond those: a row made and deleted meanwhile (in neither dump), or ``last``
        assert all(i == last or (i not in before and i not in after) for i in got - diff)
        assert store.changed_since("toilets", stamp, len(got) - 1) is None
        assert store.changed_since("toilets", store.stamp("toilets") + 1, 10) == frozenset()
        assert store.changed_since("grids", stamp, 1000) == frozenset()


def test_spatial_index_patched_after_edits_answers_as_a_scan(store: FeatureStore) -> None:
    """After every edit (gridmap's or another client's) the in-memory index is patched,
    not rebuilt, and a bbox read through it finds what shapely finds in every row read
    with plain sqlite3; past the patch's limit, the reads fall back to the R-tree."""
    import random

    from gridmap import geometry as geo
    from gridmap.layers import get_layer

    rng = random.Random(3)
    store.insert(
        "toilets",
        [P(113.28 + rng.uniform(-0.01, 0.01), 34.80 + rng.uniform(-0.01, 0.01)) for _ in range(60)],
        [{"name": f"厕{i}"} for i in range(60)],
    )
    indexes = store.backend._indexes  # type: ignore[attr-defined]
    built = indexes.build_now(get_layer("toilets"), None)
    for step in range(40):
        _edit_at_random(store, rng, 1)
        rows = _rows(store.path, "toilets")
        fids = sorted(rows)
        geoms = geo.from_gpkg_blobs([rows[i][0] for i in fids])
        for _ in range(5):
            x, y = 113.28 + rng.uniform(-0.012, 0.008), 34.80 + rng.uniform(-0.012, 0.008)
            box = (x, y, x + rng.uniform(0.001, 0.01), y + rng.uniform(0.001, 0.01))
            truth = [f for f, g in zip(fids, geoms, strict=True) if g.intersects(shapely.box(*box))]
            assert store.query("toilets", Query(bbox=box)).ids.tolist() == truth, step
        kept = indexes._kept["toilets"]
        assert kept.tree is built.tree and kept.stamp == store.stamp("toilets"), step
        assert len(kept.changed) >= 1
    assert indexes.fresh(get_layer("toilets"), None, store.stamp("toilets")) is kept


def test_feature_cache_keeps_unchanged_features_across_edits(store: FeatureStore) -> None:
    """After edits, a cached page re-encodes only the features changed since (gridmap's
    edits or another client's), and every page equals a cold read's encoding."""
    import random

    import orjson

    from gridmap.geojson import FeatureCache, feature_dicts
    from gridmap.store import Scope

    rng = random.Random(8)
    store.insert("toilets", [P(113.28 + i * 1e-4, 34.80) for i in range(30)], [{"name": "厕"}] * 30)
    cache = FeatureCache()
    for step in range(12):
        ids = sorted(_rows(store.path, "toilets"))
        first = cache.page(store, "toilets", ids, scope=Scope())
        stamp = store.stamp("toilets")
        _edit_at_random(store, rng, 1)
        changed = store.changed_since("toilets", stamp, 1000)
        assert changed
        again = cache.page(store, "toilets", ids, scope=Scope())
        cold = {
            d["id"]: orjson.dumps(d) for d in feature_dicts(store.query("toilets", Query(ids=ids)))
        }
        assert again == [cold[i] for i in ids if i in cold], step
        was = dict(zip(ids, first, strict=True))
        now = dict(zip([i for i in ids if i in cold], again, strict=True))
        assert all(now[i] is was[i] for i in now if i not in changed), step  # kept, not encoded


def test_an_index_read_in_a_rolled_back_transaction_is_not_kept(store: FeatureStore) -> None:
    """A bbox read inside a transaction that edits the layer sees the edit, and after the
    rollback the reads (through the in-memory index) see the committed rows again, also
    once later edits have moved the stamp past the rolled-back one."""
    from gridmap.layers import get_layer

    store.insert("toilets", [P(113.28 + i * 1e-3, 34.80) for i in range(10)], [{"name": "厕"}] * 10)
    store.backend._indexes.build_now(get_layer("toilets"), None)  # type: ignore[attr-defined]
    box = (113.279, 34.799, 113.2815, 34.801)  # toilets 1 and 2

    def brute() -> list[int]:
        rows = _rows(store.path, "toilets")
        from gridmap import geometry as geo

        geoms = geo.from_gpkg_blobs([rows[i][0] for i in sorted(rows)])
        return [
            i for i, g in zip(sorted(rows), geoms, strict=True) if g.intersects(shapely.box(*box))
        ]

    with pytest.raises(RuntimeError), store.transaction():
        store.update("toilets", 1, geometry=P(113.32, 34.83))
        assert store.query("toilets", Query(bbox=box)).ids.tolist() == [2]
        raise RuntimeError
    for k in range(5):
        assert store.query("toilets", Query(bbox=box)).ids.tolist() == brute() == [1, 2], k
        store.update("toilets", 6 + k % 3, properties={"units": k})


def test_reads_stay_right_when_another_program_drops_the_row_log(store: FeatureStore) -> None:
    """With the log's triggers dropped by another program while the store is open, a moved
    stamp with no logged row is taken as "unknown": the index and the feature cache read
    everything again rather than serve what was."""
    from gridmap import geometry as geo
    from gridmap.geojson import FeatureCache
    from gridmap.layers import get_layer
    from gridmap.store import Scope

    store.insert("toilets", [P(113.28 + i * 1e-3, 34.80) for i in range(10)], [{"name": "厕"}] * 10)
    store.backend._indexes.build_now(get_layer("toilets"), None)  # type: ignore[attr-defined]
    cache = FeatureCache()
    ids = list(range(1, 11))
    cache.page(store, "toilets", ids, scope=Scope())
    conn = external_connection(store.path)
    for event in ("insert", "update", "delete"):
        conn.execute(f'DROP TRIGGER "gridmap_toilets_rows_{event}"')
    blob = geo.to_gpkg_blobs([P(113.35, 34.85)])[0]
    conn.execute("UPDATE toilets SET geom = ?, name = 'moved' WHERE fid = 1", (blob,))
    conn.commit()
    conn.close()
    box = (113.279, 34.799, 113.2815, 34.801)
    assert store.query("toilets", Query(bbox=box)).ids.tolist() == [2]
    first = orjson.loads(cache.page(store, "toilets", ids, scope=Scope())[0])
    assert first["properties"]["name"] == "moved"
