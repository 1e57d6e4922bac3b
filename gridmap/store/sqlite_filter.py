"""The neutral CQL2 tree rendered as SQLite SQL over the table alias ``t``, values bound.

Text semantics follow CQL2, not SQLite's defaults: LIKE is case-sensitive (``gm_like``),
CASEI folds all of Unicode (``gm_casei``), ACCENTI removes diacritics (``gm_accenti``);
dates and timestamps compare as times whatever another program stored
(:func:`time_column`, :mod:`gridmap.cql.times`);
spatial predicates call ``gm_spatial`` with the literal as WKB, and top-level spatial
conjuncts also give an envelope for the R-tree.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import shapely

from gridmap.cql import times
from gridmap.cql import tree as t


@dataclass
class CompiledFilter:
    """A SQL condition over alias ``t`` with its parameters, and an optional R-tree envelope."""

    sql: str
    params: list[Any] = field(default_factory=list)
    bbox: tuple[float, float, float, float] | None = None


_PREFILTERABLE = {"intersects", "within", "contains", "equals", "touches", "crosses", "overlaps"}


def render(f: t.Filter) -> CompiledFilter:
    """SQL for a checked filter."""
    r = _Renderer()
    sql = r.node(f.root, top=True)
    bbox = None
    for env in r.envelopes:
        bbox = env if bbox is None else _intersect(bbox, env)
    return CompiledFilter(sql, r.params, bbox)


def _intersect(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float]:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


class _Renderer:
    def __init__(self) -> None:
        self.params: list[Any] = []
        self.envelopes: list[tuple[float, float, float, float]] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    # ------------------------------------------------------------------ conditions

    def node(self, n: t.Node, *, top: bool = False) -> str:
        match n:
            case t.Const(value=v):
                return "1" if v else "0"
            case t.And(args=args):
                return "(" + " AND ".join(self.node(a, top=top) for a in args) + ")"
            case t.Or(args=args):
                return "(" + " OR ".join(self.node(a) for a in args) + ")"
            case t.Not(arg=a):
                return f"(NOT {self.node(a)})"
            case t.Compare(op=op, left=a, right=b):
                return f"({self.expr(a)} {op} {self.expr(b)})"
            case t.Like(value=v, pattern=p):
                return f"(gm_like({self.expr(v)}, {self.expr(p)}) = 1)"
            case t.Between(value=v, low=lo, high=hi):
                return f"({self.expr(v)} BETWEEN {self.expr(lo)} AND {self.expr(hi)})"
            case t.In(value=v, items=items):
                if not items:
                    return "0"
                return f"({self.expr(v)} IN ({', '.join(self.expr(i) for i in items)}))"
            case t.IsNull(value=v):
                # a stored value that is no date is there all the same (not null)
                raw = _column(v.name) if isinstance(v, t.Prop) else self.expr(v)
                return f"({raw} IS NULL)"
            case t.Spatial():
                return self.spatial(n, top=top)
            case t.Temporal():
                return self.temporal(n)
            case t.Array():
                return self.array(n)
        msg = f"cannot render {type(n).__name__}"
        raise TypeError(msg)

    # ------------------------------------------------------------------ values

    def expr(self, e: t.Expr) -> str:
        match e:
            case t.Prop(name="id"):
                return "t.fid"
            case t.Prop(name=name, type=ty) if ty in times.TIME_TYPES:
                return time_column(_column(name), ty)
            case t.Prop(name=name):
                return _column(name)
            case t.Lit(value=v):
                return self.bind(int(v) if isinstance(v, bool) else v)
            case t.Fold(op=op, arg=a):
                return f"gm_{op}({self.expr(a)})"
            case t.Cast(arg=a):
                return f"({self.expr(a)} || 'T00:00:00')"
            case t.Arith(op=op, left=a, right=b):
                x, y = self.expr(a), self.expr(b)
                if op == "/":
                    return f"(CAST({x} AS REAL) / {y})"
                if op == "div":
                    return f"(CAST({x} AS INTEGER) / CAST({y} AS INTEGER))"
                if op == "^":
                    return f"pow({x}, {y})"
                return f"({x} {op} {y})"
        msg = f"cannot render {type(e).__name__}"
        raise TypeError(msg)

    # ------------------------------------------------------------------ predicates

    def spatial(self, s: t.Spatial, *, top: bool) -> str:
        literal = s.geometry
        kind = s.op
        if kind == "dwithin":  # measured exactly in metres (EPSG:4547), as PostGIS does
            if top:
                self.envelopes.append(s.reach())
            lit, d = shapely.to_wkb(s.metric_literal()), float(s.distance_m or 0.0)
            return f"(gm_dwithin(t.geom, {self.bind(lit)}, {self.bind(d)}) = 1)"
        if top and kind in _PREFILTERABLE:
            b = shapely.bounds(literal)
            self.envelopes.append((float(b[0]), float(b[1]), float(b[2]), float(b[3])))
        return f"(gm_spatial({self.bind(kind)}, t.geom, {self.bind(shapely.to_wkb(literal))}) = 1)"

    def temporal(self, p: t.Temporal) -> str:
        """CQL2 temporal predicates on an instant property, by the standard's definitions.

        The property is an instant ``[x, x]``; the literal an interval [lo, hi] whose open
        ends are minus/plus infinity.
        """
        col = self.expr(p.prop)

        def cmp(rel: str, bound: str | None, low_end: bool) -> str:
            if bound is None:  # an open end
                return "1" if t.beyond_open_end(rel, low_end) else "0"
            return f"{col} {rel} {self.bind(bound)}"

        joiner, parts = t.TEMPORAL_RULES[p.op]
        conds = [
            cmp(rel, p.start if end == "start" else p.end, end == "start") for rel, end in parts
        ]
        body = "(" + f" {joiner} ".join(conds) + ")"
        return f"(CASE WHEN {col} IS NULL THEN NULL ELSE {body} END)"

    def array(self, a: t.Array) -> str:
        """Set semantics (order and repeats do not matter); a null list is unknown."""
        col = self.expr(a.prop)
        one = len(a.values) == 1 and isinstance(a.values[0], str | int | float)
        if one and a.op in ("contains", "overlaps"):  # one value: the list holds it
            value = self.bind(a.values[0])
            cond = f"EXISTS (SELECT 1 FROM json_each({col}) WHERE value = {value})"
            return f"(CASE WHEN {list_guard(col)} THEN ({cond}) ELSE NULL END)"
        given = self.bind(json.dumps(list(a.values), ensure_ascii=False))
        inner = f"SELECT value FROM json_each({given})"
        mine = f"SELECT value FROM json_each({col})"
        if a.op == "contains":  # the property holds every listed value
            cond = f"NOT EXISTS ({inner} EXCEPT {mine})"
        elif a.op == "containedby":
            cond = f"NOT EXISTS ({mine} EXCEPT {inner})"
        elif a.op == "overlaps":
            cond = f"EXISTS ({inner} INTERSECT {mine})"
        else:
            again = self.bind(self.params[-1])
            inner2 = f"SELECT value FROM json_each({again})"
            cond = f"NOT EXISTS ({inner} EXCEPT {mine}) AND NOT EXISTS ({mine} EXCEPT {inner2})"
        # a null list is unknown; so is text another program stored that is not a JSON list
        return f"(CASE WHEN {list_guard(col)} THEN ({cond}) ELSE NULL END)"


def _column(name: str) -> str:
    """A property's column of alias ``t``."""
    return '"t"."' + name + '"'


