"""The embedded backend: every layer in one GeoPackage file (SQLite, R-tree index, WAL).

It moves rows (:class:`gridmap.store.backend.Backend`); every rule is in
:mod:`gridmap.store.core`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap import geometry as geo
from gridmap.errors import IntegrityError, InvalidFeatureError, StorageFullError, StoreError
from gridmap.layers import LAYERS, Layer, Prop
from gridmap.observe import timed_backend
from gridmap.store.backend import EVERY_ROW, Measure, Order, Selection
from gridmap.store.base import ID_LIMIT, BBox, FeatureSet, Progress
from gridmap.store.gpkg_group import GroupCommit
from gridmap.store.gpkg_index import REBUILD_AFTER, LayerIndex, LayerIndexes
from gridmap.store.gpkg_sql import (
    _ACCOUNTS_SQL,
    _CORE_SQL,
    _ROW_LOG_SQL,
    _ROW_TRIGGERS,
    _RTREE_TRIGGERS,
    _STAMP_TRIGGERS,
    _WGS84_WKT,
    APPLICATION_ID,
    AUDIT_FIELDS,
    CHUNK,
    DOCUMENT_FIELDS,
    USER_VERSION,
    _q,
    register_functions,
)
from gridmap.store.records import RecordTables
from gridmap.store.sqlite_filter import list_guard, time_column
from gridmap.store.sqlite_filter import render as render_filter


def _to_sql(p: Prop, v: Any) -> Any:
    if v is None:
        return None
    if p.type == "list":
        return json.dumps(v, ensure_ascii=False)
    if p.type == "bool":
        return 1 if v else 0
    return v


@timed_backend  # each call's time counts as the request's database time
class GeoPackageBackend(RecordTables):
    """Rows in one GeoPackage file that GDAL and QGIS open as is.

    One table per layer (``fid`` integer key, ``geom`` GeoPackage geometry, typed property
    columns, ``version``), the GeoPackage R-tree spatial index with its standard triggers,
    WAL journaling and a busy timeout. Connections are per thread.

    Use :meth:`create` for a new file and :meth:`open` for an existing one.

    **Read-only files.** A file (or folder) this user may not write is opened read-only:
    every read works, every write raises :class:`StoreError` saying so. Opening runs no
    DDL when the file records this release's :func:`schema_digest` (else it brings the
    schema up to date first, which needs write access once). SQLite reads a WAL file
    through a shared-memory file beside it; where the folder cannot hold one, the file is
    read as immutable (no locks: changes another program makes meanwhile are not seen).
    """

    def __init__(self, path: str | os.PathLike[str], *, _create: bool = False) -> None:
        self.path = Path(path)
        if not _create and not self.path.exists():
            msg = f"no database at {self.path}; build the sample with `gridmap demo`"
            raise StoreError(msg)
        self.url = str(self.path)
        self.remote = False
        self.read_only = not _create and not _writable(self.path)
        self._ro_uri: str | None = None  # how read-only connections open the file
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = threading.Lock()  # one write transaction at a time in this process
        self._group = GroupCommit(self._write)  # record writes from many threads, one commit
        self._indexes = LayerIndexes(self._build_index, self._patch_index)
        self._row_log = False  # the file keeps gridmap_row_changes (see _ensure_row_log)
        try:
            if _create:
                self._init_schema()
            else:
                self._check_schema()
            self._row_log = self._ensure_row_log()
        except BaseException:
            self.close()  # no connection outlives a store that could not open
            raise

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> GeoPackageBackend:
        """Create a new GeoPackage with every registered layer (owner-only permissions)."""
        p = Path(path)
        if p.exists():
            msg = f"{p} already exists; remove it first or open it instead"
            raise StoreError(msg)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        return cls(p, _create=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GeoPackageBackend:
        """Open an existing gridmap GeoPackage."""
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, closed by :meth:`close`)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._open()
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        """A new connection, set up as every gridmap connection is; the caller closes it."""
        if self.read_only:
            conn = self._connect_read_only()
        else:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            if not self.read_only:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MB: bulk writes touch many pages
            register_functions(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection, opened as :meth:`_read_only_uri` decided once."""
        base = self.path.resolve().as_uri()
        if self._ro_uri is None:
            self._ro_uri = self._read_only_uri(base)
        return sqlite3.connect(f"{base}?{self._ro_uri}", uri=True, **_OPTIONS)

    def _read_only_uri(self, base: str) -> str:
        """How to read the file: as immutable (no locks, no files beside it) when nobody may
        write it and no WAL is in use; else ``mode=ro``, sharing the locks and the WAL
        index of the programs that write it — unless the folder cannot hold the index
        SQLite then needs (immutable after all, if no commit waits in the WAL)."""
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        pending = wal.exists() and wal.stat().st_size > 0
        if not (shm.exists() or pending or self.path.stat().st_mode & 0o222):
            return "immutable=1"  # a mode=ro read would leave files that block later writers
        conn = sqlite3.connect(f"{base}?mode=ro", uri=True, **_OPTIONS)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if not _denied(exc):
                raise
            if pending:
                msg = (
                    f"{self.path} is read-only and its latest changes are still in "
                    f"{wal.name}, which SQLite reads only with write access to the folder; "
                    f"open it once with write access (`gridmap info --database {self.path}`) "
                    "to fold them in"
                )
                raise StoreError(msg) from None
            return "immutable=1"
        finally:
            conn.close()
        return "mode=ro"

    def close(self) -> None:
        """Close every connection this store opened."""
        self._indexes.close()
        # a later use reopens, as connections do
        self._indexes = LayerIndexes(self._build_index, self._patch_index)
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> GeoPackageBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; inside another (same thread) a savepoint of it. A file
        that may not be written refuses it with :class:`ReadOnlyError`."""
        if self.read_only:
            raise ReadOnlyError(self.path)
        conn = self._connect()
        depth = getattr(self._local, "depth", 0)
        begin, commit, rollback = (
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
            if depth == 0
            else (f"SAVEPOINT w{depth}", f"RELEASE w{depth}", f"ROLLBACK TO w{depth}")
        )
        if depth == 0:  # this process's writers queue here, not in SQLite's busy sleeps
            self._writer.acquire()
        try:
            conn.execute(begin)
        except BaseException as exc:
            if depth == 0:
                self._writer.release()
            if isinstance(exc, sqlite3.OperationalError) and _denied(exc):
                raise ReadOnlyError(self.path) from None
            raise _unwritten(exc, self.path) from None
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException as exc:
            if conn.in_transaction:  # SQLite ends it itself on some errors (SQLITE_FULL)
                conn.execute(rollback)
                if depth:
                    conn.execute(commit)  # a rolled-back savepoint stays open until released
            if isinstance(exc, sqlite3.OperationalError) and _denied(exc):
                raise ReadOnlyError(self.path) from None  # e.g. a file made immutable
            raise _unwritten(exc, self.path) from None
        else:
            try:
                conn.execute(commit)
            except sqlite3.Error as exc:
                if conn.in_transaction and depth == 0:
                    conn.execute("ROLLBACK")
                raise _unwritten(exc, self.path) from None
        finally:
            self._local.depth = depth
            if depth == 0:
                self._writer.release()

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
        table, rtree, *rest = _layer_statements(layer)
        c.execute(table)
        c.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id)"
            " VALUES (?, 'features', ?, ?, 4326)",
            (t, t, f"{layer.zh} {layer.en}"),
        )
        c.execute(
            "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, 4326, 0, 0)",
            (t, layer.geometry_type.upper()),
        )
        c.execute(rtree)
        c.execute(
            "INSERT INTO gpkg_extensions VALUES (?, 'geom', 'gpkg_rtree_index', "
            "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
            (t,),
        )
        for stmt in rest:
            c.execute(stmt)
        self._create_stamps(c, layer)

    def _create_stamps(self, c: sqlite3.Connection, layer: Layer) -> None:
        c.execute("INSERT OR IGNORE INTO gridmap_changes VALUES (?, 0)", (layer.id,))
        for stmt in _stamp_statements(layer):
            c.execute(stmt)

    def _ensure_row_log(self) -> bool:
        """True if the file keeps the row-change log: its table and every layer's triggers,
        made here if any is missing and the file may be written (a file of an older
        release, or one whose triggers another tool dropped); else False, and the caches
        drop a whole layer when it changes."""
        want = {"gridmap_row_changes"} | {
            f"gridmap_{layer.id}_rows_{event}"
            for layer in LAYERS
            for event in ("insert", "update", "delete")
        }
        have = {
            str(r[0])
            for r in self._connect().execute(
                "SELECT name FROM sqlite_master WHERE name LIKE 'gridmap%'"
            )
        }
        if want <= have:
            return True
        if self.read_only:
            return False
        try:
            with self._write() as c:
                for stmt in _ROW_LOG_SQL.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                for layer in LAYERS:
                    for stmt in _split_triggers(_ROW_TRIGGERS.format(t=layer.id)):
                        c.execute(stmt)
        except ReadOnlyError:
            return False
        return True

    def _upgrade(self) -> None:
        """Create what a file lacks (change stamps, accounts, audit log) and record this
        release's :func:`schema_digest`; idempotent."""
        with self._write() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS gridmap_changes "
                "(layer TEXT PRIMARY KEY, stamp INTEGER NOT NULL)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS gridmap_meta "
                "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
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
            c.execute(
                "INSERT INTO gridmap_meta VALUES ('schema_digest', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (schema_digest(),),
            )

    def schema_current(self) -> bool:
        """True if the store records this release's schema (a fresh read, not a cache)."""
        return self.meta("schema_digest") == schema_digest()

    # ---------------------------------------------------------------- records, stamps

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement of :class:`RecordTables`: a write in a write transaction — the
        caller's, or one committed with other threads' (:class:`GroupCommit`)."""
        if sql.startswith("SELECT"):
            return self._connect().execute(sql, params).fetchall()
        if getattr(self._local, "depth", 0):
            with self._write() as c:
                return c.execute(sql, params).fetchall()
        try:
            return self._group.run(sql, params)
        except sqlite3.OperationalError as exc:
            if _denied(exc):
                raise ReadOnlyError(self.path) from None
            raise

    def stamps_at_hand(self, tables: Sequence[str]) -> tuple[int, ...] | None:
        """Always at hand: the file is local."""
        return self.stamps(tables)

    def stamps(self, tables: Sequence[str]) -> tuple[int, ...]:
        """Several tables' stamps in one read (-1 for a table without one)."""
        rows = (
            self._connect()
            .execute(
                "SELECT layer, stamp FROM gridmap_changes "
                "WHERE layer IN (SELECT value FROM json_each(?))",
                (json.dumps(list(tables)),),
            )
            .fetchall()
        )
        found = {str(k): int(v) for k, v in rows}
        return tuple(found.get(t, -1) for t in tables)

    def stamp(self, layer_id: str) -> int:
        """A number that changes whenever the layer changes (by any client)."""
        return _stamp_on(self._connect(), layer_id)

    def changed_since(self, table: str, stamp: int, limit: int) -> frozenset[int] | None:
        """Ids of the table's rows written or deleted (by any client) at or after ``stamp``,
        if at most ``limit`` and the backend keeps a log of row changes; else None (all may
        have changed)."""
        if stamp < 0 or not self._row_log:
            return None
        try:
            rows = (
                self._connect()
                .execute(
                    "SELECT fid FROM gridmap_row_changes WHERE layer = ? AND stamp >= ? LIMIT ?",
                    (table, stamp, limit + 1),
                )
                .fetchall()
            )
        except sqlite3.OperationalError:  # the log's table dropped by another program
            return None
        return None if len(rows) > limit else frozenset(int(r[0]) for r in rows)

    def _check_schema(self) -> None:
        """Refuse a file that is no gridmap GeoPackage; bring an older schema up to this
        release's (only then is any DDL run, so a read-only file of this release opens)."""
        try:
            app, tables, digest = self._schema_facts()
        except sqlite3.OperationalError as exc:
            if self.read_only or not _denied(exc):
                raise self._not_geopackage(exc) from None
            # SQLite could not open it for writing after all (an immutable file, a folder
            # that cannot hold the WAL's shared-memory file): read it read-only
            self.close()
            self.read_only = True
            try:
                app, tables, digest = self._schema_facts()
            except sqlite3.DatabaseError as again:
                raise self._not_geopackage(again) from None
        except sqlite3.DatabaseError as exc:
            raise self._not_geopackage(exc) from None
        if app != APPLICATION_ID:
            msg = f"{self.path} is not a GeoPackage (application_id {app:#x})"
            raise StoreError(msg)
        if not tables & {lay.id for lay in LAYERS}:
            msg = f"{self.path} holds no gridmap layer; build one with `gridmap demo`"
            raise StoreError(msg)
        if digest == schema_digest():
            return
        try:
            self._upgrade()
        except ReadOnlyError:
            msg = (
                f"{self.path} was made by an older gridmap and is read-only here; open it "
                "once with write access to upgrade it (e.g. `gridmap info --database "
                f"{self.path}` as its owner), then it opens read-only too"
            )
            raise StoreError(msg) from None

    def _schema_facts(self) -> tuple[int, set[str], str | None]:
        """The file's application id, feature tables and recorded schema digest."""
        conn = self._connect()
        app = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM gpkg_contents WHERE data_type = 'features'"
            )
        }
        try:
            row = conn.execute(
                "SELECT value FROM gridmap_meta WHERE key = 'schema_digest'"
            ).fetchone()
        except sqlite3.OperationalError:  # no gridmap_meta: _upgrade makes it
            row = None
        return app, tables, None if row is None else str(row[0])

    def _not_geopackage(self, exc: sqlite3.DatabaseError) -> StoreError:
        return StoreError(f"{self.path} is not a GeoPackage ({exc}); point GRIDMAP_DATABASE at one")

    # ---------------------------------------------------------------- reading

    def _where(self, layer: Layer, sel: Selection) -> tuple[str, list[Any], bool]:
        """SQL WHERE clause (with bound parameters) and whether the R-tree join is needed."""
        clauses: list[str] = []
        params: list[Any] = []
        box = sel.bbox
        if sel.within is not None:
            col, allowed = sel.within
            clauses.append(f"t.{_q(col)} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sorted(allowed)))
        for name, value in sel.equals.items():
            prop = layer.by_name[name]
            col = f"t.{_q(name)}"
            if value is None:
                clauses.append(f"{col} IS NULL")
            elif prop.type == "list":
                clauses.append(
                    f"(CASE WHEN {list_guard(col)} THEN "
                    f"EXISTS (SELECT 1 FROM json_each({col}) WHERE value = ?) END)"
                )
                params.append(value)
            else:
                clauses.append(f"{col} = ?")
                params.append(_to_sql(prop, value))
        for f in sel.filters:
            c = render_filter(f)
            clauses.append(c.sql)
            params.extend(c.params)
            if c.bbox is not None:
                box = c.bbox if box is None else _intersect_box(box, c.bbox)
        if sel.ids is not None:
            clauses.append("t.fid IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(i) for i in sel.ids]))
        if sel.after is not None:
            clauses.append("t.fid > ?")
            params.append(int(sel.after))
        if sel.geometry is not None:
            gb = shapely.bounds(sel.geometry)
            own = (float(gb[0]), float(gb[1]), float(gb[2]), float(gb[3]))
            box = own if box is None else _intersect_box(box, own)
        use_rtree = box is not None
        if box is not None:
            # The R-tree keeps 32-bit floats rounded outwards: it finds candidates. A
            # candidate whose R-tree box lies inside the query box certainly intersects
            # it; only the others go through gm_bbox (exact envelope from the blob
            # header, exact geometry test when the envelope straddles the box).
            clauses.append("r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ?")
            params.extend([box[2], box[0], box[3], box[1]])
            if sel.bbox is not None:
                b = sel.bbox
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

    @staticmethod
    def _order(order: Order, layer: Layer) -> str:
        parts = [f"{_sort_key(layer, name)} {'DESC' if desc else 'ASC'}" for name, desc in order]
        parts.append("t.fid ASC")
        return " ORDER BY " + ", ".join(parts)

    def _columns(self, layer: Layer) -> str:
        return ", ".join(["t.fid", "t.geom", *(f"t.{_q(n)}" for n in layer.names), "t.version"])

    def select(
        self,
        layer: Layer,
        sel: Selection = EVERY_ROW,
        *,
        order: Order = (),
        limit: int | None = None,
        offset: int = 0,
        count: bool = True,
    ) -> FeatureSet:
        """One page of rows. Property filters, bbox (through the R-tree) and paging run in
        SQL; an exact spatial predicate filters the R-tree candidates with shapely."""
        cols = self._columns(layer)
        conn = self._connect()
        fast = self._indexed_ids(layer, sel, order)
        if fast is not None:
            stop = None if limit is None else offset + limit
            page = fast[offset:stop]
            rows = conn.execute(
                f"SELECT {cols} FROM {_q(layer.id)} AS t "
                "WHERE t.fid IN (SELECT value FROM json_each(?)) ORDER BY t.fid",
                (json.dumps(page.tolist()),),
            ).fetchall()
            return self._rows_to_set(layer, rows, int(fast.size))
        where, params, use_rtree = self._where(layer, sel)
        base = self._from(layer, use_rtree) + where
        if sel.geometry is None:
            matched = (
                conn.execute("SELECT count(*)" + base, params).fetchone()[0] if count else None
            )
            sql = f"SELECT {cols}{base}{self._order(order, layer)}"
            page_params = list(params)
            if limit is not None:
                sql += " LIMIT ? OFFSET ?"
                page_params += [int(limit), int(offset)]
            elif offset:
                sql += " LIMIT -1 OFFSET ?"
                page_params.append(int(offset))
            rows = conn.execute(sql, page_params).fetchall()
            return self._rows_to_set(layer, rows, matched)
        rows = conn.execute(f"SELECT {cols}{base}{self._order(order, layer)}", params).fetchall()
        fs = self._rows_to_set(layer, rows, None)
        keep = _predicate(sel.predicate, fs.geometries, sel.geometry)
        idx = np.flatnonzero(keep)
        matched = int(idx.size)
        stop = None if limit is None else offset + limit
        idx = idx[offset:stop]
        return FeatureSet(
            layer,
            fs.ids[idx],
            fs.geometries[idx],
            [fs.properties[i] for i in idx],
            fs.versions[idx],
            matched,
        )

    def select_ids(
        self,
        layer: Layer,
        sel: Selection = EVERY_ROW,
        *,
        order: Order = (),
        limit: int | None = None,
        offset: int = 0,
        column: str | None = None,
    ) -> tuple[npt.NDArray[np.int64], list[Any] | None, int]:
        """Ids of one page (in its order), the page's values of ``column``, number matched."""
        stop = None if limit is None else offset + limit
        fast = self._indexed_ids(layer, sel, order)
        if fast is not None:
            ids = fast[offset:stop]
            return ids, self._values_of(layer, column, ids), int(fast.size)
        if sel.geometry is not None:
            fs = self.select(layer, sel, order=order, limit=limit, offset=offset)
            values = None if column is None else [p.get(column) for p in fs.properties]
            return fs.ids, values, int(fs.number_matched or 0)
        where, params, use_rtree = self._where(layer, sel)
        base = self._from(layer, use_rtree) + where
        conn = self._connect()
        matched = int(conn.execute("SELECT count(*)" + base, params).fetchone()[0])
        extra = "" if column is None else f", t.{_q(column)}"
        sql = f"SELECT t.fid{extra}{base}{self._order(order, layer)} LIMIT ? OFFSET ?"
        rows = conn.execute(
            sql, [*params, -1 if limit is None else int(limit), int(offset)]
        ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if column is None:
            return ids, None, matched
        return ids, [_value(layer.by_name.get(column), r[1]) for r in rows], matched

    def _values_of(
        self, layer: Layer, column: str | None, ids: npt.NDArray[np.int64]
    ) -> list[Any] | None:
        """Values of one column for some ids (from the in-memory index when it holds them,
        else from SQLite)."""
        if column is None:
            return None
        if not len(ids):
            return []
        idx = self._indexes.fresh(layer, column, self.stamp(layer.id))
        if idx is None or idx.values is None:
            rows = self._connect().execute(
                f"SELECT fid, {_q(column)} FROM {_q(layer.id)} "
                "WHERE fid IN (SELECT value FROM json_each(?))",
                (orjson.dumps(ids.tolist()).decode(),),
            )
            got = {r[0]: _value(layer.by_name.get(column), r[1]) for r in rows}
            return [got.get(i) for i in ids.tolist()]
        found, ok = idx.values_of(ids)
        return [
            None if not k or g == _NO_VALUE else g
            for g, k in zip(found.tolist(), ok.tolist(), strict=True)
        ]

    def count(self, layer: Layer, sel: Selection = EVERY_ROW) -> int:
        """How many rows match."""
        fast = self._indexed_ids(layer, sel, ())
        if fast is not None:
            return int(fast.size)
        if sel.geometry is not None:
            return int(self.select(layer, sel).number_matched or 0)
        where, params, use_rtree = self._where(layer, sel)
        sql = "SELECT count(*)" + self._from(layer, use_rtree) + where
        return int(self._connect().execute(sql, params).fetchone()[0])

    def group_count(self, layer: Layer, column: str, sel: Selection = EVERY_ROW) -> dict[Any, int]:
        """Rows per value of ``column`` (GROUP BY in SQLite)."""
        if sel.geometry is not None:
            fs = self.select(layer, sel)
            out: dict[Any, int] = {}
            for p in fs.properties:
                out[p.get(column)] = out.get(p.get(column), 0) + 1
            return out
        where, params, use_rtree = self._where(layer, sel)
        col = f"t.{_q(column)}"
        sql = f"SELECT {col}, count(*){self._from(layer, use_rtree)}{where} GROUP BY {col}"
        return {r[0]: int(r[1]) for r in self._connect().execute(sql, params)}

    def aggregate(
        self, layer: Layer, by: str, measures: Mapping[str, Measure], sel: Selection = EVERY_ROW
    ) -> dict[Any, dict[str, int]]:
        """Each measure per value of ``by`` (one GROUP BY in SQLite)."""
        names = list(measures)
        exprs: list[str] = []
        params: list[Any] = []
        for m in measures.values():
            if m.kind == "sum":
                col = f"t.{_q(m.column or '')}"
                exprs.append(
                    f"coalesce(sum(CASE WHEN typeof({col}) = 'integer' THEN {col} END), 0)"
                )
            elif m.where is None:
                exprs.append("count(*)")
            else:
                c = render_filter(m.where)
                exprs.append(f"sum(CASE WHEN {c.sql} THEN 1 ELSE 0 END)")
                params.extend(c.params)
        if sel.geometry is not None:
            msg = "aggregates take no exact spatial predicate"
            raise InvalidFeatureError(msg)
        where, wparams, use_rtree = self._where(layer, sel)
        col = f"t.{_q(by)}"
        sql = (
            f"SELECT {col}, {', '.join(exprs)}{self._from(layer, use_rtree)}{where} GROUP BY {col}"
        )
        rows = self._connect().execute(sql, [*params, *wparams]).fetchall()
        return {r[0]: dict(zip(names, (int(v or 0) for v in r[1:]), strict=True)) for r in rows}

    def knn_ids(
        self, layer: Layer, lon: float, lat: float, k: int, sel: Selection = EVERY_ROW
    ) -> list[int]:
        """Ids of (up to) ``k`` matching rows nearest the point in lon/lat degrees (ties by
        id). Boxes around the point, counted through the R-tree (or the in-memory index),
        grow until ``k`` rows lie in one; their exact distances rank them, and the answer
        stands once the k-th lies inside the box's inscribed circle (no row outside the
        box can be nearer), else the box grows to that distance once more."""
        if k < 1:
            return []
        env = self.envelope(layer, sel)  # of every matching row (the R-tree's outer boxes)
        if env is None:
            return []
        pt = shapely.Point(lon, lat)
        r = float(shapely.distance(pt, shapely.box(*env))) + _KNN_START
        while True:
            box = (lon - r, lat - r, lon + r, lat + r)
            whole = box[0] <= env[0] and box[1] <= env[1] and box[2] >= env[2] and box[3] >= env[3]
            inner = dataclasses.replace(
                sel, bbox=box if sel.bbox is None else _intersect_box(sel.bbox, box)
            )
            if not whole and self.count(layer, inner) < k:
                r *= 4
                continue
            fs = self.select(layer, inner, count=False).with_geometry()
            dist = shapely.distance(fs.geometries, pt)
            order = np.lexsort((fs.ids, dist))[:k]
            if whole or (len(order) == k and float(dist[order[-1]]) < r - _KNN_SLACK):
                return [int(i) for i in fs.ids[order]]
            r = max(r, float(dist[order[-1]])) + 2 * _KNN_SLACK

    def latest(
        self,
        layer: Layer,
        key: str,
        order: str,
        columns: Sequence[str],
        sel: Selection = EVERY_ROW,
    ) -> list[tuple[Any, ...]]:
        """Each value of ``key``'s latest row by ``order`` and its number of rows (a window
        query in SQLite: ROW_NUMBER() per value)."""
        if sel.geometry is not None:  # the exact predicate runs here, then SQL on its ids
            sel = Selection(ids=self.select_ids(layer, sel)[0].tolist())
        where, params, use_rtree = self._where(layer, sel)
        part = f"t.{_q(key)}"
        latest = "t.fid" if order == "id" else f"t.{_q(order)}"
        cols = "".join(f", t.{_q(c)}" for c in columns)
        sql = (
            f"SELECT * FROM (SELECT t.fid{cols}, count(*) OVER (PARTITION BY {part}), "
            f"row_number() OVER (PARTITION BY {part} ORDER BY {latest} DESC, t.fid DESC)"
            f" AS gm_rank{self._from(layer, use_rtree)}{where}) WHERE gm_rank = 1 ORDER BY 1"
        )
        props = [layer.by_name.get(c) for c in columns]
        return [
            (
                int(r[0]),
                *(_value(p, v) for p, v in zip(props, r[1:-2], strict=True)),
                int(r[-2]),
            )
            for r in self._connect().execute(sql, params)
        ]

    def envelope(self, layer: Layer, sel: Selection = EVERY_ROW) -> BBox | None:
        """Bounding box of the matching rows, from the R-tree."""
        rtree = _q("rtree_" + layer.id + "_geom")
        sql = f"SELECT min(r.minx), min(r.miny), max(r.maxx), max(r.maxy) FROM {rtree} AS r"
        params: list[Any] = []
        if sel != EVERY_ROW:
            where, params, _ = self._where(
                layer, dataclasses.replace(sel, bbox=None, geometry=None)
            )
            sql += f" JOIN {_q(layer.id)} AS t ON t.fid = r.id{where}"
        row = self._connect().execute(sql, params).fetchone()
        if row is None or row[0] is None:
            return None
        return (float(row[0]), float(row[1]), float(row[2]), float(row[3]))

    def min_max(
        self, layer: Layer, column: str, sel: Selection = EVERY_ROW
    ) -> tuple[Any, Any] | None:
        """Smallest and largest non-null value of a column among the matching rows."""
        where, params, use_rtree = self._where(layer, sel)
        col = _sort_key(layer, column)  # a date or time: the instant it holds, as sorted
        sql = f"SELECT min({col}), max({col}){self._from(layer, use_rtree)}{where}"
        row = self._connect().execute(sql, params).fetchone()
        if row is None or row[0] is None:
            return None
        return row[0], row[1]

    def _indexed_ids(
        self, layer: Layer, sel: Selection, order: Order
    ) -> npt.NDArray[np.int64] | None:
        """Sorted ids matching a purely spatial selection, from the in-memory index; else None.

        Serves bbox and geometry-intersects selections (with a ``within`` restriction) in
        default order, the common case of map clients and QGIS; anything else goes to SQL.
        """
        spatial = sel.bbox is not None or (
            sel.geometry is not None and sel.predicate == "intersects"
        )
        if (
            not spatial
            or sel.equals
            or sel.filters
            or sel.ids is not None
            or sel.after is not None
            or order
        ):
            return None
        column = None if sel.within is None else sel.within[0]
        idx = self._indexes.fresh(layer, column, self.stamp(layer.id))
        if idx is None:  # being rebuilt after an edit: SQLite's R-tree answers meanwhile
            return None
        area: BaseGeometry | None = None
        if sel.bbox is not None:
            area = shapely.box(*sel.bbox)
        if sel.geometry is not None:
            area = sel.geometry if area is None else shapely.intersection(area, sel.geometry)
        return idx.query(area, None if sel.within is None else list(sel.within[1]))

    def _build_index(self, layer: Layer, column: str | None) -> LayerIndex:
        """The layer's geometries in an STRtree (with one integer column), read now; its
        stamp is read first, so rows newer than it only make it look stale. It reads on a
        connection of its own, closed at once: the background builder may still be at work
        when the store closes, and must not leave a connection behind."""
        extra = "" if column is None else f", {_q(column)}"
        sql = f"SELECT fid, geom{extra} FROM {_q(layer.id)} ORDER BY fid"
        with closing(self._open()) as conn:
            stamp = _stamp_on(conn, layer.id)
            rows = conn.execute(sql).fetchall()
        fids, geoms, values = _index_rows(rows, column)
        return LayerIndex(
            stamp, fids, shapely.STRtree(geoms), column, values if column is not None else None
        )

    def _patch_index(self, layer: Layer, kept: LayerIndex, stamp: int) -> LayerIndex | None:
        """The index patched to ``stamp``: the rows logged as changed since it was (read
        now, with their column), or None when more changed than a patch should carry."""
        if getattr(self._local, "depth", 0):
            return None  # this thread's transaction sees rows a rollback may take back
        limit = max(REBUILD_AFTER, len(kept.fids) // 10)
        touched = self.changed_since(layer.id, kept.stamp, limit)
        if not touched:  # the stamp moved, so a row changed: no entry means no log
            return None
        ids = np.array(sorted(touched), dtype=np.int64)
        extra = "" if kept.column is None else f", {_q(kept.column)}"
        rows = (
            self._connect()
            .execute(
                f"SELECT fid, geom{extra} FROM {_q(layer.id)} "
                "WHERE fid IN (SELECT value FROM json_each(?)) ORDER BY fid",
                (orjson.dumps(ids.tolist()).decode(),),
            )
            .fetchall()
        )
        fids, geoms, values = _index_rows(rows, kept.column)
        return kept.patched(stamp, ids, fids, geoms, values)

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
                    d[key] = list_or_text(v)
                elif p.type == "bool" and v in (0, 1):
                    d[key] = bool(v)
        return FeatureSet(layer, ids, geoms, props, versions, matched)

    # ---------------------------------------------------------------- writing

    def insert_rows(
        self,
        layer: Layer,
        geometries: npt.NDArray[np.object_],
        rows: Sequence[Mapping[str, Any]],
        *,
        progress: Progress | None = None,
    ) -> list[int]:
        """Insert rows in chunks inside one transaction; their new ids, in order."""
        names = layer.names
        cols = ", ".join(["geom", *(_q(n) for n in names)])
        marks = ", ".join(["?"] * (len(names) + 1))
        sql = f"INSERT INTO {_q(layer.id)} ({cols}) VALUES ({marks})"
        blobs = geo.to_gpkg_blobs(geometries)
        props_def = layer.properties
        with self._write() as c:
            start = c.execute("SELECT coalesce(max(fid), 0) FROM " + _q(layer.id)).fetchone()[0]
            _refuse_ids_beyond(c, layer, int(start), len(blobs))
            deferred = _defer_insert_triggers(c, layer) if len(blobs) >= BULK else []
            for lo in range(0, len(blobs), CHUNK):
                chunk = [
                    (blobs[i], *(_to_sql(p, rows[i].get(p.name)) for p in props_def))
                    for i in range(lo, min(lo + CHUNK, len(blobs)))
                ]
                c.executemany(sql, chunk)
                if progress is not None:
                    progress(lo + len(chunk))
            ids = [
                r[0]
                for r in c.execute(
                    f"SELECT fid FROM {_q(layer.id)} WHERE fid > ? ORDER BY fid", (start,)
                )
            ]
            if deferred:
                _run_deferred(c, layer, deferred, ids, geometries, int(start))
            self._touch(c, layer)
        return ids

    def load_rows(
        self,
        layer: Layer,
        ids: Sequence[int],
        geometries: npt.NDArray[np.object_],
        rows: Sequence[Mapping[str, Any]],
        versions: Sequence[int],
    ) -> None:
        """Insert rows with the given ids and versions."""
        names = layer.names
        cols = ", ".join(["fid", "geom", *(_q(n) for n in names), "version"])
        marks = ", ".join(["?"] * (len(names) + 3))
        blobs = geo.to_gpkg_blobs(geometries)
        data = [
            (int(ids[i]), blobs[i], *(_to_sql(p, rows[i].get(p.name)) for p in layer.properties),
             int(versions[i]))
            for i in range(len(rows))
        ]  # fmt: skip
        with self._write() as c:
            c.executemany(f"INSERT INTO {_q(layer.id)} ({cols}) VALUES ({marks})", data)
            self._touch(c, layer)

    def load_documents(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Insert documents with their ids."""
        with self._write() as c:
            c.executemany(
                f"INSERT INTO gridmap_documents ({', '.join(DOCUMENT_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(DOCUMENT_FIELDS))})",
                [
                    [
                        orjson.dumps(r["body"]).decode() if f == "body" else r.get(f)
                        for f in DOCUMENT_FIELDS
                    ]
                    for r in records
                ],
            )

    def load_audit(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append audit entries with their ids."""
        with self._write() as c:
            c.executemany(
                f"INSERT INTO gridmap_audit ({', '.join(AUDIT_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(AUDIT_FIELDS))})",
                [[e.get(f) for f in AUDIT_FIELDS] for e in entries],
            )

    def _box(self, c: sqlite3.Connection, layer: Layer, fid: int) -> _Box | None:
        """One row's entry in the layer's R-tree (minx, maxx, miny, maxy), if it has one."""
        t = _q("rtree_" + layer.id + "_geom")
        row = c.execute(f"SELECT minx, maxx, miny, maxy FROM {t} WHERE id = ?", (fid,)).fetchone()
        return tuple(row) if row else None  # type: ignore[return-value]

    def _touch_row(
        self, c: sqlite3.Connection, layer: Layer, before: _Box | None, after: _Box | None
    ) -> None:
        """Refresh gpkg_contents after this transaction changed one row (the layer's stamp
        moved by one) from box ``before`` to ``after``: the extent grows to hold ``after``.
        It is recounted from the R-tree (a scan of the whole layer) when ``before`` touched
        one of its sides, so it may shrink, and when it was not exact before this change
        (another program — QGIS, GDAL, sqlite3 — changed rows without refreshing it)."""
        ext = c.execute(
            "SELECT min_x, max_x, min_y, max_y FROM gpkg_contents WHERE table_name = ?",
            (layer.id,),
        ).fetchone()
        exact_at = _stamp_on(c, layer.id + _EXTENT)
        if ext is None or None in ext or exact_at != _stamp_on(c, layer.id) - 1:
            self._touch(c, layer)
            return
        x0, x1, y0, y1 = ext
        if before is not None and not (
            x0 < before[0] and before[1] < x1 and y0 < before[2] and before[3] < y1
        ):
            self._touch(c, layer)
            return
        if after is not None:
            x0, x1 = min(x0, after[0]), max(x1, after[1])
            y0, y1 = min(y0, after[2]), max(y1, after[3])
        c.execute(
            "UPDATE gpkg_contents SET last_change = ?, min_x = ?, max_x = ?, min_y = ?, "
            "max_y = ? WHERE table_name = ?",
            (_now_text(), x0, x1, y0, y1, layer.id),
        )
        self._extent_exact(c, layer)

    def _extent_exact(self, c: sqlite3.Connection, layer: Layer) -> None:
        """Note that gpkg_contents' extent of the layer is exact at its current stamp."""
        c.execute(
            "INSERT INTO gridmap_changes VALUES (?, ?) "
            "ON CONFLICT (layer) DO UPDATE SET stamp = excluded.stamp",
            (layer.id + _EXTENT, _stamp_on(c, layer.id)),
        )

    def _touch(self, c: sqlite3.Connection, layer: Layer) -> None:
        """Refresh gpkg_contents' extent (from the whole R-tree) and last_change."""
        t = _q("rtree_" + layer.id + "_geom")
        c.execute(
            "UPDATE gpkg_contents SET last_change = ?, "
            f"min_x = (SELECT min(minx) FROM {t}), min_y = (SELECT min(miny) FROM {t}), "
            f"max_x = (SELECT max(maxx) FROM {t}), max_y = (SELECT max(maxy) FROM {t}) "
            "WHERE table_name = ?",
            (_now_text(), layer.id),
        )
        self._extent_exact(c, layer)

    def update_row(
        self, layer: Layer, fid: int, geometry: BaseGeometry, row: Mapping[str, Any], version: int
    ) -> bool:
        """Replace a row if it is still at ``version``, adding one to its version."""
        sets = ", ".join(["geom = ?", *(f"{_q(n)} = ?" for n in layer.names)])
        blob = geo.to_gpkg_blobs(np.asarray([geometry], dtype=object))[0]
        values = [blob, *(_to_sql(p, row.get(p.name)) for p in layer.properties)]
        with self._write() as c:
            before = self._box(c, layer, int(fid))
            n = c.execute(
                f"UPDATE {_q(layer.id)} SET {sets}, version = version + 1 "
                "WHERE fid = ? AND version = ?",
                [*values, int(fid), int(version)],
            ).rowcount
            if n:
                self._touch_row(c, layer, before, self._box(c, layer, int(fid)))
        return bool(n)

    def set_values(self, layer: Layer, column: str, pairs: Sequence[tuple[int, Any]]) -> None:
        """Set one column of some rows (the version trigger moves their versions on)."""
        prop = layer.by_name[column]
        with self._write() as c:
            c.executemany(
                f"UPDATE {_q(layer.id)} SET {_q(column)} = ? WHERE fid = ?",
                [(_to_sql(prop, v), int(fid)) for fid, v in pairs],
            )

    def delete_row(self, layer: Layer, fid: int, version: int) -> bool:
        """Delete a row if it is still at ``version``."""
        with self._write() as c:
            before = self._box(c, layer, int(fid))
            n = c.execute(
                f"DELETE FROM {_q(layer.id)} WHERE fid = ? AND version = ?",
                (int(fid), int(version)),
            ).rowcount
            if n:
                self._touch_row(c, layer, before, None)
        return bool(n)


_KNN_START = 1e-3
"""Half-side (degrees, about 100 m) of the first box of a nearest search, beyond the
distance from the point to the rows' envelope."""
_KNN_SLACK = 1e-9
"""Degrees (0.1 mm) by which a nearest search's box holds its circle beyond the rounding
of the box's corners."""
_NO_VALUE = -(2**62)
"""Stands for a null (or non-integer) value in an index's integer column."""


def _index_rows(
    rows: list[tuple[Any, ...]], column: str | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.object_], npt.NDArray[np.int64]]:
    """Ids, geometries and (with ``column``) its integer values of (fid, geom[, value]) rows."""
    fids = np.array([r[0] for r in rows], dtype=np.int64)
    geoms = geo.from_gpkg_blobs([r[1] for r in rows]) if rows else np.empty(0, dtype=object)
    values = np.array(
        [r[2] if column is not None and isinstance(r[2], int) else _NO_VALUE for r in rows],
        dtype=np.int64,
    )
    return fids, geoms, values


_OPTIONS: dict[str, Any] = {"timeout": 30.0, "isolation_level": None, "check_same_thread": False}


class ReadOnlyError(StoreError):
    """The GeoPackage may not be written by this user (file, folder or medium)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"the GeoPackage {path} is read-only (this user may not write the file or its "
            "folder): it can be read, not changed; give write access to both, or copy it "
            "to a writable place with `gridmap copy`"
        )


def _writable(path: Path) -> bool:
    """True if this user may write the file and its folder (SQLite makes its WAL and
    shared-memory files beside it)."""
    folder = Path(os.path.realpath(path)).parent
    return os.access(path, os.R_OK | os.W_OK) and os.access(folder, os.W_OK | os.X_OK)


def _unwritten(exc: BaseException, path: Path) -> BaseException:
    """What to raise for a write SQLite could not do: a full disk, a failing one, or a
    writer of another process holding the lock too long say so (the transaction was rolled
    back, nothing of it is stored); anything else as it came."""
    if not isinstance(exc, sqlite3.OperationalError):
        return exc
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name == "SQLITE_FULL":
        msg = (
            f"the disk holding {path.name} is full: nothing of this change was written; "
            "free space there, then try again"
        )
        return StorageFullError(msg)
    if name.startswith("SQLITE_IOERR"):
        msg = f"the database could not be written ({exc}): nothing of this change was written"
        return StoreError(msg)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError("the database is busy with another writer; try again shortly")
    return exc


def _denied(exc: sqlite3.Error) -> bool:
    """True for SQLite's refusals to write, or to open what a read needs (read-only file,
    folder or medium)."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"))


def _refuse_ids_beyond(c: sqlite3.Connection, layer: Layer, largest: int, n: int) -> None:
    """IntegrityError if the ids SQLite would give ``n`` new rows reach ID_LIMIT: it gives
    one more than the largest id the table has ever held (AUTOINCREMENT), so one row another
    program stored with a huge id leaves none for gridmap."""
    row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (layer.id,)).fetchone()
    given = int(row[0]) if row and isinstance(row[0], int) else 0
    if max(largest, given) + n < ID_LIMIT:
        return
    t = layer.id
    if largest >= given:
        why = f"its row with id {largest} (stored by another program)"
        fix = f"give that row a free id below {ID_LIMIT} or delete it (sqlite3, QGIS), then "
    else:
        why = f"an id as large as {given}, given out before (the row is gone)"
        fix = ""
    msg = (
        f"{t} has no ids left for new features: {why} makes SQLite number new ones beyond "
        f"{ID_LIMIT - 1}, the largest id gridmap uses; {fix}set the layer's counter back with "
        f"UPDATE sqlite_sequence SET seq = (SELECT max(fid) FROM {_q(t)} WHERE fid < {ID_LIMIT})"
        f" WHERE name = '{t}' (`gridmap check` lists ids out of range)"
    )
    raise IntegrityError(msg)


