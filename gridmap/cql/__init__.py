"""CQL2 filters: parsed by the ``cql2`` package, checked into a backend-neutral tree.

``check_filter`` is the one entry point: text or JSON in, a :class:`~gridmap.cql.tree.Filter`
for one layer out (or a :class:`FilterError`, a 400). Backends render the tree in their
own SQL (the GeoPackage store: :mod:`gridmap.store.sqlite_filter`).
"""

from __future__ import annotations

from typing import Any

from gridmap import crs as gcrs
from gridmap.cql import tree
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
    "parse",
    "tree",
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

    An interval includes both ends; a date alone means that whole day.
    """
    if layer.temporal is None:
        msg = f"collection {layer.id} has no time dimension; drop the datetime parameter"
        raise FilterError(msg)
    prop = tree.Prop(
        layer.temporal, "datetime" if layer.by_name[layer.temporal].type == "datetime" else "date"
    )
    used = frozenset({layer.temporal})
    if "/" in value:
        lo, hi = value.split("/", 1)
        start = None if lo in ("", "..") else local_iso(lo)
        end = None if hi in ("", "..") else local_iso(hi)
        if start is not None and end is not None and start > end:
            msg = "datetime interval ends before it starts"
            raise FilterError(msg)
    else:
        start = end = local_iso(value)
    if end is not None and len(end) == 10 and prop.type == "datetime":
        end += "T23:59:59.999999"  # a date as an end means the whole day
    root = tree.Temporal("t_intersects", prop, start, end)
    return Filter(layer.id, root, used)
