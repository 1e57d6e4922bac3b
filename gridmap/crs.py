"""Coordinate conversions: WGS84 ⇄ GCJ-02 ⇄ BD-09 (vectorised) and projection to metric CRSs.

Conventions
-----------
* Stored coordinates are WGS84 longitude/latitude (OGC CRS84 axis order). CGCS2000
  (EPSG:4490) is treated as coincident with WGS84.
* GCJ-02 ("Mars coordinates", Amap/Tencent) and BD-09 (Baidu) are not in PROJ; they are
  computed here with the published obfuscation formulas.
* **Outside China no shift is applied, for either GCJ-02 or BD-09**: a point whose WGS84
  longitude/latitude lies outside the rectangle ``72.004–137.8347 E, 0.8293–55.8271 N`` is
  returned unchanged by every conversion. This is the rectangle most implementations use
  (eviltransform, coordtransform, prcoords' rough test). Inside it, conversions agree with
  independent implementations to well under a centimetre.
* Inverses (GCJ-02 → WGS84, BD-09 → WGS84) are iterated to a round-trip error below 1e-9
  degrees (about 0.1 mm), far below the 0.01 m required.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from gridmap.errors import QueryError

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]

# Krasovsky 1940 ellipsoid, as used by the GCJ-02 algorithm.
_A = 6378245.0
_EE = 0.00669342162296594323
_X_PI = np.pi * 3000.0 / 180.0

CHINA_BOUNDS = (72.004, 0.8293, 137.8347, 55.8271)
"""(min lon, min lat, max lon, max lat) inside which GCJ-02/BD-09 shifts apply."""

METRIC_EPSG = 4547
"""CGCS2000 / 3-degree Gauss-Kruger CM 114E: the metric CRS for distances, areas, buffers."""

_MAX_ITER = 30
_STEP_TOL_DEG = 1e-7


def _as_arrays(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    x = np.asarray(lon, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    if x.shape != y.shape:
        msg = f"lon and lat must have the same shape, got {x.shape} and {y.shape}"
        raise ValueError(msg)
    return x, y


def in_china(lon: ArrayLike, lat: ArrayLike) -> npt.NDArray[np.bool_]:
    """Return True where a point lies inside the China rectangle where shifts apply.

    Vectorised over arrays.
    """
    x, y = _as_arrays(lon, lat)
    minx, miny, maxx, maxy = CHINA_BOUNDS
    return (x >= minx) & (x <= maxx) & (y >= miny) & (y <= maxy)


def _gcj_delta(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Offsets (dlon, dlat) in degrees that GCJ-02 adds to a WGS84 point.

    The published formula, rearranged so each sine is computed once (10 trig calls).
    """
    pi = np.pi
    dx = x - 105.0
    dy = y - 35.0
    px = pi * dx
    py = pi * dy
    # 20 sin(6πdx) + 20 sin(2πdx), shared by both offsets.
    common = np.sin(6.0 * px)
    common += np.sin(2.0 * px)
    common *= 20.0
    sqrt_abs_dx = np.sqrt(np.abs(dx))
    dxdy = dx * dy

    t_lat = 20.0 * np.sin(py)
    t_lat += 40.0 * np.sin(py / 3.0)
    t_lat += 160.0 * np.sin(py / 12.0)
    t_lat += 320.0 * np.sin(py / 30.0)
    t_lat += common
    t_lat *= 2.0 / 3.0
    t_lat += -100.0 + 2.0 * dx + 3.0 * dy + 0.2 * dy * dy + 0.1 * dxdy + 0.2 * sqrt_abs_dx

    t_lon = 20.0 * np.sin(px)
    t_lon += 40.0 * np.sin(px / 3.0)
    t_lon += 150.0 * np.sin(px / 12.0)
    t_lon += 300.0 * np.sin(px / 30.0)
    t_lon += common
    t_lon *= 2.0 / 3.0
    t_lon += 300.0 + dx + 2.0 * dy + 0.1 * dx * dx + 0.1 * dxdy + 0.1 * sqrt_abs_dx

    rad_lat = y * (pi / 180.0)
    sin_lat = np.sin(rad_lat)
    magic = 1.0 - _EE * sin_lat * sin_lat
    sqrt_magic = np.sqrt(magic)
    t_lat *= (magic * sqrt_magic) * (180.0 / (_A * (1.0 - _EE) * pi))
    t_lon *= sqrt_magic * (180.0 / (_A * pi))
    t_lon /= np.cos(rad_lat)
    return t_lon, t_lat


