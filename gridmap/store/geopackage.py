"""The embedded backend: every layer in one GeoPackage file (SQLite, R-tree index, WAL)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap import geometry as geo
from gridmap.assign import PolygonIndex
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
from gridmap.layers import LAYERS, Layer, Prop, get_layer
from gridmap.store import relations
from gridmap.store.base import BBox, Feature, FeatureSet, Progress, Query, Scope
from gridmap.store.gpkg_sql import (
    _ACCOUNTS_SQL,
    _CORE_SQL,
    _RTREE_TRIGGERS,
    _STAMP_TRIGGERS,
    _WGS84_WKT,
    APPLICATION_ID,
    AUDIT_FIELDS,
    CHUNK,
    DOCUMENT_FIELDS,
    USER_FIELDS,
    USER_VERSION,
    _q,
    register_functions,
)
from gridmap.store.sqlite_filter import list_guard
from gridmap.store.sqlite_filter import render as render_filter
from gridmap.store.views import mask, mask_feature, require, unmask_unchanged

SYNTHETIC = "synthetic_identifiers"
"""Meta key: "true" in a store of invented people (the sample), whose identifiers take the
forms that can belong to nobody (see gridmap.identifiers)."""
_ALL_ROWS = Query()
_ADDED_LATER = frozenset({"visits"})
"""Layers added by a release after the first: created when an older file is opened."""
_APPEND_ONLY = "{} is append-only: record a correction as a new entry"
_IN_GRIDS = 't."grid_id" IN (SELECT value FROM json_each(?))'


def _to_sql(p: Prop, v: Any) -> Any:
    if v is None:
        return None
    if p.type == "list":
        return json.dumps(v, ensure_ascii=False)
    if p.type == "bool":
        return 1 if v else 0
    return v


class GeoPackageStore:
    """A Store over one GeoPackage file that GDAL and QGIS open as is.

    One table per layer (``fid`` integer key, ``geom`` GeoPackage geometry, typed property
    columns, ``version``), the GeoPackage R-tree spatial index with its standard triggers,
    WAL journaling and a busy timeout. Connections are per thread.

    Use :meth:`create` for a new file and :meth:`open` for an existing one.
    """

    def __init__(self, path: str | os.PathLike[str], *, _create: bool = False) -> None:
        self.path = Path(path)
        if not _create and not self.path.exists():
            msg = f"no database at {self.path}; build the sample with `gridmap demo`"
            raise StoreError(msg)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._service_area: BaseGeometry | None = None
        self._grid_index: tuple[int, PolygonIndex, npt.NDArray[np.int64]] | None = None
        self._spatial: dict[str, _LayerIndex] = {}
        try:
            if _create:
                self._init_schema()
            else:
                self._check_schema()
            self._load_meta()
        except BaseException:
            self.close()  # no connection outlives a store that could not open
            raise

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, service_area: BaseGeometry | None = None
    ) -> GeoPackageStore:
        """Create a new GeoPackage with every registered layer (owner-only permissions)."""
        p = Path(path)
        if p.exists():
            msg = f"{p} already exists; remove it first or open it instead"
            raise StoreError(msg)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        store = cls(p, _create=True)
        if service_area is not None:
            store.set_service_area(service_area)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GeoPackageStore:
        """Open an existing gridmap GeoPackage."""
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            register_functions(conn)
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> GeoPackageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; inside another (same thread) a savepoint of it."""
        conn = self._connect()
        depth = getattr(self._local, "depth", 0)
        begin, commit, rollback = (
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
            if depth == 0
            else (f"SAVEPOINT w{depth}", f"RELEASE w{depth}", f"ROLLBACK TO w{depth}")
        )
        conn.execute(begin)
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException:
            conn.execute(rollback)
            if depth:
                conn.execute(commit)  # a rolled-back savepoint stays open until released
            raise
        else:
            conn.execute(commit)
        finally:
            self._local.depth = depth

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (inserts, updates, deletes, documents) so that all or none happen."""
        with self._write():
            yield

    # ---------------------------------------------------------------- schema

    def _init_schema(self) -> None:
        # The header fields go straight into the file (before WAL mode), because GDAL
        # reads them from the file's first bytes, not through SQLite.
        raw = sqlite3.connect(self.path, isolation_level=None)
        raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        raw.execute(f"PRAGMA user_version = {USER_VERSION}")
        raw.execute("VACUUM")
        raw.close()
        with self._write() as c:
            for stmt in _CORE_SQL.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            srs = [
                ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian"),
                ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic"),
                ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT, "longitude/latitude WGS84"),
            ]
            c.executemany("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?,?,?,?,?,?)", srs)
            for layer in LAYERS:
                self._create_layer_table(c, layer)
            c.execute("INSERT OR REPLACE INTO gridmap_meta VALUES ('schema_version', '1')")
            c.execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, description)"
                " VALUES ('gridmap_meta', 'attributes', 'gridmap_meta', 'gridmap settings')"
            )
        self._upgrade()

    def _create_layer_table(self, c: sqlite3.Connection, layer: Layer) -> None:
        t = layer.id
        cols = ", ".join(f"{_q(p.name)} {p.sql_type}" for p in layer.properties)
        c.execute(
            f"CREATE TABLE {_q(t)} (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
            f"geom {layer.geometry_type.upper()}, {cols}, "
            "version INTEGER NOT NULL DEFAULT 1)"
        )
        c.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id)"
            " VALUES (?, 'features', ?, ?, 4326)",
            (t, t, f"{layer.zh} {layer.en}"),
        )
        c.execute(
            "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, 4326, 0, 0)",
            (t, layer.geometry_type.upper()),
        )
        c.execute(
            f"CREATE VIRTUAL TABLE {_q('rtree_' + t + '_geom')} "
            "USING rtree(id, minx, maxx, miny, maxy)"
        )
        c.execute(
            "INSERT INTO gpkg_extensions VALUES (?, 'geom', 'gpkg_rtree_index', "
            "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
            (t,),
        )
        for stmt in _RTREE_TRIGGERS.format(t=t).split("END;"):
            if stmt.strip():
                c.execute(stmt + "END;")
        self._create_stamps(c, layer)
        for p in layer.properties:
            if p.ref is not None or p.name == "client_key":
                c.execute(f"CREATE INDEX {_q(f'idx_{t}_{p.name}')} ON {_q(t)} ({_q(p.name)})")

    def _create_stamps(self, c: sqlite3.Connection, layer: Layer) -> None:
        c.execute("INSERT OR IGNORE INTO gridmap_changes VALUES (?, 0)", (layer.id,))
        for stmt in _STAMP_TRIGGERS.format(t=layer.id).split("END;"):
            if stmt.strip():
                c.execute(stmt + "END;")

    def _upgrade(self) -> None:
        """Create what a file lacks (change stamps, accounts, audit log); idempotent."""
        with self._write() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS gridmap_changes "
                "(layer TEXT PRIMARY KEY, stamp INTEGER NOT NULL)"
            )
            tables = {
                r[0]
                for r in c.execute(
                    "SELECT table_name FROM gpkg_contents WHERE data_type = 'features'"
                )
            }
            for layer in LAYERS:
                if layer.id not in tables:  # a layer added by a later release
                    self._create_layer_table(c, layer)
                self._create_stamps(c, layer)
            for stmt in _ACCOUNTS_SQL.split(";\n"):
                if stmt.strip():
                    c.execute(stmt)

    # ---------------------------------------------------------------- accounts, audit

    def user(self, username: str) -> dict[str, Any] | None:
        """A user record (``grid_ids`` as a list), or None."""
        row = (
            self._connect()
            .execute(
                f"SELECT {', '.join(USER_FIELDS)} FROM gridmap_users WHERE username = ?",
                (username,),
            )
            .fetchone()
        )
        if row is None:
            return None
        rec = dict(zip(USER_FIELDS, row, strict=True))
        rec["grid_ids"] = json.loads(rec["grid_ids"])
        rec["disabled"] = bool(rec["disabled"])
        return rec

    def users(self) -> list[dict[str, Any]]:
        """Every user record, without password hashes."""
        rows = (
            self._connect()
            .execute(f"SELECT {', '.join(USER_FIELDS)} FROM gridmap_users ORDER BY username")
            .fetchall()
        )
        out = []
        for row in rows:
            rec = dict(zip(USER_FIELDS, row, strict=True))
            rec.pop("password_hash")
            rec["grid_ids"] = json.loads(rec["grid_ids"])
            rec["disabled"] = bool(rec["disabled"])
            out.append(rec)
        return out

    def save_user(self, record: Mapping[str, Any]) -> None:
        """Insert or replace a user record (all of ``USER_FIELDS``)."""
        rec = dict(record)
        rec["grid_ids"] = json.dumps(sorted(int(g) for g in rec.get("grid_ids") or []))
        rec["disabled"] = 1 if rec.get("disabled") else 0
        values = [rec.get(f) for f in USER_FIELDS]
        with self._write() as c:
            c.execute(
                f"INSERT OR REPLACE INTO gridmap_users ({', '.join(USER_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(USER_FIELDS))})",
                values,
            )

    def audit_append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry to the audit log (the table refuses updates and deletes)."""
        fields = [f for f in AUDIT_FIELDS if f != "id"]
        self._connect().execute(
            f"INSERT INTO gridmap_audit ({', '.join(fields)}) "
            f"VALUES ({', '.join('?' * len(fields))})",
            [entry.get(f) for f in fields],
        )

    def audit_entries(
        self, *, limit: int = 100, offset: int = 0, equals: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Audit entries, newest first, with the number matched."""
        clauses = []
        params: list[Any] = []
        for k, v in (equals or {}).items():
            if k not in AUDIT_FIELDS:
                msg = f"audit entries have no field {k[:40]!r}"
                raise InvalidFeatureError(msg)
            clauses.append(f"{_q(k)} = ?")
            params.append(v)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        conn = self._connect()
        total = conn.execute("SELECT count(*) FROM gridmap_audit" + where, params).fetchone()[0]
        rows = conn.execute(
            f"SELECT {', '.join(AUDIT_FIELDS)} FROM gridmap_audit{where} "
            "ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        ).fetchall()
        return [dict(zip(AUDIT_FIELDS, r, strict=True)) for r in rows], int(total)

    # ---------------------------------------------------------------- documents

    def add_document(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        parent: int | None = None,
        grid_id: int | None = None,
        created_by: str | None = None,
    ) -> int:
        """Store a record that is no feature (a campaign, a plan); return its id."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO gridmap_documents (kind, parent, grid_id, created_at, created_by,"
                " body) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, parent, grid_id, now, created_by, orjson.dumps(body).decode()),
            )
            return int(cur.lastrowid or 0)

    def replace_document(self, kind: str, doc_id: int, body: Mapping[str, Any]) -> None:
        """Replace a document's body (FeatureNotFoundError if there is none)."""
        with self._write() as c:
            n = c.execute(
                "UPDATE gridmap_documents SET body = ? WHERE kind = ? AND id = ?",
                (orjson.dumps(body).decode(), kind, int(doc_id)),
            ).rowcount
        if not n:
            msg = f"no {kind} {doc_id}"
            raise FeatureNotFoundError(msg)

    def document(self, kind: str, doc_id: int) -> dict[str, Any] | None:
        """One document (its fields, ``body`` decoded), or None."""
        row = (
            self._connect()
            .execute(
                f"SELECT {', '.join(DOCUMENT_FIELDS)} FROM gridmap_documents"
                " WHERE kind = ? AND id = ?",
                (kind, int(doc_id)),
            )
            .fetchone()
        )
        return None if row is None else _document(row)

    def documents(self, kind: str, *, parent: int | None = None) -> list[dict[str, Any]]:
        """The documents of a kind (of one parent), oldest first."""
        sql = f"SELECT {', '.join(DOCUMENT_FIELDS)} FROM gridmap_documents WHERE kind = ?"
        params: list[Any] = [kind]
        if parent is not None:
            sql += " AND parent = ?"
            params.append(int(parent))
        rows = self._connect().execute(sql + " ORDER BY id", params).fetchall()
        return [_document(r) for r in rows]

    def stamp(self, layer_id: str) -> int:
        """A number that changes whenever the layer changes (by any client)."""
        row = (
            self._connect()
            .execute("SELECT stamp FROM gridmap_changes WHERE layer = ?", (layer_id,))
            .fetchone()
        )
        return int(row[0]) if row else -1

    def _check_schema(self) -> None:
        try:
            conn = self._connect()
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM gpkg_contents WHERE data_type = 'features'"
                )
            }
        except sqlite3.DatabaseError as exc:
            msg = f"{self.path} is not a GeoPackage ({exc}); point GRIDMAP_DATABASE at one"
            raise StoreError(msg) from None
        if app != APPLICATION_ID:
            msg = f"{self.path} is not a GeoPackage (application_id {app:#x})"
            raise StoreError(msg)
        missing = [lay.id for lay in LAYERS if lay.id not in tables | _ADDED_LATER]
        if missing:
            msg = f"{self.path} lacks gridmap layers {missing}; rebuild it with `gridmap demo`"
            raise StoreError(msg)
        self._upgrade()

    def _load_meta(self) -> None:
        row = (
            self._connect()
            .execute("SELECT value FROM gridmap_meta WHERE key = 'service_area'")
            .fetchone()
        )
        self._service_area = shapely.from_wkt(row[0]) if row else None
        if self._service_area is not None:
            shapely.prepare(self._service_area)
        self.synthetic = self.meta(SYNTHETIC) == "true"

    def set_service_area(self, area: BaseGeometry) -> None:
        """Set the area every feature must lie inside (WGS84 polygon)."""
        geo.check_geometries([area], accepted_types=frozenset({"Polygon", "MultiPolygon"}))
        with self._write() as c:
            c.execute(
                "INSERT OR REPLACE INTO gridmap_meta VALUES ('service_area', ?)",
                (shapely.to_wkt(area, rounding_precision=-1),),
            )
        self._load_meta()

    @property
    def service_area(self) -> BaseGeometry | None:
        """Where features may lie (WGS84), if set."""
        return self._service_area

    def meta(self, key: str) -> str | None:
        """A value from the gridmap_meta table."""
        row = (
            self._connect()
            .execute("SELECT value FROM gridmap_meta WHERE key = ?", (key,))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a value in the gridmap_meta table."""
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO gridmap_meta VALUES (?, ?)", (key, value))
        self._load_meta()

    def layers(self) -> list[Layer]:
        """The layers this store holds (all registered layers)."""
        return list(LAYERS)

    # ---------------------------------------------------------------- reading

    def _layer(self, layer_id: str, scope: Scope) -> Layer:
        layer = get_layer(layer_id)
        if not scope.allows_layer(layer_id):
            msg = f"no collection {layer_id[:60]!r}"
            raise HiddenLayerError(msg)
        return layer

    def _seen(self, layer: Layer, fs: FeatureSet, scope: Scope) -> FeatureSet:
        """Masked for the scope, and noted in its read log when the layer is personal."""
        if scope.reads is not None and layer.personal:
            scope.reads.saw(layer.id, fs.ids.tolist(), [p.get("grid_id") for p in fs.properties])
        return mask(fs, scope)

    def _where(self, layer: Layer, query: Query, scope: Scope) -> tuple[str, list[Any], bool]:
        """SQL WHERE clause (with bound parameters) and whether the R-tree join is needed."""
        clauses: list[str] = []
        params: list[Any] = []
        box = query.bbox
        if scope.limits(layer):
            clauses.append(_IN_GRIDS)
            params.append(json.dumps(sorted(scope.grid_ids or ())))
        hidden = scope.masked_in(layer) & (
            set(query.equals)
            | {k.lstrip("+-") for k in query.order_by}
            | {p for f in query.filters for p in f.properties}
        )
        foreign = [f.layer_id for f in query.filters if f.layer_id != layer.id]
        if foreign:
            msg = f"a filter checked for {foreign[0]} cannot select from {layer.id}"
            raise InvalidFeatureError(msg)
        if hidden:
            msg = f"{', '.join(sorted(hidden))} cannot be used to filter or sort (masked for you)"
            raise PermissionDeniedError(msg)
        for name, value in query.equals.items():
            prop = layer.by_name.get(name)
            if prop is None:
                known = ", ".join(layer.names)
                msg = f"unknown property {name[:40]!r} for layer {layer.id}; known: {known}"
                raise InvalidFeatureError(msg)
            if value is None:
                clauses.append(f"t.{_q(name)} IS NULL")
            elif prop.type == "list":
                col = f"t.{_q(name)}"
                clauses.append(
                    f"(CASE WHEN {list_guard(col)} THEN "
                    f"EXISTS (SELECT 1 FROM json_each({col}) WHERE value = ?) END)"
                )
                params.append(value)
            else:
                clauses.append(f"t.{_q(name)} = ?")
                params.append(_to_sql(prop, value))
        for f in query.filters:
            c = render_filter(f)
            clauses.append(c.sql)
            params.extend(c.params)
            if c.bbox is not None:
                box = c.bbox if box is None else _intersect_box(box, c.bbox)
        if query.ids is not None:
            clauses.append("t.fid IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(i) for i in query.ids]))
        if query.geometry is not None:
            gb = shapely.bounds(query.geometry)
            box = (
                (float(gb[0]), float(gb[1]), float(gb[2]), float(gb[3]))
                if box is None
                else (
                    max(box[0], gb[0]),
                    max(box[1], gb[1]),
                    min(box[2], gb[2]),
                    min(box[3], gb[3]),
                )
            )
        use_rtree = box is not None
        if box is not None:
            # The R-tree keeps 32-bit floats rounded outwards: it finds candidates. A
            # candidate whose R-tree box lies inside the query box certainly intersects
            # it; only the others go through gm_bbox (exact envelope from the blob
            # header, exact geometry test when the envelope straddles the box).
            clauses.append("r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ?")
            params.extend([box[2], box[0], box[3], box[1]])
            if query.bbox is not None:
                b = query.bbox
                clauses.append(
                    "((r.minx >= ? AND r.maxx <= ? AND r.miny >= ? AND r.maxy <= ?)"
                    " OR gm_bbox(t.geom, ?, ?, ?, ?) = 1)"
                )
                params.extend([b[0], b[2], b[1], b[3], *b])
        sql = " WHERE " + " AND ".join(clauses) if clauses else ""
        return sql, params, use_rtree

    def _from(self, layer: Layer, use_rtree: bool) -> str:
        t = _q(layer.id)
        if use_rtree:
            return f" FROM {t} AS t JOIN {_q('rtree_' + layer.id + '_geom')} AS r ON r.id = t.fid"
        return f" FROM {t} AS t"

    def _order(self, layer: Layer, order_by: Sequence[str]) -> str:
        parts = []
        for key in order_by:
            desc = key.startswith("-")
            name = key.lstrip("+-")
            if name not in layer.by_name and name != "id":
                msg = f"cannot sort by {name[:40]!r}; sortable: id, {', '.join(layer.names)}"
                raise InvalidFeatureError(msg)
            col = "fid" if name == "id" else name
            parts.append(f"t.{_q(col)} {'DESC' if desc else 'ASC'}")
        parts.append("t.fid ASC")
        return " ORDER BY " + ", ".join(parts)

    def query(
        self,
        layer_id: str,
        query: Query = _ALL_ROWS,
        *,
        scope: Scope = Scope.ALL,
    ) -> FeatureSet:
        """Features matching ``query`` within ``scope``, with ``number_matched`` set.

        Property filters, bbox (through the R-tree) and paging run in SQL; an exact
        spatial predicate (``query.geometry``) filters the R-tree candidates with shapely.
        """
        layer = self._layer(layer_id, scope)
        cols = ", ".join(["t.fid", "t.geom", *(f"t.{_q(n)}" for n in layer.names), "t.version"])
        conn = self._connect()
        fast = self._indexed_ids(layer, query, scope)
        if fast is not None:
            stop = None if query.limit is None else query.offset + query.limit
            page = fast[query.offset : stop]
            rows = conn.execute(
                f"SELECT {cols} FROM {_q(layer.id)} AS t "
                "WHERE t.fid IN (SELECT value FROM json_each(?)) ORDER BY t.fid",
                (json.dumps(page.tolist()),),
            ).fetchall()
            return self._seen(layer, self._rows_to_set(layer, rows, int(fast.size)), scope)
        where, params, use_rtree = self._where(layer, query, scope)
        base = self._from(layer, use_rtree) + where
        if query.geometry is None:
            matched = conn.execute("SELECT count(*)" + base, params).fetchone()[0]
            sql = f"SELECT {cols}{base}{self._order(layer, query.order_by)}"
            page_params = list(params)
            if query.limit is not None:
                sql += " LIMIT ? OFFSET ?"
                page_params += [int(query.limit), int(query.offset)]
            elif query.offset:
                sql += " LIMIT -1 OFFSET ?"
                page_params.append(int(query.offset))
            rows = conn.execute(sql, page_params).fetchall()
            return self._seen(layer, self._rows_to_set(layer, rows, matched), scope)
        sql = f"SELECT {cols}{base}{self._order(layer, query.order_by)}"
        rows = conn.execute(sql, params).fetchall()
        fs = self._rows_to_set(layer, rows, None)
        keep = _predicate(query.predicate, fs.geometries, query.geometry)
        idx = np.flatnonzero(keep)
        matched = int(idx.size)
        stop = None if query.limit is None else query.offset + query.limit
        idx = idx[query.offset : stop]
        return self._seen(
            layer,
            FeatureSet(
                layer,
                fs.ids[idx],
                fs.geometries[idx],
                [fs.properties[i] for i in idx],
                fs.versions[idx],
                matched,
            ),
            scope,
        )

    def query_ids(
        self,
        layer_id: str,
        query: Query = _ALL_ROWS,
        *,
        scope: Scope = Scope.ALL,
    ) -> tuple[npt.NDArray[np.int64], int]:
        """Ids of one page of ``query`` (in its order) and the number matched, no rows read."""
        layer = self._layer(layer_id, scope)
        stop = None if query.limit is None else query.offset + query.limit
        fast = self._indexed_ids(layer, query, scope)
        if fast is not None:
            ids = fast[query.offset : stop]
            self._note_ids(layer, ids, scope)
            return ids, int(fast.size)
        if query.geometry is not None:
            fs = self.query(layer_id, query, scope=scope)
            return fs.ids, int(fs.number_matched or 0)
        where, params, use_rtree = self._where(layer, query, scope)
        base = self._from(layer, use_rtree) + where
        conn = self._connect()
        matched = int(conn.execute("SELECT count(*)" + base, params).fetchone()[0])
        sql = f"SELECT t.fid{base}{self._order(layer, query.order_by)} LIMIT ? OFFSET ?"
        limit = -1 if query.limit is None else int(query.limit)
        rows = conn.execute(sql, [*params, limit, int(query.offset)]).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._note_ids(layer, ids, scope)
        return ids, matched

    def _note_ids(self, layer: Layer, ids: npt.NDArray[np.int64], scope: Scope) -> None:
        """Note ids about to be served from elsewhere (an encoded cache) as read."""
        if scope.reads is None or not layer.personal:
            return
        grids: list[int | None] = [None] * len(ids)
        if layer.grid_scoped and len(ids):
            idx = self._layer_index(layer)
            if idx.grid_ids is not None:
                pos = np.searchsorted(idx.fids, ids)
                ok = (pos < len(idx.fids)) & (idx.fids[np.minimum(pos, len(idx.fids) - 1)] == ids)
                found = idx.grid_ids[pos * ok].tolist()
                grids = [g if k else None for g, k in zip(found, ok.tolist(), strict=True)]
        scope.reads.saw(layer.id, ids.tolist(), grids)

    def count(
        self,
        layer_id: str,
        query: Query = _ALL_ROWS,
        *,
        scope: Scope = Scope.ALL,
    ) -> int:
        """Number of features matching ``query`` within ``scope``."""
        layer = self._layer(layer_id, scope)
        fast = self._indexed_ids(layer, query, scope)
        if fast is not None:
            return int(fast.size)
        if query.geometry is not None:
            return int(self.query(layer_id, query, scope=scope).number_matched or 0)
        where, params, use_rtree = self._where(layer, query, scope)
        sql = "SELECT count(*)" + self._from(layer, use_rtree) + where
        return int(self._connect().execute(sql, params).fetchone()[0])

    def _indexed_ids(
        self, layer: Layer, query: Query, scope: Scope
    ) -> npt.NDArray[np.int64] | None:
        """Sorted ids matching a purely spatial query, from the in-memory index; else None.

        Serves bbox and geometry-intersects queries (with a grid scope) in default order,
        the common case of map clients and QGIS; anything else goes to SQL.
        """
        spatial = query.bbox is not None or (
            query.geometry is not None and query.predicate == "intersects"
        )
        if not spatial or query.equals or query.filters or query.ids is not None or query.order_by:
            return None
        idx = self._layer_index(layer)
        area: BaseGeometry | None = None
        if query.bbox is not None:
            area = shapely.box(*query.bbox)
        if query.geometry is not None:
            area = query.geometry if area is None else shapely.intersection(area, query.geometry)
        hits = np.sort(idx.tree.query(area, predicate="intersects"))
        ids = idx.fids[hits]  # fids are in ascending order, so ids are too
        if scope.limits(layer) and idx.grid_ids is not None:
            ids = ids[np.isin(idx.grid_ids[hits], list(scope.grid_ids or ()))]
        return ids

    def _layer_index(self, layer: Layer) -> _LayerIndex:
        """The layer's geometries in an STRtree, rebuilt when the layer's stamp moves."""
        stamp = self.stamp(layer.id)
        cached = self._spatial.get(layer.id)
        if cached is not None and cached.stamp == stamp:
            return cached
        has_grid = "grid_id" in layer.by_name
        sql = f"SELECT fid, geom{', grid_id' if has_grid else ''} FROM {_q(layer.id)} ORDER BY fid"
        rows = self._connect().execute(sql).fetchall()
        fids = np.array([r[0] for r in rows], dtype=np.int64)
        geoms = geo.from_gpkg_blobs([r[1] for r in rows]) if rows else np.empty(0, dtype=object)
        grid_ids = (
            np.array([-1 if r[2] is None else r[2] for r in rows], dtype=np.int64)
            if has_grid
            else None
        )
        built = _LayerIndex(stamp, fids, shapely.STRtree(geoms), grid_ids)
        self._spatial[layer.id] = built
        return built

    def _rows_to_set(
        self, layer: Layer, rows: list[tuple[Any, ...]], matched: int | None
    ) -> FeatureSet:
        n = len(rows)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        geoms = geo.from_gpkg_blobs([r[1] for r in rows]) if n else np.empty(0, dtype=object)
        versions = np.fromiter(
            (r[-1] if isinstance(r[-1], int) else 0 for r in rows), dtype=np.int64, count=n
        )
        names = layer.names
        props = [dict(zip(names, r[2:-1], strict=True)) for r in rows]
        # Only lists (JSON text) and booleans (0/1) need converting; REAL columns
        # already come back as floats. A value another program stored that is neither is
        # passed on as text (no read fails on it; `gridmap check` reports it).
        for p in layer.properties:
            key = p.name
            for d in props:
                v = d[key]
                if v is None:
                    continue
                if isinstance(v, bytes):  # a BLOB where text or a number belongs
                    d[key] = v = v.decode("utf-8", "replace")
                if p.type == "list":
                    d[key] = _list_or_text(v)
                elif p.type == "bool" and v in (0, 1):
                    d[key] = bool(v)
        return FeatureSet(layer, ids, geoms, props, versions, matched)

    def get(self, layer_id: str, fid: int, *, scope: Scope = Scope.ALL) -> Feature:
        """One feature; FeatureNotFoundError when missing or outside ``scope`` (alike)."""
        layer = self._layer(layer_id, scope)
        f = self._get_in(self._connect(), layer, fid, scope)
        if scope.reads is not None and layer.personal:
            scope.reads.saw(layer.id, [f.id], [f.properties.get("grid_id")])
        return mask_feature(layer, f, scope)

    def extent(self, layer_id: str, *, scope: Scope = Scope.ALL) -> BBox | None:
        """Bounding box of the layer's features within ``scope``, from its R-tree."""
        layer = self._layer(layer_id, scope)
        rtree = _q("rtree_" + layer.id + "_geom")
        sql = f"SELECT min(r.minx), min(r.miny), max(r.maxx), max(r.maxy) FROM {rtree} AS r"
        params: list[Any] = []
        if scope.limits(layer):
            sql += f" JOIN {_q(layer.id)} AS t ON t.fid = r.id WHERE {_IN_GRIDS}"
            params.append(json.dumps(sorted(scope.grid_ids or ())))
        row = self._connect().execute(sql, params).fetchone()
        if row is None or row[0] is None:
            return None
        return (float(row[0]), float(row[1]), float(row[2]), float(row[3]))

    def time_extent(self, layer_id: str, *, scope: Scope = Scope.ALL) -> tuple[str, str] | None:
        """(earliest, latest) of the temporal property within ``scope``, if any."""
        layer = self._layer(layer_id, scope)
        if layer.temporal is None:
            return None
        col = _q(layer.temporal)
        sql = f"SELECT min(t.{col}), max(t.{col}) FROM {_q(layer.id)} AS t"
        params: list[Any] = []
        if scope.limits(layer):
            sql += f" WHERE {_IN_GRIDS}"
            params.append(json.dumps(sorted(scope.grid_ids or ())))
        row = self._connect().execute(sql, params).fetchone()
        if row is None or row[0] is None:
            return None
        return str(row[0]), str(row[1])

    # ---------------------------------------------------------------- writing

    def _grid_lookup(self) -> tuple[PolygonIndex, npt.NDArray[np.int64]] | None:
        """Polygon index over the current grids (cached until the grids layer changes)."""
        conn = self._connect()
        stamp = conn.execute(
            "SELECT coalesce(max(version), 0) + count(*) * 1000003 + coalesce(sum(fid), 0) "
            'FROM "grids"'
        ).fetchone()[0]
        cached = self._grid_index
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        rows = conn.execute('SELECT fid, geom FROM "grids" ORDER BY fid').fetchall()
        if not rows:
            self._grid_index = None
            return None
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        polys = geo.from_gpkg_blobs([r[1] for r in rows])
        index = PolygonIndex(polys, cells=16_384)
        self._grid_index = (stamp, index, ids)
        return index, ids

    def derive_grid_ids(self, geoms: npt.ArrayLike) -> npt.NDArray[np.int64] | None:
        """Grid id of each geometry's location (-1 where in no grid); None if no grids exist."""
        lookup = self._grid_lookup()
        if lookup is None:
            return None
        index, ids = lookup
        pos = index.lookup_geometries(geoms)
        return np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)

    def _prepare(
        self,
        layer: Layer,
        geoms: npt.NDArray[np.object_],
        props: Sequence[Mapping[str, Any]],
        scope: Scope,
        *,
        trusted: bool,
    ) -> tuple[list[bytes], list[dict[str, Any]]]:
        """Validate geometries and properties and derive grid ids; raise before any write."""
        if len(geoms) != len(props):
            msg = f"{len(geoms)} geometries but {len(props)} property sets"
            raise InvalidFeatureError(msg)
        geo.check_geometries(
            geoms,
            accepted_types=frozenset(
                t
                for t in ("Point", "LineString", "Polygon", "MultiPolygon")
                if layer.accepts_geometry(t)
            ),
            service_area=self._service_area,
            layer_id=layer.id,
        )
        geoms = geo.promote(geoms, layer.geometry_type)
        clean: list[dict[str, Any]] = []
        for i, p in enumerate(props):
            try:
                clean.append(
                    layer.validate_properties(p, allow_derived=trusted, synthetic=self.synthetic)
                )
            except InvalidFeatureError as exc:
                msg = f"feature {i}: {exc}"
                raise InvalidFeatureError(msg) from None
        if "grid_id" in layer.by_name and layer.by_name["grid_id"].derived:
            derived = self.derive_grid_ids(geoms)
            if derived is not None:
                outside = np.flatnonzero(derived < 0)
                if outside.size:
                    i = int(outside[0])
                    x, y = shapely.get_coordinates(geoms[i])[0]
                    msg = (
                        f"feature {i}: location ({x:.6f}, {y:.6f}) lies in no grid; "
                        "every feature of this layer must lie inside one grid"
                    )
                    raise InvalidGeometryError(msg)
                for d, gid in zip(clean, derived.tolist(), strict=True):
                    d["grid_id"] = gid
        if scope.limits(layer):
            for i, d in enumerate(clean):
                if not scope.allows_grid(d.get("grid_id")):
                    msg = f"feature {i}: outside the grids you may edit"
                    raise OutOfScopeError(msg)
        relations.check_references(self._connect(), layer, clean, geoms)
        return geo.to_gpkg_blobs(geoms), clean

    def insert(
        self,
        layer_id: str,
        geometries: Sequence[BaseGeometry] | npt.NDArray[np.object_],
        properties: Sequence[Mapping[str, Any]],
        *,
        scope: Scope = Scope.ALL,
        progress: Progress | None = None,
        trusted: bool = False,
    ) -> list[int]:
        """Insert features in one transaction: all are written or none.

        Everything is validated before the first row is written. ``trusted=True`` lets a
        bulk loader set derived properties itself (they are still validated). ``progress``
        is called with the running count after each chunk of rows.
        """
        layer = self._layer(layer_id, scope)
        require(scope.allows_write(layer.id), f"you may not add features to {layer.id}")
        geoms = np.asarray(
            list(geometries) if not isinstance(geometries, np.ndarray) else geometries, dtype=object
        )
        names = layer.names
        cols = ", ".join(["geom", *(_q(n) for n in names)])
        marks = ", ".join(["?"] * (len(names) + 1))
        sql = f"INSERT INTO {_q(layer.id)} ({cols}) VALUES ({marks})"
        props_def = layer.properties
        ids: list[int] = []
        with self._write() as c:
            # checked inside the transaction: a referenced feature cannot vanish meanwhile
            blobs, clean = self._prepare(layer, geoms, properties, scope, trusted=trusted)
            start = c.execute("SELECT coalesce(max(fid), 0) FROM " + _q(layer.id)).fetchone()[0]
            for lo in range(0, len(blobs), CHUNK):
                rows = [
                    (blobs[i], *(_to_sql(p, clean[i][p.name]) for p in props_def))
                    for i in range(lo, min(lo + CHUNK, len(blobs)))
                ]
                c.executemany(sql, rows)
                if progress is not None:
                    progress(lo + len(rows))
            ids = [
                r[0]
                for r in c.execute(
                    f"SELECT fid FROM {_q(layer.id)} WHERE fid > ? ORDER BY fid",
                    (start,),
                )
            ]
            self._touch(c, layer)
        return ids

    def _touch(self, c: sqlite3.Connection, layer: Layer) -> None:
        """Refresh gpkg_contents' extent and last_change for a layer."""
        t = _q("rtree_" + layer.id + "_geom")
        c.execute(
            "UPDATE gpkg_contents SET last_change = ?, "
            f"min_x = (SELECT min(minx) FROM {t}), min_y = (SELECT min(miny) FROM {t}), "
            f"max_x = (SELECT max(maxx) FROM {t}), max_y = (SELECT max(maxy) FROM {t}) "
            "WHERE table_name = ?",
            (dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z", layer.id),
        )

    def update(
        self,
        layer_id: str,
        fid: int,
        *,
        geometry: BaseGeometry | None = None,
        properties: Mapping[str, Any] | None = None,
        replace: bool = False,
        expected_version: int | None = None,
        scope: Scope = Scope.ALL,
    ) -> Feature:
        """Update one feature and bump its version; nothing changes if any check fails.

        ``replace=True`` replaces every property (absent ones become null) and requires a
        geometry; otherwise ``properties`` are merged (a None value clears one).
        ``expected_version`` guards against lost updates (VersionConflictError).
        """
        layer = self._layer(layer_id, scope)
        with self._write() as c:
            current = self._get_in(c, layer, fid, scope)
            require(scope.allows_write(layer.id), f"you may not edit {layer.id}")
            require(not layer.append_only, _APPEND_ONLY.format(layer.id))
            if expected_version is not None and current.version != expected_version:
                msg = (
                    f"feature {fid} of {layer_id} is at version {current.version}, "
                    f"not {expected_version}; fetch it again and reapply your change"
                )
                raise VersionConflictError(msg)
            properties = unmask_unchanged(layer, properties, current, scope)
            if replace and geometry is None:
                msg = "a replacement needs a geometry"
                raise InvalidFeatureError(msg)
            derived = {p.name for p in layer.properties if p.derived}
            if replace:
                merged = dict(properties or {})
            else:
                merged = {k: v for k, v in current.properties.items() if k not in derived}
                merged.update(properties or {})
            geom = geometry if geometry is not None else current.geometry
            blobs, clean = self._prepare(
                layer, np.asarray([geom], dtype=object), [merged], scope, trusted=False
            )
            if scope.limits(layer) and not scope.allows_grid(clean[0].get("grid_id")):
                msg = f"no feature {fid} in collection {layer_id}"
                raise OutOfScopeError(msg)
            if clean[0] == current.properties and shapely.equals_exact(
                geo.promote(np.asarray([geom], dtype=object), layer.geometry_type)[0],
                current.geometry,
                tolerance=0,
            ):  # nothing changes: no write, no new version (other editors' ETags hold)
                return mask_feature(layer, current, scope)
            sets = ", ".join(["geom = ?", *(f"{_q(n)} = ?" for n in layer.names)])
            values = [blobs[0], *(_to_sql(p, clean[0][p.name]) for p in layer.properties)]
            c.execute(
                f"UPDATE {_q(layer.id)} SET {sets}, version = version + 1 WHERE fid = ?",
                [*values, int(fid)],
            )
            if geometry is not None:
                relations.check_named_by(c, layer, fid, geom, clean[0].get("grid_id"))
            if layer.id == "grids" and geometry is not None:
                self._grid_index = None
                self._rederive_grid_ids(c, shapely.union(current.geometry, geom).bounds)
                relations.check_same_grid(c)
            self._touch(c, layer)
            return mask_feature(layer, self._get_in(c, layer, fid, Scope.ALL), scope)

    def _get_in(self, c: sqlite3.Connection, layer: Layer, fid: int, scope: Scope) -> Feature:
        where, params, use_rtree = self._where(layer, Query(ids=[int(fid)]), scope)
        cols = ", ".join(["t.fid", "t.geom", *(f"t.{_q(n)}" for n in layer.names), "t.version"])
        rows = c.execute(f"SELECT {cols}{self._from(layer, use_rtree)}{where}", params).fetchall()
        if not rows:
            msg = f"no feature {fid} in collection {layer.id}"
            if scope.limits(layer):
                sql = f"SELECT count(*) FROM {_q(layer.id)} WHERE fid = ?"
                if c.execute(sql, (int(fid),)).fetchone()[0]:
                    raise OutOfScopeError(msg)
            raise FeatureNotFoundError(msg)
        return next(iter(self._rows_to_set(layer, rows, 1)))

    def delete(
        self,
        layer_id: str,
        fid: int,
        *,
        expected_version: int | None = None,
        scope: Scope = Scope.ALL,
    ) -> None:
        """Delete one feature (FeatureNotFoundError / VersionConflictError as for update)."""
        layer = self._layer(layer_id, scope)
        with self._write() as c:
            current = self._get_in(c, layer, fid, scope)
            require(scope.allows_delete(layer.id), f"you may not delete from {layer.id}")
            require(not layer.append_only, _APPEND_ONLY.format(layer.id))
            if expected_version is not None and current.version != expected_version:
                msg = (
                    f"feature {fid} of {layer_id} is at version {current.version}, "
                    f"not {expected_version}; fetch it again and reapply your change"
                )
                raise VersionConflictError(msg)
            relations.refuse_if_named(c, layer, fid)
            c.execute(f"DELETE FROM {_q(layer.id)} WHERE fid = ?", (int(fid),))
            if layer.id == "grids":
                self._grid_index = None
            self._touch(c, layer)

    def _rederive_grid_ids(self, c: sqlite3.Connection, bounds: tuple[float, ...]) -> None:
        """After a grid moved: recompute ``grid_id`` of households and buildings around it.

        Runs inside the caller's transaction; a feature left in no grid refuses the edit.
        """
        rows = c.execute('SELECT fid, geom FROM "grids" ORDER BY fid').fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        index = PolygonIndex(geo.from_gpkg_blobs([r[1] for r in rows]), cells=16_384)
        minx, miny, maxx, maxy = bounds
        for name in ("households", "buildings"):
            found = c.execute(
                f"SELECT t.fid, t.geom, t.grid_id FROM {_q(name)} AS t "
                f"JOIN {_q('rtree_' + name + '_geom')} AS r ON r.id = t.fid "
                "WHERE r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ?",
                (maxx, minx, maxy, miny),
            ).fetchall()
            if not found:
                continue
            pos = index.lookup_geometries(geo.from_gpkg_blobs([r[1] for r in found]))
            if (pos < 0).any():
                k = int(np.flatnonzero(pos < 0)[0])
                msg = (
                    f"this grid edit would leave {name} {found[k][0]} in no grid; every "
                    f"{name[:-1]} must lie in exactly one grid"
                )
                raise IntegrityError(msg)
            new = ids[pos]
            changed = [(int(g), int(r[0])) for r, g in zip(found, new, strict=True) if r[2] != g]
            if changed:
                c.executemany(f"UPDATE {_q(name)} SET grid_id = ? WHERE fid = ?", changed)


@dataclass
class _LayerIndex:
    """In-memory spatial index of one layer at one change stamp (ids sorted)."""

    stamp: int
    fids: npt.NDArray[np.int64]
    tree: shapely.STRtree
    grid_ids: npt.NDArray[np.int64] | None


def _document(row: Sequence[Any]) -> dict[str, Any]:
    rec = dict(zip(DOCUMENT_FIELDS, row, strict=True))
    try:
        rec["body"] = orjson.loads(rec["body"])
    except orjson.JSONDecodeError:
        rec["body"] = {}
    if not isinstance(rec["body"], dict):
        rec["body"] = {}
    return rec


def _list_or_text(v: Any) -> Any:
    """A list column's JSON as a list of strings, or the stored text if it is not one."""
    if isinstance(v, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(v)
            if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
                return parsed
    return v if isinstance(v, str) else str(v)


def _intersect_box(a: BBox, b: BBox) -> BBox:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _predicate(
    name: str, geoms: npt.NDArray[np.object_], other: BaseGeometry
) -> npt.NDArray[np.bool_]:
    shapely.prepare(other)
    if name == "intersects":
        return shapely.intersects(other, geoms)
    if name == "within":
        return shapely.within(geoms, other)
    if name == "contains":
        return shapely.contains(geoms, other)
    msg = f"unknown spatial predicate {name!r}; use intersects, within or contains"
    raise InvalidFeatureError(msg)


def open_store(url: str | os.PathLike[str]) -> GeoPackageStore:
    """Open the store named by a setting such as ``data/zhongxinlu.gpkg``."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        msg = "the PostGIS backend is not available yet; use a GeoPackage path"
        raise StoreError(msg)
    return GeoPackageStore.open(text)