_D4 = "[0-9]" * 4
_DAY = f"{_D4}-[0-9][0-9]-[0-9][0-9]"
_SECOND = f"{_DAY}T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]"


def canonical(col: str, kind: str) -> str:
    """SQL true exactly where ``col`` holds the stored text of a date or timestamp
    (``kind``) in the years 1–9999 (:mod:`gridmap.cql.times`: ``YYYY-MM-DD``,
    ``YYYY-MM-DDTHH:MM:SS`` and a fraction of six digits only when it is not zero): the
    text that :func:`gridmap.cql.times.stored` gives back unchanged.

    The day and time must exist: SQLite reads 2021-02-30 and 24:00:00 as they are
    written, so the text is compared with itself after a round trip through the day
    number ('+0 days'), which carries them over (to 2021-03-02, the next midnight).
    """
    year_1_on = f"substr({col}, 1, 4) <> '0000'"
    if kind == "date":
        shape = f"{col} GLOB '{_DAY}'"
        exists = f"date({col}, '+0 days') = {col}"
    else:
        fraction = f"{col} GLOB '{_SECOND}.{'[0-9]' * 6}' AND {col} NOT GLOB '*.000000'"
        shape = f"({col} GLOB '{_SECOND}' OR ({fraction}))"
        second = f"substr({col}, 1, 19)"
        exists = f"strftime('%Y-%m-%dT%H:%M:%S', {second}, '+0 days') = {second}"
    return f"({shape} AND {year_1_on} AND {exists})"


