"""CQL2-JSON (as parsed by the ``cql2`` package) checked into the neutral tree of one layer.

Every operator's arity and argument types are checked before anything runs: a malformed
filter is a :class:`FilterError` (400) that says what to fix, never a server error.
Properties are checked against the layer registry; numbers must be finite and within
64-bit integers; geometries must be valid and are converted to WGS84 (in the filter
CRS's own axis order on the way in); timestamps become the store's local time, and a
literal compared with a date or timestamp takes its type or is refused
(:mod:`gridmap.cql.times`).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from gridmap import crs as gcrs
from gridmap.cql import times
from gridmap.cql import tree as t
from gridmap.errors import InvalidFeatureError, QueryError
from gridmap.geometry import from_geojson
from gridmap.layers import Layer

INT_MAX = 2**63 - 1
GEOMETRY_NAMES = ("geom", "geometry")
MAX_DWITHIN_M = 100_000.0


class FilterError(QueryError):
    """A filter that cannot be parsed or refers to something the layer does not have."""


_PROP_TYPES = {
    "int": "num",
    "float": "num",
    "str": "str",
    "enum": "str",
    "bool": "bool",
    "date": "date",
    "datetime": "datetime",
    "list": "list",
}
_COMPARE = ("=", "<>", "<", "<=", ">", ">=")
_ARITH = ("+", "-", "*", "/", "%", "div", "^")
_SPATIAL = (
    "s_intersects",
    "s_within",
    "s_contains",
    "s_disjoint",
    "s_equals",
    "s_touches",
    "s_crosses",
    "s_overlaps",
)
# S_X(literal, geom) is S_converse(X)(geom, literal)
_SPATIAL_CONVERSE = {"within": "contains", "contains": "within"}
_TEMPORAL = (
    "t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals",
    "t_finishedby", "t_finishes", "t_intersects", "t_meets", "t_metby",
    "t_overlappedby", "t_overlaps", "t_startedby", "t_starts",
)  # fmt: skip
_TEMPORAL_CONVERSE = {
    "t_after": "t_before",
    "t_before": "t_after",
    "t_contains": "t_during",
    "t_during": "t_contains",
    "t_finishedby": "t_finishes",
    "t_finishes": "t_finishedby",
    "t_meets": "t_metby",
    "t_metby": "t_meets",
    "t_overlappedby": "t_overlaps",
    "t_overlaps": "t_overlappedby",
    "t_startedby": "t_starts",
    "t_starts": "t_startedby",
}
_ARRAY = {"a_contains": "contains", "a_containedby": "containedby", "a_overlaps": "overlaps",
          "a_equals": "equals"}  # fmt: skip
_ARRAY_CONVERSE = {"contains": "containedby", "containedby": "contains"}
_ARITY = {
    **dict.fromkeys(_COMPARE, (2, 2)),
    **dict.fromkeys(_ARITH, (2, 2)),
    **dict.fromkeys(_SPATIAL, (2, 2)),
    **dict.fromkeys(_TEMPORAL, (2, 2)),
    **dict.fromkeys(_ARRAY, (2, 2)),
    "s_dwithin": (3, 3),
    "and": (2, None),
    "or": (2, None),
    "not": (1, 1),
    "like": (2, 2),
    "between": (3, 3),
    "in": (2, 2),
    "isnull": (1, 1),
    "casei": (1, 1),
    "accenti": (1, 1),
}


def _fail(msg: str) -> FilterError:
    return FilterError(msg)


class Checker:
    """Check CQL2-JSON trees for one layer; ``filter_crs`` is the CRS of literal geometries."""

    def __init__(self, layer: Layer, *, filter_crs: str = gcrs.CRS84) -> None:
        self.layer = layer
        self.filter_crs = gcrs.normalize_crs(filter_crs)
        self.used: set[str] = set()

    def check(self, node: Any) -> t.Filter:
        """The neutral tree of a CQL2-JSON filter; FilterError when it is malformed."""
        self.used = set()
        root = self._bool(node)
        return t.Filter(self.layer.id, root, frozenset(self.used))

    # ------------------------------------------------------------------ structure

    def _op(self, node: dict[str, Any]) -> tuple[str, list[Any]]:
        op = node.get("op")
        if not isinstance(op, str):
            raise _fail("every operation needs an 'op' naming it")
        name = op.lower()
        args = node.get("args", [])
        if not isinstance(args, list):
            raise _fail(f"the arguments of {op[:30]!r} must be a list")
        arity = _ARITY.get(name)
        if arity is None:
            known = "comparisons, LIKE, BETWEEN, IN, IS NULL, CASEI, ACCENTI, S_*, T_*, A_*"
            raise _fail(f"filter operator {op[:30]!r} is not supported; use {known}")
        lo, hi = arity
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}"
            raise _fail(f"{op[:30]} takes {want} argument(s), got {len(args)}")
        return name, args

    def _bool(self, node: Any) -> t.Node:
        if isinstance(node, bool):
            return t.Const(node)
        if not isinstance(node, dict) or "op" not in node:
            raise _fail("a filter must be a condition (comparison, LIKE, IN, a predicate …)")
        op, args = self._op(node)
        if op in ("and", "or"):
            parts = tuple(self._bool(a) for a in args)
            return t.And(parts) if op == "and" else t.Or(parts)
        if op == "not":
            return t.Not(self._bool(args[0]))
        if op in _COMPARE:
            left, right = self._kindred(op, self._scalar(args[0]), self._scalar(args[1]))
            return t.Compare(op, left, right)
        if op == "like":
            value, pattern = self._scalar(args[0]), self._scalar(args[1])
            if value.type != "str" or pattern.type != "str":
                raise _fail("LIKE compares text with a text pattern")
            return t.Like(value, pattern)
        if op == "between":
            value, low, high = self._kindred("BETWEEN", *(self._scalar(a) for a in args))
            return t.Between(value, low, high)
        if op == "in":
            value = self._scalar(args[0])
            if not isinstance(args[1], list):
                raise _fail("IN takes a list of values: x IN (1, 2)")
            value, *items = self._kindred("IN", value, *(self._scalar(i) for i in args[1]))
            return t.In(value, tuple(items))
        if op == "isnull":
            return t.IsNull(self._scalar(args[0], allow_list=True))
        if op in _SPATIAL or op == "s_dwithin":
            return self._spatial(op, args)
        if op in _TEMPORAL:
            return self._temporal(op, args)
        if op in _ARRAY:
            return self._array(op, args)
        raise _fail(f"{op} is a value, not a condition; compare it with something")

    # ------------------------------------------------------------------ scalars

    def _prop(self, node: dict[str, Any]) -> t.Prop:
        name = node["property"]
        if not isinstance(name, str):
            raise _fail("property names must be text")
        if name == "id":
            return t.Prop("id", "num")
        prop = self.layer.by_name.get(name)
        if prop is None:
            known = ", ".join(("id", *self.layer.names))
            raise _fail(
                f"unknown property {name[:40]!r} in filter for {self.layer.id}; known: {known}"
            )
        self.used.add(name)
        return t.Prop(name, _PROP_TYPES[prop.type])

    def _scalar(self, node: Any, *, allow_list: bool = False) -> t.Expr:
        if isinstance(node, bool):
            return t.Lit(node, "bool")
        if isinstance(node, int | float):
            return _number(node)
        if isinstance(node, str):
            if "\x00" in node:
                raise _fail("text in a filter may not hold the NUL character (U+0000)")
            return t.Lit(node, "str")
        if isinstance(node, dict):
            if "property" in node:
                if node["property"] in GEOMETRY_NAMES:
                    raise _fail("the geometry is compared with S_* predicates, not as a value")
                prop = self._prop(node)
                if prop.type == "list" and not allow_list:
                    hint = "A_CONTAINS, A_CONTAINEDBY, A_OVERLAPS or A_EQUALS"
                    raise _fail(f"{prop.name} is a list; use {hint}")
                return prop
            if "timestamp" in node:
                return t.Lit(local_iso(node["timestamp"], want="timestamp"), "datetime")
            if "date" in node:
                return t.Lit(local_iso(node["date"], want="date"), "date")
            if "op" in node:
                op, args = self._op(node)
                if op in _ARITH:
                    left, right = self._scalar(args[0]), self._scalar(args[1])
                    if left.type != "num" or right.type != "num":
                        raise _fail(f"arithmetic ({op}) works on numbers only")
                    return t.Arith(op, left, right)
                if op in ("casei", "accenti"):
                    arg = self._scalar(args[0])
                    if arg.type != "str":
                        raise _fail(f"{op.upper()} applies to text")
                    return t.Fold(op, arg)
                raise _fail(f"{op} is a condition, not a value")
            if "property" not in node and ("type" in node or "bbox" in node):
                raise _fail("a geometry can only appear in a spatial predicate (S_INTERSECTS …)")
            if "interval" in node:
                raise _fail("an INTERVAL can only appear in a temporal predicate (T_* …)")
        if node is None:
            raise _fail("null is not a value in CQL2; use IS NULL")
        if isinstance(node, list):
            raise _fail("a list is only allowed after IN or in an array predicate")
        raise _fail("unsupported value in filter")

    def _kindred(self, op: str, *exprs: t.Expr) -> tuple[t.Expr, ...]:
        """The operands of one comparison, of one type (FilterError if they cannot be).

        Dates and timestamps follow :mod:`gridmap.cql.times`: a text, date or timestamp
        literal is cast to the type of the time it is compared with (a non-ISO text is
        refused), a date property compared with a timestamp one is its midnight.
        """
        kinds = list(dict.fromkeys(e.type for e in exprs))  # in the operands' order
        if not set(kinds) & set(times.TIME_TYPES):
            if len(kinds) > 1:
                raise _fail(
                    f"{op} compares {kinds[0]} with {kinds[1]}; both sides must be of one kind"
                )
            return exprs
        to = _time_type(exprs)
        return tuple(self._as_time(op, e, to) for e in exprs)

    def _as_time(self, op: str, e: t.Expr, to: str) -> t.Expr:
        """One operand of a comparison of times, as a ``to`` ('date' or 'datetime')."""
        if isinstance(e, t.Lit) and e.type in ("str", *times.TIME_TYPES):
            try:
                return t.Lit(times.cast(e.value, to), to)
            except ValueError as exc:
                raise _fail(f"{op} compares a {to} with a value that is no date: {exc}") from None
        if e.type == to:
            return e
        if e.type == "date" and to == "datetime":
            return t.Cast(e)
        raise _fail(f"{op} compares {to} with {e.type}; both sides must be of one kind")

    # ------------------------------------------------------------------ spatial

    def _is_geom_prop(self, node: Any) -> bool:
        return isinstance(node, dict) and node.get("property") in GEOMETRY_NAMES

    def _spatial(self, op: str, args: list[Any]) -> t.Spatial:
        a, b = args[0], args[1]
        kind = op[2:]
        if self._is_geom_prop(b) and not self._is_geom_prop(a):
            a, b = b, a
            kind = _SPATIAL_CONVERSE.get(kind, kind)
        if not self._is_geom_prop(a) or self._is_geom_prop(b):
            raise _fail(
                f"{op.upper()} compares the feature geometry ('geom') with a literal geometry"
            )
        literal = self.geometry_literal(b)
        if op != "s_dwithin":
            return t.Spatial(kind, literal)
        d = args[2]
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d):
            raise _fail("S_DWITHIN needs a distance in metres as its third argument")
        if not 0 <= d <= MAX_DWITHIN_M:
            raise _fail(f"S_DWITHIN distance must be between 0 and {MAX_DWITHIN_M:.0f} metres")
        return t.Spatial("dwithin", literal, float(d))

    def geometry_literal(self, node: Any) -> BaseGeometry:
        """A literal geometry (GeoJSON or BBOX) as a valid WGS84 geometry."""
        if isinstance(node, dict) and "bbox" in node:
            g = _bbox(node["bbox"])
        elif isinstance(node, dict) and "type" in node:
            try:
                g = from_geojson(node)
            except InvalidFeatureError as exc:
                raise _fail(f"geometry in filter: {exc}") from None
        else:
            raise _fail("spatial predicates compare the geometry with a literal geometry")
        if gcrs.axis_swapped(self.filter_crs):
            g = shapely.transform(g, lambda c: c[:, ::-1])
        out = gcrs.transform_geometries([g], src=self.filter_crs, dst=gcrs.CRS84)[0]
        if not shapely.is_valid(out):
            reason = shapely.is_valid_reason(out)
            raise _fail(f"geometry in filter is not valid ({reason}); fix it and try again")
        if not (-180 <= out.bounds[0] <= out.bounds[2] <= 180) or not (
            -90 <= out.bounds[1] <= out.bounds[3] <= 90
        ):
            raise _fail("geometry in filter lies outside lon -180..180 / lat -90..90 (axis order?)")
        return out

    # ------------------------------------------------------------------ temporal

    def _temporal(self, op: str, args: list[Any]) -> t.Temporal:
        a, b = args
        if not (isinstance(a, dict) and "property" in a):
            a, b = b, a
            op = _TEMPORAL_CONVERSE.get(op, op)
        if not (isinstance(a, dict) and "property" in a):
            raise _fail(f"{op.upper()} needs a date or datetime property as one argument")
        prop = self._prop(a)
        if prop.type not in ("date", "datetime"):
            raise _fail("temporal predicates apply to date or datetime properties")
        start, end = (_in_type(x, prop.type) for x in _instant_or_interval(b))
        if start is not None and end is not None and start > end:
            raise _fail("an INTERVAL must not end before it starts")
        return t.Temporal(op, prop, start, end)

    # ------------------------------------------------------------------ arrays

    def _array(self, op: str, args: list[Any]) -> t.Array:
        a, b = args
        kind = _ARRAY[op]
        if not (isinstance(a, dict) and "property" in a):
            a, b = b, a
            kind = _ARRAY_CONVERSE.get(kind, kind)
        if not (isinstance(a, dict) and "property" in a):
            raise _fail("array predicates take a list property such as tags")
        prop = self._prop(a)
        if prop.type != "list":
            raise _fail("array predicates apply to list properties such as tags")
        values = b if isinstance(b, list) else [b]
        if not all(isinstance(v, str) for v in values):
            raise _fail("array predicates compare with a list of strings: ('hardship', …)")
        if any("\x00" in v for v in values):
            raise _fail("text in a filter may not hold the NUL character (U+0000)")
        return t.Array(kind, prop, tuple(values))


def _number(value: int | float) -> t.Lit:
    """A numeric literal: finite, integral values as integers where they fit in 64 bits."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail("numbers in filters must be finite")
        if value.is_integer() and abs(value) <= INT_MAX:
            return t.Lit(int(value), "num")
        return t.Lit(value, "num")
    if abs(value) > INT_MAX:
        return t.Lit(float(value), "num")  # beyond 64 bits: compared as a real number
    return t.Lit(value, "num")


