"""CQL2 filters (text and JSON, parsed by the ``cql2`` library) compiled to parameterised SQL.

Parsing and validation are the ``cql2`` package's (a maintained CQL2 implementation);
this module walks the resulting CQL2-JSON tree, checks every property name against the
layer's schema and turns the tree into a SQL condition over the store's table alias ``t``
with every value bound as a parameter. Spatial predicates become calls of SQLite
functions the store registers (``gm_spatial(op, geom, ?)``), with the literal geometry
passed as WKB; when a spatial predicate is a top-level conjunct its envelope is also
returned so the store can add an R-tree prefilter.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import cql2
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap import crs as gcrs
from gridmap.errors import QueryError
from gridmap.geometry import from_geojson
from gridmap.layers import Layer, Prop

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
"""Stored datetimes are naive local (Beijing) time; CQL2 timestamps are converted to it."""

MAX_TEXT = 20_000
MAX_DEPTH = 20
MAX_NODES = 500
GEOMETRY_NAMES = ("geom", "geometry")


class FilterError(QueryError):
    """A filter that cannot be parsed or refers to something the layer does not have."""


@dataclass
class CompiledFilter:
    """A SQL condition over alias ``t`` with its parameters, and an optional R-tree envelope."""

    sql: str
    params: list[Any] = field(default_factory=list)
    bbox: tuple[float, float, float, float] | None = None
    properties: frozenset[str] = frozenset()
    """Property names the condition reads (the store refuses masked ones)."""


def parse(value: str | dict[str, Any], lang: str = "cql2-text") -> dict[str, Any]:
    """Parse a CQL2 filter (text or JSON) into its CQL2-JSON tree; FilterError if malformed."""
    if lang not in ("cql2-text", "cql2-json"):
        msg = f"unsupported filter-lang {lang[:40]!r}; use cql2-text or cql2-json"
        raise FilterError(msg)
    try:
        if lang == "cql2-text":
            if not isinstance(value, str):
                msg = "a cql2-text filter must be a string"
                raise FilterError(msg)
            if len(value) > MAX_TEXT:
                msg = f"filter is longer than {MAX_TEXT} characters"
                raise FilterError(msg)
            expr = cql2.parse_text(value)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) > MAX_TEXT:
                msg = f"filter is longer than {MAX_TEXT} characters"
                raise FilterError(msg)
            tree = json.loads(text) if isinstance(value, str) else value
            _check_shape(tree)
            expr = cql2.parse_json(text)
        tree = expr.to_json()
    except FilterError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # cql2 raises ValueError subclasses
        first = str(exc).strip().splitlines()
        hint = " ".join(line.strip() for line in first[:4])[:300]
        msg = f"could not parse the {lang} filter: {hint}"
        raise FilterError(msg) from None
    except Exception as exc:  # cql2.ParseError / ValidationError are not ValueErrors
        first = str(exc).strip().splitlines()
        hint = " ".join(line.strip() for line in first[:4])[:300]
        msg = f"could not parse the {lang} filter: {hint}"
        raise FilterError(msg) from None
    _check_shape(tree)
    return tree  # type: ignore[no-any-return]


def _check_shape(tree: Any) -> None:
    count = 0

    def walk(node: Any, depth: int) -> None:
        nonlocal count
        count += 1
        if depth > MAX_DEPTH:
            msg = f"filter is nested more than {MAX_DEPTH} levels deep"
            raise FilterError(msg)
        if count > MAX_NODES:
            msg = f"filter has more than {MAX_NODES} terms"
            raise FilterError(msg)
        if isinstance(node, dict):
            if "coordinates" in node:
                return
            for v in node.values():
                walk(v, depth + 1)
        elif isinstance(node, list):
            for v in node:
                walk(v, depth + 1)

    walk(tree, 0)


_COMPARE = {"=": "=", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_SPATIAL = {
    "s_intersects": "intersects",
    "s_within": "within",
    "s_contains": "contains",
    "s_disjoint": "disjoint",
    "s_equals": "equals",
    "s_touches": "touches",
    "s_crosses": "crosses",
    "s_overlaps": "overlaps",
    "s_dwithin": "intersects",
}
# T_X(literal, property) is T_converse(X)(property, literal).
_CONVERSE = {
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
_PREFILTERABLE = {"intersects", "within", "contains", "equals", "touches", "crosses", "overlaps"}


class Compiler:
    """Compile CQL2-JSON trees for one layer; ``filter_crs`` is the CRS of literal geometries."""

    def __init__(self, layer: Layer, *, filter_crs: str = gcrs.CRS84) -> None:
        self.layer = layer
        self.filter_crs = gcrs.normalize_crs(filter_crs)
        self.params: list[Any] = []
        self.envelopes: list[tuple[float, float, float, float]] = []
        self.used: set[str] = set()

    def compile(self, tree: dict[str, Any]) -> CompiledFilter:
        """The SQL condition of a CQL2-JSON tree."""
        self.params = []
        self.envelopes = []
        self.used = set()
        sql = self._bool(tree, top=True)
        bbox = None
        if self.envelopes:
            e = self.envelopes
            bbox = (
                max(b[0] for b in e),
                max(b[1] for b in e),
                min(b[2] for b in e),
                min(b[3] for b in e),
            )
        return CompiledFilter(sql, self.params, bbox, frozenset(self.used))

    # ---------------------------------------------------------------- boolean structure

    def _bool(self, node: Any, *, top: bool = False) -> str:
        if isinstance(node, bool):
            return "1" if node else "0"
        if not isinstance(node, dict) or "op" not in node:
            msg = "a filter must be a boolean expression (comparison, LIKE, IN, predicate …)"
            raise FilterError(msg)
        op = str(node["op"]).lower()
        args = node.get("args", [])
        if op in ("and", "or"):
            parts = [self._bool(a, top=top and op == "and") for a in args]
            return "(" + f" {op.upper()} ".join(parts) + ")"
        if op == "not":
            return f"(NOT {self._bool(args[0])})"
        if op in _COMPARE:
            return self._compare(op, args)
        if op == "like":
            left = self._scalar(args[0], want="str")
            pattern = self._scalar(args[1], want="str")
            return f"({left} LIKE {pattern} ESCAPE '\\')"
        if op == "between":
            v = self._scalar(args[0])
            lo = self._scalar(args[1], like=args[0])
            hi = self._scalar(args[2], like=args[0])
            return f"({v} BETWEEN {lo} AND {hi})"
        if op == "in":
            v = self._scalar(args[0])
            items = args[1] if isinstance(args[1], list) else [args[1]]
            if not items:
                return "0"
            marks = ", ".join(self._scalar(i, like=args[0]) for i in items)
            return f"({v} IN ({marks}))"
        if op == "isnull":
            node = args[0]
            if isinstance(node, dict) and "property" in node:
                prop = self._prop(node)
                col = "t.fid" if prop is None else '"t"."' + prop.name + '"'
                return f"({col} IS NULL)"
            return f"({self._scalar(node)} IS NULL)"
        if op in _SPATIAL:
            return self._spatial(op, args, top=top)
        if op.startswith("t_"):
            return self._temporal(op, args)
        if op.startswith("a_"):
            return self._array(op, args)
        msg = f"filter operator {op[:30]!r} is not supported"
        raise FilterError(msg)

    # ---------------------------------------------------------------- scalars

    def _prop(self, node: dict[str, Any]) -> Prop | None:
        name = node["property"]
        if not isinstance(name, str):
            msg = "property names must be strings"
            raise FilterError(msg)
        if name == "id":
            return None
        self.used.add(name)
        prop = self.layer.by_name.get(name)
        if prop is None:
            known = ", ".join(("id", *self.layer.names))
            msg = f"unknown property {name[:40]!r} in filter for {self.layer.id}; known: {known}"
            raise FilterError(msg)
        return prop

    def _column(self, node: dict[str, Any]) -> tuple[str, Prop | None]:
        prop = self._prop(node)
        if prop is None:
            return "t.fid", None
        if prop.type == "list":
            msg = f"{prop.name} is a list; use A_CONTAINS, A_CONTAINEDBY, A_OVERLAPS or A_EQUALS"
            raise FilterError(msg)
        return '"t"."' + prop.name + '"', prop

    def _scalar(self, node: Any, *, want: str | None = None, like: Any = None) -> str:
        if isinstance(node, dict):
            if "property" in node:
                col, _ = self._column(node)
                return col
            if "op" in node:
                op = str(node["op"]).lower()
                if op in ("casei", "accenti"):
                    inner = self._scalar(node["args"][0])
                    return f"lower({inner})" if op == "casei" else inner
                if op in ("+", "-", "*", "/", "%", "div", "^"):
                    a = self._scalar(node["args"][0])
                    b = self._scalar(node["args"][1])
                    if op == "/":
                        return f"(CAST({a} AS REAL) / {b})"
                    if op == "div":
                        return f"(CAST({a} AS INTEGER) / CAST({b} AS INTEGER))"
                    if op == "^":
                        return f"pow({a}, {b})"
                    return f"({a} {op} {b})"
                msg = f"function {op[:30]!r} is not supported in filters"
                raise FilterError(msg)
            if "timestamp" in node or "date" in node:
                self.params.append(_local_iso(node.get("timestamp") or node.get("date")))
                return "?"
            msg = "unsupported value in filter"
            raise FilterError(msg)
        if isinstance(node, list):
            msg = "a list is only allowed after IN or in an array predicate"
            raise FilterError(msg)
        value = node
        ref = self._ref_prop(like)
        if (
            ref is not None
            and ref.type == "int"
            and isinstance(value, float)
            and value.is_integer()
        ):
            value = int(value)
        if isinstance(value, bool):
            value = 1 if value else 0
        if want == "str" and not isinstance(value, str):
            msg = "LIKE needs text on both sides"
            raise FilterError(msg)
        self.params.append(value)
        return "?"

    def _ref_prop(self, node: Any) -> Prop | None:
        if isinstance(node, dict) and "property" in node:
            return self._prop(node)
        return None

    def _compare(self, op: str, args: list[Any]) -> str:
        a, b = args
        left = self._scalar(a, like=b)
        right = self._scalar(b, like=a)
        for side, other in ((a, b), (b, a)):
            prop = self._ref_prop(side)
            if prop is not None and prop.type in ("int", "float") and isinstance(other, str):
                msg = f"{prop.name} is a number; compare it with a number, not {other[:20]!r}"
                raise FilterError(msg)
        return f"({left} {_COMPARE[op]} {right})"

    # ---------------------------------------------------------------- spatial

    def _geometry_literal(self, node: Any) -> BaseGeometry:
        if isinstance(node, dict) and "bbox" in node:
            b = node["bbox"]
            g: BaseGeometry = shapely.box(b[0], b[1], b[2], b[3])
        elif isinstance(node, dict) and "type" in node:
            g = from_geojson(node)
        else:
            msg = "spatial predicates compare the geometry with a literal geometry"
            raise FilterError(msg)
        if gcrs.is_lat_lon_order(self.filter_crs):
            g = shapely.transform(g, lambda c: c[:, ::-1])
        return gcrs.transform_geometries([g], src=self.filter_crs, dst=gcrs.CRS84)[0]

    def _spatial(self, op: str, args: list[Any], *, top: bool) -> str:
        a, b = args[0], args[1]
        if isinstance(b, dict) and b.get("property") in GEOMETRY_NAMES:
            a, b = b, a
            flip = {"within": "contains", "contains": "within"}
        else:
            flip = {}
        if not (isinstance(a, dict) and a.get("property") in GEOMETRY_NAMES):
            msg = "spatial predicates need the feature geometry ('geom') as one argument"
            raise FilterError(msg)
        literal = self._geometry_literal(b)
        kind = _SPATIAL[op]
        kind = flip.get(kind, kind)
        if op == "s_dwithin":
            if len(args) < 3 or isinstance(args[2], bool) or not isinstance(args[2], int | float):
                msg = "S_DWITHIN needs a distance in metres as its third argument"
                raise FilterError(msg)
            metres = float(args[2])
            if not 0 <= metres <= 100_000:
                msg = "S_DWITHIN distance must be between 0 and 100000 metres"
                raise FilterError(msg)
            metric = gcrs.to_metric([literal])[0]
            literal = gcrs.from_metric([shapely.buffer(metric, metres, quad_segs=32)])[0]
        if top and kind in _PREFILTERABLE:
            bx = shapely.bounds(literal)
            self.envelopes.append((float(bx[0]), float(bx[1]), float(bx[2]), float(bx[3])))
        self.params.append(kind)
        self.params.append(shapely.to_wkb(literal))
        return "(gm_spatial(?, t.geom, ?) = 1)"

    # ---------------------------------------------------------------- temporal

    def _temporal(self, op: str, args: list[Any]) -> str:
        """CQL2 temporal predicates on an instant property, by the standard's definitions.

        The property is an instant ``[x, x]``; the literal is an instant or an interval
        whose open ends (``..``) are minus/plus infinity.
        """
        a, b = args
        if not (isinstance(a, dict) and "property" in a):
            a, b = b, a
            op = _CONVERSE.get(op, op)
        col, prop = self._column(a)
        if prop is None or prop.type not in ("date", "datetime"):
            msg = "temporal predicates apply to date or datetime properties"
            raise FilterError(msg)
        start, end = _instant_or_interval(b)
        end = start if end is None else end
        if prop.type == "date":
            start = start if start == ".." else start[:10]
            end = end if end == ".." else end[:10]
        lo = "-inf" if start == ".." else start
        hi = "+inf" if end == ".." else end

        def cmp(rel: str, bound: str) -> str:
            if bound in ("-inf", "+inf"):
                below = bound == "+inf"  # every instant lies below +inf, above -inf
                truth = {"<": below, "<=": below, ">": not below, ">=": not below, "=": False}
                return "1" if truth[rel] else "0"
            self.params.append(bound)
            return f"{col} {rel} ?"

        def all_(*parts: str) -> str:
            return "(" + " AND ".join(parts) + ")"

        rules = {
            "t_after": lambda: all_(cmp(">", hi)),
            "t_before": lambda: all_(cmp("<", lo)),
            "t_contains": lambda: all_(cmp("<", lo), cmp(">", hi)),
            "t_disjoint": lambda: "(" + cmp(">", hi) + " OR " + cmp("<", lo) + ")",
            "t_during": lambda: all_(cmp(">", lo), cmp("<", hi)),
            "t_equals": lambda: all_(cmp("=", lo), cmp("=", hi)),
            "t_finishedby": lambda: all_(cmp("<", lo), cmp("=", hi)),
            "t_finishes": lambda: all_(cmp(">", lo), cmp("=", hi)),
            "t_intersects": lambda: all_(cmp(">=", lo), cmp("<=", hi)),
            "t_meets": lambda: all_(cmp("=", lo)),
            "t_metby": lambda: all_(cmp("=", hi)),
            "t_overlappedby": lambda: all_(cmp(">", lo), cmp("<", hi), cmp(">", hi)),
            "t_overlaps": lambda: all_(cmp("<", lo), cmp(">", lo), cmp("<", hi)),
            "t_startedby": lambda: all_(cmp("=", lo), cmp(">", hi)),
            "t_starts": lambda: all_(cmp("=", lo), cmp("<", hi)),
        }
        rule = rules.get(op)
        if rule is None:
            msg = f"temporal operator {op[:20]!r} is not supported"
            raise FilterError(msg)
        return f"({col} IS NOT NULL AND {rule()})"

    # ---------------------------------------------------------------- arrays

    def _array(self, op: str, args: list[Any]) -> str:
        a, b = args
        if not (isinstance(a, dict) and "property" in a):
            msg = "array predicates take a list property first"
            raise FilterError(msg)
        prop = self._prop(a)
        if prop is None or prop.type != "list":
            msg = "array predicates apply to list properties such as tags"
            raise FilterError(msg)
        values = b if isinstance(b, list) else [b]
        if not all(isinstance(v, str) for v in values):
            msg = "array predicates compare with a list of strings"
            raise FilterError(msg)
        col = '"t"."' + prop.name + '"'
        self.params.append(json.dumps(values, ensure_ascii=False))
        inner = "SELECT value FROM json_each(?)"
        mine = f"SELECT value FROM json_each(coalesce({col}, '[]'))"
        if op == "a_contains":  # the property holds every listed value
            return f"(NOT EXISTS ({inner} EXCEPT {mine}))"
        if op == "a_containedby":
            return f"(NOT EXISTS ({mine} EXCEPT {inner}))"
        if op == "a_overlaps":
            return f"(EXISTS ({inner} INTERSECT {mine}))"
        if op == "a_equals":
            self.params.append(self.params[-1])
            return f"(NOT EXISTS ({inner} EXCEPT {mine}) AND NOT EXISTS ({mine} EXCEPT {inner}))"
        msg = f"array operator {op[:20]!r} is not supported"
        raise FilterError(msg)


def _local_iso(value: Any) -> str:
    """A CQL2 date/timestamp as the naive local ISO text the store keeps."""
    if not isinstance(value, str):
        msg = "dates and timestamps must be strings"
        raise FilterError(msg)
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value).isoformat()
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        msg = f"not an ISO 8601 date or timestamp: {value[:40]!r}"
        raise FilterError(msg) from None
    if t.tzinfo is not None:
        t = t.astimezone(LOCAL_TZ).replace(tzinfo=None)
    return t.isoformat()


def _instant_or_interval(node: Any) -> tuple[str | None, str | None]:
    if isinstance(node, dict) and "interval" in node:
        lo, hi = node["interval"]
        start = ".." if lo == ".." else _local_iso(lo["timestamp"] if isinstance(lo, dict) else lo)
        end = ".." if hi == ".." else _local_iso(hi["timestamp"] if isinstance(hi, dict) else hi)
        return start, end
    if isinstance(node, dict) and ("timestamp" in node or "date" in node):
        return _local_iso(node.get("timestamp") or node.get("date")), None
    msg = "temporal predicates compare with a TIMESTAMP, DATE or INTERVAL"
    raise FilterError(msg)


def compile_filter(
    value: str | dict[str, Any],
    layer: Layer,
    *,
    lang: str = "cql2-text",
    filter_crs: str = gcrs.CRS84,
) -> CompiledFilter:
    """Parse and compile a CQL2 filter for ``layer`` in one step."""
    return Compiler(layer, filter_crs=filter_crs).compile(parse(value, lang))


def datetime_filter(value: str, layer: Layer) -> CompiledFilter:
    """The OGC ``datetime`` parameter (instant or ``start/end`` with ``..``) as a filter."""
    if layer.temporal is None:
        msg = f"collection {layer.id} has no time dimension; drop the datetime parameter"
        raise FilterError(msg)
    col = '"t"."' + layer.temporal + '"'
    used = frozenset({layer.temporal})
    if "/" in value:
        lo, hi = value.split("/", 1)
        params: list[Any] = []
        cond = []
        if lo not in ("", ".."):
            params.append(_local_iso(lo))
            cond.append(f"{col} >= ?")
        if hi not in ("", ".."):
            params.append(_local_iso(hi))
            cond.append(f"{col} <= ?")
        if not cond:
            return CompiledFilter(f"({col} IS NOT NULL)", properties=used)
        return CompiledFilter("(" + " AND ".join(cond) + ")", params, properties=used)
    iso = _local_iso(value)
    if len(iso) == 10:
        return CompiledFilter(f"(substr({col}, 1, 10) = ?)", [iso], properties=used)
    return CompiledFilter(f"({col} = ?)", [iso], properties=used)
