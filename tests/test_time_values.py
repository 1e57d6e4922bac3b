"""Dates and timestamps, the same on both backends and checked against a brute force over
the rows as the database holds them (read with raw SQL, not through gridmap):

* text compared with a date or timestamp is cast to it, or refused (a 400) when it is no
  ISO 8601 date: SQLite compared '2027' with a DATE column as a number;
* instants are compared as instants: an offset is converted, fractions of a second are
  the same however written, a date stands for its midnight against a timestamp;
* values another program stored (PostgreSQL's infinities, BC dates and years beyond 9999,
  a GeoPackage column's text that is no date) never break a read, compare as PostgreSQL
  orders them (or are unknown when no date at all), and ``gridmap check`` names them;
* a GeoPackage column's text in any form is what PostgreSQL reads it as (the judge: its
  own parsing), a day the calendar lacks is no date; only canonical text skips reading;
* a time without an offset is Beijing time everywhere, TIMESTAMP('…') included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import shapely
from fastapi.testclient import TestClient

from gridmap.cql import FilterError, check_filter, datetime_filter, tree
from gridmap.integrity import check_store
from gridmap.layers import get_layer
from gridmap.store import FeatureStore, Query, create_store, open_store, pg_types
from tests.conftest import BACKEND, raw_sql
from tests.test_contract import _grid, _two_stores

BEIJING = ZoneInfo("Asia/Shanghai")
P = shapely.Point
B = shapely.box
IS_PG = BACKEND == "postgis"


def _is_pg(target: Path | str) -> bool:
    return str(target).startswith("postgresql://")


def _stored(target: Path | str, table: str, column: str) -> dict[int, Any]:
    """fid → the column's value as the database holds it (PostgreSQL: its own text)."""
    cast = "::text" if _is_pg(target) else ""
    rows = raw_sql(target, f'SELECT fid, "{column}"{cast} FROM "{table}"')
    return {int(fid): v for fid, v in rows}


def _with_t(text: str) -> str:
    """PostgreSQL's text of a date or timestamp with T between date and time."""
    return text.replace(" ", "T", 1) if ":" in text else text


def _local(text: str) -> dt.datetime:
    """An ISO 8601 instant as naive Beijing time (as the store keeps it), by zoneinfo."""
    t = dt.datetime.fromisoformat(text)
    return t.astimezone(BEIJING).replace(tzinfo=None) if t.tzinfo else t


def _matching(store: FeatureStore, layer: str, text: str) -> list[int]:
    """Ids the store selects with a CQL2 filter."""
    f = check_filter(text, get_layer(layer))
    return store.query_ids(layer, Query(filters=[f]))[0].tolist()


def _brute(
    stored: dict[int, Any], parse: Callable[[Any], Any], keep: Callable[[Any], bool]
) -> list[int]:
    """Ids whose stored value, parsed, passes ``keep`` (a null never does)."""
    return sorted(fid for fid, v in stored.items() if v is not None and keep(parse(v)))


# ----------------------------------------------------------------------------- text as a date

NOT_DATES = [
    "installed_at > '2027'",
    "'2027' < installed_at",
    "installed_at = '2027'",
    "installed_at IN ('2024-01-01', '2027')",
    "installed_at BETWEEN '2026' AND '2028'",
    "installed_at <> 'x'",
    "installed_at = '2027-13-01'",
    "installed_at = name",
    "installed_at = 2027",
]


@pytest.mark.parametrize("text", NOT_DATES)
def test_text_that_is_no_date_is_refused_not_compared(text: str) -> None:
    """Review: '2027' against a DATE column was the number 2027 on GeoPackage (less than
    every date stored as text) and text on PostGIS; CQL2 lets a server refuse operands of
    different types (/per/basic-cql2/type-casts): it is a 400 on both."""
    with pytest.raises(FilterError):
        check_filter(text, get_layer("cameras"))


def test_text_that_is_no_date_is_a_400_over_the_api(client: TestClient) -> None:
    for text in ("installed_at > '2027'", "installed_at IN ('2027')"):
        r = client.get("/collections/cameras/items", params={"filter": text})
        assert r.status_code == 400, (text, r.text[:200])
    for value in ("2027", "x"):
        r = client.get("/collections/cameras/items", params={"installed_at": value})
        assert r.status_code == 400, (value, r.text[:200])
    r = client.get("/collections/visits/items", params={"datetime": "2027"})
    assert r.status_code == 400


D27, ONE = dt.date(2027, 1, 1), dt.timedelta(days=1)
DAYS = ["2024-01-01", "2026-12-31", "2027-01-01", "2027-01-02", "2028-06-30", None]
DATE_FILTERS: list[tuple[str, Callable[[dt.date], bool]]] = [
    ("installed_at > '20270101'", lambda d: d > dt.date(2027, 1, 1)),
    ("installed_at >= '2027-01-01'", lambda d: d >= dt.date(2027, 1, 1)),
    ("'2027-01-01' < installed_at", lambda d: d > dt.date(2027, 1, 1)),
    ("installed_at <> '2027-01-01'", lambda d: d != dt.date(2027, 1, 1)),
    ("installed_at IN ('2027-01-01', '20240101')", lambda d: d.year in (2024, 2027) and d.day == 1),
    ("installed_at BETWEEN '2026-12-31' AND '2027-01-01'", lambda d: d in (D27, D27 - ONE)),
    # a timestamp compared with a date is its day in Beijing time
    ("installed_at = TIMESTAMP('2026-12-31T20:00:00Z')", lambda d: d == dt.date(2027, 1, 1)),
    ("installed_at < '2027-01-01T23:30:00+08:00'", lambda d: d < dt.date(2027, 1, 1)),
    ("installed_at = '2026-12-31T23:30:00-01:00'", lambda d: d == dt.date(2027, 1, 1)),
    ("T_AFTER(installed_at, TIMESTAMP('2026-12-31T20:00:00Z'))", lambda d: d > dt.date(2027, 1, 1)),
    ("installed_at = DATE('2027-01-02') OR installed_at < DATE('2025-01-01')",
     lambda d: d.year == 2024 or d == D27 + ONE),
]  # fmt: skip