def time_column(col: str, kind: str) -> str:
    """SQL for a date or timestamp column (``kind``) as the text it compares as.

    A DATE or DATETIME column has numeric affinity in SQLite: compared as stored, text
    such as '2027' would turn into a number and be compared as one. This expression has
    no affinity and yields :func:`gridmap.cql.times.stored` of the value: the stored
    text as is where it is canonical (:func:`canonical`: nearly every row, no call into
    Python), else through ``gm_date``/``gm_datetime`` (another program's
    '2026-11-01 10:00', an offset, extra zeros, an infinity); NULL where the column holds
    no date (text, a day the calendar lacks).
    """
    return f"(CASE WHEN {canonical(col, kind)} THEN {col} ELSE gm_{kind}({col}) END)"


def list_guard(col: str) -> str:
    """SQL that is true where ``col`` holds a JSON list (json_each fails on anything else)."""
    return f"(json_valid({col}) AND json_type({col}) = 'array')"


# ---------------------------------------------------------------------- SQLite functions


@lru_cache(maxsize=256)
def _like_parts(pattern: str) -> tuple[tuple[re.Pattern[str], int], ...]:
    """The pieces of a LIKE pattern between its ``%``: each a fixed-length regex (literal
    characters, ``.`` for ``_``) and its length."""
    pieces: list[list[str]] = [[]]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            pieces[-1].append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "%":
            pieces.append([])
        else:
            pieces[-1].append("." if c == "_" else re.escape(c))
        i += 1
    return tuple((re.compile("".join(p), re.S), len(p)) for p in pieces)


def like(value: str, pattern: str) -> bool:
    """CQL2 LIKE in time linear in the pattern's pieces (no backtracking regex).

    Between two ``%`` any run may stand, so matching each fixed-length piece at its
    leftmost place after the previous one is exact; the first piece is anchored at the
    start and the last at the end.
    """
    parts = _like_parts(pattern)
    if len(parts) == 1:
        return parts[0][0].fullmatch(value) is not None
    (first, n_first), (last, n_last) = parts[0], parts[-1]
    if n_first + n_last > len(value) or not first.match(value):
        return False
    end = len(value) - n_last
    if not last.fullmatch(value, end):
        return False
    pos = n_first
    for piece, _ in parts[1:-1]:
        m = piece.search(value, pos, end)
        if m is None:
            return False
        pos = m.end()
    return True


def gm_like(value: str | None, pattern: str | None) -> int | None:
    """SQLite function for CQL2 LIKE: case-sensitive, ``%`` and ``_``, backslash escapes."""
    if value is None or pattern is None:
        return None
    return 1 if like(str(value), str(pattern)) else 0


def gm_casei(value: str | None) -> str | None:
    """CASEI: lower case over all of Unicode (SQLite's lower() folds ASCII only)."""
    return None if value is None else str(value).lower()


def gm_accenti(value: str | None) -> str | None:
    """ACCENTI: diacritics removed (canonical decomposition, combining marks dropped)."""
    if value is None:
        return None
    decomposed = unicodedata.normalize("NFD", str(value))
    return unicodedata.normalize(
        "NFC", "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    )


def gm_date(value: Any) -> str | None:
    """SQLite function: a DATE column's value as it compares (see :func:`time_column`)."""
    return times.stored(value, "date")


def gm_datetime(value: Any) -> str | None:
    """SQLite function: a DATETIME column's value as it compares (see :func:`time_column`)."""
    return times.stored(value, "datetime")


FUNCTIONS = {
    "gm_like": (2, gm_like),
    "gm_casei": (1, gm_casei),
    "gm_accenti": (1, gm_accenti),
    "gm_date": (1, gm_date),
    "gm_datetime": (1, gm_datetime),
}
"""SQLite functions the rendered SQL calls (registered on every connection)."""