def _layer_statements(layer: Layer) -> list[str]:
    """The DDL of a layer's table: the table, its R-tree, their triggers, its indexes (the
    table and the R-tree first)."""
    t = layer.id
    cols = ", ".join(f"{_q(p.name)} {p.sql_type}" for p in layer.properties)
    out = [
        f"CREATE TABLE {_q(t)} (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        f"geom {layer.geometry_type.upper()}, {cols}, version INTEGER NOT NULL DEFAULT 1)",
        f"CREATE VIRTUAL TABLE {_q('rtree_' + t + '_geom')} "
        "USING rtree(id, minx, maxx, miny, maxy)",
    ]
    out += [stmt + "END;" for stmt in _RTREE_TRIGGERS.format(t=t).split("END;") if stmt.strip()]
    out += [
        f"CREATE INDEX {_q(f'idx_{t}_{p.name}')} ON {_q(t)} ({_q(p.name)})"
        for p in layer.properties
        if p.ref is not None or p.indexed
    ]
    return out


BULK = 2000
"""Rows from which an insert does its triggers' work once, set-wise, after the rows."""


def _defer_insert_triggers(c: sqlite3.Connection, layer: Layer) -> list[tuple[str, str]]:
    """Drop (inside the caller's transaction) the layer's insert triggers that
    :func:`_run_deferred` does the work of; (name, SQL) of each, to create them again."""
    t = layer.id
    names = (f"rtree_{t}_geom_insert", f"gridmap_{t}_stamp_insert", f"gridmap_{t}_rows_insert")
    marks = ", ".join("?" * len(names))
    found = c.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})", names
    ).fetchall()
    for name, _ in found:
        c.execute(f"DROP TRIGGER {_q(name)}")
    return [(str(n), str(q)) for n, q in found]


