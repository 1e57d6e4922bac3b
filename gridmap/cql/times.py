"""Dates and timestamps compared the same way on every backend.

The store keeps a date as ``YYYY-MM-DD`` and a timestamp as naive local (Beijing) time,
``YYYY-MM-DDTHH:MM:SS`` with ``.ffffff`` only when the fraction is not zero (Python's
``isoformat``): one text per instant, whose code point order is time order. A value
compared with a date or timestamp property is read by these rules:

* Instants are compared as instants (OGC API Features, CQL2): ISO 8601 text with an
  offset (``Z``, ``+08:00``) is that instant in local time, text without one is local
  time already; ``2026-11-01T08:00:00+08:00``, ``2026-11-01T00:00:00Z`` and
  ``2026-11-01T08:00:00.000+08:00`` are one instant.
* Local time is Beijing time wherever a time has no offset: in a property's value, in
  plain text compared with a property, in ``TIMESTAMP('…')`` and ``INTERVAL('…', '…')``
  and in the ``datetime`` parameter. (CQL2's grammar wants a ``Z`` in a TIMESTAMP; the
  ``cql2`` parser accepts one without and reads it as UTC, so :func:`local_instants`
  gives such literals their Beijing offset before it parses them.)
* The time of day is read as PostgreSQL reads it: ``24:00:00`` is the next midnight, a
  leap second ``:60`` the next minute, and a fraction of more than six digits is rounded
  to microseconds (half to even), not truncated.
* CQL2 compares values of one type (/req/basic-cql2/binary-comparison-predicate D) and
  lets a server either refuse operands of different types or cast them
  (/per/basic-cql2/type-casts). Text is cast to the property's type when it is ISO 8601
  text, and refused (a 400) when it is not: ``'2027'``, ``'x'``, ``'2021-02-30'`` or a
  number are no date, never compared as text or as a number (SQLite would compare
  ``'2027'`` as the number 2027 against a DATE column, PostgreSQL as text).
* The value takes the type of the property: a timestamp compared with a date property
  stands for its local day, a date compared with a timestamp property for its local
  midnight (as SQL casts a date); a date property compared with a timestamp property is
  its midnight too.

Values another program stored (read by :func:`stored`) follow the same rules, so that a
GeoPackage answers as PostgreSQL would: text with an offset is its local time; text that
is no date, such as a day the calendar does not have (``2021-02-30``, which a PostgreSQL
column cannot hold), is unknown (NULL: it matches no comparison and sorts with the
nulls, and ``gridmap check`` names it); ``infinity``, ``-infinity``, days before the year
1 (``0044-03-15 BC``) and after 9999 (``10000-01-01``), which a PostgreSQL column can
hold, compare below or above every date and sort among themselves as PostgreSQL sorts
them (:func:`stored` gives them order keys, not dates).
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
_AFTER, _BEFORE = ":", "."
"""Prefixes of the order keys of days after 9999 and before the year 1: between the ISO
dates and the infinities (``-infinity`` < ``.…`` < ``0001-…`` < ``9999-…`` < ``:…`` <
``infinity`` in code point order)."""
_FIRST_YEAR, _LAST_YEAR = -4712, 5_874_897
"""The astronomical years of PostgreSQL's first (4713 BC) and last date; text naming a
day outside them is no date (no PostgreSQL column can hold it)."""
_DAY_US = 86_400_000_000

# The time of day after the date: hours, minutes, seconds and fraction, extended
# (08:00:00.5) or basic (080000,5) format.
_CLOCK = re.compile(r"([^Tt ]+[Tt ])(\d\d)(:?)(\d\d)(?:\3(\d\d)(?:[.,](\d+))?)?")
# A day outside the years 1–9999 as PostgreSQL writes it (and another program may have
# copied it): a year of five digits or more, or " BC" at the end.
_FAR = re.compile(r"(\d{4,})(-\d\d-\d\d(?:[Tt ][0-9:.,+-]*[Zz]?)?)( BC)?", re.IGNORECASE)


def parse(value: Any) -> dt.date | dt.datetime:
    """ISO 8601 text as a date, or as a naive local datetime; ValueError if it is neither
    (or lies outside the years 1–9999 in Beijing time)."""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        msg = "dates and timestamps must be ISO 8601 text"
        raise ValueError(msg)
    text = value.strip()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        pass
    try:
        t = _instant(text)
    except OverflowError:  # 9999-12-31T24:00:00, 0001-01-01T00:00-14:00 and the like
        msg = f"{value!r} lies outside the years 1–9999 in Beijing time"
        raise ValueError(msg) from None
    except ValueError:
        msg = f"{value!r} is not an ISO 8601 date (YYYY-MM-DD) or timestamp"
        raise ValueError(msg) from None
    return t


def _instant(text: str) -> dt.datetime:
    """ISO 8601 timestamp text as a naive local datetime (module docstring); ValueError,
    OverflowError."""
    t = _timestamp(text)
    if t.tzinfo is None:
        return t
    return t.astimezone(LOCAL_TZ).replace(tzinfo=None)


def _timestamp(text: str) -> dt.datetime:
    """ISO 8601 timestamp text as a datetime (aware when it has an offset), the time of
    day read as PostgreSQL reads it; ValueError, OverflowError."""
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    m = _CLOCK.match(text)
    if m is None:  # no minutes to read (2026-11-01T08): as Python reads it
        return dt.datetime.fromisoformat(text)
    head, hh, sep, mm, ss, frac = m.groups()
    midnight = head + "00" + sep + "00" + ("" if ss is None else sep + "00")
    t = dt.datetime.fromisoformat(midnight + text[m.end() :])
    return t + dt.timedelta(microseconds=_clock_us(int(hh), int(mm), int(ss or 0), frac))


def _clock_us(hours: int, minutes: int, seconds: int, frac: str | None) -> int:
    """Microseconds since midnight of a time of day, as PostgreSQL reads it: the fraction
    rounded half to even (``rint(strtod(…) * 1e6)``), 24:00:00 and a second 60 allowed
    while the time is no later than the next midnight; ValueError otherwise."""
    us = round(float("0." + frac) * 1_000_000) if frac else 0
    total = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + us
    if minutes > 59 or seconds > 60 or total > _DAY_US or (hours == 24 and total != _DAY_US):
        msg = "no such time of day"
        raise ValueError(msg)
    return total


def cast(value: Any, to: str) -> str:
    """``value`` (ISO 8601 text) as the stored text of a ``to`` ('date' or 'datetime');
    ValueError if it is no date or timestamp."""
    return _as(parse(value), to)


def _as(v: dt.date | dt.datetime, to: str) -> str:
    if to == "date":
        return (v.date() if isinstance(v, dt.datetime) else v).isoformat()
    if not isinstance(v, dt.datetime):
        v = dt.datetime.combine(v, dt.time())
    return v.isoformat()


def natural(value: Any) -> str:
    """``value`` (ISO 8601 text) as stored text of its own type: a date stays a date."""
    return parse(value).isoformat()


def beyond(value: str) -> str | None:
    """INFINITY or MINUS_INFINITY for an infinity, or a day PostgreSQL can hold after or
    before the years 1–9999 (in Beijing time); else None."""
    key = stored(value, "datetime")
    if key is None or key[:1].isdigit():
        return None
    return MINUS_INFINITY if key[:1] in ("-", _BEFORE) else INFINITY


def stored(value: Any, to: str) -> str | None:
    """A stored value of a ``to`` column as the text it compares as: the stored text of
    its date or instant; an order key of an infinity or a day PostgreSQL can hold beyond
    the years 1–9999 (below or above every date, in PostgreSQL's order); None when it is
    no date (another program's text, a day the calendar lacks, a number SQLite made of
    ``'2027'``)."""
    if not isinstance(value, str):
        return None
    try:
        return cast(value, to)
    except ValueError:
        return _far_key(value, to)


def _far_key(value: str, to: str) -> str | None:
    """The order key of an infinity or of a day outside the years 1–9999 (module
    docstring); None for anything else."""
    text = value.strip()
    low = text.lower()
    if low in (INFINITY, "+" + INFINITY):
        return INFINITY
    if low == MINUS_INFINITY:
        return MINUS_INFINITY
    m = _FAR.fullmatch(text) if len(text) <= MAX_TEXT else None
    if m is None or int(m.group(1)) == 0:  # PostgreSQL has no year 0 (nor 0 BC)
        return None
    year = 1 - int(m.group(1)) if m.group(3) else int(m.group(1))  # astronomical
    # the day and time read in a stand-in year of the same length (and, before 1901, of
    # the same local mean time), then moved to the real year
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    stand_in = (1896 if leap else 1897) if year < 1901 else (2000 if leap else 2001)
    try:
        t = parse(f"{stand_in}{m.group(2)}")
    except ValueError:  # no such day or time
        return None
    year += t.year - stand_in  # an offset may move it to the next or previous year
    if 1 <= year <= 9999:  # 10000-01-01T00:00:00+14:00 is a day of 9999
        return _as(t.replace(year=year), to)
    if not _FIRST_YEAR <= year <= _LAST_YEAR:
        return None
    rest = _as(t, to)[4:]
    if year > 9999:
        return f"{_AFTER}{year:07d}{rest}"
    return f"{_BEFORE}{year + 10_000_000:08d}{rest}"


# ------------------------------------------------------------------ CQL2 TIMESTAMP literals

# CQL2 text: string literals ('' inside), quoted identifiers, the openings of the
# functions whose text arguments are instants, and closing parentheses.
_CQL_TOKENS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\b(TIMESTAMP|INTERVAL)\s*\(|\)", re.IGNORECASE
)


def utc_of_local(text: str) -> str | None:
    """An ISO 8601 timestamp without an offset (Beijing time) as the same instant in UTC
    with ``Z``; None for anything else (a date, an offset, no timestamp)."""
    text = text.strip()
    if len(text) > MAX_TEXT:
        return None
    try:
        dt.date.fromisoformat(text)
        return None  # a date
    except ValueError:
        pass
    try:
        t = _timestamp(text)
        if t.tzinfo is not None:
            return None
        utc = t.replace(tzinfo=LOCAL_TZ).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None
    return utc.replace(tzinfo=None).isoformat() + "Z"


def local_instants(text: str) -> str:
    """CQL2 text with each ``TIMESTAMP('…')`` and ``INTERVAL('…', '…')`` instant that has
    no offset given as the UTC instant of that Beijing time, so that the ``cql2`` parser
    (which reads such a literal as UTC) keeps the instant the text names."""
    out: list[str] = []
    last = pending = 0
    for m in _CQL_TOKENS.finditer(text):
        token = m.group(0)
        if m.group(1):
            pending = 1 if m.group(1).upper() == "TIMESTAMP" else 2
        elif token == ")":
            pending = 0
        elif token[0] == "'" and pending:
            pending -= 1
            utc = utc_of_local(token[1:-1].replace("''", "'"))
            if utc is not None:
                out += [text[last : m.start()], f"'{utc}'"]
                last = m.end()
    return "".join(out) + text[last:]


def local_instants_json(node: Any) -> Any:
    """A CQL2-JSON tree with each ``{"timestamp": …}`` and ``{"interval": […]}`` instant
    that has no offset given as the UTC instant of that Beijing time (as
    :func:`local_instants`)."""
    if isinstance(node, list):
        return [local_instants_json(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, v in node.items():
        if key == "timestamp" and isinstance(v, str):
            out[key] = utc_of_local(v) or v
        elif key == "interval" and isinstance(v, list):
            out[key] = [(utc_of_local(e) or e) if isinstance(e, str) else e for e in v]
        else:
            out[key] = local_instants_json(v)
    return out