def wgs84_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert WGS84 lon/lat to GCJ-02. Vectorised; points outside China are unchanged."""
    x, y = _as_arrays(lon, lat)
    dlon, dlat = _gcj_delta(x, y)
    inside = in_china(x, y)
    return np.where(inside, x + dlon, x), np.where(inside, y + dlat, y)


def _gcj02_to_bd09_raw(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    z = np.sqrt(x * x + y * y) + 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) + 0.000003 * np.cos(x * _X_PI)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def gcj02_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert GCJ-02 lon/lat to BD-09. Vectorised; points outside China are unchanged."""
    x, y = _as_arrays(lon, lat)
    bx, by = _gcj02_to_bd09_raw(x, y)
    inside = in_china(x, y)
    return np.where(inside, bx, x), np.where(inside, by, y)


def wgs84_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert WGS84 lon/lat to BD-09 (via GCJ-02). Vectorised; outside China unchanged."""
    x, y = _as_arrays(lon, lat)
    gx, gy = wgs84_to_gcj02(x, y)
    bx, by = _gcj02_to_bd09_raw(gx, gy)
    inside = in_china(x, y)
    return np.where(inside, bx, x), np.where(inside, by, y)


def _invert(
    delta: Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]],
    tx: FloatArray,
    ty: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Solve ``p + delta(p) == t`` for p by fixed-point iteration ``p = t - delta(p)``.

    The shifts vary slowly (|d delta / dp| < 3e-3), so each step shrinks the error about
    300-fold; iteration stops once a step moves no point by more than 1e-7 degrees (1 cm), which
    bounds the remaining error by about 3e-10 degrees (0.03 mm).
    """
    x = tx.copy()
    y = ty.copy()
    for _ in range(_MAX_ITER):
        dx, dy = delta(x, y)
        nx = tx - dx
        ny = ty - dy
        step = max(
            float(np.nanmax(np.abs(nx - x), initial=0.0)),
            float(np.nanmax(np.abs(ny - y), initial=0.0)),
        )
        x, y = nx, ny
        if step < _STEP_TOL_DEG:
            break
    return x, y


def gcj02_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert GCJ-02 lon/lat to WGS84 by iterating the forward formula (error < 1e-9°).

    Vectorised. A point outside China is unchanged.
    """
    x, y = _as_arrays(lon, lat)
    wx, wy = _invert(_gcj_delta, x, y)
    inside = in_china(x, y)
    return np.where(inside, wx, x), np.where(inside, wy, y)


def _bd_delta(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    bx, by = _gcj02_to_bd09_raw(x, y)
    return bx - x, by - y


def bd09_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert BD-09 lon/lat to GCJ-02 by iterating the forward formula. Vectorised."""
    x, y = _as_arrays(lon, lat)
    gx, gy = _invert(_bd_delta, x, y)
    inside = in_china(x, y)
    return np.where(inside, gx, x), np.where(inside, gy, y)


