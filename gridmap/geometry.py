"""Geometry checks (GeoJSON as sent, validity, type, service area) and GeoPackage blob codec."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap.errors import InvalidGeometryError

MAX_VERTICES = 100_000
"""Most vertices one geometry may have."""

_TYPE_NAMES = np.array(
    [
        "Point",
        "LineString",
        "LinearRing",
        "Polygon",
        "MultiPoint",
        "MultiLineString",
        "MultiPolygon",
        "GeometryCollection",
    ]
)
_GEOJSON_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
}


# --------------------------------------------------------------------------------------
# GeoJSON geometry as sent
# --------------------------------------------------------------------------------------


def _position(p: Any, where: str) -> tuple[float, float]:
    if not isinstance(p, list | tuple) or len(p) < 2 or len(p) > 3:
        msg = f"{where}: a position must be [lon, lat] (2 or 3 numbers), got {_short(p)}"
        raise InvalidGeometryError(msg)
    out = []
    for v in p[:2]:
        if isinstance(v, bool) or not isinstance(v, int | float):
            msg = f"{where}: coordinates must be numbers, got {_short(v)}"
            raise InvalidGeometryError(msg)
        if not math.isfinite(v):
            msg = f"{where}: coordinates must be finite numbers (no NaN or Infinity)"
            raise InvalidGeometryError(msg)
        out.append(float(v))
    return out[0], out[1]


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _ring(r: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(r, list):
        msg = f"{where}: a ring must be an array of positions"
        raise InvalidGeometryError(msg)
    pts = [_position(p, f"{where}[{i}]") for i, p in enumerate(r)]
    if len(pts) < 4:
        msg = f"{where}: a polygon ring needs at least 4 positions (first = last), got {len(pts)}"
        raise InvalidGeometryError(msg)
    if pts[0] != pts[-1]:
        msg = f"{where}: polygon ring is not closed (first position must equal the last)"
        raise InvalidGeometryError(msg)
    return pts


def _line(c: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(c, list):
        msg = f"{where}: a line must be an array of positions"
        raise InvalidGeometryError(msg)
    pts = [_position(p, f"{where}[{i}]") for i, p in enumerate(c)]
    if len(pts) < 2:
        msg = f"{where}: a LineString needs at least 2 positions, got {len(pts)}"
        raise InvalidGeometryError(msg)
    return pts


def _polygon(c: Any, where: str) -> list[list[tuple[float, float]]]:
    if not isinstance(c, list) or not c:
        msg = f"{where}: a Polygon must be a non-empty array of rings"
        raise InvalidGeometryError(msg)
    return [_ring(r, f"{where}[{i}]") for i, r in enumerate(c)]


def from_geojson(obj: Any) -> BaseGeometry:
    """Parse a GeoJSON geometry object strictly; raise InvalidGeometryError saying what is wrong.

    Checks what shapely would silently accept: unclosed rings, too few positions,
    non-numeric or non-finite coordinates, unknown types, too many vertices.
    """
    if not isinstance(obj, Mapping):
        msg = "geometry must be a GeoJSON geometry object"
        raise InvalidGeometryError(msg)
    gtype = obj.get("type")
    if gtype not in _GEOJSON_TYPES:
        msg = f"unsupported geometry type {_short(gtype)}; use one of {sorted(_GEOJSON_TYPES)}"
        raise InvalidGeometryError(msg)
    if "coordinates" not in obj:
        msg = f"{gtype} geometry has no 'coordinates'"
        raise InvalidGeometryError(msg)
    c = obj["coordinates"]
    count = _count_positions(c)
    if count > MAX_VERTICES:
        msg = f"geometry has {count} positions; at most {MAX_VERTICES} are accepted"
        raise InvalidGeometryError(msg)
    if gtype == "Point":
        return shapely.Point(_position(c, "coordinates"))
    if gtype == "LineString":
        return shapely.LineString(_line(c, "coordinates"))
    if gtype == "Polygon":
        rings = _polygon(c, "coordinates")
        return shapely.Polygon(rings[0], rings[1:])
    if not isinstance(c, list) or not c:
        msg = f"{gtype} coordinates must be a non-empty array"
        raise InvalidGeometryError(msg)
    if gtype == "MultiPoint":
        return shapely.MultiPoint([_position(p, f"coordinates[{i}]") for i, p in enumerate(c)])
    if gtype == "MultiLineString":
        return shapely.MultiLineString([_line(x, f"coordinates[{i}]") for i, x in enumerate(c)])
    polys = [_polygon(x, f"coordinates[{i}]") for i, x in enumerate(c)]
    return shapely.MultiPolygon([(p[0], p[1:]) for p in polys])


def _count_positions(c: Any, depth: int = 0) -> int:
    if depth > 4:
        msg = "geometry coordinates are nested too deeply"
        raise InvalidGeometryError(msg)
    if isinstance(c, list) and c and isinstance(c[0], list):
        return sum(_count_positions(x, depth + 1) for x in c)
    return 1


# --------------------------------------------------------------------------------------
# Checks on shapely geometries
# --------------------------------------------------------------------------------------


def check_geometries(
    geoms: npt.ArrayLike,
    *,
    accepted_types: frozenset[str],
    service_area: BaseGeometry | None = None,
    layer_id: str = "",
) -> None:
    """Raise InvalidGeometryError unless every geometry is usable. Vectorised over arrays.

    A usable geometry is non-empty, of an accepted type, with finite coordinates, valid
    (the reason and location of the first problem are reported), within the vertex cap,
    and inside ``service_area`` when one is given.
    """
    arr = np.asarray(geoms, dtype=object)
    label = f" for layer {layer_id}" if layer_id else ""
    if arr.size == 0:
        return
    missing = shapely.is_missing(arr)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        msg = f"feature {i}: geometry is missing{label}"
        raise InvalidGeometryError(msg)
    types = shapely.get_type_id(arr)
    names = _TYPE_NAMES[types]
    bad_type = ~np.isin(names, sorted(accepted_types))
    if bad_type.any():
        i = int(np.flatnonzero(bad_type)[0])
        msg = (
            f"feature {i}: geometry type {names[i]} is not accepted{label}; "
            f"expected {' or '.join(sorted(accepted_types))}"
        )
        raise InvalidGeometryError(msg)
    empty = shapely.is_empty(arr)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        msg = f"feature {i}: geometry is empty{label}"
        raise InvalidGeometryError(msg)
    nverts = shapely.get_num_coordinates(arr)
    if (nverts > MAX_VERTICES).any():
        i = int(np.flatnonzero(nverts > MAX_VERTICES)[0])
        msg = f"feature {i}: {nverts[i]} vertices; at most {MAX_VERTICES} are accepted"
        raise InvalidGeometryError(msg)
    coords, index = shapely.get_coordinates(arr, return_index=True)
    finite = np.isfinite(coords).all(axis=1)
    if not finite.all():
        i = int(index[np.flatnonzero(~finite)[0]])
        msg = f"feature {i}: coordinates must be finite numbers (no NaN or Infinity)"
        raise InvalidGeometryError(msg)
    valid = shapely.is_valid(arr)
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        reason = shapely.is_valid_reason(arr[i])
        msg = f"feature {i}: invalid geometry: {reason}"
        raise InvalidGeometryError(msg)
    if service_area is not None:
        shapely.prepare(service_area)
        inside = shapely.covers(service_area, arr)
        if not inside.all():
            i = int(np.flatnonzero(~inside)[0])
            x, y = shapely.get_coordinates(arr[i])[0]
            msg = (
                f"feature {i}: geometry at ({x:.6f}, {y:.6f}) lies outside the service area; "
                "coordinates must be WGS84 longitude, latitude (lon first). If they were "
                "picked on an Amap/Tencent or Baidu map, declare crs gcj02 or bd09"
            )
            raise InvalidGeometryError(msg)


def promote(geoms: npt.ArrayLike, geometry_type: str) -> npt.NDArray[np.object_]:
    """Return geometries as the layer's declared type (Polygon → MultiPolygon when needed)."""
    arr = np.asarray(geoms, dtype=object)
    if geometry_type != "MultiPolygon":
        return arr
    out = arr.copy()
    is_poly = shapely.get_type_id(arr) == 3
    for i in np.flatnonzero(is_poly):
        out[i] = shapely.MultiPolygon([arr[i]])
    return out


