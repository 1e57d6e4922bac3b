"""Writing a feature set as a file: GeoPackage, Shapefile (zipped, with .cpg), GeoJSON, CSV,
Excel (Chinese headers, frozen header row), KML and GPX.

Values are written as the caller's scope read them (masked where it says so). Every format
carries gridmap's feature id as ``gridmap_id`` (要素编号 in Excel), so a file exported, edited
and imported again updates the features it came from. No text cell can run as a formula in
a spreadsheet: CSV cells are prefixed with ``'`` (as :mod:`gridmap.exports` does), Excel
cells are written as text.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyogrio
import shapely

from gridmap.crs import CRS84, transform_geometries
from gridmap.errors import QueryError
from gridmap.exports import to_csv
from gridmap.geojson import geometry_fragments
from gridmap.io.fields import crs_label, short_names
from gridmap.layers import Layer
from gridmap.store.base import FeatureSet

FORMATS = {
    "gpkg": ("application/geopackage+sqlite3", "gpkg"),
    "shp": ("application/zip", "zip"),
    "geojson": ("application/geo+json", "geojson"),
    "csv": ("text/csv; charset=utf-8", "csv"),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    "kml": ("application/vnd.google-earth.kml+xml", "kml"),
    "gpx": ("application/gpx+xml", "gpx"),
}
ID_FIELD = "gridmap_id"
ID_ZH = "要素编号"
EXCEL_CELL = 32_767
"""Characters an Excel cell holds."""
SHP_ENCODINGS = {"utf-8": "UTF-8", "gbk": "GBK"}


WGS84_ONLY = ("geojson", "kml", "gpx")
"""Formats whose coordinates are WGS84 by definition (RFC 7946, OGC KML, GPX)."""


def check_format(fmt: str, layer: Layer, *, encoding: str | None = None, crs: str = CRS84) -> str:
    """The format name, lower case (QueryError for an unknown one or a wrong pairing)."""
    f = fmt.strip().lower()
    if f not in FORMATS:
        raise QueryError(f"format must be one of {', '.join(FORMATS)}")
    if f in WGS84_ONLY and crs != CRS84:
        msg = (
            f"{f} holds WGS84 coordinates only (any program reads them so); "
            "choose gpkg, shp, csv or xlsx for another CRS"
        )
        raise QueryError(msg)
    if f == "gpx" and layer.geometry_type != "Point":
        raise QueryError("GPX holds points only (waypoints); export this layer as KML")
    if encoding is not None and (f != "shp" or encoding.lower() not in SHP_ENCODINGS):
        raise QueryError("an encoding is chosen for Shapefiles only: utf-8 (default) or gbk")
    return f


def write(
    fs: FeatureSet,
    fmt: str,
    *,
    crs: str = CRS84,
    encoding: str | None = None,
    lang: str = "zh",
) -> bytes:
    """The feature set as a file of format ``fmt`` (see FORMATS), geometries in ``crs``."""
    f = check_format(fmt, fs.layer, encoding=encoding, crs=crs)
    if f == "csv":
        return to_csv(fs, crs=crs, lon_first=True, exact=True)
    if f == "xlsx":
        return _xlsx(fs, crs, lang)
    if f == "geojson":
        return _geojson(fs, crs)
    return _ogr(fs, f, crs, encoding)


def _plain(layer: Layer, props: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for p in layer.properties:
        v = props.get(p.name)
        if isinstance(v, list):
            v = ";".join(str(x) for x in v)
        elif p.type == "bool" and v is not None:
            v = int(bool(v))
        out[p.name] = v
    return out


def _frame(fs: FeatureSet, crs: str) -> Any:
    import geopandas as gpd

    layer = fs.layer
    rows = [_plain(layer, p) for p in fs.properties]
    df = pd.DataFrame(rows, columns=list(layer.names))
    for p in layer.properties:  # typed columns, so GDAL creates typed fields
        if p.type in ("int",):
            df[p.name] = df[p.name].astype("Int64")
        elif p.type == "float":
            df[p.name] = df[p.name].astype("Float64")
        elif p.type == "bool":
            df[p.name] = df[p.name].astype("Int64")
        else:
            df[p.name] = df[p.name].astype(object)
    df.insert(0, ID_FIELD, np.asarray(fs.ids, dtype=np.int64))
    geoms = _lon_first(fs.geometries, crs)
    label = crs_label(crs)  # GCJ-02 and BD-09 are not in PROJ: such a file carries no CRS
    return gpd.GeoDataFrame(
        df, geometry=list(geoms), crs="EPSG:4326" if crs == CRS84 else _epsg(label)
    )


def _epsg(label: str) -> str | None:
    return label if label.startswith("EPSG:") else None


def _lon_first(geoms: Any, crs: str) -> Any:
    """WGS84 geometries in ``crs``, east first, as GIS files hold them."""
    return transform_geometries(geoms, src=CRS84, dst=crs) if len(geoms) else geoms


def _ogr(fs: FeatureSet, fmt: str, crs: str, encoding: str | None) -> bytes:
    df = _frame(fs, crs)
    with tempfile.TemporaryDirectory(prefix="gridmap-export-") as tmp:
        name = fs.layer.id
        if fmt == "gpkg":
            path = Path(tmp) / f"{name}.gpkg"
            pyogrio.write_dataframe(df, path, layer=name, driver="GPKG")
            return path.read_bytes()
        if fmt == "shp":
            return _shapefile(df, fs.layer, Path(tmp), encoding or "utf-8")
        if fmt == "kml":
            path = Path(tmp) / f"{name}.kml"
            df = df.to_crs(4326) if df.crs else df
            if "name" not in df:  # KML's own <name> (GDAL's field names ignore case)
                df = df.assign(Name=df[fs.layer.label].astype(str))
            pyogrio.write_dataframe(df, path, driver="LIBKML", layer=name)
            return path.read_bytes()
        path = Path(tmp) / f"{name}.gpx"  # gpx: waypoints named by the layer's label
        pts = df.to_crs(4326) if df.crs else df
        way = pts[["geometry"]].assign(name=pts[fs.layer.label].astype(str), desc=fs.layer.zh)
        pyogrio.write_dataframe(way, path, driver="GPX", layer="waypoints")
        return path.read_bytes()


def _shapefile(df: Any, layer: Layer, tmp: Path, encoding: str) -> bytes:
    names = short_names(layer)
    df = df.rename(columns=names)
    path = tmp / f"{layer.id}.shp"
    for p in layer.properties:  # a DBF has no datetime: ISO text keeps it whole
        if p.type in ("date", "datetime"):
            df[names[p.name]] = df[names[p.name]].astype(object)
    pyogrio.write_dataframe(
        df, path, driver="ESRI Shapefile", encoding=SHP_ENCODINGS[encoding.lower()]
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(tmp.iterdir()):
            if f.stem == layer.id:
                zf.write(f, f.name)
    return buf.getvalue()


def _geojson(fs: FeatureSet, crs: str) -> bytes:
    geoms = geometry_fragments(fs.geometries, crs)
    feats = [
        {"type": "Feature", "id": fid, "geometry": g, "properties": {ID_FIELD: fid, **p}}
        for fid, g, p in zip(fs.ids.tolist(), geoms, fs.properties, strict=True)
    ]
    body: dict[str, Any] = {"type": "FeatureCollection", "name": fs.layer.id, "features": feats}
    if crs != CRS84:
        body["crs"] = {"type": "name", "properties": {"name": crs}}
    return orjson.dumps(body)


def _label(p: Any, v: Any) -> Any:
    if v is None:
        return None
    if p.type == "bool":
        return "是" if v else "否"
    if p.type == "enum":
        return p.choice_labels_zh.get(v, v)
    if p.type == "list":
        return "、".join(str(p.choice_labels_zh.get(x, x)) for x in v)
    return v


def _xlsx(fs: FeatureSet, crs: str, lang: str) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    layer = fs.layer
    zh = lang != "en"
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(layer.zh if zh else layer.id)
    ws.freeze_panes = "A2"
    point = layer.geometry_type == "Point"
    label = crs_label(crs)
    coords = [f"经度({label})", f"纬度({label})"] if zh else [f"lon({label})", f"lat({label})"]
    geo_head = coords if point else [f"geometry_wkt({label})"]
    head = [
        ID_ZH if zh else ID_FIELD,
        *((p.zh if zh else p.name) for p in layer.properties),
        *geo_head,
    ]
    bold = Font(bold=True)
    ws.append([_cell(ws, h, font=bold) for h in head])
    geoms = _lon_first(fs.geometries, crs)
    for fid, props, g in zip(fs.ids.tolist(), fs.properties, geoms, strict=True):
        row: list[Any] = [fid]
        for p in layer.properties:
            v = props.get(p.name)
            row.append(_cell(ws, _label(p, v) if zh else _plain(layer, {p.name: v})[p.name]))
        if point:
            row.extend([g.x, g.y])  # every digit: the file may come back
        else:
            wkt = shapely.to_wkt(g, rounding_precision=-1)
            if len(wkt) > EXCEL_CELL:
                msg = f"feature {fid} has too many vertices for an Excel cell; export as gpkg"
                raise QueryError(msg)
            row.append(_cell(ws, wkt))
        ws.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _cell(ws: Any, value: Any, *, font: Any = None) -> Any:
    """A cell whose text is always text (never a formula); other values as they are."""
    from openpyxl.cell import WriteOnlyCell

    if not isinstance(value, str):
        return value
    c = WriteOnlyCell(ws, value=value)
    c.data_type = "s"
    if font is not None:
        c.font = font
    return c
