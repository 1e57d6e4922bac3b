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
import struct
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format

from gridmap.cql import times

_PG_EPOCH_DAYS = 10_957
"""Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch."""
_US_PER_DAY = 86_400_000_000
_SPACE_BEFORE_TIME = re.compile(r"^(\d+-\d\d-\d\d) (?=\d\d:)")


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count from 1970-01-01 in the proleptic Gregorian
    calendar, any year (astronomical: 0 is 1 BC); H. Hinnant's ``civil_from_days``."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def day_text(days: int) -> tuple[str, bool]:
    """PostgreSQL's ISO text of a day counted from 2000-01-01, and whether it is BC."""
    year, month, day = civil_from_days(days + _PG_EPOCH_DAYS)
    bc = year <= 0
    return f"{(1 - year) if bc else year:04d}-{month:02d}-{day:02d}", bc


def time_text(micros: int, *, zone: str = "") -> str:
    """A timestamp's text (microseconds from 2000-01-01, in UTC when ``zone`` is given)."""
    days, rest = divmod(micros, _US_PER_DAY)
    date, bc = day_text(days)
    seconds, us = divmod(rest, 1_000_000)
    hh, mm, ss = seconds // 3600, seconds // 60 % 60, seconds % 60
    fraction = f".{us:06d}".rstrip("0") if us else ""
    return f"{date}T{hh:02d}:{mm:02d}:{ss:02d}{fraction}{zone}" + (" BC" if bc else "")


class _Tolerant(Loader):
    """psycopg's loader of a type, with the database's text for what it refuses."""

    inner: type[Loader]

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._inner = self.inner(oid, context)

    def load(self, data: Buffer) -> Any:
        """The value as psycopg loads it, or as text (see the module)."""
        try:
            return self._inner.load(data)
        except psycopg.DataError:
            return self.beyond(data)

    def beyond(self, data: Buffer) -> str:
        """The text of a value Python cannot hold."""
        raise NotImplementedError


class _TextLoader(_Tolerant):
    """Text format: the database's text, ``T`` between date and time."""

    format = Format.TEXT

    def beyond(self, data: Buffer) -> str:
        """The database's text, ``T`` between date and time."""
        return _SPACE_BEFORE_TIME.sub(r"\1T", bytes(data).decode("ascii", "replace"))


class _DateBinary(_Tolerant):
    """Binary ``date``: days from 2000-01-01, the extreme integers for the infinities."""

    format = Format.BINARY

    def beyond(self, data: Buffer) -> str:
        """The text of a date (as the text format gives it)."""
        (days,) = struct.unpack("!i", bytes(data))
        if days in (2**31 - 1, -(2**31)):
            return "infinity" if days > 0 else "-infinity"
        date, bc = day_text(days)
        return date + (" BC" if bc else "")


class _TimestampBinary(_Tolerant):
    """Binary ``timestamp``: microseconds from 2000-01-01, extremes for the infinities."""

    format = Format.BINARY
    zone = ""

    def beyond(self, data: Buffer) -> str:
        """The text of a timestamp (as the text format gives it, in UTC)."""
        (micros,) = struct.unpack("!q", bytes(data))
        if micros in (2**63 - 1, -(2**63)):
            return "infinity" if micros > 0 else "-infinity"
        return time_text(micros, zone=self.zone)


class _TimestamptzBinary(_TimestampBinary):
    """Binary ``timestamptz`` (UTC, as the pool's sessions run)."""

    zone = "+00"


_KINDS: dict[str, dict[Format, type[_Tolerant]]] = {
    "date": {Format.TEXT: _TextLoader, Format.BINARY: _DateBinary},
    "timestamp": {Format.TEXT: _TextLoader, Format.BINARY: _TimestampBinary},
    "timestamptz": {Format.TEXT: _TextLoader, Format.BINARY: _TimestamptzBinary},
}


def _loaders() -> list[tuple[int, type[_Tolerant]]]:
    """(oid, loader class) for each type and format, around psycopg's own loaders."""
    out = []
    for name, formats in _KINDS.items():
        info = psycopg.adapters.types[name]
        for fmt, base in formats.items():
            inner = psycopg.adapters.get_loader(info.oid, fmt)
            if inner is None:
                continue
            cls = type(f"Tolerant_{name}_{fmt.name.lower()}", (base,), {"inner": inner})
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
