"""The server backend: every layer a table in PostgreSQL + PostGIS, reached through a pool.

It moves rows (:class:`gridmap.store.backend.Backend`); every rule is in
:mod:`gridmap.store.core`. Spatial work runs in the database (GiST indexes,
``ST_Intersects``, ``ST_DWithin`` in a metric projection), as do counts and aggregates.
The schema is ``sql/postgis_*.sql``; every value is a bound parameter and every
identifier comes from the layer registry, quoted. The database keeps the registry's
relations as deferred foreign keys and refuses to change the audit log, as a second
line behind the core's checks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import random
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
import psycopg
import shapely
from psycopg import errors as pg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from shapely.geometry.base import BaseGeometry

from gridmap.errors import (
    IntegrityError,
    QueryError,
    StoreError,
)
from gridmap.layers import LAYERS, Layer, Prop
from gridmap.observe import timed_backend
from gridmap.store import pg_types, pg_watchdog
from gridmap.store.backend import EVERY_ROW, Measure, Order, Selection
from gridmap.store.base import ID_LIMIT, BBox, FeatureSet, Progress
from gridmap.store.pg_filter import list_contains, one_item
from gridmap.store.pg_filter import render as render_filter
from gridmap.store.pg_replicas import IDENTITY_SQL, Replicas, retryable
from gridmap.store.pg_stamps import StampWatch
from gridmap.store.records import AUDIT_FIELDS, CHUNK, DOCUMENT_FIELDS, RecordTables, _q

log = logging.getLogger(__name__)
_T = TypeVar("_T")
SCHEMA_VERSION = "1"
WRITE_LOCK = 0x67726964  # "grid": writers take turns, as in SQLite (see transaction())
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000
POOL_WAIT_S = 10.0
ID_ATTEMPTS = 10
"""Tries of an insert whose sequence id another client took meanwhile (see _fresh_ids)."""
DOWN_RECHECK_S = 1.0
"""While the database is unreachable, requests fail at once, and one of them tries again
after this long (so an outage is a quick 503, and service returns with the database)."""
UNAVAILABLE = "the database is unavailable (its log and gridmap's say why); try again shortly"
_CONNECTION_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "options": (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS} "
        # a generic plan of a prepared statement recomputes a long literal's transform per
        # row (17x slower after the fifth run); always plan for the values given
        "-c TimeZone=UTC -c plan_cache_mode=force_custom_plan"
    ),
    "application_name": "gridmap",
    "connect_timeout": 5,
    # a server that vanished (a cut network, a crashed host) is noticed within a minute
    "keepalives": 1,
    "keepalives_idle": 20,
    "keepalives_interval": 5,
    "keepalives_count": 4,
    "tcp_user_timeout": 40_000,
}
_LAYER_IDS = frozenset(layer.id for layer in LAYERS)
_STAMPED_RECORDS = ("gridmap_users", "gridmap_documents")
"""Record tables with a change stamp (written through RecordTables._run)."""
_PG_TYPES = {
    "str": 'text COLLATE "C"',
    "enum": 'text COLLATE "C"',
    "list": "jsonb",
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "date": "date",
    "datetime": "timestamp",
}
_PREDICATES = {
    "intersects": "ST_Intersects(t.geom, {g})",
    "within": "ST_Within(t.geom, {g})",
    "contains": "ST_Contains(t.geom, {g})",
}


def _sql(name: str) -> str:
    """A packaged SQL file, without its comment lines (they name the placeholders)."""
    text = resources.files("gridmap.store").joinpath("sql", name).read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if not line.startswith("--"))


def _lit(text: str) -> str:
    """A SQL string literal (for DDL, where parameters cannot go)."""
    return "'" + text.replace("'", "''") + "'"


def _marks() -> str:
    """A regex bracket expression of every nonspacing mark (category Mn), as ranges."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)) == "Mn":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))

    def esc(cp: int) -> str:
        return f"\\U{cp:08X}"

    return "[" + "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges) + "]"


def redact(url: str) -> str:
    """A connection URL without its password (for messages and logs), naming the server as
    libpq reads the URL: without a host, or with a folder as host, it reaches a Unix socket
    (shown as ``?host=/folder``), not localhost:5432; a port is shown only if given."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    hosts = [h for h in str(info.get("host") or "").split(",") if h]
    ports = [p for p in str(info.get("port") or "").split(",") if p]
    query: dict[str, str] = {}
    if any(h.startswith(("/", "@")) for h in hosts):  # socket folders (or abstract sockets)
        netloc, query["host"] = "", ",".join(hosts)
        if ports:
            query["port"] = ",".join(ports)
    else:
        if len(ports) == 1 < len(hosts):  # one port for every host
            ports *= len(hosts)
        named = [f"[{h}]" if ":" in h else h for h in hosts]
        netloc = ",".join(f"{h}:{ports[i]}" if i < len(ports) else h for i, h in enumerate(named))
        if ports and not hosts:  # the default socket, on another port
            query["port"] = ",".join(ports)
    if info.get("hostaddr"):
        query["hostaddr"] = str(info["hostaddr"])
    user = urllib.parse.quote(str(info.get("user") or ""), safe="")
    dbname = urllib.parse.quote(str(info.get("dbname") or ""), safe="")
    tail = "&".join(f"{k}={urllib.parse.quote(v, safe='/,:@')}" for k, v in query.items())
    return f"postgresql://{user + '@' if user else ''}{netloc}/{dbname}" + (
        f"?{tail}" if tail else ""
    )


class NotAllowed(StoreError):
    """The database refused gridmap's role a statement (a privilege it lacks)."""