def _run_deferred(
    c: sqlite3.Connection,
    layer: Layer,
    deferred: list[tuple[str, str]],
    ids: list[int],
    geometries: npt.NDArray[np.object_],
    start: int,
) -> None:
    """What the dropped insert triggers would have done for rows ``ids``, done at once
    (R-tree entries, the stamp moved by one per row, the row log), then the triggers
    created again as they were. The transaction is the caller's: all of it or none."""
    t = layer.id
    dropped = {name for name, _ in deferred}
    if f"rtree_{t}_geom_insert" in dropped:
        keep = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
        bounds = shapely.bounds(geometries[keep])
        c.executemany(
            f"INSERT OR REPLACE INTO {_q('rtree_' + t + '_geom')} VALUES (?, ?, ?, ?, ?)",
            [
                (fid, b[0], b[2], b[1], b[3])
                for fid, b in zip(np.asarray(ids)[keep].tolist(), bounds.tolist(), strict=True)
            ],
        )
    if f"gridmap_{t}_stamp_insert" in dropped:
        c.execute("UPDATE gridmap_changes SET stamp = stamp + ? WHERE layer = ?", (len(ids), t))
    if f"gridmap_{t}_rows_insert" in dropped:
        c.execute(
            "INSERT OR REPLACE INTO gridmap_row_changes "
            f"SELECT ?, fid, (SELECT stamp FROM gridmap_changes WHERE layer = ?) FROM {_q(t)} "
            "WHERE fid > ?",
            (t, t, start),
        )
    for _, create in deferred:
        c.execute(create)


