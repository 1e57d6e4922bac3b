"""CQL2 filters: parsed by the ``cql2`` package, checked into a backend-neutral tree.

``check_filter`` is the one entry point: text or JSON in, a :class:`~gridmap.cql.tree.Filter`
for one layer out (or a :class:`FilterError`, a 400). Backends render the tree in their
own SQL (the GeoPackage store: :mod:`gridmap.store.sqlite_filter`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from gridmap import crs as gcrs
from gridmap.cql import times, tree
from gridmap.cql.check import Checker, FilterError, local_iso
from gridmap.cql.parse import LANGS, parse
from gridmap.cql.tree import Filter
from gridmap.layers import Layer

__all__ = [
    "LANGS",
    "Filter",
    "FilterError",
    "check_filter",
    "datetime_filter",
    "equal_time",
    "one_of",
    "parse",
    "times",
    "tree",
    "within_calendar",
]


def check_filter(
    value: str | dict[str, Any],
    layer: Layer,
    *,
    lang: str = "cql2-text",
    filter_crs: str = gcrs.CRS84,
) -> Filter:
    """Parse and check a CQL2 filter for ``layer``."""
    return Checker(layer, filter_crs=filter_crs).check(parse(value, lang))


def datetime_filter(value: str, layer: Layer) -> Filter:
    """The OGC ``datetime`` parameter (instant or ``start/end`` with ``..``) as a filter.

    An interval includes both ends; a date alone means that whole day. Instants are
    compared as instants (an offset is converted to local time, :mod:`.times`).
    """
    if layer.temporal is None:
        msg = f"collection {layer.id} has no time dimension; drop the datetime parameter"
        raise FilterError(msg)
    kind = "datetime" if layer.by_name[layer.temporal].type == "datetime" else "date"
    prop = tree.Prop(layer.temporal, kind)
    lo, hi = value.split("/", 1) if "/" in value else (value, value)
    start = None if lo in ("", "..") else _bound(lo, kind, end=False)
    end = None if hi in ("", "..") else _bound(hi, kind, end=True)
    if start is not None and end is not None and start > end:
        msg = "datetime interval ends before it starts"
        raise FilterError(msg)
    root = tree.Temporal("t_intersects", prop, start, end)
    return Filter(layer.id, root, frozenset({layer.temporal}))


def _bound(value: str, kind: str, *, end: bool) -> str:
    """One end of a ``datetime`` parameter in the property's type; a date as the end of a
    timestamp interval is the last instant of that day."""
    natural = local_iso(value)
    if end and kind == "datetime" and len(natural) == 10:
        return natural + "T23:59:59.999999"
    return times.cast(natural, kind)


def equal_time(layer: Layer, name: str, value: str | dt.date) -> Filter:
    """A ``property=value`` query parameter on a date or timestamp property as a filter:
    the value cast to the property's type (:mod:`.times`; FilterError, a 400, when it is
    no ISO 8601 date or timestamp), so both backends compare instants as instants."""
    kind = layer.by_name[name].type
    if kind not in times.TIME_TYPES:
        msg = f"{name} is not a date or timestamp"
        raise FilterError(msg)
    if isinstance(value, dt.date):  # and datetime: naive is local time
        value = value.isoformat()
    try:
        lit = tree.Lit(times.cast(value, kind), kind)
    except ValueError as exc:
        msg = f"{name}: {exc}"
        raise FilterError(msg) from None
    root = tree.Compare("=", tree.Prop(name, kind), lit)
    return Filter(layer.id, root, frozenset({name}))


def within_calendar(layer: Layer, name: str) -> Filter:
    """A filter keeping the features whose date or timestamp ``name`` is one of the years
    1–9999 (the extent of what a layer holds leaves out what another program stored that
    is no such date: an infinity, a BC date, text)."""
    kind = layer.by_name[name].type
    if kind not in times.TIME_TYPES:
        msg = f"{name} is not a date or timestamp"
        raise FilterError(msg)
    lo, hi = times.cast("0001-01-01", kind), times.cast("9999-12-31T23:59:59.999999", kind)
    root = tree.Between(tree.Prop(name, kind), tree.Lit(lo, kind), tree.Lit(hi, kind))
    return Filter(layer.id, root, frozenset({name}))


def one_of(layer: Layer, name: str, values: Sequence[int]) -> Filter:
    """A filter keeping the features whose integer ``name`` is one of ``values`` (built
    here, not parsed: a list of ids the code holds)."""
    if name != "id" and layer.by_name[name].type != "int":
        msg = f"{name} is not an integer property"
        raise FilterError(msg)
    items = tuple(tree.Lit(int(v), "num") for v in values)
    return Filter(layer.id, tree.In(tree.Prop(name, "num"), items), frozenset({name}))
