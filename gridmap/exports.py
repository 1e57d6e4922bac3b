"""File exports of feature sets: CSV safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import shapely

from gridmap.crs import CRS84, is_geographic, to_output
from gridmap.store.base import FeatureSet

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """A cell value that a spreadsheet will not run as a formula (prefixed with ')."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(fs: FeatureSet, *, properties: Sequence[str] | None = None, crs: str = CRS84) -> bytes:
    """Features as UTF-8 CSV (with BOM, for Excel): id, properties, WKT geometry in ``crs``
    (WGS84 lon/lat by default; a CRS's own axis order, as in GeoJSON output).

    Values are as the caller's scope returned them (masked where it says so), and every
    text cell that a spreadsheet would read as a formula is neutralised.
    """
    names = list(properties) if properties is not None else list(fs.layer.names)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", *names, "geometry_wkt"])
    geoms = to_output(fs.geometries, crs) if len(fs) else fs.geometries
    digits = 7 if is_geographic(crs) else 3  # about a centimetre either way
    wkt = shapely.to_wkt(geoms, rounding_precision=digits) if len(fs) else []
    for fid, props, g in zip(fs.ids.tolist(), fs.properties, wkt, strict=True):
        row = []
        for n in names:
            v = props.get(n)
            if isinstance(v, list):
                v = ";".join(str(x) for x in v)
            row.append(neutralise(v))
        w.writerow([fid, *row, g])
    return ("\ufeff" + out.getvalue()).encode("utf-8")
