"""Reading an import file into one table: columns, geometries, the CRS and encoding it carries.

Vector formats (GeoPackage, Shapefile as .shp, folder or .zip, GeoJSON/GeoJSONSeq, KML/KMZ,
GPX) are read through pyogrio; CSV/TSV by the standard library after :mod:`gridmap.io.text`
decided the encoding; .xlsx by openpyxl. A shapefile's encoding comes from the caller, its
.cpg, its DBF language byte, or detection over the raw bytes of its text (GDAL would read a
shapefile that declares nothing as Latin-1: 张三 would come back as ``ÕÅÈý``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import shapely

from gridmap.errors import InvalidFeatureError
from gridmap.io import text

VECTOR = {
    ".gpkg": "GeoPackage",
    ".shp": "Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".geojsonl": "GeoJSONSeq",
    ".geojsons": "GeoJSONSeq",
    ".kml": "KML",
    ".kmz": "KMZ",
    ".gpx": "GPX",
}
TABULAR = {".csv": "CSV", ".tsv": "CSV", ".txt": "CSV", ".xlsx": "XLSX"}
MAX_UNZIPPED = 500_000_000
"""Bytes a .zip may expand to (a zip bomb is refused, whatever its entries claim)."""
MAX_ZIP_ENTRIES = 1000
MAX_ROWS = 1_000_000
"""Rows one import reads (a bigger layer is imported in parts)."""
MAX_COLUMNS = 200
MAX_CELL = 1_000_000
"""Characters one CSV cell may hold."""
_GDAL_NAMES = {"latin-1": "ISO-8859-1"}  # pyogrio reads "latin-1" as UTF-8


csv.field_size_limit(min(MAX_CELL, sys.maxsize))


class SourceError(InvalidFeatureError):
    """The file cannot be read as an import (format, layer, archive); says what to do."""


@dataclass
class Table:
    """One layer of an import file: rows of raw values by column, and their geometries."""

    format: str
    columns: list[str]
    values: dict[str, list[Any]]
    geometries: np.ndarray | None = None
    crs: str | None = None
    encoding: str | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        if self.geometries is not None:
            return len(self.geometries)
        return len(next(iter(self.values.values()), []))


def read(
    path: Path,
    *,
    encoding: str | None = None,
    source_layer: str | None = None,
    work_dir: Path | None = None,
) -> Table:
    """The table of ``path`` (a file, a shapefile folder or a .zip)."""
    path = Path(path)
    if path.is_dir():
        return _read_vector(_single(path, ".shp"), encoding, source_layer)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return read(_unzip(path, work_dir), encoding=encoding, source_layer=source_layer)
    if suffix in TABULAR:
        if suffix == ".xlsx":
            return _read_xlsx(path, source_layer)
        return _read_csv(path, encoding)
    if suffix in VECTOR:
        return _read_vector(path, encoding, source_layer)
    if suffix == ".xls":
        raise SourceError("old .xls workbooks are not read; save the sheet as .xlsx and try again")
    known = ", ".join(sorted({*VECTOR, *TABULAR, ".zip"}))
    raise SourceError(f"unrecognised file type {suffix[:12]!r}; gridmap imports {known}")


def _single(folder: Path, suffix: str) -> Path:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() == suffix)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        msg = f"{what} {suffix} files in {folder.name}; an import reads one (zip one at a time)"
        raise SourceError(msg)
    return found[0]


def _unzip(path: Path, work_dir: Path | None) -> Path:
    """The one importable file (or shapefile) inside a .zip, extracted safely."""
    if work_dir is None:
        raise SourceError("a .zip needs a working folder to be read")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise SourceError(f"{path.name} is not a readable .zip archive") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > MAX_ZIP_ENTRIES or sum(i.file_size for i in infos) > MAX_UNZIPPED:
            raise SourceError(f"{path.name} expands to too much; zip one layer's files only")
        out = work_dir / "unzipped"
        out.mkdir(parents=True, exist_ok=True)
        left = MAX_UNZIPPED
        seen: set[str] = set()
        for i in infos:
            name = Path(i.filename)
            if (
                name.is_absolute()
                or ".." in name.parts
                or any(p.startswith(".") or p == "__MACOSX" for p in name.parts)
            ):
                continue  # no writing outside the folder, no hidden files (__MACOSX, .DS_Store)
            if name.name.lower() in seen:
                msg = f"{path.name} holds two files named {name.name}; zip one layer's files only"
                raise SourceError(msg)
            seen.add(name.name.lower())
            with zf.open(i) as src, (out / name.name).open("wb") as dst:
                while block := src.read(1 << 20):  # counted as written: sizes may lie
                    left -= len(block)
                    if left < 0:
                        raise SourceError(
                            f"{path.name} expands to too much; zip one layer's files only"
                        )
                    dst.write(block)
    shp = [p for p in out.iterdir() if p.suffix.lower() == ".shp"]
    if shp:
        return _single(out, ".shp")
    other = [p for p in out.iterdir() if p.suffix.lower() in {*VECTOR, *TABULAR}]
    if len(other) != 1:
        raise SourceError(f"{path.name} must hold one shapefile or one importable file")
    return other[0]


# ------------------------------------------------------------------ vector formats


def _shapefile_encoding(path: Path, declared: str | None) -> tuple[str | None, str]:
    """(codec or None to detect, how) for a shapefile: declared, .cpg, language byte."""
    if declared:
        return text.encoding_name(declared), "declared"
    cpg = next((p for p in path.parent.glob(path.stem + ".*") if p.suffix.lower() == ".cpg"), None)
    if cpg is not None:
        name = cpg.read_bytes()[:40].decode("ascii", "replace").strip()
        try:
            return text.encoding_name(name), f"{cpg.name} says {name}"
        except text.EncodingError:
            return None, f"{cpg.name} names an unknown encoding {name!r}; detected instead"
    dbf = next((p for p in path.parent.glob(path.stem + ".*") if p.suffix.lower() == ".dbf"), None)
    if dbf is not None:
        with dbf.open("rb") as f:
            head = f.read(32)
        if len(head) > 29 and head[29] in text.LDID:
            return text.LDID[head[29]], f"DBF language byte 0x{head[29]:02X}"
    return None, "no .cpg or language byte; detected"


def _layer_name(path: Path, wanted: str | None) -> str | None:
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # GDAL's own errors: the file is not what its name says
        raise SourceError(f"{path.name} cannot be read: {_plain_error(exc, path)}") from None
    if wanted is not None:
        if wanted not in layers:
            raise SourceError(
                f"no layer {wanted[:60]!r} in {path.name}; it has: {', '.join(layers)}"
            )
        return wanted
    if path.suffix.lower() == ".gpx" and "waypoints" in layers:
        return "waypoints"  # a phone's marked points; tracks are not features of a layer
    if len(layers) > 1:
        msg = f"{path.name} holds {len(layers)} layers ({', '.join(layers[:10])}); name one"
        raise SourceError(msg + " with --source-layer")
    return layers[0] if layers else None


def _read_vector(path: Path, declared: str | None, wanted: str | None) -> Table:
    fmt = VECTOR.get(path.suffix.lower(), "Shapefile")
    layer = _layer_name(path, wanted)
    notes: list[str] = []
    codec, how = (None, "")
    if fmt == "Shapefile":
        codec, how = _shapefile_encoding(path, declared)
        notes.append(f"encoding: {codec or 'detected'} ({how})")
    elif declared:
        codec = text.encoding_name(declared)
    try:
        raw = codec or ("latin-1" if fmt == "Shapefile" else None)
        meta, _, wkb, data = pyogrio.raw.read(
            path,
            layer=layer,
            encoding=_GDAL_NAMES.get(raw or "", raw),
            max_features=MAX_ROWS + 1,
        )
    except Exception as exc:
        raise SourceError(f"{path.name} cannot be read: {_plain_error(exc, path)}") from None
    n = len(wkb) if wkb is not None else (len(data[0]) if len(data) else 0)
    if n > MAX_ROWS:
        raise SourceError(f"{path.name} has more than {MAX_ROWS:,} features; import it in parts")
    names = [str(n) for n in meta["fields"]]
    values = {n: _plain(col) for n, col in zip(names, data, strict=True)}
    if fmt == "Shapefile" and codec is None:
        codec = _redecode(values)
        names = [n.encode("latin-1").decode(codec, "replace") for n in names]
        values = dict(zip(names, values.values(), strict=True))
        notes.append(f"text detected as {codec}")
    geoms = shapely.from_wkb(wkb) if wkb is not None else None
    table = Table(fmt, names, values, geoms, meta.get("crs"), codec or meta.get("encoding"), notes)
    text.refuse_mojibake(_texts(values), what=path.name, used=table.encoding or "UTF-8")
    return table


def _plain_error(exc: Exception, path: Path) -> str:
    """GDAL's message without the server's working folder in it."""
    return str(exc).replace(str(path.parent) + "/", "").replace(str(path.parent), "")[:200]


def _plain(col: np.ndarray) -> list[Any]:
    """A column as Python values (datetimes as datetime, NaN and NaT as None)."""
    if col.dtype.kind == "M":
        return [None if np.isnat(v) else v.astype("datetime64[ms]").item() for v in col]
    if col.dtype.kind == "f":
        return [None if np.isnan(v) else float(v) for v in col]
    return [v.item() if isinstance(v, np.generic) else v for v in col.tolist()]


def _texts(values: dict[str, list[Any]], per_column: int = 500) -> list[str]:
    out: list[str] = []
    for col in values.values():
        out.extend(v for v in col[:per_column] if isinstance(v, str))
    return out


def _redecode(values: dict[str, list[Any]]) -> str:
    """Decode text read byte for byte as Latin-1 with the encoding the bytes show."""
    texts = [*values, *_texts(values, per_column=10**9)]  # field names are text too
    raw = b"\n".join(v.encode("latin-1") for v in texts)
    codec, _ = text.detect(raw)
    for col in values.values():
        for i, v in enumerate(col):
            if isinstance(v, str):
                col[i] = v.encode("latin-1").decode(codec)
    return codec


# ------------------------------------------------------------------ tables


def _read_csv(path: Path, declared: str | None) -> Table:
    body, codec = text.decode(path.read_bytes(), declared, what=path.name)
    sample = body[:20_000]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",\t;|")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    rows = _capped_rows(csv.reader(io.StringIO(body, newline=""), dialect), path.name)
    if not rows:
        raise SourceError(f"{path.name} holds no rows")
    table = _from_rows(
        "CSV", rows[0], rows[1:], path.name, notes=[f"encoding: {codec}"], encoding=codec
    )
    text.refuse_mojibake(_texts(table.values), what=path.name, used=codec)
    return table


def _read_xlsx(path: Path, sheet: str | None) -> Table:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several kinds for a broken file
        raise SourceError(
            f"{path.name} is not a readable .xlsx workbook: {str(exc)[:120]}"
        ) from None
    try:
        if sheet is not None and sheet not in wb.sheetnames:
            raise SourceError(f"no sheet {sheet[:40]!r} in {path.name}; it has {wb.sheetnames}")
        ws = wb[sheet] if sheet is not None else wb.worksheets[0]
        ws.reset_dimensions()  # the stated size may be wrong (too small: rows lost; huge: padding)
        rows = _capped_rows(ws.iter_rows(values_only=True), path.name)
    finally:
        wb.close()
    if not rows:
        raise SourceError(f"{path.name} holds no rows")
    header = ["" if h is None else str(h) for h in rows[0]]
    return _from_rows("XLSX", header, rows[1:], path.name, notes=[f"sheet: {ws.title}"])


def _capped_rows(rows: Any, name: str) -> list[list[Any]]:
    """The non-empty rows, refused beyond MAX_ROWS rows or MAX_COLUMNS columns."""
    out: list[list[Any]] = []
    try:
        for r in rows:
            if len(r) > MAX_COLUMNS:
                r = list(r)
                if any(c is not None and str(c).strip() for c in r[MAX_COLUMNS:]):
                    raise SourceError(f"{name} has more than {MAX_COLUMNS} columns")
                r = r[:MAX_COLUMNS]
            if any(c is not None and str(c).strip() for c in r):
                out.append(list(r))
                if len(out) > MAX_ROWS + 1:
                    raise SourceError(f"{name} has more than {MAX_ROWS:,} rows; import it in parts")
    except csv.Error as exc:
        raise SourceError(f"{name} is not readable CSV: {str(exc)[:100]}") from None
    return out


def _from_rows(
    fmt: str,
    header: list[Any],
    rows: list[list[Any]],
    name: str,
    *,
    notes: list[str],
    encoding: str | None = None,
) -> Table:
    columns = [text.normalise(str(h)) for h in header]
    while columns and not columns[-1]:
        columns.pop()
    seen = set()
    for c in columns:
        if not c:
            raise SourceError(f"{name}: a column has no header; name every column in row 1")
        if c in seen:
            raise SourceError(f"{name}: two columns are headed {c!r}; headers must differ")
        seen.add(c)
    values: dict[str, list[Any]] = {c: [] for c in columns}
    for r in rows:
        for j, c in enumerate(columns):
            v = r[j] if j < len(r) else None
            if isinstance(v, str):
                v = text.normalise(v) or None
            elif isinstance(v, dt.time):
                v = v.isoformat()
            values[c].append(v)
    return Table(fmt, columns, values, None, None, encoding, notes)
