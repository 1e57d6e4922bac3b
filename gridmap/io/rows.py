"""An import table turned into candidate features: WGS84 geometries, typed values, row numbers.

Coordinates come from the file's geometries, from coordinate columns (经度/纬度), from a WKT
column, or — for households — from the building an address names. A file that carries no
CRS needs one declared; GCJ-02 and BD-09 are converted here, any EPSG code through PROJ.
Problems are noted by row in the report; nothing here reads more than the buildings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry.base import BaseGeometry

from gridmap import crs as gcrs
from gridmap.errors import InvalidFeatureError
from gridmap.io import fields
from gridmap.io.fields import ColumnMap
from gridmap.io.report import Report
from gridmap.io.sources import Table
from gridmap.io.text import normalise_address
from gridmap.layers import Layer, Prop
from gridmap.store import FeatureStore, Query

SHORTHANDS = {
    "wgs84": "EPSG:4326",
    "cgcs2000": "EPSG:4490",
    "gcj02": "gcj02",
    "gcj-02": "gcj02",
    "bd09": "bd09",
    "bd-09": "bd09",
}
_COINCIDENT = (4326, 4490)  # CGCS2000 is taken as WGS84 (sub-metre here)


class CRSDeclarationError(InvalidFeatureError):
    """The coordinates' CRS is missing or unknown; the message says how to declare it."""


@dataclass
class Candidates:
    """The rows that could be read, in file order (``rows`` as the user numbers them)."""

    rows: list[int] = field(default_factory=list)
    geometries: list[BaseGeometry] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int | None] = field(default_factory=list)
    named_grids: list[str | None] = field(default_factory=list)
    source_geometries: list[BaseGeometry | None] = field(default_factory=list)
    """Coordinates as the file holds them (before conversion), for the GCJ-02 check."""


def resolve_crs(declared: str | None, carried: str | None) -> str:
    """The source CRS: ``gcj02``, ``bd09`` or ``EPSG:n``; the declared one wins."""
    value = declared or carried
    if not value:
        msg = (
            "the file carries no coordinate system; declare it with --crs (wgs84, cgcs2000, "
            "gcj02 for Amap/Tencent, bd09 for Baidu, or EPSG:n)"
        )
        raise CRSDeclarationError(msg)
    short = SHORTHANDS.get(value.strip().lower())
    if short in ("gcj02", "bd09"):
        return short
    try:
        code = CRS.from_user_input(short or value).to_epsg(min_confidence=70)
    except CRSError:
        code = None
    if code is None:
        msg = f"unknown coordinate system {value[:60]!r}; declare one with --crs (wgs84, EPSG:n…)"
        raise CRSDeclarationError(msg)
    return f"EPSG:{code}"


def to_wgs84(geoms: np.ndarray, source: str) -> np.ndarray:
    """Geometries in ``source`` (x east, y north) as WGS84 lon/lat. Vectorised."""
    if source == "gcj02":
        return shapely.transform(geoms, lambda x, y: gcrs.gcj02_to_wgs84(x, y), interleaved=False)
    if source == "bd09":
        return shapely.transform(geoms, lambda x, y: gcrs.bd09_to_wgs84(x, y), interleaved=False)
    code = int(source.split(":")[1])
    if code in _COINCIDENT:
        return geoms
    t = Transformer.from_crs(CRS.from_epsg(code), CRS.from_epsg(4326), always_xy=True)
    return shapely.transform(geoms, lambda x, y: t.transform(x, y), interleaved=False)


def _points(table: Table, cmap: ColumnMap, report: Report) -> list[BaseGeometry | None]:
    lon, lat = cmap.role("lon"), cmap.role("lat")
    out: list[BaseGeometry | None] = []
    for i in range(len(table)):
        x, y = table.values[lon][i], table.values[lat][i]  # type: ignore[index]
        if x is None and y is None:
            out.append(None)
            continue
        try:
            out.append(shapely.Point(float(x), float(y)))
        except (TypeError, ValueError):
            report.add(
                _row(table, i), f"coordinates {str(x)[:20]!r}, {str(y)[:20]!r} are not numbers"
            )
            out.append(None)
    return out


