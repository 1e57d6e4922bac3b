"""The GeoPackage schema (tables, R-tree and gridmap triggers) and the SQLite functions it uses."""

from __future__ import annotations

from functools import lru_cache

import shapely
from shapely.geometry.base import BaseGeometry

from gridmap import geometry as geo
from gridmap.crs import metric_xy, to_metric
from gridmap.store.records import (  # noqa: F401 - the backends' shared names
    AUDIT_FIELDS,
    CHUNK,
    DOCUMENT_FIELDS,
    USER_FIELDS,
    _q,
)
from gridmap.store.sqlite_filter import FUNCTIONS

APPLICATION_ID = 0x47504B47  # "GPKG"
USER_VERSION = 10300  # GeoPackage 1.3
GEOM = "geom"

_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
    'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
    'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)

_CORE_SQL = """
CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE IF NOT EXISTS gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '',
  last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT uk_gc_table_name UNIQUE (table_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
CREATE TABLE IF NOT EXISTS gpkg_extensions (
  table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL, definition TEXT NOT NULL,
  scope TEXT NOT NULL, CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name));
CREATE TABLE IF NOT EXISTS gridmap_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gridmap_changes (layer TEXT PRIMARY KEY, stamp INTEGER NOT NULL);
"""
_ROW_LOG_SQL = """
CREATE TABLE IF NOT EXISTS gridmap_row_changes (
  layer TEXT NOT NULL, fid INTEGER NOT NULL, stamp INTEGER NOT NULL,
  PRIMARY KEY (layer, fid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gridmap_row_changes_by_stamp ON gridmap_row_changes (layer, stamp);
"""
"""``gridmap_row_changes`` holds, for every id of a layer ever written, the layer's stamp
around its last change (its triggers below). Whether such a trigger runs before or after the
stamp trigger is SQLite's choice, so the logged stamp is the one before or after the
change: rows changed since a stamp ``s`` are those logged at ``s`` or later."""