def bd09_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Convert BD-09 lon/lat to WGS84 by iterating the composed forward formula. Vectorised."""
    gx, gy = bd09_to_gcj02(lon, lat)
    return gcj02_to_wgs84(gx, gy)


# --------------------------------------------------------------------------------------
# CRS identifiers and geometry transforms
# --------------------------------------------------------------------------------------

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
GCJ02 = "https://gridmap.dev/def/crs/GCJ-02"
BD09 = "https://gridmap.dev/def/crs/BD-09"


def _epsg_uri(code: int) -> str:
    return f"http://www.opengis.net/def/crs/EPSG/0/{code}"


SUPPORTED_CRS: dict[str, str] = {
    CRS84: "WGS 84 (lon, lat)",
    _epsg_uri(4326): "WGS 84 (lat, lon)",
    _epsg_uri(4490): "CGCS2000 (lat, lon)",
    _epsg_uri(3857): "Web Mercator",
    _epsg_uri(4547): "CGCS2000 / 3-degree Gauss-Kruger CM 114E",
    GCJ02: "GCJ-02 (Amap/Tencent, lon, lat)",
    BD09: "BD-09 (Baidu, lon, lat)",
}
"""Every CRS gridmap accepts and produces, by canonical URI."""

_ALIASES = {
    "crs84": CRS84,
    "ogc:crs84": CRS84,
    "urn:ogc:def:crs:ogc:1.3:crs84": CRS84,
    "gcj02": GCJ02,
    "gcj-02": GCJ02,
    "bd09": BD09,
    "bd-09": BD09,
}
for _code in (4326, 4490, 3857, 4547):
    _ALIASES[f"epsg:{_code}"] = _epsg_uri(_code)
    _ALIASES[f"urn:ogc:def:crs:epsg::{_code}"] = _epsg_uri(_code)
    _ALIASES[f"http://www.opengis.net/def/crs/epsg/0/{_code}"] = _epsg_uri(_code)
_ALIASES[GCJ02.lower()] = GCJ02
_ALIASES[BD09.lower()] = BD09
_ALIASES[CRS84.lower()] = CRS84


class UnsupportedCRSError(ValueError):
    """A CRS identifier that gridmap does not know."""


def normalize_crs(value: str) -> str:
    """Return the canonical URI for a CRS identifier, or raise UnsupportedCRSError.

    Accepts the OGC URIs, ``EPSG:nnnn``, URNs and the shorthands ``gcj02``/``bd09``.
    """
    key = value.strip().lower()
    uri = _ALIASES.get(key)
    if uri is None:
        supported = ", ".join(SUPPORTED_CRS)
        msg = f"unsupported CRS {value[:80]!r}; use one of: {supported} (or gcj02, bd09, EPSG:nnnn)"
        raise UnsupportedCRSError(msg)
    return uri


_GEOGRAPHIC = (CRS84, _epsg_uri(4326), _epsg_uri(4490))


@lru_cache(maxsize=64)
def axis_swapped(crs_uri: str) -> bool:
    """True when the CRS's own first axis points north (latitude or northing first).

    Coordinates in such a CRS are written (north, east) in requests and responses, as the
    EPSG database defines them (OGC API – Features Part 2); gridmap works internally in
    (east, north). EPSG:4326 and 4490 (lat, lon) and EPSG:4547 (northing, easting) are
    swapped; CRS84, EPSG:3857, GCJ-02 and BD-09 are not. Read from PROJ's definitions.
    """
    code = _epsg_of(normalize_crs(crs_uri))
    if code is None:
        return False
    return CRS.from_epsg(code).axis_info[0].direction.lower() in ("north", "south")


@lru_cache(maxsize=64)
def is_geographic(crs_uri: str) -> bool:
    """True for longitude/latitude CRSs (degrees), False for projected ones (metres)."""
    code = _epsg_of(normalize_crs(crs_uri))
    return code is None or bool(CRS.from_epsg(code).is_geographic)


def is_lat_lon_order(crs_uri: str) -> bool:
    """True for geographic CRSs whose axis order is latitude first (EPSG:4326, EPSG:4490)."""
    return crs_uri in _GEOGRAPHIC[1:]


_transformers: dict[tuple[int, int], Transformer] = {}


def _transformer(src: int, dst: int) -> Transformer:
    key = (src, dst)
    t = _transformers.get(key)
    if t is None:
        t = Transformer.from_crs(CRS.from_epsg(src), CRS.from_epsg(dst), always_xy=True)
        _transformers[key] = t
    return t


def _epsg_of(crs_uri: str) -> int | None:
    if crs_uri.startswith("http://www.opengis.net/def/crs/EPSG/0/"):
        return int(crs_uri.rsplit("/", 1)[1])
    return None


def from_wgs84_xy(x: ArrayLike, y: ArrayLike, crs: str) -> tuple[FloatArray, FloatArray]:
    """Convert WGS84 lon/lat arrays to x/y in ``crs`` (always lon-first / easting-first)."""
    uri = normalize_crs(crs)
    xa, ya = _as_arrays(x, y)
    if uri == GCJ02:
        return wgs84_to_gcj02(xa, ya)
    if uri == BD09:
        return wgs84_to_bd09(xa, ya)
    code = _epsg_of(uri)
    if code is None or code in (4326, 4490):
        return xa.copy(), ya.copy()
    ox, oy = _transformer(4326, code).transform(xa, ya)
    return np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)


def to_wgs84_xy(x: ArrayLike, y: ArrayLike, crs: str) -> tuple[FloatArray, FloatArray]:
    """Convert x/y arrays in ``crs`` (lon-first / easting-first) to WGS84 lon/lat."""
    uri = normalize_crs(crs)
    xa, ya = _as_arrays(x, y)
    if uri == GCJ02:
        return gcj02_to_wgs84(xa, ya)
    if uri == BD09:
        return bd09_to_wgs84(xa, ya)
    code = _epsg_of(uri)
    if code is None or code in (4326, 4490):
        return xa.copy(), ya.copy()
    ox, oy = _transformer(code, 4326).transform(xa, ya)
    return np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)


def transform_geometries(geoms: npt.ArrayLike, *, src: str, dst: str) -> npt.NDArray[np.object_]:
    """Transform shapely geometries from ``src`` to ``dst`` CRS (lon-first axis order).

    Vectorised over an array of geometries via ``shapely.transform(..., interleaved=False)``.
    """
    s = normalize_crs(src)
    d = normalize_crs(dst)
    arr = np.asarray(geoms, dtype=object)
    if s == d or {s, d} <= {CRS84, _epsg_uri(4326), _epsg_uri(4490)}:
        return arr

    def fn(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        wx, wy = (x, y) if s in (CRS84, _epsg_uri(4326), _epsg_uri(4490)) else to_wgs84_xy(x, y, s)
        return from_wgs84_xy(wx, wy, d)

    return shapely.transform(arr, fn, interleaved=False)


def to_output(geoms: npt.ArrayLike, crs: str) -> npt.NDArray[np.object_]:
    """WGS84 geometries as written in ``crs``: transformed, north first where EPSG says so."""
    uri = normalize_crs(crs)
    out = transform_geometries(geoms, src=CRS84, dst=uri)
    if axis_swapped(uri):
        out = shapely.transform(out, lambda c: c[:, ::-1])
    return out


def from_input(geoms: npt.ArrayLike, crs: str) -> npt.NDArray[np.object_]:
    """Geometries written in ``crs`` (north first where EPSG says so) as WGS84 lon/lat."""
    uri = normalize_crs(crs)
    arr = np.asarray(geoms, dtype=object)
    if axis_swapped(uri):
        arr = shapely.transform(arr, lambda c: c[:, ::-1])
    return transform_geometries(arr, src=uri, dst=CRS84)


_MAX_PROJECTED = 1e8
"""Largest projected coordinate taken in a bbox (metres: far beyond any map of the Earth)."""


def bbox_to_wgs84(
    bbox: tuple[float, float, float, float], crs: str
) -> tuple[tuple[float, float, float, float], BaseGeometry | None]:
    """A bbox given in ``crs`` (its axis order) → (WGS84 envelope, exact WGS84 polygon or None).

    For CRS84 the box is exact and no polygon is returned. Otherwise the box is densified
    in its own CRS and transformed, so that the polygon is the exact area asked for.
    """
    uri = normalize_crs(crs)
    a, b, c, d = bbox
    if axis_swapped(uri):
        a, b, c, d = b, a, d, c
    if uri in _GEOGRAPHIC:
        return (a, b, c, d), None
    if not all(abs(v) <= _MAX_PROJECTED for v in (a, b, c, d)):
        msg = f"bbox coordinates in {crs} must lie within ±{_MAX_PROJECTED:.0e} (metres)"
        raise QueryError(msg)
    box = shapely.segmentize(shapely.box(a, b, c, d), max((c - a), (d - b)) / 64 or 1.0)
    poly = transform_geometries([box], src=uri, dst=CRS84)[0]
    minx, miny, maxx, maxy = poly.bounds
    return (minx, miny, maxx, maxy), poly


def to_metric(geoms: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """Project WGS84 geometries to the metric CRS EPSG:4547 (metres). Vectorised."""
    return transform_geometries(geoms, src=CRS84, dst=_epsg_uri(METRIC_EPSG))


def metric_xy(lon: float, lat: float) -> tuple[float, float]:
    """One WGS84 position in the metric CRS EPSG:4547 (a scalar fast path of :func:`to_metric`)."""
    x, y = _transformer(4326, METRIC_EPSG).transform(lon, lat)
    return float(x), float(y)


def from_metric(geoms: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """Unproject EPSG:4547 geometries back to WGS84 lon/lat. Vectorised."""
    return transform_geometries(geoms, src=_epsg_uri(METRIC_EPSG), dst=CRS84)