def _stamp_statements(layer: Layer) -> list[str]:
    """The triggers that move a layer's change stamp."""
    return _split_triggers(_STAMP_TRIGGERS.format(t=layer.id))


def _split_triggers(text: str) -> list[str]:
    """CREATE TRIGGER statements, one each."""
    return [stmt + "END;" for stmt in text.split("END;") if stmt.strip()]


_EXTENT = "#extent"
"""``gridmap_changes`` holds, under a layer's name and this, the layer's stamp when its
extent in gpkg_contents was last exact."""
_Box = tuple[float, float, float, float]
"""An R-tree entry: minx, maxx, miny, maxy."""


def _now_text() -> str:
    """Now as gpkg_contents.last_change holds it (UTC, milliseconds, a Z)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _stamp_on(conn: sqlite3.Connection, layer_id: str) -> int:
    """A layer's change stamp read on ``conn`` (-1 for a table without one)."""
    row = conn.execute("SELECT stamp FROM gridmap_changes WHERE layer = ?", (layer_id,)).fetchone()
    return int(row[0]) if row else -1


@functools.cache
def schema_digest() -> str:
    """A digest of this release's GeoPackage schema: a file that records it (in
    gridmap_meta) needs no DDL on open, so a read-only one opens."""
    parts = [_CORE_SQL, _ACCOUNTS_SQL]
    for layer in LAYERS:
        parts += _layer_statements(layer) + _stamp_statements(layer)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _sort_key(layer: Layer, name: str) -> str:
    """SQL a column is sorted by: a date or timestamp by the time it holds, as the
    filters compare it (sqlite_filter.time_column; another program's text in any ISO form
    in its place, text that is no date with the nulls)."""
    col = f"t.{_q('fid' if name == 'id' else name)}"
    prop = layer.by_name.get(name)
    if prop is None or prop.type not in ("date", "datetime"):
        return col
    return time_column(col, prop.type)


def _value(p: Prop | None, v: Any) -> Any:
    """A stored value as reads return it (lists and booleans converted; see _rows_to_set)."""
    if v is None or p is None:
        return v
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if p.type == "list":
        return list_or_text(v)
    if p.type == "bool" and v in (0, 1):
        return bool(v)
    return v


def list_or_text(v: Any) -> Any:
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
    ok = ~shapely.is_missing(geoms)
    if name == "intersects":
        return ok & shapely.intersects(other, geoms)
    if name == "within":
        return ok & shapely.within(geoms, other)
    return ok & shapely.contains(geoms, other)
