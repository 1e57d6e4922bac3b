"""File exports of feature sets: CSV safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import shapely

from gridmap.crs import CRS84, axis_swapped, is_geographic, to_output, transform_geometries
from gridmap.io.fields import crs_label
from gridmap.store.base import FeatureSet

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """A cell value that a spreadsheet will not run as a formula (prefixed with ')."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(
    fs: FeatureSet,
    *,
    properties: Sequence[str] | None = None,
    crs: str = CRS84,
    lon_first: bool = False,
    exact: bool = False,
) -> bytes:
    """Features as UTF-8 CSV (with BOM, for Excel): gridmap_id (the feature id, by which an
    import of the file updates the features it came from), properties, WKT geometry in ``crs``
    (WGS84 lon/lat by default; a CRS's own axis order, as in GeoJSON output).

    The geometry column's header names its CRS (``geometry_wkt(EPSG:4547)``; `` lat/lon``
    added where the CRS's own axis order puts latitude first, unless ``lon_first``);
    ``exact`` writes every digit (a file meant to come back) instead of about a centimetre.
    Values are as the caller's scope returned them (masked where it says so), and every
    text cell that a spreadsheet would read as a formula is neutralised.
    """
    names = list(properties) if properties is not None else list(fs.layer.names)
    out = io.StringIO()
    w = csv.writer(out)
    swapped = axis_swapped(crs) and not lon_first
    w.writerow(["gridmap_id", *names, f"geometry_wkt({crs_label(crs, swapped=swapped)})"])
    geoms = fs.geometries
    if len(fs):
        geoms = (
            transform_geometries(geoms, src=CRS84, dst=crs) if lon_first else to_output(geoms, crs)
        )
    digits = -1 if exact else 7 if is_geographic(crs) else 3  # about a centimetre either way
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