# --------------------------------------------------------------------------------------
# GeoPackage binary geometry (GPKG spec §2.1.3)
# --------------------------------------------------------------------------------------

_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}
_HEADER = struct.Struct("<2sBBi4d")
_FLAGS_LE_XY_ENVELOPE = 0b0000_0011  # little-endian, envelope [minx, maxx, miny, maxy]


def to_gpkg_blobs(geoms: npt.ArrayLike, srs_id: int = 4326) -> list[bytes]:
    """Encode shapely geometries as GeoPackage geometry blobs with an XY envelope. Vectorised."""
    arr = np.asarray(geoms, dtype=object)
    wkb = shapely.to_wkb(arr, byte_order=1, flavor="iso", include_srid=False)
    bounds = shapely.bounds(arr)
    pack = _HEADER.pack
    return [
        pack(b"GP", 0, _FLAGS_LE_XY_ENVELOPE, srs_id, b[0], b[2], b[1], b[3]) + w
        for b, w in zip(bounds.tolist(), wkb, strict=True)
    ]


def _wkb_offset(blob: bytes) -> int:
    if len(blob) < 8 or blob[:2] != b"GP":
        msg = "not a GeoPackage geometry blob"
        raise InvalidGeometryError(msg)
    flags = blob[3]
    env = (flags >> 1) & 0b111
    if env not in _ENVELOPE_BYTES:
        msg = "GeoPackage geometry blob has an invalid envelope indicator"
        raise InvalidGeometryError(msg)
    return 8 + _ENVELOPE_BYTES[env]


