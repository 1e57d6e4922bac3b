"""The neutral CQL2 tree rendered as PostgreSQL/PostGIS SQL over the table alias ``t``.

Semantics are CQL2's and match the GeoPackage backend (:mod:`.sqlite_filter`): text
compares by code point (``COLLATE "C"``), dates and timestamps as the database's date
and timestamp types (the checker made every literal compared with them one of their type,
:mod:`gridmap.cql.times`), LIKE is case-sensitive, CASEI and ACCENTI are
the functions of ``sql/postgis_schema.sql``; nulls are unknown; division by zero is
null. Spatial predicates are PostGIS's, with the literal as WKB, so GiST indexes serve
them; DWITHIN measures metres in the projected CRS (EPSG:4547) with an index prefilter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import shapely
from psycopg.types.json import Jsonb

from gridmap.cql import tree as t
from gridmap.crs import METRIC_EPSG


@dataclass
class CompiledFilter:
    """A SQL condition over alias ``t`` with its parameters (``%s`` placeholders)."""

    sql: str
    params: list[Any] = field(default_factory=list)


_CAST = {
    "date": "::date",
    "datetime": "::timestamp",
    "bool": "::boolean",
    "str": '::text COLLATE "C"',
}

# The feature geometry first, as in tree.Spatial; argument order as the GeoPackage
# backend evaluates them (shapely's predicate(literal, feature)).
_SPATIAL = {
    "intersects": "ST_Intersects({lit}, t.geom)",
    "within": "ST_Contains({lit}, t.geom)",
    "contains": "ST_Within({lit}, t.geom)",
    "disjoint": "ST_Disjoint({lit}, t.geom)",
    "equals": "ST_Equals(t.geom, {lit})",
    "touches": "ST_Touches({lit}, t.geom)",
    "crosses": "ST_Crosses({lit}, t.geom)",
    "overlaps": "ST_Overlaps({lit}, t.geom)",
}


def render(f: t.Filter) -> CompiledFilter:
    """SQL for a checked filter."""
    r = _Renderer()
    return CompiledFilter(r.node(f.root), r.params)


class _Renderer:
    def __init__(self) -> None:
        self.params: list[Any] = []

    def bind(self, value: Any, cast: str = "") -> str:
        self.params.append(value)
        return "%s" + cast

    # ------------------------------------------------------------------ conditions

    def node(self, n: t.Node) -> str:
        match n:
            case t.Const(value=v):
                return "TRUE" if v else "FALSE"
            case t.And(args=args):
                return "(" + " AND ".join(self.node(a) for a in args) + ")"
            case t.Or(args=args):
                return "(" + " OR ".join(self.node(a) for a in args) + ")"
            case t.Not(arg=a):
                return f"(NOT {self.node(a)})"
            case t.Compare(op=op, left=a, right=b):
                x, y = self.operands(a, b)
                return f"({x} {op} {y})"
            case t.Like(value=v, pattern=p):
                if isinstance(p, t.Lit) and isinstance(p.value, str):
                    # a lone backslash at the end stands for itself (as the GeoPackage
                    # store matches); PostgreSQL would refuse the pattern
                    tail = len(p.value) - len(p.value.rstrip("\\"))
                    if tail % 2:
                        p = t.Lit(p.value + "\\", p.type)
                    return f"({self.expr(v)} LIKE {self.expr(p)})"
                # a pattern from the data: the same rule in SQL (an odd run of backslashes
                # at the end gets one more), rendering the pattern once
                odd_tail = r"'((^|[^\\])(\\\\)*\\)$'"
                pat = f"regexp_replace({self.expr(p)}, {odd_tail}, '\\1\\\\')"
                return f"({self.expr(v)} LIKE {pat})"
            case t.Between(value=v, low=lo, high=hi):
                x, low, high = self.operands(v, lo, hi)
                return f"({x} BETWEEN {low} AND {high})"
            case t.In(value=v, items=items):
                if not items:
                    return "FALSE"
                x, *ys = self.operands(v, *items)
                return f"({x} IN ({', '.join(ys)}))"
            case t.IsNull(value=v):
                return f"({self.expr(v)} IS NULL)"
            case t.Spatial():
                return self.spatial(n)
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
            case t.Prop(name=name):
                return 't."' + name.replace('"', '""') + '"'
            case t.Lit(value=v, type=ty):
                if isinstance(v, bool) or ty == "bool":
                    return self.bind(bool(v), "::boolean")
                if isinstance(v, int):
                    return self.bind(v, "::numeric")
                if isinstance(v, float):
                    return self.bind(v, "::float8")
                return "(" + self.bind(v, _CAST.get(ty, _CAST["str"])) + ")"
            case t.Fold(op=op, arg=a):
                return f"gm_{op}({self.expr(a)})"
            case t.Arith(op=op, left=a, right=b):
                return self.arith(op, self.expr(a), self.expr(b))
            case t.Cast(arg=a):
                return f"({self.expr(a)})::timestamp"
        msg = f"cannot render {type(e).__name__}"
        raise TypeError(msg)

    def operands(self, *exprs: t.Expr) -> list[str]:
        """Operands of one comparison (of one type: the checker cast text compared with a
        time to that time, :mod:`gridmap.cql.times`)."""
        return [self.expr(e) for e in exprs]

    @staticmethod
    def arith(op: str, x: str, y: str) -> str:
        """Arithmetic as SQLite does it: in doubles, integer division and remainder of the
        truncated operands, null (not an error) for a zero divisor or a power with no
        real value. (A double that overflows is an error here where SQLite gives
        infinity: the request is answered 400.)"""
        if op == "/":
            return f"({x}::float8 / NULLIF({y}::float8, 0))"
        if op == "div":
            return f"trunc(trunc({x}::numeric) / NULLIF(trunc({y}::numeric), 0))"
        if op == "%":
            return f"mod(trunc({x}::numeric), NULLIF(trunc({y}::numeric), 0))"
        if op == "^":
            return f"gm_pow({x}::float8, {y}::float8)"
        return f"({x}::float8 {op} {y}::float8)"

    # ------------------------------------------------------------------ predicates

    def spatial(self, s: t.Spatial) -> str:
        if s.op == "dwithin":
            corners = ", ".join(self.bind(v) for v in s.reach())
            box = f"ST_MakeEnvelope({corners}, 4326)"
            wkb = self.bind(shapely.to_wkb(s.geometry))
            lit = f"ST_Transform(ST_GeomFromWKB({wkb}, 4326), {METRIC_EPSG})"
            return (
                f"(t.geom && {box} AND ST_DWithin(ST_Transform(t.geom, {METRIC_EPSG}), {lit}, "
                f"{self.bind(float(s.distance_m or 0.0))}))"
            )
        lit = f"ST_GeomFromWKB({self.bind(shapely.to_wkb(s.geometry))}, 4326)"
        return "(" + _SPATIAL[s.op].format(lit=lit) + ")"

    def temporal(self, p: t.Temporal) -> str:
        """CQL2 temporal predicates on an instant property, by the standard's definitions
        (the literal an interval [lo, hi] whose open ends are minus/plus infinity)."""
        col = self.expr(p.prop)
        cast = _CAST.get(p.prop.type, "::timestamp")

        def cmp(rel: str, bound: str | None, low_end: bool) -> str:
            if bound is None:  # an open end
                return "TRUE" if t.beyond_open_end(rel, low_end) else "FALSE"
            return f"{col} {rel} {self.bind(bound, cast)}"  # bounds: the property's type

        joiner, parts = t.TEMPORAL_RULES[p.op]
        conds = [
            cmp(rel, p.start if end == "start" else p.end, end == "start") for rel, end in parts
        ]
        body = "(" + f" {joiner} ".join(conds) + ")"
        return f"(CASE WHEN {col} IS NULL THEN NULL ELSE {body} END)"

    def array(self, a: t.Array) -> str:
        """Set semantics (order and repeats do not matter); a null list is unknown."""
        col = self.expr(a.prop)
        given = self.bind(Jsonb(list(a.values)), "::jsonb")
        if a.op == "contains":
            cond = f"{col} @> {given}"
        elif a.op == "containedby":
            cond = f"{col} <@ {given}"
        elif a.op == "overlaps":
            cond = (
                f"EXISTS (SELECT 1 FROM jsonb_array_elements({given}) AS v "
                f"WHERE {col} @> jsonb_build_array(v))"
            )
        else:
            again = self.bind(Jsonb(list(a.values)), "::jsonb")
            cond = f"{col} @> {given} AND {col} <@ {again}"
        return f"(CASE WHEN jsonb_typeof({col}) = 'array' THEN ({cond}) ELSE NULL END)"


def list_contains(col: str) -> str:
    """SQL true where the list column holds the bound value (null where it is no list)."""
    return f"(CASE WHEN jsonb_typeof({col}) = 'array' THEN {col} @> %s::jsonb END)"


def one_item(value: Any) -> Jsonb:
    """The bound value for :func:`list_contains`."""
    return Jsonb([value])
