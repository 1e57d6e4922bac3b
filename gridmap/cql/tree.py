"""The checked, backend-neutral CQL2 tree: what a filter means, with no SQL in it.

Every property is a real property of the layer (with its type), every literal is typed
and in range, geometries are WGS84, times are the store's local (Beijing) ISO text.
The operands of a comparison are of one type: a time is compared with a time of the same
type only (:mod:`gridmap.cql.times`), never with text.
Each backend renders this tree in its own dialect.
"""

from __future__ import annotations

from dataclasses import dataclass

import shapely
from shapely.geometry.base import BaseGeometry

from gridmap.crs import from_metric, to_metric

ValueType = str
"""'num', 'str', 'bool', 'date', 'datetime' or 'list'."""


@dataclass(frozen=True)
class Prop:
    """A property of the layer (``id`` is the feature id)."""

    name: str
    type: ValueType


@dataclass(frozen=True)
class Lit:
    """A typed literal: numbers finite and within 64-bit integers, dates and timestamps
    as the text the store keeps (:func:`gridmap.cql.times.cast`)."""

    value: str | int | float | bool
    type: ValueType


@dataclass(frozen=True)
class Arith:
    """``left op right`` with op one of + - * / % div ^ (numbers only)."""

    op: str
    left: Expr
    right: Expr
    type: ValueType = "num"


@dataclass(frozen=True)
class Fold:
    """CASEI (lower case) or ACCENTI (diacritics removed) of a text expression."""

    op: str
    arg: Expr
    type: ValueType = "str"


@dataclass(frozen=True)
class Cast:
    """A date expression read as a timestamp: its local midnight (as SQL casts a date)."""

    arg: Expr
    type: ValueType = "datetime"


Expr = Prop | Lit | Arith | Fold | Cast


@dataclass(frozen=True)
class Const:
    """TRUE or FALSE."""

    value: bool


@dataclass(frozen=True)
class And:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class Compare:
    """``left op right`` with op one of = <> < <= > >= (both sides of one type)."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Like:
    """CQL2 LIKE: case-sensitive; ``%`` any run, ``_`` one character, ``\\`` escapes."""

    value: Expr
    pattern: Expr


@dataclass(frozen=True)
class Between:
    value: Expr
    low: Expr
    high: Expr


@dataclass(frozen=True)
class In:
    value: Expr
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class IsNull:
    value: Expr


@dataclass(frozen=True)
class Spatial:
    """The feature's geometry in relation ``op`` to a literal (feature first):
    intersects, within, contains, disjoint, equals, touches, crosses, overlaps, or
    dwithin (``distance_m`` metres)."""

    op: str
    geometry: BaseGeometry
    distance_m: float | None = None

    def metric_literal(self) -> BaseGeometry:
        """The literal in the metric CRS (EPSG:4547), where DWITHIN measures (computed once)."""
        cached = self.__dict__.get("_metric")
        if cached is None:
            cached = to_metric([self.geometry])[0]
            object.__setattr__(self, "_metric", cached)
        return cached

    def reach(self) -> tuple[float, float, float, float]:
        """Lon/lat bounds that every feature within ``distance_m`` of the literal meets
        (for an index prefilter): the literal's metric box widened by the distance, its
        edges densified before they are unprojected (a box, not a buffer: the same for a
        line of a thousand points as for a point)."""
        d = (self.distance_m or 0.0) * 1.01 + 0.5
        x0, y0, x1, y1 = shapely.bounds(self.metric_literal())
        box = shapely.segmentize(shapely.box(x0 - d, y0 - d, x1 + d, y1 + d), 50.0)
        lx0, ly0, lx1, ly1 = shapely.bounds(from_metric([box])[0])
        return (float(lx0), float(ly0), float(lx1), float(ly1))


@dataclass(frozen=True)
class Temporal:
    """A date/datetime property (an instant) in relation ``op`` to an instant or interval
    [``start``, ``end``] of the property's type; None is an open end. Property first."""

    op: str
    prop: Prop
    start: str | None
    end: str | None


@dataclass(frozen=True)
class Array:
    """A list property in relation ``op`` (contains, containedby, overlaps, equals) to a
    list of strings; property first."""

    op: str
    prop: Prop
    values: tuple[str, ...]


Node = Const | And | Or | Not | Compare | Like | Between | In | IsNull | Spatial | Temporal | Array


@dataclass(frozen=True)
class Filter:
    """A checked filter for one layer, and the properties it reads (for the masking check)."""

    layer_id: str
    root: Node
    properties: frozenset[str]


TEMPORAL_RULES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "t_after": ("AND", ((">", "end"),)),
    "t_before": ("AND", (("<", "start"),)),
    "t_contains": ("AND", (("<", "start"), (">", "end"))),
    "t_disjoint": ("OR", ((">", "end"), ("<", "start"))),
    "t_during": ("AND", ((">", "start"), ("<", "end"))),
    "t_equals": ("AND", (("=", "start"), ("=", "end"))),
    "t_finishedby": ("AND", (("<", "start"), ("=", "end"))),
    "t_finishes": ("AND", ((">", "start"), ("=", "end"))),
    "t_intersects": ("AND", ((">=", "start"), ("<=", "end"))),
    "t_meets": ("AND", (("=", "start"),)),
    "t_metby": ("AND", (("=", "end"),)),
    "t_overlappedby": ("AND", ((">", "start"), ("<", "end"), (">", "end"))),
    "t_overlaps": ("AND", (("<", "start"), (">", "start"), ("<", "end"))),
    "t_startedby": ("AND", (("=", "start"), (">", "end"))),
    "t_starts": ("AND", (("=", "start"), ("<", "end"))),
}
"""CQL2's temporal predicates on an instant property x against an interval [start, end]:
how the parts ``x rel bound`` combine (every backend renders these the same way)."""


def beyond_open_end(rel: str, at_start: bool) -> bool:
    """The truth of ``x rel bound`` when the bound is an open end (-inf at the start,
    +inf at the end): every instant lies above -inf and below +inf."""
    below = not at_start  # x < +inf
    return {"<": below, "<=": below, ">": not below, ">=": not below, "=": False}[rel]
