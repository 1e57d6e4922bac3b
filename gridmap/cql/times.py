"""Dates and timestamps compared the same way on every backend.

The store keeps a date as ``YYYY-MM-DD`` and a timestamp as naive local (Beijing) time,
``YYYY-MM-DDTHH:MM:SS`` with ``.ffffff`` only when the fraction is not zero (Python's
``isoformat``): one text per instant, whose code point order is time order. A value
compared with a date or timestamp property is read by these rules:

* Instants are compared as instants (OGC API Features, CQL2): ISO 8601 text with an
  offset (``Z``, ``+08:00``) is that instant in local time, text without one is local
  time already; ``2026-11-01T08:00:00+08:00``, ``2026-11-01T00:00:00Z`` and
  ``2026-11-01T08:00:00.000+08:00`` are one instant.
* CQL2 compares values of one type (/req/basic-cql2/binary-comparison-predicate D) and
  lets a server either refuse operands of different types or cast them
  (/per/basic-cql2/type-casts). Text is cast to the property's type when it is ISO 8601
  text, and refused (a 400) when it is not: ``'2027'``, ``'x'`` or a number are no date,
  never compared as text or as a number (SQLite would compare ``'2027'`` as the number
  2027 against a DATE column, PostgreSQL as text).
* The value takes the type of the property: a timestamp compared with a date property
  stands for its local day, a date compared with a timestamp property for its local
  midnight (as SQL casts a date); a date property compared with a timestamp property is
  its midnight too.

Values another program stored (read by :func:`stored`) follow the same rules, so that a
GeoPackage answers as PostgreSQL would: text with an offset is its local time, text that
is no date is unknown (NULL), and ``infinity``, ``-infinity`` and years outside 1–9999
(which a PostgreSQL column can hold) compare above or below every date.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from gridmap.layers import LOCAL_TZ

MAX_TEXT = 40
"""Longest text read as a date or timestamp."""
TIME_TYPES = ("date", "datetime")
INFINITY = "infinity"
MINUS_INFINITY = "-infinity"
"""How ``stored`` gives values above / below every date (as text they sort after / before
every ISO date, as PostgreSQL's infinities do)."""

# A year before 1 (ISO's signed years, PostgreSQL's "BC") or after 9999, as PostgreSQL and
# gridmap.store.pg_types write such values as text.
_BEYOND = re.compile(
    r"([+-]?)(\d{4,})-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)?"
    r"(?:[+-]\d\d(?::?\d\d){0,2})?( BC)?"
)


def parse(value: Any) -> dt.date | dt.datetime:
    """ISO 8601 text as a date, or as a naive local datetime; ValueError if it is neither."""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        msg = "dates and timestamps must be ISO 8601 text"
        raise ValueError(msg)
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        msg = f"{value!r} is not an ISO 8601 date (YYYY-MM-DD) or timestamp"
        raise ValueError(msg) from None
    if t.tzinfo is None:
        return t
    try:
        return t.astimezone(LOCAL_TZ).replace(tzinfo=None)
    except OverflowError:  # 0001-01-01T00:00-14:00 and the like
        msg = f"{value!r} lies outside the years 1–9999 in Beijing time"
        raise ValueError(msg) from None


def cast(value: Any, to: str) -> str:
    """``value`` (ISO 8601 text) as the stored text of a ``to`` ('date' or 'datetime');
    ValueError if it is no date or timestamp."""
    v = parse(value)
    if to == "date":
        return (v.date() if isinstance(v, dt.datetime) else v).isoformat()
    if not isinstance(v, dt.datetime):
        v = dt.datetime.combine(v, dt.time())
    return v.isoformat()


def natural(value: Any) -> str:
    """``value`` (ISO 8601 text) as stored text of its own type: a date stays a date."""
    return parse(value).isoformat()


def beyond(value: str) -> str | None:
    """INFINITY or MINUS_INFINITY for an infinity, or a date PostgreSQL can hold beyond
    the years 1–9999 written as text; else None."""
    low = value.strip().lower()
    if low in (INFINITY, "+" + INFINITY):
        return INFINITY
    if low == MINUS_INFINITY:
        return MINUS_INFINITY
    m = _BEYOND.fullmatch(value.strip())
    if m is None:
        return None
    sign, year, bc = m.group(1), int(m.group(2)), m.group(3)
    if sign == "-" or bc or year == 0:
        return MINUS_INFINITY
    return INFINITY if year > 9999 else None


def stored(value: Any, to: str) -> str | None:
    """A stored value of a ``to`` column as the text it compares as: the stored text of
    its date or instant, INFINITY / MINUS_INFINITY beyond the years 1–9999, or None when
    it is no date (another program's text, or a number SQLite made of ``'2027'``)."""
    if not isinstance(value, str):
        return None
    far = beyond(value)
    if far is not None:
        return far
    try:
        return cast(value, to)
    except ValueError:
        return None