def _wkt(table: Table, cmap: ColumnMap, report: Report) -> list[BaseGeometry | None]:
    col = cmap.role("wkt")
    out: list[BaseGeometry | None] = []
    for i, v in enumerate(table.values[col]):  # type: ignore[index]
        if v is None:
            out.append(None)
            continue
        try:
            out.append(shapely.from_wkt(str(v)))
        except shapely.errors.GEOSException:
            report.add(_row(table, i), f"{col}: not a WKT geometry")
            out.append(None)
    return out


def _row(table: Table, i: int) -> int:
    """Row number as the user sees it: spreadsheets count the header row."""
    return i + 2 if table.format in ("CSV", "XLSX") else i + 1


def _buildings(store: FeatureStore) -> dict[str, tuple[int, BaseGeometry] | None]:
    """Buildings by normalised address → (id, the point a household there is placed at);
    None for an address that several buildings share (a roster cannot say which)."""
    fs = store.query("buildings", Query())
    out: dict[str, tuple[int, BaseGeometry] | None] = {}
    for fid, props, g in zip(fs.ids.tolist(), fs.properties, fs.geometries, strict=True):
        lon, lat = props.get("entrance_lon"), props.get("entrance_lat")
        at = shapely.Point(lon, lat) if lon is not None and lat is not None else None
        if at is None or not g.covers(at):
            at = g.point_on_surface()
        key = normalise_address(props["address"])
        out[key] = None if key in out else (int(fid), at)
    return out


def candidates(
    store: FeatureStore,
    layer: Layer,
    table: Table,
    cmap: ColumnMap,
    declared_crs: str | None,
    report: Report,
) -> Candidates:
    """Rows of ``table`` as candidate features of ``layer`` (problems noted in ``report``);
    the source CRS (declared, else the file's) is resolved only if coordinates are given."""
    n = len(table)
    if table.geometries is not None:
        raw: list[BaseGeometry | None] = list(table.geometries)
    elif cmap.role("lon") and cmap.role("lat"):
        raw = _points(table, cmap, report)
    elif cmap.role("wkt"):
        raw = _wkt(table, cmap, report)
    else:
        raw = [None] * n
    by_address = None
    address_col = cmap.role("address") if "address" not in layer.by_name else None
    if address_col is not None and "building_id" in layer.by_name:
        by_address = _buildings(store)
    has_coords = any(g is not None for g in raw)
    header = fields.header_crs(cmap) if table.geometries is None else None
    if header is not None and header[1] and declared_crs is None:  # our own lat/lon CSV
        raw = [None if g is None else shapely.transform(g, lambda c: c[:, ::-1]) for g in raw]
    carried = table.crs or (header[0] if header else None)
    source = resolve_crs(declared_crs, carried) if has_coords else None
    report.crs = source
    converted = (
        to_wgs84(np.asarray(raw, dtype=object), source)
        if has_coords and source is not None
        else np.asarray(raw, dtype=object)
    )
    out = Candidates()
    id_col, grid_col = cmap.role("id"), cmap.role("grid")
    for i in range(n):
        row = _row(table, i)
        try:
            props = fields.row_values(layer, cmap, table.values, i)
        except ValueError as exc:
            report.add(row, str(exc))
            continue
        geom = converted[i]
        if by_address is not None:
            addr = table.values[address_col][i]  # type: ignore[index]
            key = normalise_address(str(addr)) if addr is not None else None
            hit = by_address.get(key) if key is not None else None
            if key is not None and hit is None:
                why = "several buildings" if key in by_address else "no building"
                report.add(row, f"address {str(addr)[:60]!r} matches {why}", "unmatched")
                continue
            if hit is not None:
                props.setdefault("building_id", hit[0])
                if geom is None:
                    geom = hit[1]
        if geom is None:
            report.add(row, "no location: give coordinates (经度/纬度), a geometry or an address")
            continue
        fid = None
        if id_col is not None and table.values[id_col][i] is not None:
            try:
                fid = int(fields.convert(_ID, table.values[id_col][i]))
            except (ValueError, TypeError):
                report.add(row, f"{id_col}: not a feature id")
                continue
        named = table.values[grid_col][i] if grid_col is not None else None
        out.rows.append(row)
        out.geometries.append(geom)
        out.properties.append(props)
        out.ids.append(fid)
        out.named_grids.append(None if named is None else fields._number_text(named))
        out.source_geometries.append(raw[i])
    return out


_ID = Prop("id", "int", "编号", "Id", minimum=1)