def _bbox(values: Any) -> BaseGeometry:
    if not isinstance(values, list) or len(values) not in (4, 6):
        raise _fail("BBOX takes 4 numbers (minX, minY, maxX, maxY), or 6 with heights")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise _fail("BBOX values must be numbers")
    if not all(math.isfinite(v) for v in values):
        raise _fail("BBOX values must be finite numbers")
    minx, miny, maxx, maxy = (
        (values[0], values[1], values[2], values[3])
        if len(values) == 4
        else (values[0], values[1], values[3], values[4])
    )
    if minx > maxx or miny > maxy:
        raise _fail("BBOX minimums must not exceed maximums (minX, minY, maxX, maxY)")
    return shapely.box(minx, miny, maxx, maxy)


def local_iso(value: Any, *, want: str = "timestamp") -> str:
    """A CQL2 date/timestamp (or ISO text) as the naive local ISO text the store keeps
    (:mod:`gridmap.cql.times`): a date stays a date unless ``want`` is 'date'."""
    try:
        v = times.parse(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if want == "date" and isinstance(v, dt.datetime):
        raise _fail(f"not an ISO 8601 date (YYYY-MM-DD): {str(value)[:40]!r}")
    return v.isoformat()


def _time_type(exprs: tuple[t.Expr, ...]) -> str:
    """The type times of one comparison are compared in: the properties' (a timestamp if
    a date property meets a timestamp one), else the literals' ('datetime' if any is)."""
    props = {e.type for e in exprs if not isinstance(e, t.Lit) and e.type in times.TIME_TYPES}
    found = props or {e.type for e in exprs if e.type in times.TIME_TYPES}
    return "datetime" if "datetime" in found else "date"


def _in_type(value: str | None, to: str) -> str | None:
    """A bound of a temporal predicate in the property's type (None: an open end)."""
    return None if value is None else times.cast(value, to)


def _instant_or_interval(node: Any) -> tuple[str | None, str | None]:
    """[start, end] of an instant (start = end) or interval; None for an open ('..') end."""
    if isinstance(node, dict) and "interval" in node:
        ends = node["interval"]
        if not isinstance(ends, list) or len(ends) != 2:
            raise _fail("INTERVAL takes two ends: INTERVAL('2026-01-01', '..')")
        out: list[str | None] = []
        for e in ends:
            if e == "..":
                out.append(None)
            elif isinstance(e, dict) and ("timestamp" in e or "date" in e):
                out.append(local_iso(e.get("timestamp") or e.get("date")))
            elif isinstance(e, str):
                out.append(local_iso(e))
            else:
                raise _fail("INTERVAL ends are dates, timestamps or '..'")
        return out[0], out[1]
    if isinstance(node, dict) and ("timestamp" in node or "date" in node):
        instant = local_iso(node.get("timestamp") or node.get("date"))
        return instant, instant
    raise _fail("temporal predicates compare with a TIMESTAMP, DATE or INTERVAL")
