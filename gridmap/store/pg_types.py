"""PostgreSQL dates and timestamps that Python cannot hold, read without failing.

A ``date`` or ``timestamp`` column holds ``infinity``, ``-infinity``, days before the
year 1 (BC) and after 9999 (to 294276, 5874897 for dates), which another client (psql,
QGIS) may store there; psycopg's own loaders refuse them, so every read of such a row
failed (a 400 for /collections, maps, CSV, nearest, sorted pages; a crash of ``gridmap
check``). The loaders :func:`configure` installs read every value Python can hold as
psycopg does (a ``date``, a naive ``datetime``) and any other as the database's own text
in ISO style, date and time joined by ``T``::

    infinity   -infinity   294276-01-01T00:00:00   0044-03-15 BC   0044-03-15T12:00:00 BC

Text, not a clamped date: a value that is no date in Python is passed on as what it is,
as the GeoPackage store passes on a DATE column's text that is no date; PostgreSQL reads
it back as the same value (a copy to another store and back keeps it); ``gridmap check``
reports it; filters compare it in the database as PostgreSQL orders it (and a GeoPackage
compares such text as below or above every date, :func:`gridmap.cql.times.stored`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format

from gridmap.cql import times

_SPACE_BEFORE_TIME = re.compile(r"^(\d+-\d\d-\d\d) (?=\d\d:)")


class _Tolerant(Loader):
    """psycopg's text loader of a type (``inner``), with the database's own text, ``T``
    between date and time, for what it refuses (gridmap reads results as text only)."""

    inner: type[Loader]
    format = Format.TEXT

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._inner = self.inner(oid, context)

    def load(self, data: Buffer) -> Any:
        """The value as psycopg loads it, or as text (see the module)."""
        try:
            return self._inner.load(data)
        except psycopg.DataError:
            return _SPACE_BEFORE_TIME.sub(r"\1T", bytes(data).decode("ascii", "replace"))


_KINDS = ("date", "timestamp", "timestamptz")


def _loaders() -> list[tuple[int, type[_Tolerant]]]:
    """(oid, loader class) for each type, around psycopg's own text loader (gridmap reads
    results in text format only)."""
    out = []
    for name in _KINDS:
        info = psycopg.adapters.types[name]
        inner = psycopg.adapters.get_loader(info.oid, Format.TEXT)
        if inner is not None:
            cls = type(f"Tolerant_{name}", (_Tolerant,), {"inner": inner})
            out.append((info.oid, cls))
    return out


LOADERS = _loaders()


def configure(conn: psycopg.Connection[Any]) -> None:
    """Install the tolerant loaders on a connection (the pool's ``configure`` hook)."""
    for oid, cls in LOADERS:
        conn.adapters.register_loader(oid, cls)


def time_value(kind: str, value: Any) -> Any:
    """A value for a ``kind`` ('date' or 'datetime') column as bound: ISO text as a
    ``date`` or a naive local ``datetime`` (:func:`gridmap.cql.times.cast`: an offset is
    converted, where PostgreSQL would drop it from a ``timestamp``); anything else as
    given, for the database to read or refuse (``infinity`` and the like from a copy)."""
    if not isinstance(value, str):
        return value
    try:
        text = times.cast(value, kind)
    except ValueError:
        return value
    if kind == "date":
        return dt.date.fromisoformat(text)
    return dt.datetime.fromisoformat(text)