@timed_backend  # each call's time counts as the request's database time
class PostGISBackend(RecordTables):
    """Rows in a PostgreSQL database with PostGIS, through a thread-safe connection pool.

    Use :meth:`create` on an empty database and :meth:`open` on one that holds gridmap's
    schema. A transaction holds one pooled connection for its thread.
    """

    def __init__(self, url: str, *, replicas: Sequence[str] = (), _create: bool = False) -> None:
        self.url = url
        self.path = None
        self.remote = True
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._watch: StampWatch | None = None
        self._replica_urls = [_checked_replica(u) for u in replicas]
        self._replicas: Replicas | None = None
        self._down: float | None = None  # since when the database is known unreachable
        self._recheck = threading.Lock()
        self._get_pool()
        try:
            if _create:
                self._init_schema()
            else:
                self._check_schema()
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(cls, url: str) -> PostGISBackend:
        """Create gridmap's schema in an empty database (PostGIS installed if missing)."""
        return cls(url, _create=True)

    @classmethod
    def open(cls, url: str, *, replicas: Sequence[str] = ()) -> PostGISBackend:
        """Open a database that holds gridmap's schema; reads may go to ``replicas`` (URLs
        of its streaming replicas) that have caught up (see :mod:`.pg_replicas`)."""
        return cls(url, replicas=replicas)

    def _get_pool(self) -> ConnectionPool[Any]:
        """The connection pool, opened on first use (and again after :meth:`close`, as the
        GeoPackage backend reconnects)."""
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is not None:
                return self._pool
            _probe(self.url)
            raw = os.environ.get("GRIDMAP_PG_POOL", "8")
            if not raw.strip().isdigit():
                msg = f"GRIDMAP_PG_POOL must be a whole number of connections, not {raw[:20]!r}"
                raise StoreError(msg)
            size = int(raw)
            pool = _new_pool(self.url, size, "gridmap")
            try:
                pool.open(wait=True, timeout=15.0)
            except PoolTimeout:
                pool.close()
                msg = (
                    f"cannot reach PostgreSQL at {redact(self.url)}; check that the server "
                    "runs and that the URL (user, password, database) is right"
                )
                raise StoreError(msg) from None
            self._pool = pool
            self._watch = StampWatch(self.url, self._all_stamps)
            if self._replica_urls:
                with pool.connection() as c:
                    row = c.execute(IDENTITY_SQL).fetchone()
                self._replicas = Replicas(
                    self._replica_urls,
                    lambda u: _new_pool(u, size, "gridmap-replica", opened=True),
                    identity=int(row[1]) if row else None,
                )
            return pool

    def close(self) -> None:
        """Close the pool's connections (a later use opens a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
            watch, self._watch = self._watch, None
            replicas, self._replicas = self._replicas, None
        if watch is not None:
            watch.close()
        if replicas is not None:
            replicas.close()
        if pool is not None:
            pool.close()

    # ---------------------------------------------------------------- connections

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """This thread's transaction connection, or one from the pool; errors mapped."""
        current = getattr(self._local, "conn", None)
        try:
            if current is not None:
                yield current
            else:
                with self._checkout() as c:
                    yield c
        except psycopg.Error as exc:
            self._after_error(exc)
            raise _mapped(exc) from None

    @contextmanager
    def _checkout(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; a StoreError (503) at once while the database is down."""
        self._unless_down()
        pool = self._get_pool()
        try:
            c = pool.getconn()
        except PoolTimeout:
            reason = _unreachable(self.url, timeout=3)
            if reason is not None:
                self._went_down(reason)
            msg = "the database is busy (no free connection); try again shortly"
            raise StoreError(msg) from None
        try:
            yield c
        finally:
            pool.putconn(c)  # (autocommit: nothing to end; the pool resets what is left)

    def _unless_down(self) -> None:
        """Fail at once while the database is known to be unreachable; every
        :data:`DOWN_RECHECK_S` one caller looks again (and a pool in back-off is replaced
        by a fresh one once the database answers)."""
        since = self._down
        if since is None:
            return
        if time.monotonic() - since < DOWN_RECHECK_S or not self._recheck.acquire(False):
            raise StoreError(UNAVAILABLE)
        try:
            again = _unreachable(self.url, timeout=3)
            if again is not None:
                self._went_down(again)
                raise StoreError(UNAVAILABLE)
            self._down = None
            log.warning("PostgreSQL at %s answers again", redact(self.url))
            pool = self._pool
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.check()  # dead connections out, new ones now
        finally:
            self._recheck.release()

    def _went_down(self, reason: str) -> None:
        if self._down is None:
            log.warning("PostgreSQL at %s is unreachable: %s", redact(self.url), reason)
        self._down = time.monotonic()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing; nested: a savepoint. Writers take turns (an advisory lock held
        to the end of the transaction), so a check and the write it allows are never
        separated by another writer's change, as in the GeoPackage backend."""
        current = getattr(self._local, "conn", None)
        if current is not None:
            with self._conn() as c, c.transaction():
                yield
            return
        try:
            with self._checkout() as c:
                self._local.conn = c
                try:
                    with c.transaction():
                        c.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                        yield
                finally:
                    self._local.conn = None
                    if self._watch is not None:
                        self._watch.changed()  # our own writes: seen at once
        except psycopg.Error as exc:
            self._after_error(exc)
            raise _mapped(exc) from None

    def _after_error(self, exc: psycopg.Error) -> None:
        """A lost connection (the server restarted, a network cut): the pool's other idle
        connections are likely dead too; drop them now, so that only this request fails
        and the next ones get fresh connections."""
        pool = self._pool
        if pool is None or not isinstance(exc, psycopg.OperationalError):
            return
        if isinstance(exc, pg.LockNotAvailable | pg.QueryCanceled):
            return  # the connection is fine
        try:
            pool.check()
        except Exception:  # the pool reconnects in the background anyway
            return
        if pool.get_stats().get("pool_available", 1) == 0:
            reason = _unreachable(self.url, timeout=3)
            if reason is not None:
                self._went_down(reason)

    # ---------------------------------------------------------------- schema

    def _init_schema(self) -> None:
        with self.transaction(), self._conn() as c:
            if c.execute("SELECT to_regclass('gridmap_meta')").fetchone()[0] is not None:
                msg = f"{redact(self.url)} already holds a gridmap store; open it instead"
                raise StoreError(msg)
            others = c.execute(
                "SELECT string_agg(tablename, ', ' ORDER BY tablename) FROM pg_tables "
                "WHERE schemaname = 'public' AND tablename <> 'spatial_ref_sys'"
            ).fetchone()[0]
            if others:  # before any statement that would change it
                msg = (
                    f"{redact(self.url)} is not empty (it holds {others[:200]}); gridmap "
                    "builds its store in an empty database: createdb a new one"
                )
                raise StoreError(msg)
            c.execute(_sql("postgis_schema.sql"))
            c.execute("INSERT INTO gridmap_meta VALUES ('schema_version', %s)", (SCHEMA_VERSION,))
        self._upgrade()

    def _check_schema(self) -> None:
        """Refuse a database without gridmap's schema; bring an older schema up to this
        release's (only then is any DDL run, so a role that may not change the tables, see
        :func:`grant_service`, opens a current store)."""
        with self._conn() as c:
            found = c.execute("SELECT to_regclass('gridmap_meta')").fetchone()[0]
            if found is None:
                msg = (
                    f"{redact(self.url)} holds no gridmap store; build one with "
                    "`gridmap demo --database URL` or `gridmap copy FILE.gpkg URL`"
                )
                raise StoreError(msg)
            row = c.execute("SELECT value FROM gridmap_meta WHERE key = 'schema_digest'").fetchone()
        if row is None or row[0] != schema_digest():
            self._upgrade()

    def _upgrade(self) -> None:
        """Bring the schema to this release's (functions, a layer added by a later release,
        its indexes, relations and triggers), grant the service roles what they need of it
        (a new table included), and record its digest; idempotent."""
        try:
            with self.transaction(), self._conn() as c:
                for statement in _schema_statements():
                    c.execute(statement)
                for table, column in _id_columns():
                    _back_within_limit(c, table, column)
                    _catch_up(c, table, column)
                _regrant_services(c)
                c.execute(
                    "INSERT INTO gridmap_meta VALUES ('schema_digest', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (schema_digest(),),
                )
        except NotAllowed as exc:
            msg = (
                f"the gridmap schema in {redact(self.url)} is older than this release and "
                f"this role may not change it ({exc}); open the store once as the owner of "
                "its tables (e.g. `gridmap info --database` with the owner's URL), then again "
                "as this role"
            )
            raise StoreError(msg) from None

    def schema_current(self) -> bool:
        """True if the store records this release's schema (a fresh read, not a cache)."""
        return self.meta("schema_digest") == schema_digest()

    # ---------------------------------------------------------------- records, stamps

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement of :class:`RecordTables` (``?`` marks become ``%s``); an insert
        that takes its id from a sequence is tried again with a fresh one if another client
        took that id meanwhile."""
        query, args = sql.replace("?", "%s"), list(params) or None

        def run(c: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            cur = c.execute(query, args)
            return cur.fetchall() if cur.description else []

        numbered = _sequence_insert(sql)
        with self._conn() as c:
            if numbered is None:
                rows = run(c)
            else:
                rows = _fresh_ids(c, numbered, "id", functools.partial(run, c))
        if self._watch is not None and not sql.startswith("SELECT"):
            for table in _STAMPED_RECORDS:
                if table in sql:
                    self._watch.changed(table)  # our own write: seen at once
        return rows

    def _all_stamps(self) -> dict[str, int]:
        with self._conn() as c:
            rows = c.execute("SELECT layer, stamp FROM gridmap_changes").fetchall()
        return {str(k): int(v) for k, v in rows}

    def changed_since(self, table: str, stamp: int, limit: int) -> frozenset[int] | None:
        """Not kept here (a stamp moves once per statement): None, all may have changed."""
        return None

    def stamps_at_hand(self, tables: Sequence[str]) -> tuple[int, ...] | None:
        """From memory while the change listener runs and nothing is stale, else None."""
        watch = self._watch
        if watch is None or getattr(self._local, "conn", None) is not None:
            return None
        known = [watch.peek(t) for t in tables]
        return tuple(int(k) for k in known if k is not None) if None not in known else None

    def stamps(self, tables: Sequence[str]) -> tuple[int, ...]:
        """Several tables' stamps (-1 for a table without one): from memory while the
        change listener runs (see :mod:`.pg_stamps`), else in one round trip."""
        watch = self._watch
        if watch is not None and getattr(self._local, "conn", None) is None:
            known = [watch.get(t) for t in tables]
            if all(k is not None for k in known):
                return tuple(int(k) for k in known if k is not None)
        with self._conn() as c:
            rows = c.execute(
                "SELECT layer, stamp FROM gridmap_changes WHERE layer = ANY(%s)", (list(tables),)
            ).fetchall()
        found = {str(k): int(v) for k, v in rows}
        return tuple(found.get(t, -1) for t in tables)

    def stamp(self, table: str) -> int:
        """A number that changes whenever the table changes (by any client). Inside a
        transaction it is read there (the transaction's own changes count)."""
        watch = self._watch
        if watch is not None and getattr(self._local, "conn", None) is None:
            known = watch.get(table)
            if known is not None:
                return known
        with self._conn() as c:
            row = c.execute(
                "SELECT stamp FROM gridmap_changes WHERE layer = %s", (table,)
            ).fetchone()
        return int(row[0]) if row else -1

    def _read(self, table: str, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """``work`` on a connection for a read of ``table``: a replica that has replayed
        every change of it this process knows of, else the primary (inside a transaction:
        its connection). A replica whose connection fails hands the read to the primary."""
        replicas, watch = self._replicas, self._watch
        in_transaction = getattr(self._local, "conn", None) is not None
        if replicas is not None and watch is not None and not in_transaction:
            known = watch.get(table)
            replica = None if known is None else replicas.pick(table, known)
            if replica is not None:
                try:
                    with replica.pool.connection(timeout=POOL_WAIT_S) as c:
                        return work(c)
                except psycopg.Error as exc:
                    if not retryable(exc):
                        raise _mapped(exc) from None
                    replica.failed(exc)
                except PoolTimeout as exc:
                    replica.failed(exc)
        with self._conn() as c:
            return work(c)

    def _fetch(self, table: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read of ``table`` (see :meth:`_read`)."""
        return self._read(table, lambda c: c.execute(sql, params).fetchall())

    # ---------------------------------------------------------------- reading

    def _where(self, layer: Layer, sel: Selection) -> tuple[str, list[Any]]:
        """SQL WHERE clause over alias ``t`` with its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if sel.within is not None:
            col, allowed = sel.within
            clauses.append(f"t.{_q(col)} = ANY(%s)")
            params.append(sorted(allowed))
        for name, value in sel.equals.items():
            prop = layer.by_name[name]
            col = f"t.{_q(name)}"
            if value is None:
                clauses.append(f"{col} IS NULL")
            elif prop.type == "list":
                clauses.append(list_contains(col))
                params.append(one_item(value))
            else:
                clauses.append(f"{col} = %s")
                params.append(_to_pg(prop, value))
        for f in sel.filters:
            c = render_filter(f)
            clauses.append(c.sql)
            params.extend(c.params)
        if sel.ids is not None:
            clauses.append("t.fid = ANY(%s)")
            params.append([int(i) for i in sel.ids])
        if sel.after is not None:
            clauses.append("t.fid > %s")
            params.append(int(sel.after))
        if sel.bbox is not None:
            box = [float(v) for v in sel.bbox]
            if layer.geometry_type == "Point":
                # the index's boxes are 32-bit floats rounded outwards (&& finds candidates,
                # never misses one); the coordinates then decide exactly, edges included
                clauses.append(
                    "t.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326) "
                    "AND ST_X(t.geom) BETWEEN %s AND %s AND ST_Y(t.geom) BETWEEN %s AND %s"
                )
                params.extend([*box, box[0], box[2], box[1], box[3]])
            else:
                clauses.append("ST_Intersects(t.geom, ST_MakeEnvelope(%s, %s, %s, %s, 4326))")
                params.extend(box)
        if sel.geometry is not None:
            clauses.append(_PREDICATES[sel.predicate].format(g="ST_GeomFromWKB(%s, 4326)"))
            params.append(shapely.to_wkb(sel.geometry))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    @staticmethod
    def _order(order: Order, sel: Selection = EVERY_ROW) -> str:
        # NULLS FIRST ascending, as SQLite sorts (both backends give one order)
        parts = [
            f"t.{_q('fid' if name == 'id' else name)} "
            + ("DESC NULLS LAST" if desc else "ASC NULLS FIRST")
            for name, desc in order
        ]
        spatial = sel.bbox is not None or sel.geometry is not None
        # With a spatial condition, "fid + 0" keeps the planner from walking the primary
        # key in id order until a page is found inside the area (at city scale, millions
        # of rows for a small box): the GiST index finds the area's rows, then a top-N sort.
        parts.append("t.fid + 0 ASC" if spatial and not order else "t.fid ASC")
        return " ORDER BY " + ", ".join(parts)

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
        """One page of rows; filtering, ordering and paging in the database."""
        where, params = self._where(layer, sel)
        cols = ", ".join(["t.fid", "ST_AsBinary(t.geom)", *(f"t.{_q(n)}" for n in layer.names)])
        rows, matched = self._page(
            layer,
            f"{cols}, t.version",
            where,
            params,
            self._order(order, sel),
            limit,
            offset,
            count,
        )
        return _rows_to_set(layer, rows, matched)

    def _page(
        self,
        layer: Layer,
        cols: str,
        where: str,
        params: list[Any],
        order_sql: str,
        limit: int | None,
        offset: int,
        count: bool,
    ) -> tuple[list[tuple[Any, ...]], int | None]:
        """One page and (if ``count``) the number matched, in one round trip: the count
        rides on each row as a window; only a page past the end asks again."""
        paged = limit is not None or offset > 0
        window = ", count(*) OVER ()" if count and paged else ""
        sql = f"SELECT {cols}{window} FROM {_q(layer.id)} AS t{where}{order_sql}"
        page = list(params)
        if limit is not None:
            sql += " LIMIT %s"
            page.append(int(limit))
        if offset:
            sql += " OFFSET %s"
            page.append(int(offset))

        def work(c: psycopg.Connection[Any]) -> tuple[list[tuple[Any, ...]], int | None]:
            rows = c.execute(sql, page).fetchall()
            if not count:
                return rows, None
            if not paged:
                return rows, len(rows)
            if rows:
                return [r[:-1] for r in rows], int(rows[0][-1])
            q = f"SELECT count(*) FROM {_q(layer.id)} AS t{where}"
            return rows, int(c.execute(q, params).fetchone()[0])

        return self._read(layer.id, work)

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
        where, params = self._where(layer, sel)
        extra = "" if column is None else f", t.{_q(column)}"
        rows, counted = self._page(
            layer, f"t.fid{extra}", where, params, self._order(order, sel), limit, offset, True
        )
        matched = int(counted or 0)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if column is None:
            return ids, None, matched
        prop = layer.by_name.get(column)
        return ids, [r[1] if prop is None else _from_pg(prop, r[1]) for r in rows], matched

    def count(self, layer: Layer, sel: Selection = EVERY_ROW) -> int:
        """How many rows match (counted in the database)."""
        where, params = self._where(layer, sel)
        rows = self._fetch(layer.id, f"SELECT count(*) FROM {_q(layer.id)} AS t{where}", params)
        return int(rows[0][0])

    def group_count(self, layer: Layer, column: str, sel: Selection = EVERY_ROW) -> dict[Any, int]:
        """Rows per value of ``column`` (GROUP BY in the database)."""
        where, params = self._where(layer, sel)
        col = f"t.{_q(column)}"
        sql = f"SELECT {col}, count(*) FROM {_q(layer.id)} AS t{where} GROUP BY {col}"
        prop = layer.by_name[column]
        rows = self._fetch(layer.id, sql, params)
        return {_from_pg(prop, r[0]): int(r[1]) for r in rows}

    def aggregate(
        self, layer: Layer, by: str, measures: Mapping[str, Measure], sel: Selection = EVERY_ROW
    ) -> dict[Any, dict[str, int]]:
        """Each measure per value of ``by`` (one GROUP BY in the database)."""
        names = list(measures)
        exprs: list[str] = []
        params: list[Any] = []
        for m in measures.values():
            if m.kind == "sum":
                exprs.append(f"coalesce(sum(t.{_q(m.column or '')}), 0)")
            elif m.where is None:
                exprs.append("count(*)")
            else:
                c = render_filter(m.where)
                exprs.append(f"count(*) FILTER (WHERE {c.sql})")
                params.extend(c.params)
        where, wparams = self._where(layer, sel)
        col = f"t.{_q(by)}"
        sql = f"SELECT {col}, {', '.join(exprs)} FROM {_q(layer.id)} AS t{where} GROUP BY {col}"
        prop = layer.by_name[by]
        rows = self._fetch(layer.id, sql, [*params, *wparams])
        return {
            _from_pg(prop, r[0]): dict(zip(names, (int(v or 0) for v in r[1:]), strict=True))
            for r in rows
        }

    def knn_ids(
        self, layer: Layer, lon: float, lat: float, k: int, sel: Selection = EVERY_ROW
    ) -> list[int]:
        """Ids of (up to) ``k`` matching rows nearest the point in lon/lat degrees (ties by
        id), in one statement: the GiST index's KNN order (``ORDER BY geom <-> point LIMIT
        k``, read until ``k`` rows pass the WHERE) gives the k-th distance, then the rows
        within it (the index again, ``ST_DWithin``) are ranked by distance and id. (With
        the id as a second sort key the planner would leave the KNN index and sort the
        whole table.)"""
        if k < 1:
            return []
        where, params = self._where(layer, sel)
        where = f"{where} AND " if where else " WHERE "
        t = _q(layer.id)
        pt = "ST_SetSRID(ST_MakePoint(%s, %s), 4326)"
        sql = (
            f"WITH near AS MATERIALIZED (SELECT t.geom <-> {pt} AS d FROM {t} AS t{where}"
            f"NOT ST_IsEmpty(t.geom) ORDER BY t.geom <-> {pt} LIMIT %s) "
            f"SELECT t.fid FROM {t} AS t{where}ST_DWithin(t.geom, {pt}, "
            f"(SELECT max(d) FROM near) * (1 + 1e-12)) ORDER BY t.geom <-> {pt}, t.fid LIMIT %s"
        )
        xy = [float(lon), float(lat)]
        args = [*xy, *params, *xy, int(k), *params, *xy, *xy, int(k)]
        return [int(r[0]) for r in self._fetch(layer.id, sql, args)]

    def latest(
        self,
        layer: Layer,
        key: str,
        order: str,
        columns: Sequence[str],
        sel: Selection = EVERY_ROW,
    ) -> list[tuple[Any, ...]]:
        """Each value of ``key``'s latest row by ``order`` and its number of rows (DISTINCT ON
        with a count per value as a window, in the database)."""
        where, params = self._where(layer, sel)
        part = f"t.{_q(key)}"
        latest = "t.fid" if order == "id" else f"t.{_q(order)}"
        cols = "".join(f", t.{_q(c)}" for c in columns)
        sql = (
            f"SELECT * FROM (SELECT DISTINCT ON ({part}) t.fid{cols}, "
            f"count(*) OVER (PARTITION BY {part}) FROM {_q(layer.id)} AS t{where} "
            f"ORDER BY {part}, {latest} DESC NULLS LAST, t.fid DESC) AS w ORDER BY 1"
        )
        rows = self._fetch(layer.id, sql, params)
        props = [layer.by_name[c] for c in columns]
        return [
            (
                int(r[0]),
                *(_from_pg(p, v) for p, v in zip(props, r[1:-1], strict=True)),
                int(r[-1]),
            )
            for r in rows
        ]

    def envelope(self, layer: Layer, sel: Selection = EVERY_ROW) -> BBox | None:
        """Bounding box of the matching rows' geometries."""
        where, params = self._where(layer, sel)
        sql = (  # exact doubles (ST_Extent would round to 32-bit floats)
            "SELECT min(ST_XMin(t.geom)), min(ST_YMin(t.geom)), max(ST_XMax(t.geom)), "
            f"max(ST_YMax(t.geom)) FROM {_q(layer.id)} AS t{where}"
        )
        row = self._fetch(layer.id, sql, params)[0]
        if row[0] is None:
            return None
        return (float(row[0]), float(row[1]), float(row[2]), float(row[3]))

    def min_max(
        self, layer: Layer, column: str, sel: Selection = EVERY_ROW
    ) -> tuple[Any, Any] | None:
        """Smallest and largest non-null value of a column among the matching rows."""
        where, params = self._where(layer, sel)
        col = f"t.{_q(column)}"
        sql = f"SELECT min({col}), max({col}) FROM {_q(layer.id)} AS t{where}"
        row = self._fetch(layer.id, sql, params)[0]
        if row[0] is None:
            return None
        prop = layer.by_name[column]
        return _from_pg(prop, row[0]), _from_pg(prop, row[1])

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
        marks = ", ".join(["ST_GeomFromWKB(%s, 4326)", *(["%s"] * len(names))])
        sql = f"INSERT INTO {_q(layer.id)} ({cols}) VALUES ({marks}) RETURNING fid"
        wkb = shapely.to_wkb(geometries) if len(geometries) else []
        ids: list[int] = []
        with self.transaction(), self._conn() as c, c.cursor() as cur:
            _catch_up(c, layer.id, "fid")
            for lo in range(0, len(rows), CHUNK):
                hi = min(lo + CHUNK, len(rows))
                chunk = [
                    (wkb[i], *(_to_pg(p, rows[i].get(p.name)) for p in layer.properties))
                    for i in range(lo, hi)
                ]
                insert = functools.partial(_inserted, cur, sql, chunk)
                ids.extend(_fresh_ids(c, layer.id, "fid", insert))
                if progress is not None:
                    progress(hi)
        return ids

    def load_rows(
        self,
        layer: Layer,
        ids: Sequence[int],
        geometries: npt.NDArray[np.object_],
        rows: Sequence[Mapping[str, Any]],
        versions: Sequence[int],
    ) -> None:
        """Insert rows with the given ids and versions (the id sequence moved past them)."""
        names = layer.names
        cols = ", ".join(["fid", "geom", *(_q(n) for n in names), "version"])
        marks = ", ".join(["%s", "ST_GeomFromWKB(%s, 4326)", *(["%s"] * len(names)), "%s"])
        wkb = shapely.to_wkb(geometries) if len(geometries) else []
        data = [
            (int(ids[i]), wkb[i], *(_to_pg(p, rows[i].get(p.name)) for p in layer.properties),
             int(versions[i]))
            for i in range(len(rows))
        ]  # fmt: skip
        with self.transaction(), self._conn() as c, c.cursor() as cur:
            cur.executemany(f"INSERT INTO {_q(layer.id)} ({cols}) VALUES ({marks})", data)
            _catch_up(c, layer.id, "fid")

    def load_documents(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Insert documents with their ids."""
        with self.transaction(), self._conn() as c, c.cursor() as cur:
            cur.executemany(
                f"INSERT INTO gridmap_documents ({', '.join(DOCUMENT_FIELDS)}) "
                f"OVERRIDING SYSTEM VALUE VALUES ({', '.join(['%s'] * len(DOCUMENT_FIELDS))})",
                [
                    [_json(r["body"]) if f == "body" else r.get(f) for f in DOCUMENT_FIELDS]
                    for r in records
                ],
            )
            _catch_up(c, "gridmap_documents", "id")

    def load_audit(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append audit entries with their ids."""
        with self.transaction(), self._conn() as c, c.cursor() as cur:
            cur.executemany(
                f"INSERT INTO gridmap_audit ({', '.join(AUDIT_FIELDS)}) "
                f"OVERRIDING SYSTEM VALUE VALUES ({', '.join(['%s'] * len(AUDIT_FIELDS))})",
                [[e.get(f) for f in AUDIT_FIELDS] for e in entries],
            )
            _catch_up(c, "gridmap_audit", "id")

    def update_row(
        self, layer: Layer, fid: int, geometry: BaseGeometry, row: Mapping[str, Any], version: int
    ) -> bool:
        """Replace a row if it is still at ``version``, adding one to its version."""
        sets = ", ".join(
            ["geom = ST_GeomFromWKB(%s, 4326)", *(f"{_q(n)} = %s" for n in layer.names)]
        )
        values = [shapely.to_wkb(geometry), *(_to_pg(p, row.get(p.name)) for p in layer.properties)]
        with self._conn() as c:
            n = c.execute(
                f"UPDATE {_q(layer.id)} SET {sets}, version = version + 1 "
                "WHERE fid = %s AND version = %s",
                [*values, int(fid), int(version)],
            ).rowcount
        return bool(n)

    def set_values(self, layer: Layer, column: str, pairs: Sequence[tuple[int, Any]]) -> None:
        """Set one column of some rows (the version trigger moves their versions on)."""
        prop = layer.by_name[column]
        with self._conn() as c, c.cursor() as cur:
            cur.executemany(
                f"UPDATE {_q(layer.id)} SET {_q(column)} = %s WHERE fid = %s",
                [(_to_pg(prop, v), int(fid)) for fid, v in pairs],
            )

    def delete_row(self, layer: Layer, fid: int, version: int) -> bool:
        """Delete a row if it is still at ``version``."""
        with self._conn() as c:
            n = c.execute(
                f"DELETE FROM {_q(layer.id)} WHERE fid = %s AND version = %s",
                (int(fid), int(version)),
            ).rowcount
        return bool(n)


# -------------------------------------------------------------------- helpers


def _layer_sql(layer: Layer) -> str:
    columns = ",\n  ".join(f"{_q(p.name)} {_PG_TYPES[p.type]}" for p in layer.properties)
    return (
        _sql("postgis_layer.sql")
        .replace("{table}", _q(layer.id))
        .replace("{columns}", columns)
        .replace("{geometry_type}", layer.geometry_type)
        .replace("{geom_index}", _q(f"{layer.id}_geom_gist"))
        .replace("{name}", _lit(layer.id))
        .replace("{stamp_trigger}", _lit(f"gridmap_{layer.id}_stamp"))
        .replace("{stamp_trigger_id}", _q(f"gridmap_{layer.id}_stamp"))
        .replace("{version_trigger_id}", _q(f"gridmap_{layer.id}_version"))
        .replace("{ids_trigger}", _lit(f"gridmap_{layer.id}_ids_ahead"))
        .replace("{ids_trigger_id}", _q(f"gridmap_{layer.id}_ids_ahead"))
        .replace("{ids_update_trigger}", _lit(f"gridmap_{layer.id}_ids_ahead_on_update"))
        .replace("{ids_update_trigger_id}", _q(f"gridmap_{layer.id}_ids_ahead_on_update"))
    )


def grant_service(url: str, role: str) -> list[str]:
    """Let ``role`` (a login role that owns nothing) serve the store at ``url`` with no
    more rights than serving needs; run as the tables' owner (or a superuser). The
    statements run, in order.

    It may read and write features, accounts, documents and settings, but only read and
    append to the audit log; as it owns no table it cannot disable the triggers that keep
    the log append-only and campaigns kept, nor change the schema. A role that could reach
    further (a superuser, one that may create roles, owns the database, schema ``public``
    or one of its tables or functions, or shares membership with the owner) is refused, as
    is one that cannot log in. The rights are checked after granting: a run by a role that
    may not grant them reports that, not success. A later release's upgrade (the owner's
    next open) grants the role the tables it adds (:func:`_regrant_services`)."""
    try:
        PostGISBackend.open(url).close()  # an older schema is brought up to date first
    except NotAllowed:  # this role may not even read the tables
        raise NotAllowed(_only_the_owner(url)) from None
    try:
        with psycopg.connect(url, autocommit=True) as c, c.transaction():
            reason = _unsafe_role(c, role)
            if reason is not None:
                raise StoreError(reason)
            _may_grant(c)
            done = _access_grants(c, role) + _table_grants(role, _id_sequences(c))
            for statement in done:
                c.execute(statement)
            missing = _missing_rights(c, role)
            if missing:
                msg = (
                    f"{role!r} still lacks {', '.join(missing[:6])} after the grants; only "
                    "the owner of gridmap's tables (or a superuser) can give them: run "
                    "grant-service with the owner's URL"
                )
                raise NotAllowed(msg)  # (the transaction undoes the grants that did run)
    except pg.InsufficientPrivilege as exc:
        log.error("PostgreSQL: %s", exc.diag.message_primary)
        raise NotAllowed(_only_the_owner(url)) from None
    except psycopg.Error as exc:
        raise _mapped(exc) from None
    return done


def _only_the_owner(url: str) -> str:
    user = psycopg.conninfo.conninfo_to_dict(url).get("user") or "this role"
    return (
        f"{user} may not grant the use of gridmap's tables: only the owner of gridmap's "
        "tables or a superuser can; run grant-service with the owner's URL"
    )


_READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")


def _service_rights() -> dict[str, tuple[str, ...]]:
    """What a service role may do to each of gridmap's tables: the audit log only read and
    appended to, stamps and settings never deleted."""
    rights = {t: _READ_WRITE for t in [layer.id for layer in LAYERS]}
    rights |= {
        t: _READ_WRITE
        for t in ("gridmap_users", "gridmap_documents", "gridmap_limits", "gridmap_idempotency")
    }
    rights |= {t: ("SELECT", "INSERT", "UPDATE") for t in ("gridmap_meta", "gridmap_changes")}
    rights["gridmap_audit"] = ("SELECT", "INSERT")
    return rights


def _access_grants(c: psycopg.Connection[Any], role: str) -> list[str]:
    """The GRANTs that let ``role`` reach the tables at all (those it lacks)."""
    name = _q(role)
    db, connect, usage, srs = c.execute(
        "SELECT current_database(), has_database_privilege(%s, current_database(), 'CONNECT'), "
        "has_schema_privilege(%s, 'public', 'USAGE'), "
        "has_table_privilege(%s, 'spatial_ref_sys', 'SELECT')",
        (role, role, role),
    ).fetchone()
    out = [] if connect else [f"GRANT CONNECT ON DATABASE {_q(db)} TO {name}"]
    out += [] if usage else [f"GRANT USAGE ON SCHEMA public TO {name}"]
    out += [] if srs else [f"GRANT SELECT ON spatial_ref_sys TO {name}"]
    return out


def _table_grants(role: str, sequences: Sequence[str]) -> list[str]:
    """The GRANTs on gridmap's tables and id sequences (``sequences``, quoted), given again
    after an upgrade that adds a table."""
    by_rights: dict[tuple[str, ...], list[str]] = {}
    for table, rights in _service_rights().items():
        by_rights.setdefault(rights, []).append(_q(table))
    out = [
        f"GRANT {', '.join(rights)} ON {', '.join(tables)} TO {_q(role)}"
        for rights, tables in by_rights.items()
    ]
    # nextval, and setval when another client's ids are caught up with
    out.append(f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE {', '.join(sequences)} TO {_q(role)}")
    return out


def _id_sequences(c: psycopg.Connection[Any]) -> list[str]:
    """The id sequences of gridmap's tables, qualified and quoted."""
    return [
        str(c.execute("SELECT pg_get_serial_sequence(%s, %s)", (_q(t), col)).fetchone()[0])
        for t, col in _id_columns()
    ]


def _missing_rights(c: psycopg.Connection[Any], role: str) -> list[str]:
    """The rights ``role`` should hold and does not (as PostgreSQL itself answers)."""
    pairs = [(t, r) for t, rights in _service_rights().items() for r in rights]
    pairs += [("spatial_ref_sys", "SELECT")]
    rows = c.execute(
        "SELECT p || ' on ' || t FROM unnest(%s::text[], %s::text[]) AS x(t, p) "
        "WHERE NOT has_table_privilege(%s::name, quote_ident(t), p)",
        ([t for t, _ in pairs], [r for _, r in pairs], role),
    ).fetchall()
    missing = [str(r[0]) for r in rows]
    rows = c.execute(
        "SELECT p || ' on ' || s FROM unnest(%s::text[]) AS s CROSS JOIN "
        "unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p "
        "WHERE NOT has_sequence_privilege(%s::name, s, p)",
        (_id_sequences(c), role),
    ).fetchall()
    missing += [str(r[0]) for r in rows]
    access = c.execute(
        "SELECT has_database_privilege(%s::name, current_database(), 'CONNECT'), "
        "has_schema_privilege(%s::name, 'public', 'USAGE')",
        (role, role),
    ).fetchone()
    missing += [
        w for w, ok in zip(("CONNECT", "USAGE on schema public"), access, strict=True) if not ok
    ]
    return missing


def _may_grant(c: psycopg.Connection[Any]) -> None:
    """Refuse (NotAllowed) a run by a role that is neither the tables' owner, a member of
    it, nor a superuser: its GRANTs would give nothing (PostgreSQL only warns)."""
    owner, allowed = c.execute(
        "SELECT relowner::regrole::text, pg_has_role(current_user, relowner, 'USAGE') "
        "FROM pg_class WHERE oid = 'gridmap_audit'::regclass"
    ).fetchone()
    if not allowed:
        msg = (
            f"only the owner of gridmap's tables ({owner}) or a superuser can grant their "
            "use; run grant-service with the owner's URL"
        )
        raise NotAllowed(msg)


_SERVER_ROLES = ("pg_execute_server_program", "pg_write_server_files")
"""Predefined roles that act as the server's operating-system user (as a superuser could)."""


def _unsafe_role(c: psycopg.Connection[Any], role: str) -> str | None:
    """Why ``role`` must not serve the store (it could reach past the service's rights, or
    cannot log in), as a message that says what to do; None if it may."""
    found = c.execute(
        "SELECT oid, rolsuper OR rolbypassrls, rolcreaterole, rolcanlogin, "
        "rolname = current_user FROM pg_roles WHERE rolname = %s",
        (role,),
    ).fetchone()
    if found is None:
        return f"there is no role {role!r}; create it first (CREATE ROLE … LOGIN PASSWORD …)"
    oid, mighty, creates_roles, login, is_me = found
    owner, owner_name, me = c.execute(
        "SELECT relowner, relowner::regrole::text, (SELECT oid FROM pg_roles WHERE rolname = "
        "current_user) FROM pg_class WHERE oid = 'gridmap_audit'::regclass"
    ).fetchone()
    if is_me or oid == owner:
        return f"{role!r} is the owner itself; the service needs a login role of its own"
    if mighty:
        return (
            f"{role!r} is a superuser or bypasses row security, so nothing would bind it; "
            "create a plain login role for the service"
        )
    if creates_roles:
        return (
            f"{role!r} may create roles (CREATEROLE) and so give itself others' rights; "
            f"ALTER ROLE {_q(role)} NOCREATEROLE, or create a plain login role"
        )
    if not login:
        return (
            f"{role!r} cannot log in (NOLOGIN); grant to the login role the service connects "
            f"as, or ALTER ROLE {_q(role)} LOGIN"
        )
    held = _memberships(c, oid) | {oid}  # the role's own rights and those it inherits
    if owner in held or me in held:
        return (
            f"{role!r} is a member of the owner's role ({owner_name}), so it could act as the "
            "owner; REVOKE that membership, or create a login role that belongs to no other"
        )
    if oid in _memberships(c, owner) or oid in _memberships(c, me):
        return (
            f"the owner ({owner_name}) is a member of {role!r}; the service needs a role "
            "of its own that the owner does not belong to"
        )
    names = c.execute("SELECT rolname FROM pg_roles WHERE oid = ANY(%s)", (list(held),)).fetchall()
    server = sorted({n for (n,) in names} & set(_SERVER_ROLES))
    if server:
        return (
            f"{role!r} is a member of {', '.join(server)}, which act as the server's "
            "operating-system user; REVOKE that, or create a plain login role"
        )
    return _owned(c, role, list(held))


def _owned(c: psycopg.Connection[Any], role: str, held: list[int]) -> str | None:
    """Why ``role`` (with the roles it belongs to, ``held``) must not serve: it owns the
    database, schema ``public`` or something in it. An owner may change or drop the
    tables, disable their triggers, or replace the functions the triggers call."""
    found = c.execute(
        "SELECT 'the database' FROM pg_database WHERE datname = current_database() "
        "AND datdba = ANY(%(h)s) "
        "UNION ALL SELECT 'schema public' FROM pg_namespace WHERE nspname = 'public' "
        "AND nspowner = ANY(%(h)s) "
        "UNION ALL (SELECT 'table ' || relname FROM pg_class WHERE relnamespace = "
        "'public'::regnamespace AND relowner = ANY(%(h)s) ORDER BY relname LIMIT 3) "
        "UNION ALL (SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = "
        "'public'::regnamespace AND proowner = ANY(%(h)s) ORDER BY proname LIMIT 3)",
        {"h": held},
    ).fetchall()
    if not found:
        return None
    return (
        f"{role!r} owns {', '.join(str(r[0]) for r in found)}, so it could change or "
        "drop them and switch off the audit log's triggers; give them to the owner of "
        f"gridmap's tables (ALTER … OWNER TO, REASSIGN OWNED BY {_q(role)} TO …), or "
        "create a login role that owns nothing"
    )


def _memberships(c: psycopg.Connection[Any], oid: int) -> set[int]:
    """The roles ``oid`` is a member of, directly or through others (from the catalog:
    ``pg_has_role`` counts a superuser as a member of every role)."""
    rows = c.execute(
        "WITH RECURSIVE m(r) AS (SELECT roleid FROM pg_auth_members WHERE member = %s "
        "UNION SELECT a.roleid FROM pg_auth_members a JOIN m ON a.member = m.r) SELECT r FROM m",
        (oid,),
    ).fetchall()
    return {int(r[0]) for r in rows}


def _regrant_services(c: psycopg.Connection[Any]) -> None:
    """Give every service role its rights on this release's tables again, so that a table
    an upgrade added (a new layer) is served too. The service roles are read from the
    audit log's own privileges (a role that may append to it, which only
    :func:`grant_service` gives): not from a list a service role could write to, and a role
    whose rights were revoked is not given them again."""
    roles = c.execute(
        "SELECT DISTINCT r.rolname FROM pg_class t CROSS JOIN LATERAL aclexplode(t.relacl) a "
        "JOIN pg_roles r ON r.oid = a.grantee WHERE t.oid = 'gridmap_audit'::regclass "
        "AND a.privilege_type = 'INSERT' AND a.grantee <> t.relowner ORDER BY 1"
    ).fetchall()
    if not roles:
        return
    sequences = _id_sequences(c)
    for (role,) in roles:
        reason = _unsafe_role(c, role)
        if reason is not None:
            log.warning("the upgrade grants %s nothing: %s", role, reason)
            continue
        for statement in _table_grants(role, sequences):
            c.execute(statement)


def _schema_statements(marks: str | None = None) -> list[str]:
    """Every DDL statement of this release's schema, in order; each idempotent."""
    accenti = _sql("postgis_accenti.sql").replace("{marks}", _marks() if marks is None else marks)
    out = [_sql("postgis_schema.sql"), accenti]
    out.extend(_layer_sql(layer) for layer in LAYERS)
    for layer in LAYERS:
        for p in layer.properties:
            if p.ref is not None or p.indexed:
                name = _q(f"idx_{layer.id}_{p.name}")
                out.append(f"CREATE INDEX IF NOT EXISTS {name} ON {_q(layer.id)} ({_q(p.name)})")
            if p.ref is not None:
                out.append(_foreign_key_sql(layer, p))
            if p.type in ("date", "datetime"):
                out.append(_calendar_check_sql(layer, p))
    out.extend(_id_range_sql(table, column) for table, column in _id_columns())
    return out


def _id_columns() -> list[tuple[str, str]]:
    """Every table with an id sequence, and its id column."""
    return [(layer.id, "fid") for layer in LAYERS] + [
        ("gridmap_audit", "id"),
        ("gridmap_documents", "id"),
    ]


@functools.cache
def schema_digest() -> str:
    """A digest of this release's schema: a store that records it needs no DDL on open.
    (The accent marks are left out: they follow the Python that wrote them.)"""
    text = "\n".join(_schema_statements(marks="{marks}"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _calendar_check_sql(layer: Layer, p: Prop) -> str:
    """A CHECK keeping a date or timestamp column within the years 1–9999, which Python,
    the GeoPackage store and gridmap's clients can read (no infinity, BC date or year past
    9999 from psql or QGIS). NOT VALID: rows stored before are kept (``gridmap check``
    reports them) and every new or changed row is checked."""
    name = f"ck_{layer.id}_{p.name}_calendar"
    lo, hi = (
        ("DATE '0001-01-01'", "DATE '9999-12-31'")
        if p.type == "date"
        else ("TIMESTAMP '0001-01-01 00:00:00'", "TIMESTAMP '9999-12-31 23:59:59.999999'")
    )
    return (
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = "
        f"{_lit(name)}) THEN ALTER TABLE {_q(layer.id)} ADD CONSTRAINT {_q(name)} "
        f"CHECK ({_q(p.name)} BETWEEN {lo} AND {hi}) NOT VALID; END IF; END $$"
    )


def _id_range_sql(table: str, column: str) -> str:
    """A CHECK keeping a table's ids in 1 .. :data:`ID_LIMIT` - 1, so that no client (psql,
    QGIS, a copy) can store an id the API cannot address or one at the end of bigint, which
    would leave the sequence with no id to give. NOT VALID: it is added without reading
    the table (a stored row outside stays, and ``gridmap_keep_ids_ahead`` ignores it);
    every new or changed row is checked."""
    name = f"ck_{table}_{column}_range"
    return (
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = "
        f"{_lit(name)}) THEN ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} "
        f"CHECK ({_q(column)} > 0 AND {_q(column)} < {ID_LIMIT}) NOT VALID; END IF; END $$"
    )


def _foreign_key_sql(layer: Layer, p: Prop) -> str:
    name = f"fk_{layer.id}_{p.name}"
    return (
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = "
        f"{_lit(name)}) THEN ALTER TABLE {_q(layer.id)} ADD CONSTRAINT {_q(name)} "
        f"FOREIGN KEY ({_q(p.name)}) REFERENCES {_q(p.ref or '')} (fid) "
        "DEFERRABLE INITIALLY DEFERRED; END IF; END $$"
    )


def _probe(url: str) -> None:
    """Connect once, so that a wrong address, user, password or database is said at once
    (a pool would retry quietly until its timeout)."""
    reason = _unreachable(url, timeout=10)
    if reason is not None:
        msg = (
            f"cannot connect to PostgreSQL at {redact(url)}: {reason}; check that the server "
            "runs and that the URL (user, password, database) is right"
        )
        raise StoreError(msg)


def _unreachable(url: str, *, timeout: int) -> str | None:
    """Why a new connection to ``url`` fails (the password taken out), or None."""
    try:
        psycopg.connect(url, connect_timeout=timeout).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return _without_password(reason, url)
    return None


def _without_password(text: str, url: str) -> str:
    """``text`` (a libpq message, which may quote the URL) with the URL's password, and the
    URL itself when it could not be parsed, taken out."""
    head = url.split("://", 1)[-1].rpartition("@")[0]
    secret = head.partition(":")[2]
    if secret:
        text = text.replace(secret, "***")
    return text.replace(url, redact(url)) if "@" in url else text


def _catch_up(c: psycopg.Connection[Any], table: str, column: str) -> None:
    """Move the id sequence forward if another client stored larger ids explicitly (QGIS,
    psql), or after rows were loaded with their ids, so that the next new id is free; never
    backward (the schema's ``gridmap_keep_ids_ahead`` reads the sequence's state, called or
    not). Ids at or past :data:`ID_LIMIT` (stored before the CHECK) are not followed."""
    c.execute(
        f"SELECT gridmap_keep_ids_ahead(pg_get_serial_sequence(%s, %s)::regclass, top) "
        f"FROM (SELECT max({_q(column)}) AS top FROM {_q(table)} "
        f"WHERE {_q(column)} < {ID_LIMIT}) AS m WHERE top IS NOT NULL",
        (_q(table), column),
    )


def _back_within_limit(c: psycopg.Connection[Any], table: str, column: str) -> None:
    """Bring back a sequence that an explicit id at or past :data:`ID_LIMIT` had moved there
    (before this release's CHECK and trigger): no new row could be made (nor, for the audit
    log, a log-in), and the API cannot address such ids. It is set to the largest id within
    the limit, so the ids given after it are ones no row within the limit has."""
    seq = c.execute("SELECT pg_get_serial_sequence(%s, %s)", (_q(table), column)).fetchone()
    if seq is None or seq[0] is None:
        return
    (top,) = c.execute(f"SELECT last_value FROM {seq[0]}").fetchone()
    if int(top) < ID_LIMIT:
        return
    c.execute(
        f"SELECT setval(%s::regclass, coalesce(m, 1), m IS NOT NULL) FROM (SELECT max({_q(column)})"
        f" AS m FROM {_q(table)} WHERE {_q(column)} > 0 AND {_q(column)} < {ID_LIMIT}) AS t",
        (seq[0],),
    )
    log.warning("%s's id sequence stood at %s, past the ids allowed; set back", table, top)


def _sequence_insert(sql: str) -> str | None:
    """The record table an INSERT of :class:`RecordTables` adds to with ids from its
    sequence (the audit log, documents), or None (the loaders give ids: not through here)."""
    for table in ("gridmap_audit", "gridmap_documents"):
        if sql.startswith(f"INSERT INTO {table} "):
            return table
    return None


def _inserted(cur: psycopg.Cursor[Any], sql: str, chunk: list[tuple[Any, ...]]) -> list[int]:
    """Insert rows (``sql`` returning their ids); the ids, in order."""
    ids: list[int] = []
    cur.executemany(sql, chunk, returning=True)
    while True:
        got = cur.fetchone()
        if got is not None:
            ids.append(int(got[0]))
        if not cur.nextset():
            return ids


def _new_pool(url: str, size: int, name: str, *, opened: bool = False) -> ConnectionPool[Any]:
    """A pool of gridmap's connections to one server (``opened``: started, not waited for)."""
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=1,
        max_size=max(size, 1),
        timeout=POOL_WAIT_S,
        reconnect_timeout=3.0,  # then a new attempt when asked: no growing back-off
        # cut when the server stays silent past the timeout (a frozen backend)
        connection_class=pg_watchdog.connection_class(STATEMENT_TIMEOUT_MS / 1000),
        kwargs=_CONNECTION_OPTIONS,
        configure=pg_types.configure,  # dates Python cannot hold read as text
        open=False,
        name=name,
    )
    if opened:
        pool.open(wait=False)
    return pool


def _checked_replica(url: str) -> str:
    """A replica's URL as given, if it is a postgresql:// URL (StoreError otherwise)."""
    if not url.startswith(("postgresql://", "postgres://")):
        msg = f"a read replica is named by a postgresql:// URL, not {redact(url)[:60]!r}"
        raise StoreError(msg)
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        msg = f"the read replica URL {redact(url)[:80]!r} cannot be read (percent-encode %, @, /)"
        raise StoreError(msg) from None
    return url


def _fresh_ids(c: psycopg.Connection[Any], table: str, column: str, run: Callable[[], _T]) -> _T:
    """``run()``, an insert whose ids come from ``table``'s sequence, tried again with new
    ids when another client stored one of them meanwhile (psql, QGIS: ids of their own).

    Why a retry and not a lock or a look-up in the trigger: the column's default draws
    ``nextval`` before any BEFORE trigger runs, and under READ COMMITTED no trigger or
    query sees a row another transaction inserted but has not committed. Only the primary
    key's unique check does: it waits for that transaction and refuses the id if it
    commits. The other client's trigger moved the sequence past its id before that row
    reached the index (or found it past already), so after the refusal the catch-up and a
    new ``nextval`` give larger ids; only a row of that same transaction is undone (a
    savepoint inside a transaction; outside, the statement was its own transaction)."""
    for attempt in range(1, ID_ATTEMPTS + 1):
        try:
            if c.info.transaction_status == TransactionStatus.IDLE:
                return run()
            with c.transaction():
                return run()
        except pg.UniqueViolation as exc:
            if exc.diag.constraint_name != f"{table}_pkey" or attempt == ID_ATTEMPTS:
                raise
            log.info("an id of %s was taken by another client meanwhile; new ids", table)
        _catch_up(c, table, column)
        # a random pause out of step with a client that takes ids as fast as it can
        time.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 5)))
    raise AssertionError("unreachable")


def _to_pg(p: Prop, v: Any) -> Any:
    """A value as bound for its column; dates and timestamps as Python's (see
    :func:`pg_types.time_value`: an offset is converted to local time, not dropped)."""
    if v is None:
        return None
    if p.type == "list":
        return Jsonb(v)
    if p.type == "bool":
        return bool(v)
    if p.type in ("date", "datetime"):
        return pg_types.time_value(p.type, v)
    return v


def _from_pg(p: Prop, v: Any) -> Any:
    """A database value as the GeoPackage backend returns it (ISO text for times)."""
    if v is None:
        return None
    if isinstance(v, dt.date):  # date and datetime
        return v.isoformat()
    if p.type == "list":
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return v
        return orjson.dumps(v).decode()
    return v


def _rows_to_set(layer: Layer, rows: list[tuple[Any, ...]], matched: int | None) -> FeatureSet:
    n = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    geoms = shapely.from_wkb([r[1] for r in rows]) if n else np.empty(0, dtype=object)
    versions = np.fromiter((r[-1] for r in rows), dtype=np.int64, count=n)
    convert = [
        (i + 2, p) for i, p in enumerate(layer.properties) if p.type in ("list", "date", "datetime")
    ]
    names = layer.names
    props = []
    for r in rows:
        d = dict(zip(names, r[2:-1], strict=True))
        for i, p in convert:
            if r[i] is not None:
                d[p.name] = _from_pg(p, r[i])
        props.append(d)
    return FeatureSet(layer, ids, np.asarray(geoms, dtype=object), props, versions, matched)


def _json(body: Mapping[str, Any]) -> Json:
    return Json(body, dumps=lambda o: orjson.dumps(o).decode())


_NO_IDS_LEFT = (
    "no new id is left for this table: another client stored a row with the largest id "
    "allowed; tell the administrator (the server's log says what to do)"
)


def _refusal(exc: psycopg.IntegrityError) -> str:
    """What a constraint's refusal means and what to do, in words for a client: no
    constraint, index or sequence name (the log has them)."""
    name = exc.diag.constraint_name or ""
    table = exc.diag.table_name or ""
    where = f" (in {table})" if table in _LAYER_IDS else ""
    if isinstance(exc, pg.UniqueViolation):
        if name.endswith("_pkey"):
            return (
                f"the id is already taken{where}: another client stored rows with ids of its "
                "own at the same moment; try again"
            )
        return f"a value that must be unique is already stored{where}; change it and try again"
    if isinstance(exc, pg.CheckViolation):
        if name.startswith(f"ck_{table}_") and name.endswith("_range"):  # _id_range_sql
            column = name.removeprefix(f"ck_{table}_").removesuffix("_range")
            log.warning(
                "an id of %s outside 1 .. %s was refused; if a row holds the largest, no new "
                "id is left: give that row a smaller %s, then SELECT setval("
                "pg_get_serial_sequence('%s', '%s'), (SELECT max(%s) FROM %s))",
                table, ID_LIMIT - 1, column, table, column, column, table,
            )  # fmt: skip
            return (
                f"ids lie between 1 and {ID_LIMIT - 1:,}{where}: one outside is refused, and "
                "once a row holds the largest no new id is left; if so, tell the "
                "administrator (the server's log says what to do)"
            )
        if name.endswith("_calendar"):
            return f"a date or time lies outside the years 1–9999{where}; correct it"
        return f"a value breaks a rule of the stored data{where}; correct it and try again"
    if isinstance(exc, pg.ForeignKeyViolation):
        return (
            f"the change refers to a record that does not exist, or removes one that others "
            f"still refer to{where}; check the references and try again"
        )
    if isinstance(exc, pg.NotNullViolation):
        column = exc.diag.column_name or ""
        what = f" ({column})" if column and where else ""
        return f"a required value is missing{what}{where}; give it and try again"
    return f"the database refused the change{where}: it breaks a rule of the stored data"


def _mapped(exc: psycopg.Error) -> Exception:
    """A database error as the gridmap error that says what to do."""
    text = (exc.diag.message_primary or str(exc)).strip()
    if isinstance(exc, pg.QueryCanceled):
        return QueryError(
            f"the query ran longer than {STATEMENT_TIMEOUT_MS // 1000} s and was stopped; "
            "narrow it (a smaller area, a simpler filter)"
        )
    if isinstance(exc, pg.InsufficientPrivilege):
        log.error("PostgreSQL: %s", text)
        return NotAllowed(
            f"gridmap's database role may not do this ({text}); the owner of the tables can "
            "allow it with `gridmap grant-service ROLE`"
        )
    if isinstance(exc, pg.LockNotAvailable):
        return StoreError(
            "the data is locked by another writer (a long edit, a backup); try again shortly"
        )
    if isinstance(exc, pg.SequenceGeneratorLimitExceeded):  # its name only for the log
        log.error(
            "PostgreSQL: %s; give the row with the largest id a smaller one (below %s), "
            "then set the sequence back to the table's largest id (SELECT setval(…))",
            text,
            ID_LIMIT,
        )
        return IntegrityError(_NO_IDS_LEFT)
    if isinstance(exc, psycopg.DataError):
        return QueryError(f"the query could not be evaluated: {text}")
    if exc.sqlstate == "23000":  # gridmap_refuse(): the audit log, kept documents
        return IntegrityError(text)
    if isinstance(exc, psycopg.IntegrityError):
        # the constraint's, index's or sequence's name and the key only for the log (not a
        # "Failing row contains …" detail: a household's personal data)
        detail = (exc.diag.message_detail or "").strip()
        log.warning(
            "PostgreSQL refused a change: %s%s",
            text,
            f" ({detail})" if detail.startswith("Key ") else "",
        )
        return IntegrityError(_refusal(exc))
    if isinstance(exc, psycopg.OperationalError):
        log.warning("PostgreSQL: %s", text)
        return StoreError(UNAVAILABLE)
    log.error("PostgreSQL: %s", text)  # the reason for the administrator, not for clients
    return StoreError("the database could not answer; try again, or tell the administrator")