# Accounts and the append-only audit log (not registered in gpkg_contents: GIS clients do
# not list them).
_ACCOUNTS_SQL = """
CREATE TABLE IF NOT EXISTS gridmap_users (
  username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
  grid_ids TEXT NOT NULL DEFAULT '[]', community_id INTEGER,
  disabled INTEGER NOT NULL DEFAULT 0, failed_logins INTEGER NOT NULL DEFAULT 0,
  locked_until TEXT, created_at TEXT NOT NULL, password_changed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gridmap_audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, username TEXT, role TEXT,
  action TEXT NOT NULL, object TEXT, grid_id INTEGER, result TEXT NOT NULL,
  source TEXT, request_id TEXT, detail TEXT);
CREATE TRIGGER IF NOT EXISTS gridmap_audit_no_update BEFORE UPDATE ON gridmap_audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS gridmap_audit_no_delete BEFORE DELETE ON gridmap_audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
INSERT OR IGNORE INTO gridmap_changes VALUES ('gridmap_users', 0);
CREATE TRIGGER IF NOT EXISTS gridmap_users_stamp_insert AFTER INSERT ON gridmap_users
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = 'gridmap_users'; END;
CREATE TRIGGER IF NOT EXISTS gridmap_users_stamp_update AFTER UPDATE ON gridmap_users
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = 'gridmap_users'; END;
CREATE TRIGGER IF NOT EXISTS gridmap_users_stamp_delete AFTER DELETE ON gridmap_users
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = 'gridmap_users'; END;
CREATE TABLE IF NOT EXISTS gridmap_documents (
  id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, parent INTEGER, grid_id INTEGER,
  created_at TEXT NOT NULL, created_by TEXT, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS gridmap_documents_kind ON gridmap_documents (kind, parent);
INSERT OR IGNORE INTO gridmap_changes VALUES ('gridmap_documents', 0);
CREATE TRIGGER IF NOT EXISTS gridmap_documents_stamp_insert AFTER INSERT ON gridmap_documents
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = 'gridmap_documents'; END;
CREATE TRIGGER IF NOT EXISTS gridmap_documents_stamp_update AFTER UPDATE ON gridmap_documents
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = 'gridmap_documents'; END;
CREATE TRIGGER IF NOT EXISTS gridmap_documents_no_delete BEFORE DELETE ON gridmap_documents
BEGIN SELECT RAISE(ABORT, 'campaigns and plans are kept; close a campaign instead'); END;
CREATE TABLE IF NOT EXISTS gridmap_limits (key TEXT PRIMARY KEY, due REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gridmap_idempotency (
  username TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, layer TEXT NOT NULL,
  fid INTEGER NOT NULL, at REAL NOT NULL, PRIMARY KEY (username, key));
CREATE INDEX IF NOT EXISTS gridmap_idempotency_at ON gridmap_idempotency (at);
"""
# Every change to a layer, by gridmap or by any other SQLite client (QGIS, GDAL), bumps the
# layer's stamp, so in-process caches know when to rebuild.
_STAMP_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS "gridmap_{t}_stamp_insert" AFTER INSERT ON "{t}"
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = '{t}'; END;
CREATE TRIGGER IF NOT EXISTS "gridmap_{t}_stamp_update" AFTER UPDATE ON "{t}"
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = '{t}'; END;
CREATE TRIGGER IF NOT EXISTS "gridmap_{t}_stamp_delete" AFTER DELETE ON "{t}"
BEGIN UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = '{t}'; END;
"""

# The row-change log's triggers (see _ROW_LOG_SQL); not part of the schema digest: a file
# without them (an older release's, read-only) opens, and its caches drop whole layers.
_ROW_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS "gridmap_{t}_rows_insert" AFTER INSERT ON "{t}"
BEGIN INSERT OR REPLACE INTO gridmap_row_changes
 SELECT '{t}', NEW.fid, stamp FROM gridmap_changes WHERE layer = '{t}'; END;
CREATE TRIGGER IF NOT EXISTS "gridmap_{t}_rows_update" AFTER UPDATE ON "{t}"
BEGIN INSERT OR REPLACE INTO gridmap_row_changes
 SELECT '{t}', NEW.fid, stamp FROM gridmap_changes WHERE layer = '{t}';
 INSERT OR REPLACE INTO gridmap_row_changes
 SELECT '{t}', OLD.fid, stamp FROM gridmap_changes WHERE layer = '{t}' AND OLD.fid != NEW.fid;
 END;
CREATE TRIGGER IF NOT EXISTS "gridmap_{t}_rows_delete" AFTER DELETE ON "{t}"
BEGIN INSERT OR REPLACE INTO gridmap_row_changes
 SELECT '{t}', OLD.fid, stamp FROM gridmap_changes WHERE layer = '{t}'; END;
"""

# GeoPackage 1.3 R-tree triggers (spec Annex F.3), so edits by GDAL/QGIS keep the index right.
_RTREE_TRIGGERS = """
CREATE TRIGGER "rtree_{t}_geom_insert" AFTER INSERT ON "{t}"
WHEN (new.geom NOT NULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES
 (NEW.fid, ST_MinX(NEW.geom), ST_MaxX(NEW.geom), ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER "rtree_{t}_geom_update1" AFTER UPDATE OF geom ON "{t}"
WHEN OLD.fid = NEW.fid AND (NEW.geom NOTNULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES
 (NEW.fid, ST_MinX(NEW.geom), ST_MaxX(NEW.geom), ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER "rtree_{t}_geom_update2" AFTER UPDATE OF geom ON "{t}"
WHEN OLD.fid = NEW.fid AND (NEW.geom ISNULL OR ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD.fid; END;
CREATE TRIGGER "rtree_{t}_geom_update3" AFTER UPDATE ON "{t}"
WHEN OLD.fid != NEW.fid AND (NEW.geom NOTNULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD.fid;
 INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES
 (NEW.fid, ST_MinX(NEW.geom), ST_MaxX(NEW.geom), ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER "rtree_{t}_geom_update4" AFTER UPDATE ON "{t}"
WHEN OLD.fid != NEW.fid AND (NEW.geom ISNULL OR ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id IN (OLD.fid, NEW.fid); END;
CREATE TRIGGER "rtree_{t}_geom_delete" AFTER DELETE ON "{t}" WHEN old.geom NOT NULL
BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD.fid; END;
CREATE TRIGGER "gridmap_{t}_version" AFTER UPDATE ON "{t}"
WHEN NEW.version IS NULL OR NEW.version <= OLD.version
BEGIN UPDATE "{t}" SET version = OLD.version + 1 WHERE fid = NEW.fid; END;
"""