def test_text_compared_with_a_date_is_that_date(store: FeatureStore) -> None:
    """ISO text in any of its forms is read as the date it names and compared as a date
    (GeoPackage compared '20270101' as a number), the same on both backends."""
    store.insert(
        "cameras",
        [P(113.28 + i * 0.001, 34.80) for i in range(len(DAYS))],
        [{"name": f"c{i}", "installed_at": d} for i, d in enumerate(DAYS)],
    )
    stored = _stored(store.url, "cameras", "installed_at")
    for text, keep in DATE_FILTERS:
        expected = _brute(stored, dt.date.fromisoformat, keep)
        assert 0 < len(expected) < len(DAYS) - 1, text  # the filter tells right from wrong
        assert _matching(store, "cameras", text) == expected, text


# ----------------------------------------------------------------------------- instants

LOCAL_TIMES = [
    "2026-11-01T00:00:00", "2026-11-01T07:59:59.999999", "2026-11-01T08:00:00",
    "2026-11-01T08:00:00.500000", "2026-11-01T08:00:01", "2026-11-02T00:00:00", None,
]  # fmt: skip
INSTANT_FILTERS = [
    # (filter, the instant it names (None: see the predicate), predicate on stored local time)
    ("last_visit_at = TIMESTAMP('2026-11-01T00:00:00Z')", "2026-11-01T00:00:00Z", "="),
    ("last_visit_at = '2026-11-01T08:00:00+08:00'", "2026-11-01T08:00:00+08:00", "="),
    ("last_visit_at = '2026-11-01T08:00:00.000+08:00'", "2026-11-01T08:00:00.000+08:00", "="),
    ("last_visit_at = '2026-11-01T00:00:00.5Z'", "2026-11-01T00:00:00.5Z", "="),
    ("last_visit_at = '2026-11-01T08:00:00.50'", "2026-11-01T08:00:00.50", "="),
    ("last_visit_at >= '2026-11-01T08:00:00.500'", "2026-11-01T08:00:00.500", ">="),
    ("last_visit_at < TIMESTAMP('2026-11-01T00:00:00Z')", "2026-11-01T00:00:00Z", "<"),
    ("last_visit_at <> '2026-10-31T16:00:00Z'", "2026-10-31T16:00:00Z", "<>"),
    ("last_visit_at > '2026-11-01'", "2026-11-01T00:00:00", ">"),  # a date: its midnight
    ("last_visit_at = DATE('2026-11-02')", "2026-11-02T00:00:00", "="),
    ("T_AFTER(last_visit_at, DATE('2026-11-01'))", "2026-11-01T00:00:00", ">"),
    ("T_EQUALS(last_visit_at, TIMESTAMP('2026-11-01T00:00:00.5Z'))", "2026-11-01T00:00:00.5Z", "="),
    ("T_BEFORE(last_visit_at, TIMESTAMP('2026-11-01T08:00:00.5+08:00'))",
     "2026-11-01T00:00:00.5Z", "<"),
]  # fmt: skip
_OPS: dict[str, Callable[[dt.datetime, dt.datetime], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _households(store: FeatureStore, times: list[str | None]) -> list[int]:
    """Households (in the contract suite's two grids) with these last visits."""
    assert len(times) <= 30  # all inside the grids
    _grid(store)
    return store.insert(
        "households",
        [P(113.27 + i * 0.001, 34.80) for i in range(len(times))],
        [{"room": str(i), "last_visit_at": v} for i, v in enumerate(times)],
    )


def test_instants_are_compared_as_instants(store: FeatureStore) -> None:
    """Review: an offset was dropped (PostGIS) or compared as text (GeoPackage), and a
    fraction compared as text ('.5' against '.500000'). An instant is one instant however
    written (OGC API Features, CQL2): '…T08:00:00+08:00' is '…T00:00:00Z'."""
    _households(store, LOCAL_TIMES)
    stored = _stored(store.url, "households", "last_visit_at")
    parse = lambda v: dt.datetime.fromisoformat(str(v).replace(" ", "T"))  # noqa: E731
    for text, instant, op in INSTANT_FILTERS:
        at = _local(instant)
        expected = _brute(stored, parse, lambda v, at=at, op=op: _OPS[op](v, at))
        assert 0 < len(expected) < len(LOCAL_TIMES) - 1 or op == "=", text
        assert _matching(store, "households", text) == expected, text
    # ordering: by instant, nulls first ascending and last descending, ties by id
    asc = store.query("households", Query(order_by=["last_visit_at"])).ids.tolist()
    key = {fid: (v is not None, v and parse(v), fid) for fid, v in stored.items()}
    assert asc == sorted(stored, key=key.__getitem__)
    desc = store.query("households", Query(order_by=["-last_visit_at"])).ids.tolist()
    assert desc == [i for i in reversed(asc) if stored[i] is not None] + [
        i for i in asc if stored[i] is None
    ]
    # the datetime parameter: an instant with an offset, and a day
    hh = get_layer("households")
    for value, lo, hi in (
        ("2026-11-01T00:00:00Z", "2026-11-01T08:00:00", "2026-11-01T08:00:00"),
        ("2026-11-01T00:00:00.5Z/..", "2026-11-01T08:00:00.5", "9999-12-31T00:00:00"),
        ("2026-11-01", "2026-11-01T00:00:00", "2026-11-01T23:59:59.999999"),
    ):
        q = Query(filters=[datetime_filter(value, hh)])
        expected = _brute(stored, parse, lambda v, lo=lo, hi=hi: _local(lo) <= v <= _local(hi))
        assert store.query_ids("households", q)[0].tolist() == expected, value


def test_a_property_equal_to_an_instant_is_compared_as_one(store: FeatureStore) -> None:
    """Review: ``?last_visit_at=…Z`` matched the UTC wall time on PostGIS (the offset
    dropped) and nothing on GeoPackage; '20240101' was a number on GeoPackage. (Needs the
    core to hand date and time equalities to the filter renderers: gridmap.cql.equal_time.)"""
    _households(store, LOCAL_TIMES)
    stored = _stored(store.url, "households", "last_visit_at")
    parse = lambda v: dt.datetime.fromisoformat(str(v).replace(" ", "T"))  # noqa: E731
    for value in (
        "2026-11-01T00:00:00Z",
        "2026-11-01T08:00:00+08:00",
        "2026-11-01T08:00:00.000",
        "2026-11-01T00:00:00.5Z",
        "2026-11-02",
    ):
        at = _local(value if len(value) > 10 else value + "T00:00:00")
        expected = _brute(stored, parse, lambda v, at=at: v == at)
        assert len(expected) == 1, value
        got = store.query_ids("households", Query(equals={"last_visit_at": value}))[0]
        assert got.tolist() == expected, value
    store.insert("cameras", [P(113.28, 34.80)], [{"name": "c", "installed_at": "2024-01-01"}])
    assert store.count("cameras", Query(equals={"installed_at": "20240101"})) == 1


# ----------------------------------------------------------------------------- across backends


@pytest.mark.postgis
def test_both_backends_answer_time_filters_alike(request: pytest.FixtureRequest) -> None:
    """The sample's own times, written in other forms (an offset, a fraction, a date, the
    basic format), select the same features on both backends, and those a brute force
    over the GeoPackage's rows selects."""
    gpkg, pg = _two_stores(request)
    try:
        visits = _stored(gpkg.url, "visits", "visited_at")
        some = sorted(v for v in visits.values() if v)[len(visits) // 2]
        utc = dt.datetime.fromisoformat(some).replace(tzinfo=BEIJING).astimezone(dt.UTC)
        z = utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
        day = some[:10]
        cams = _stored(gpkg.url, "cameras", "installed_at")
        cam_day = sorted(v for v in cams.values() if v)[len(cams) // 3]
        basic = cam_day.replace("-", "")  # ISO 8601's basic format: 20240101
        cases = [
            ("visits", f"visited_at = '{z}'", visits, lambda v: v == some),
            ("visits", f"visited_at >= TIMESTAMP('{z}')", visits, lambda v: v >= some),
            ("visits", f"visited_at < '{day}'", visits, lambda v: v < day),
            ("visits", f"visited_at BETWEEN '{day}' AND '{z}'", visits, lambda v: day <= v <= some),
            ("visits", f"visited_at IN ('{z}', '{day}')", visits,
             lambda v: v in (some, day + "T00:00:00")),
            ("cameras", f"installed_at <= '{basic}'", cams, lambda v: v <= cam_day),
            ("cameras", f"installed_at > '{cam_day}T23:00:00+08:00'", cams, lambda v: v > cam_day),
        ]  # fmt: skip
        for layer, text, stored, keep in cases:
            expected = _brute(stored, str, keep)
            assert expected, text
            assert _matching(gpkg, layer, text) == expected, text
            assert _matching(pg, layer, text) == expected, text
        for layer, column in (("visits", "visited_at"), ("cameras", "installed_at")):
            q = Query(order_by=[column, "-id"], limit=50, offset=20)
            assert gpkg.query_ids(layer, q)[0].tolist() == pg.query_ids(layer, q)[0].tolist()
        assert gpkg.time_extent("visits") == pg.time_extent("visits")
    finally:
        gpkg.close()
        pg.close()


# ----------------------------------------------------------------------------- another program

BEYOND_PG = [
    # table, column, value written with psql, its text as read
    ("visits", "visited_at", "infinity", "infinity"),
    ("visits", "visited_at", "-infinity", "-infinity"),
    ("visits", "visited_at", "294276-01-01 00:00:00", "294276-01-01T00:00:00"),
    ("visits", "visited_at", "0044-03-15 12:00:00.25 BC", "0044-03-15T12:00:00.25 BC"),
    ("households", "last_visit_at", "-infinity", "-infinity"),
    ("cameras", "installed_at", "infinity", "infinity"),
    ("cameras", "installed_at", "4713-01-01 BC", "4713-01-01 BC"),
    ("old_neighbourhoods", "planned_start", "5874897-12-31", "5874897-12-31"),
]
BEYOND_GPKG = [
    # table, column, value written by SQLite, its value as read
    ("visits", "visited_at", "infinity", "infinity"),
    ("visits", "visited_at", "not a time", "not a time"),
    ("households", "last_visit_at", "-infinity", "-infinity"),
    ("cameras", "installed_at", "garbage", "garbage"),
    ("cameras", "installed_at", "2027", 2027),  # numeric affinity: stored as a number
    ("old_neighbourhoods", "planned_start", "infinity", "infinity"),
]
READS = [
    "/collections",
    "/collections/visits",
    "/collections/cameras/items?limit=1000",
    "/collections/visits/items?sortby=visited_at&limit=20",
    "/collections/visits/items?sortby=-visited_at&limit=20",
    "/collections/cameras/items?sortby=installed_at&limit=20",
    "/collections/visits/items?f=csv",
    "/collections/cameras/items?f=csv",
    "/collections/visits/items?datetime=2026-01-01/..&limit=5",
    "/collections/visits/items?filter=visited_at > TIMESTAMP('2026-01-01T00:00:00Z')&limit=5",
    "/nearest?collection=cameras&lon=113.29&lat=34.81&k=100",
    "/nearest?collection=visits&lon=113.29&lat=34.81&k=100",
    "/map",
    "/map?lang=en&measure=visit_coverage",
    "/map/grids/1",
    "/stats/grids",
]


def _write_beyond(target: Path | str) -> dict[tuple[str, str, int], Any]:
    """Write the values of BEYOND_PG / BEYOND_GPKG into rows 2, 3, … of each table, as
    another client would; (table, column, fid) → the value a read should give."""
    written: dict[tuple[str, str, int], Any] = {}
    for table, column, value, read in BEYOND_PG if _is_pg(target) else BEYOND_GPKG:
        fid = 2 + sum(1 for t, _, _ in written if t == table)
        n = raw_sql(target, f'SELECT count(*) FROM "{table}" WHERE fid = ?', fid)[0][0]
        assert n == 1, (table, fid)
        if _is_pg(target):  # as in a store made before a CHECK kept such values out
            ck = f"ck_{table}_{column}_calendar"
            raw_sql(target, f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{ck}"')
        raw_sql(target, f'UPDATE "{table}" SET "{column}" = ? WHERE fid = ?', value, fid)
        written[(table, column, fid)] = read
    return written


def test_values_another_program_stored_never_break_a_read(
    edit_path: Path | str, edit_client: TestClient
) -> None:
    """Review: PostgreSQL's infinities, BC dates and years past 9999 (psql, QGIS) made
    every read of such a row fail (400 for /collections, maps, CSV, nearest, sorted pages)
    and `gridmap check` crash; a GeoPackage column's text that is no date compared as
    text. Now every read answers, a value is read as the database's own text, comparisons
    order the infinities as PostgreSQL does (no date at all is unknown), and `gridmap
    check` names each such row."""
    written = _write_beyond(edit_path)
    if _is_pg(edit_path):  # PostgreSQL's own text of what it holds (an independent reading)
        for table, column, fid in written:
            sql = f'SELECT "{column}"::text FROM "{table}" WHERE fid = ?'
            (text,) = raw_sql(edit_path, sql, fid)[0]
            assert written[(table, column, fid)] == _with_t(text)
    for url in READS:
        r = edit_client.get(url)
        assert r.status_code == 200, (url, r.text[:300])
    store = open_store(edit_path)
    try:
        for (table, column, fid), read in written.items():
            assert store.get(table, fid).properties[column] == read, (table, fid)
        assert store.time_extent("visits") is not None
        # comparisons: the infinities (and years past 9999) above every date, BC dates and
        # -infinity below, anything else unknown; as PostgreSQL orders its own values
        visits = _stored(edit_path, "visits", "visited_at")
        later = _matching(store, "visits", "visited_at > TIMESTAMP('2000-01-01T00:00:00Z')")
        earlier = _matching(store, "visits", "visited_at < TIMESTAMP('2000-01-01T00:00:00Z')")
        up = {"infinity", "294276-01-01 00:00:00"}
        down = {"-infinity", "0044-03-15 12:00:00.25 BC"}
        assert later == sorted(f for f, v in visits.items() if v and (v in up or v[:1] == "2"))
        assert earlier == sorted(f for f, v in visits.items() if v in down)
        cams = _stored(edit_path, "cameras", "installed_at")
        on_or_after = _matching(store, "cameras", "installed_at >= '2000-01-01'")
        assert on_or_after == sorted(
            f for f, v in cams.items() if isinstance(v, str) and (v == "infinity" or v[:1] == "2")
        )
        problems = "\n".join(check_store(store))
    finally:
        store.close()
    for table, column, fid in written:
        assert f"{table} {fid}: {column} holds" in problems, (table, fid, problems[:2000])


@pytest.mark.gpkg_only
def test_times_another_program_wrote_compare_and_sort_as_times(store: FeatureStore) -> None:
    """A GeoPackage column holds whatever text another program wrote: each ISO form of an
    instant compares and sorts as that instant (PostgreSQL's timestamp column would have
    read it as one), text that is no time as unknown, sorted with the nulls. (Sorting
    needs the GeoPackage store to sort times by sqlite_filter.time_column.)"""
    forms = [
        "2026-11-01 09:00:00", "2026-11-01T08:30:00.000", "2026-11-01T10:00:00+08:00",
        "2026-11-01T01:00:00Z", "2026-11-01T08:45:00", "garbage", None, "2026-11-01T08:30",
    ]  # fmt: skip
    ids = _households(store, [None] * len(forms))
    for fid, v in zip(ids, forms, strict=True):
        raw_sql(store.url, "UPDATE households SET last_visit_at = ? WHERE fid = ?", v, fid)
    instant = {
        f: None if v in (None, "garbage") else _local(str(v))
        for f, v in zip(ids, forms, strict=True)
    }
    nine = _matching(store, "households", "last_visit_at = TIMESTAMP('2026-11-01T01:00:00Z')")
    assert nine == sorted(f for f, t in instant.items() if t == dt.datetime(2026, 11, 1, 9))
    early = _matching(store, "households", "last_visit_at < '2026-11-01T08:40:00'")
    assert early == sorted(
        f for f, t in instant.items() if t and t < dt.datetime(2026, 11, 1, 8, 40)
    )
    asc = store.query("households", Query(order_by=["last_visit_at"])).ids.tolist()
    key = {f: (t is not None, t or dt.datetime.min, f) for f, t in instant.items()}
    assert asc == sorted(ids, key=key.__getitem__)


def test_the_time_extent_holds_dates_only(edit_path: Path | str) -> None:
    """The temporal extent (/collections) spans the dates a layer holds: what another
    program stored that is no date in the years 1–9999 is left out on both backends (it
    was the largest text on GeoPackage, and an error on PostGIS). (Needs the core to
    bound the extent with gridmap.cql.within_calendar.)"""
    _write_beyond(edit_path)
    dates = []
    for v in _stored(edit_path, "visits", "visited_at").values():
        try:
            dates.append(dt.datetime.fromisoformat(str(v)))
        except ValueError:  # no date, or one Python cannot hold
            continue
    store = open_store(edit_path)
    try:
        assert store.time_extent("visits") == (min(dates).isoformat(), max(dates).isoformat())
    finally:
        store.close()


@pytest.mark.postgis
def test_dates_python_cannot_hold_load_as_the_database_text(
    request: pytest.FixtureRequest,
) -> None:
    """The loaders give PostgreSQL's own text of a value Python cannot hold (ISO style, T
    between date and time), and Python's date or datetime otherwise."""
    from tests.conftest import require_postgis

    require_postgis()
    url = request.getfixturevalue("pg_cluster").new_database("gm_loaders")
    values = [
        ("timestamp", "infinity"), ("timestamp", "-infinity"), ("date", "infinity"),
        ("date", "-infinity"), ("date", "5874897-12-31"), ("date", "4713-01-01 BC"),
        ("date", "0001-01-01 BC"), ("timestamp", "294276-12-31 23:59:59.999999"),
        ("timestamp", "4713-11-24 00:00:00 BC"), ("timestamp", "0001-12-31 23:59:59.5 BC"),
        ("timestamptz", "0044-03-15 12:00:00.25+00 BC"), ("timestamptz", "infinity"),
        ("timestamp", "2026-11-01 08:00:00.5"), ("date", "2026-11-01"),
    ]  # fmt: skip
    with psycopg.connect(url, autocommit=True, options="-c TimeZone=UTC") as conn:
        pg_types.configure(conn)
        for kind, value in values:
            sql = f"SELECT %s::{kind}, %s::{kind}::text"
            text_row = conn.cursor().execute(sql, (value, value)).fetchone()
            assert text_row is not None
            loaded, own = text_row
            if isinstance(loaded, str):  # beyond Python: PostgreSQL's own text
                assert loaded == _with_t(own), (kind, value)
            else:
                assert loaded == type(loaded).fromisoformat(own), (kind, value)


# ----------------------------------------------------------------------------- text not canonical

# (text another program stored in a timestamp column; why it is there)
ODD_TIMES = [
    ("2021-05-01T08:00:00", "the stored form"),
    ("2021-05-01T08:00:00.000000", "a zero fraction written out: the same instant"),
    ("2021-05-01T08:00:00.000000+08:00", "and an offset"),
    ("2021-05-01T00:00:00.000000Z", "in UTC"),
    ("2021-02-30T09:00:00", "no such day: PostgreSQL refuses it"),
    ("2021-04-31T00:00:00", "no such day"),
    ("2021-02-29T12:00:00", "no leap day in 2021"),
    ("2020-02-29T12:00:00", "a leap day"),
    ("2021-05-01T24:00:00", "the next midnight"),
    ("2021-05-01T08:00:00.1234567", "rounded to microseconds, not truncated"),
    ("2021-05-01T23:59:59.9999999", "rounded to the next midnight"),
    ("2021-05-01T08:00:60", "a leap second: the next minute"),
    ("infinity", "above every day, and above the year 10000"),
    ("10000-01-01T00:00:00", "after 9999"),
    ("9999-12-31T23:00:00-01:00", "after 9999 in Beijing time"),
    ("0044-03-15T12:00:00 BC", "before the year 1"),
    ("-infinity", "below every day, and below 44 BC"),
    ("0000-06-01T00:00:00", "no year 0: PostgreSQL refuses it"),
    ("2021-05-01T08:60:00", "no minute 60"),
    ("2021-05-01T23:59:60.5", "later than the next midnight"),
    (None, "null"),
]
# (CQL2 filter, the same condition in PostgreSQL's SQL over the column it holds)
ODD_FILTERS = [
    ("last_visit_at = '2021-05-01T08:00:00'", "last_visit_at = '2021-05-01 08:00'"),
    ("last_visit_at <> '2021-05-01T08:00:00'", "last_visit_at <> '2021-05-01 08:00'"),
    ("last_visit_at > '2021-02-28'", "last_visit_at > '2021-02-28'"),
    ("last_visit_at < '2021-03-01'", "last_visit_at < '2021-03-01'"),
    ("last_visit_at BETWEEN '2021-01-01' AND '2021-12-31'",
     "last_visit_at BETWEEN '2021-01-01' AND '2021-12-31'"),
    ("last_visit_at = DATE('2021-05-02')", "last_visit_at = '2021-05-02'"),
    ("last_visit_at >= TIMESTAMP('2021-05-01T00:00:00.123457Z')",
     "last_visit_at >= '2021-05-01 08:00:00.123457'"),
    ("last_visit_at IN ('2021-05-01T08:01:00', '2020-02-29T04:00:00Z')",
     "last_visit_at IN ('2021-05-01 08:01', '2020-02-29 12:00')"),
    ("T_AFTER(last_visit_at, TIMESTAMP('9999-12-31T00:00:00Z'))",
     "last_visit_at > '9999-12-31 08:00'"),
    ("T_BEFORE(last_visit_at, DATE('0001-01-02'))", "last_visit_at < '0001-01-02'"),
]  # fmt: skip


def _in_beijing(url: str) -> psycopg.Connection[Any]:
    """A session that reads a time without an offset as Beijing time (gridmap's rule)."""
    return psycopg.connect(url, autocommit=True, options="-c TimeZone=Asia/Shanghai")


def _pg_reading(conn: psycopg.Connection[Any], text: str, kind: str = "timestamp") -> Any:
    """PostgreSQL's own reading of ``text`` as an instant in Beijing time (or as a date),
    as its text; None where it refuses the text."""
    sql = (
        "SELECT (%s::timestamptz AT TIME ZONE 'Asia/Shanghai')::text"
        if kind == "timestamp"
        else "SELECT %s::date::text"
    )
    try:
        row = conn.execute(sql, (text,)).fetchone()
    except psycopg.DataError:  # no such day or time, out of range
        return None
    return row[0] if row else None


@pytest.mark.postgis
def test_text_another_program_stored_is_compared_as_postgresql_reads_it(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Review: the GeoPackage compared text that only looked stored (extra fraction
    zeros, 2021-02-30, 0000-06-01) as text, sorted 10000-01-01 with the infinity by id,
    and ``gridmap check`` missed the days that do not exist. Each text in the GeoPackage
    now answers as PostgreSQL's reading of it in the PostGIS store (what PostgreSQL
    refuses is unknown: a null there); both are checked against PostgreSQL's own SQL.
    (The temporal extent needs the GeoPackage store's min_max to take a time by
    sqlite_filter.time_column, as its sorting does.)"""
    from tests.conftest import SERVICE_AREA, require_postgis

    require_postgis()
    url = request.getfixturevalue("pg_cluster").new_database("gm_odd")
    gpkg = create_store(tmp_path / "odd.gpkg", service_area=SERVICE_AREA)
    pg = create_store(url, service_area=SERVICE_AREA)
    texts = [text for text, _ in ODD_TIMES]
    try:
        ids = _households(gpkg, [None] * len(texts))
        assert _households(pg, [None] * len(texts)) == ids
        raw_sql(
            url, 'ALTER TABLE households DROP CONSTRAINT "ck_households_last_visit_at_calendar"'
        )
        with _in_beijing(url) as conn:
            for fid, text in zip(ids, texts, strict=True):
                raw_sql(
                    gpkg.url, "UPDATE households SET last_visit_at = ? WHERE fid = ?", text, fid
                )
                held = None if text is None else _pg_reading(conn, text)
                conn.execute(
                    "UPDATE households SET last_visit_at = %s::timestamp WHERE fid = %s",
                    (held, fid),
                )
        held_by_pg = _stored(url, "households", "last_visit_at")
        refused = [f for f, text in zip(ids, texts, strict=True) if text and not held_by_pg[f]]
        assert len(refused) == 6  # the texts PostgreSQL cannot hold
        for cql, sql in ODD_FILTERS:
            expected = [
                r[0] for r in raw_sql(url, f"SELECT fid FROM households WHERE {sql} ORDER BY fid")
            ]
            assert 0 < len(expected) < len(ids) - len(refused), cql
            assert _matching(pg, "households", cql) == expected, cql
            assert _matching(gpkg, "households", cql) == expected, cql
        for order, sql in (
            ("last_visit_at", "ASC NULLS FIRST"),
            ("-last_visit_at", "DESC NULLS LAST"),
        ):
            expected = [
                r[0]
                for r in raw_sql(
                    url, f"SELECT fid FROM households ORDER BY last_visit_at {sql}, fid"
                )
            ]
            for store in (pg, gpkg):
                assert (
                    store.query("households", Query(order_by=[order])).ids.tolist() == expected
                ), order
        assert gpkg.time_extent("households") == pg.time_extent("households")
        # `gridmap check` names the days that do not exist (the rest made PostgreSQL's
        # reading of them, or null beyond the years 1–9999, which it names otherwise)
        for fid in set(ids) - set(refused):
            value = _with_t(held_by_pg[fid]) if held_by_pg[fid] else None
            try:  # PostgreSQL's reading, if Python can hold it
                value = value and dt.datetime.fromisoformat(value).isoformat()
            except ValueError:
                value = None
            raw_sql(gpkg.url, "UPDATE households SET last_visit_at = ? WHERE fid = ?", value, fid)
        named = [p for p in check_store(gpkg) if p.startswith("households ") and "last_visit" in p]
        assert named == [
            f"households {f}: last_visit_at holds {t!r}, which is no date and time"
            for f, t in zip(ids, texts, strict=True)
            if f in refused
        ]
    finally:
        gpkg.close()
        pg.close()


def _grid_of_texts() -> list[Any]:
    """Texts around the stored forms: days 00–32 of months 00–13 in leap and common
    years (and the years 0 and 9999), times with hours 24, minutes and seconds 60,
    fractions with zeros; and values that are no text."""
    out: list[Any] = [None, 2027, 2027.5, "2027", "garbage", "infinity", "10000-01-01"]
    for year in ("0000", "0001", "1900", "2000", "2021", "2024", "9999"):
        for month in range(14):
            for day in (0, 1, 28, 29, 30, 31, 32):
                out.append(date := f"{year}-{month:02d}-{day:02d}")
                for clock in ("00:00:00", "23:59:59", "24:00:00", "08:60:00", "08:00:60"):
                    out.append(f"{date}T{clock}")
                    out += [f"{date}T{clock}{f}" for f in (".000000", ".500000", ".5", ".0000001")]
    return out


def test_only_canonical_text_skips_the_exact_reading() -> None:
    """Review: the GeoPackage's SQL took text of the stored shape as stored text without
    reading it (2021-02-30, 24:00:00, '.000000'). Now the SQL (sqlite_filter.time_column)
    gives, for every text of a grid around the stored forms, what the exact reading in
    Python gives, and skips that reading only for text it would give back unchanged."""
    import sqlite3

    from gridmap.cql import times
    from gridmap.store.sqlite_filter import FUNCTIONS, canonical, time_column

    conn = sqlite3.connect(":memory:")
    for name, (n, fn) in FUNCTIONS.items():
        conn.create_function(name, n, fn, deterministic=True)
    texts = _grid_of_texts()
    for kind in times.TIME_TYPES:
        sql = f"SELECT {time_column('x', kind)}, {canonical('x', kind)} FROM (SELECT ? AS x)"
        got = [conn.execute(sql, (v,)).fetchone() for v in texts]
        want = [times.stored(v, kind) for v in texts]
        assert [g[0] for g in got] == want, kind
        skipped = {i for i, g in enumerate(got) if g[1]}
        unchanged = {i for i, v in enumerate(texts) if isinstance(v, str) and v[:1].isdigit()}
        assert skipped == {i for i in unchanged if want[i] == texts[i]}, kind
        assert len(skipped) > 300, kind  # the fast path is taken where it may be
    conn.close()


# Texts whose reading by PostgreSQL (timestamptz in Beijing time) gridmap follows; not
# here: ISO forms only Python reads (2021-W17-6, an hour alone, a decimal comma), which
# are dates for gridmap, and forms only PostgreSQL reads (2021-5-1, May 1 2021), which
# are not (module docstring of gridmap.cql.times).
PG_JUDGED = [
    "2021-05-01T08:00:00", "2021-05-01 08:00:00", "2021-05-01T08:00", "20210501T080000",
    "2021-05-01T08:00:00.000000", "2021-05-01T08:00:00.000000+08:00", "2021-05-01",
    "2021-05-01T00:00:00Z", "2021-05-01t00:00:00z", "2021-05-01T08:00:00+0800",
    "2021-05-01T08:00:00+08", " 2021-05-01T08:00:00 ", "2021-05-01T08:00:00.5-01:30",
    "2021-02-30", "2021-02-29", "2020-02-29", "2021-13-01", "2021-00-10", "2021-05-00",
    "2021-04-31", "0000-01-01", "2021-05-01T24:00:00", "2021-05-01T24:00:01",
    "2021-05-01T23:59:60", "2021-05-01T23:59:60.5", "2021-05-01T08:00:60.5",
    "2021-05-01T25:00:00", "2021-05-01T08:60:00", "2021-05-01T08:00:00.1234567",
    "2021-05-01T08:00:00.1234565", "2021-05-01T08:00:00.1234575",
    "2021-05-01T23:59:59.9999999", "2021-05-01T24:00:00.0000004", "1988-07-01T08:00:00",
    "1988-07-01T08:00:00Z", "1900-01-01T08:00:00+08:00", "0001-01-01T12:00:00",
    "infinity", "-infinity", "10000-01-01", "10000-01-01T00:00:00+14:00",
    "9999-12-31T24:00:00", "9999-12-31T23:00:00-01:00", "0001-01-01T00:00:00+14:00",
    "0044-03-15T12:00:00.25 BC", "0044-03-15T12:00:00.25+05:00 BC", "0044-03-15 BC",
    "0001-02-29 BC", "0004-02-29 BC", "0005-02-29 BC", "10000-02-29", "10001-02-29",
    "294276-12-31T23:59:59.999999", "4713-01-01 BC", "2027", "garbage",
]  # fmt: skip


@pytest.mark.postgis
def test_stored_text_is_read_as_postgresql_reads_it(request: pytest.FixtureRequest) -> None:
    """PostgreSQL is the judge of what a text in a timestamp column is (read as an
    instant in Beijing time): gridmap.cql.times.stored finds a date exactly where it
    does, the same instant within the years 1–9999, and beyond them the same order."""
    from gridmap.cql import times
    from tests.conftest import require_postgis

    require_postgis()
    url = request.getfixturevalue("pg_cluster").new_database("gm_judge")
    with _in_beijing(url) as conn:
        pg = {text: _pg_reading(conn, text) for text in PG_JUDGED}
        ours = {text: times.stored(text, "datetime") for text in PG_JUDGED}
        assert {t for t, v in ours.items() if v is None} == {t for t, v in pg.items() if v is None}
        assert sum(v is None for v in pg.values()) >= 15
        for text, v in pg.items():
            if v and v[:4].isdigit() and v[4] == "-" and "BC" not in v:
                assert ours[text] == dt.datetime.fromisoformat(v).isoformat(), text
        # the order of every value, as PostgreSQL sorts them
        held = sorted(t for t, v in pg.items() if v is not None)
        sql = "SELECT t, dense_rank() OVER (ORDER BY t::timestamptz) FROM unnest(%s::text[]) t"
        pg_rank = dict(conn.execute(sql, (held,)).fetchall())
        keys = sorted({ours[t] for t in held})
        assert {t: keys.index(ours[t]) + 1 for t in held} == pg_rank
        # dates: a date column's text, as PostgreSQL reads a date
        days = ["2021-02-29", "2024-02-29", "0044-03-15 BC", "5874897-12-31", "5874898-01-01",
                "10000-01-01", "0000-01-01", "infinity", "20240229", "2024-02-30"]  # fmt: skip
        pg_days = {d: _pg_reading(conn, d, "date") for d in days}
        held = sorted(d for d, v in pg_days.items() if v is not None)
        assert held == sorted(d for d in days if times.stored(d, "date") is not None)
        sql = "SELECT t, dense_rank() OVER (ORDER BY t::date) FROM unnest(%s::text[]) t"
        keys = sorted({times.stored(d, "date") for d in held})
        assert {d: keys.index(times.stored(d, "date")) + 1 for d in held} == dict(
            conn.execute(sql, (held,)).fetchall()
        )


def test_gridmap_check_compares_last_visits_as_instants(edit_path: Path | str) -> None:
    """Review: `gridmap check` compared a household's last visit with its ledger's latest
    as text, so the same instant written another way (another program's
    '….000000+08:00', or a UTC time) was reported as behind the ledger. It is compared
    as an instant now; a last visit one second off is still reported."""
    visits = raw_sql(
        edit_path,
        "SELECT v.household_id, max(v.visited_at) FROM visits AS v JOIN households AS h"
        " ON h.fid = v.household_id GROUP BY v.household_id"
        " HAVING max(v.visited_at) = max(h.last_visit_at) ORDER BY 1 LIMIT 1",
    )
    (household, latest) = visits[0]
    at = dt.datetime.fromisoformat(str(latest).replace(" ", "T"))
    if _is_pg(edit_path):  # a timestamp column drops an offset: other forms of the time
        as_household, as_visit = f"{at:%Y-%m-%d %H:%M:%S}.000000", at.isoformat()
    else:
        as_household = f"{at:%Y-%m-%dT%H:%M:%S.%f}+08:00"
        as_visit = at.replace(tzinfo=BEIJING).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    sql = "UPDATE households SET last_visit_at = ? WHERE fid = ?"
    raw_sql(edit_path, sql, as_household, household)
    sql = "UPDATE visits SET visited_at = ? WHERE household_id = ? AND visited_at = ?"
    raw_sql(edit_path, sql, as_visit, household, latest)

    def behind() -> list[str]:
        store = open_store(edit_path)
        try:
            found = check_store(store)
        finally:
            store.close()
        return [p for p in found if p.startswith(f"households {household}: last visit")]

    assert behind() == []
    later = (at + dt.timedelta(seconds=1)).isoformat()
    raw_sql(edit_path, "UPDATE households SET last_visit_at = ? WHERE fid = ?", later, household)
    assert len(behind()) == 1


OFFSETLESS = [
    # (a filter with a time without an offset, the same filter with Beijing's offset)
    ("last_visit_at = TIMESTAMP('2026-11-01T08:00:00')",
     "last_visit_at = TIMESTAMP('2026-11-01T00:00:00Z')"),
    ("last_visit_at >= TIMESTAMP('2026-11-01T08:00:00.5')",
     "last_visit_at >= '2026-11-01T08:00:00.5+08:00'"),
    ("T_AFTER(last_visit_at, TIMESTAMP('2026-11-01T08:00:00'))",
     "last_visit_at > '2026-11-01T08:00:00+08:00'"),
    ("T_DURING(last_visit_at, INTERVAL('2026-11-01T07:00:00', '2026-11-01T08:00:00.5'))",
     "last_visit_at > '2026-11-01T07:00:00+08:00'"
     " AND last_visit_at < '2026-11-01T08:00:00.5+08:00'"),
    ("T_INTERSECTS(last_visit_at, INTERVAL('2026-11-01 08:00:00', '..'))",
     "last_visit_at >= '2026-11-01T08:00:00+08:00'"),
]  # fmt: skip


def test_a_timestamp_without_an_offset_is_beijing_time(store: FeatureStore) -> None:
    """Review: TIMESTAMP('2021-05-01T08:00:00') was read as UTC (the cql2 parser adds a Z)
    while the text '2021-05-01T08:00:00' compared with a timestamp is Beijing time.
    Beijing time is the rule wherever a time has no offset (gridmap.cql.times), in
    CQL2 text and JSON; each filter selects what the same one with +08:00 selects, and
    what plain text selects, on both backends. (Needs gridmap.cql.parse to hand the
    filter to cql2 through times.local_instants / local_instants_json.)"""
    _households(store, LOCAL_TIMES)
    stored = _stored(store.url, "households", "last_visit_at")
    parse = lambda v: dt.datetime.fromisoformat(str(v).replace(" ", "T"))  # noqa: E731
    eight = dt.datetime(2026, 11, 1, 8)
    assert _matching(store, "households", OFFSETLESS[0][0]) == _brute(
        stored, parse, lambda v: v == eight
    )
    for offsetless, with_offset in OFFSETLESS:
        expected = _matching(store, "households", with_offset)
        assert 0 < len(expected) < len(LOCAL_TIMES) - 1, with_offset
        assert _matching(store, "households", offsetless) == expected, offsetless
    hh = get_layer("households")
    json_filter = {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"property": "last_visit_at"},
                                 {"timestamp": "2026-11-01T08:00:00"}]},
            {"op": "t_intersects", "args": [{"property": "last_visit_at"},
                                            {"interval": ["2026-11-01T08:00:00", ".."]}]},
        ],
    }  # fmt: skip
    f = check_filter(json_filter, hh, lang="cql2-json")
    assert store.query_ids("households", Query(filters=[f]))[0].tolist() == _brute(
        stored, parse, lambda v: v == eight
    )
    # exact for the local times of summer time (1986–1991) and local mean time (to 1900)
    for local in ("1988-07-01T08:00:00", "1900-01-01T08:00:00", "2026-11-01T08:00:00.5"):
        f = check_filter(f"last_visit_at = TIMESTAMP('{local}')", hh)
        assert isinstance(f.root, tree.Compare) and isinstance(f.root.right, tree.Lit)
        assert f.root.right.value == dt.datetime.fromisoformat(local).isoformat(), local
    # text that only looks like one is left alone
    f = check_filter("room = 'TIMESTAMP(''2026-11-01T08:00:00'')'", hh)
    assert isinstance(f.root, tree.Compare) and isinstance(f.root.right, tree.Lit)
    assert f.root.right.value == "TIMESTAMP('2026-11-01T08:00:00')"