def from_gpkg_blobs(blobs: Sequence[bytes | None]) -> npt.NDArray[np.object_]:
    """Decode GeoPackage geometry blobs to shapely geometries. Vectorised.

    None stays None, and so does anything that is not a geometry blob (another program may
    have written one): reads never fail on it, and `gridmap check` reports it.
    """
    wkb = [_wkb_of(b) for b in blobs]
    return shapely.from_wkb(np.asarray(wkb, dtype=object), on_invalid="ignore")


def _wkb_of(blob: Any) -> bytes | None:
    if not isinstance(blob, bytes | memoryview) or len(blob) < 8 or bytes(blob[:2]) != b"GP":
        return None
    try:
        return memoryview(blob)[_wkb_offset(blob) :].tobytes()
    except (IndexError, ValueError):
        return None


def blob_point(blob: bytes | None) -> tuple[float, float] | None:
    """(x, y) of a GeoPackage blob holding a 2D point, read straight from its WKB; None for
    any other geometry (a fast path for per-row SQL functions)."""
    wkb = _wkb_of(blob)
    if wkb is None or len(wkb) != 21:
        return None
    fmt = "<I2d" if wkb[0] == 1 else ">I2d"
    kind, x, y = struct.unpack_from(fmt, wkb, 1)
    if kind != 1 or x != x or y != y:  # not a point, or POINT EMPTY (NaN)
        return None
    return x, y


def blob_is_empty(blob: bytes | None) -> bool:
    """ST_IsEmpty for a GeoPackage blob (flag bit 4), as the R-tree triggers need; an
    unreadable blob counts as empty (it gets no R-tree entry; `gridmap check` reports it)."""
    if blob_point(blob) is not None:  # the common case, read without decoding
        return False
    g = from_gpkg_blobs([blob])[0]
    return g is None or bool(blob[3] & 0b0001_0000) or bool(shapely.is_empty(g))


def blob_envelope(blob: bytes | None) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) of a GeoPackage blob, from its header or its geometry."""
    p = blob_point(blob)
    if p is not None:  # a point has no envelope in its header: read it straight
        return p[0], p[0], p[1], p[1]
    if _wkb_of(blob) is None:
        return None
    env = (blob[3] >> 1) & 0b111
    if env != 0:
        fmt = "<4d" if blob[3] & 1 else ">4d"
        minx, maxx, miny, maxy = struct.unpack_from(fmt, blob, 8)
        return minx, maxx, miny, maxy
    g = from_gpkg_blobs([blob])[0]
    if g is None or g.is_empty:
        return None
    b = g.bounds
    return b[0], b[2], b[1], b[3]