@lru_cache(maxsize=16)
def _envelope(b: bytes | None) -> tuple[float, float, float, float] | None:
    """A blob's envelope, once for the four ST_Min/Max calls an R-tree trigger makes."""
    return geo.blob_envelope(b)


def _envelope_part(i: int):  # type: ignore[no-untyped-def]
    """ST_MinX/MaxX/MinY/MaxY: part ``i`` of a blob's (minx, maxx, miny, maxy) envelope."""

    def part(b: bytes | None) -> float | None:
        e = _envelope(b)
        return None if e is None else e[i]

    return part


@lru_cache(maxsize=64)
def _literal(wkb: bytes) -> BaseGeometry:
    g = shapely.from_wkb(wkb)
    shapely.prepare(g)
    return g


def _gm_spatial(kind: str, blob: bytes | None, wkb: bytes) -> int | None:
    """SQLite function: does the feature geometry stand in relation ``kind`` to the literal?
    (NULL, unknown, for a feature without geometry.)"""
    if blob is None:
        return None
    g = geo.from_gpkg_blobs([blob])[0]
    lit = _literal(wkb)
    fn = _SPATIAL_FN[kind]
    return 1 if fn(g, lit) else 0


def _gm_dwithin(blob: bytes | None, metric_wkb: bytes, distance_m: float) -> int | None:
    """SQLite function: is the feature geometry within ``distance_m`` metres of the literal
    (given in EPSG:4547), measured in EPSG:4547? (NULL for a feature without geometry.)"""
    if blob is None:
        return None
    xy = geo.blob_point(blob)
    if xy is not None:  # most rows are points: no geometry object to build and project
        g = shapely.Point(metric_xy(*xy))
    else:
        g = to_metric(geo.from_gpkg_blobs([blob]))[0]
    return 1 if shapely.dwithin(g, _literal(metric_wkb), distance_m) else 0


def _gm_bbox(blob: bytes | None, minx: float, miny: float, maxx: float, maxy: float) -> int:
    """SQLite function: does the feature geometry intersect the box (exactly)?"""
    env = geo.blob_envelope(blob)
    if env is None:
        return 0
    ex0, ex1, ey0, ey1 = env
    if ex0 > maxx or ex1 < minx or ey0 > maxy or ey1 < miny:
        return 0
    if ex0 >= minx and ex1 <= maxx and ey0 >= miny and ey1 <= maxy:
        return 1
    g = geo.from_gpkg_blobs([blob])[0]
    return 1 if shapely.intersects(g, shapely.box(minx, miny, maxx, maxy)) else 0


_SPATIAL_FN = {
    "intersects": lambda g, lit: shapely.intersects(lit, g),
    "within": lambda g, lit: shapely.contains(lit, g),
    "contains": lambda g, lit: shapely.within(lit, g),
    "disjoint": lambda g, lit: shapely.disjoint(lit, g),
    "equals": lambda g, lit: shapely.equals(g, lit),
    "touches": lambda g, lit: shapely.touches(lit, g),
    "crosses": lambda g, lit: shapely.crosses(lit, g),
    "overlaps": lambda g, lit: shapely.overlaps(lit, g),
}


def register_functions(conn) -> None:  # type: ignore[no-untyped-def]
    """The ST_* functions the GeoPackage R-tree triggers need (GDAL registers the same) and
    gridmap's own spatial predicates."""
    conn.create_function("ST_IsEmpty", 1, geo.blob_is_empty, deterministic=True)
    conn.create_function("gm_spatial", 3, _gm_spatial, deterministic=True)
    conn.create_function("gm_bbox", 5, _gm_bbox, deterministic=True)
    conn.create_function("gm_dwithin", 3, _gm_dwithin, deterministic=True)
    for name, (n, fn) in FUNCTIONS.items():
        conn.create_function(name, n, fn, deterministic=True)
    for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(name, 1, _envelope_part(i), deterministic=True)
