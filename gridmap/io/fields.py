"""Which column of an import file is which property, and its values as the registry types them.

Columns are matched to a layer's properties by the registry's own names and labels (``head_name``,
户主, "Head of household"), by the names a Shapefile export shortens them to, and by the words
Chinese rosters use (姓名, 手机号, 公民身份号码 …). A few columns have a role rather than a
property: coordinates (经度/纬度), a WKT geometry, an address matched to a building (地址),
the grid a row says it is in (网格, checked, never written: grids are derived from the
location) and a feature id (id, from gridmap's own exports). A declared mapping
(``--mapping map.toml``, a ``[columns]`` table of header = property or role) wins.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridmap.errors import InvalidFeatureError
from gridmap.layers import Layer, Prop

ROLES = ("lon", "lat", "wkt", "address", "grid", "id")
"""Column roles that are not properties (see the module docstring)."""

_ROLE_WORDS = {
    "lon": ("经度", "經度", "lon", "lng", "long", "longitude", "x", "东经", "x坐标"),
    "lat": ("纬度", "緯度", "lat", "latitude", "y", "北纬", "y坐标"),
    "wkt": ("geometry_wkt", "wkt", "geometry", "几何", "geom"),
    "address": ("地址", "住址", "家庭住址", "楼栋", "楼栋地址", "所在楼栋", "address"),
    "grid": ("网格", "所属网格", "网格名称", "网格编码", "grid"),
    "id": ("gridmap_id", "要素编号"),  # gridmap's own exports only: a foreign "id" is not ours
}
_EXTRA_WORDS: dict[str, tuple[str, ...]] = {
    "head_name": ("姓名", "户主姓名", "户主名", "联系人"),
    "phone": ("电话", "手机", "手机号", "手机号码", "联系方式", "电话号码"),
    "id_number": ("身份证", "身份证号码", "公民身份号码", "证件号码", "身份证号"),
    "room": ("房号", "门牌号", "房间号", "室号"),
    "members": ("人数", "家庭人口", "人口数", "家庭人数"),
    "tags": ("类别", "人员类别", "户类别"),
    "name": ("名称", "名稱", "名字", "站点名称", "点位名称"),
    "worker_name": ("网格员姓名",),
    "worker_phone": ("网格员电话", "网格员手机"),
}
_TRUE = {"是", "有", "true", "yes", "y", "1", "√", "✓", "t"}
_FALSE = {"否", "无", "false", "no", "n", "0", "×", "✗", "f"}
_LIST_SPLIT = re.compile(r"[;,，、；|/]+")
_DATE = re.compile(
    r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
    r"(?:[ T]?(\d{1,2})[:时](\d{1,2})(?:[:分](\d{1,2}(?:\.\d+)?))?秒?)?$"
)
_EXCEL_EPOCH = dt.datetime(1899, 12, 30)


class MappingError(InvalidFeatureError):
    """The columns cannot be matched to the layer (or the mapping file is wrong)."""


@dataclass
class ColumnMap:
    """Column header → property name or role, and the columns left out."""

    columns: dict[str, str]
    ignored: list[str] = field(default_factory=list)
    declared: bool = False

    def role(self, role: str) -> str | None:
        """The column with ``role`` (or property name), if any."""
        return next((c for c, t in self.columns.items() if t == role), None)


def key(header: str) -> str:
    """A header reduced for matching: NFKC, lower case, no spaces or bracketed units."""
    s = unicodedata.normalize("NFKC", header).strip().lower()
    s = re.sub(r"[\s_\-]+", "", s)
    return re.sub(r"[(\[（【].*?[)\]）】]$", "", s) or s


def short_names(layer: Layer) -> dict[str, str]:
    """Property name → the at most 10-character field name a Shapefile export uses."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for p in layer.properties:
        name = p.name[:10]
        n = 1
        while name in taken:
            name = f"{p.name[:8]}_{n}"
            n += 1
        taken.add(name)
        out[p.name] = name
    return out


def vocabulary(layer: Layer) -> dict[str, str]:
    """Every word a header may be, reduced by :func:`key`, → property name or role (a
    property's own name and label win over a role's word: 楼栋 is ``building_id``)."""
    words: dict[str, str] = {}
    for role, ws in _ROLE_WORDS.items():
        for w in ws:
            words[key(w)] = role
    for p in layer.properties:
        target = "grid" if p.derived and p.name == "grid_id" else p.name
        for w in _EXTRA_WORDS.get(p.name, ()):
            words.setdefault(key(w), target)
        for w in (p.zh, p.en, p.name):
            words[key(w)] = target
    for name, short in short_names(layer).items():
        words.setdefault(key(short), name)
    if "address" in layer.by_name:  # buildings: the address is the property itself
        for w in _ROLE_WORDS["address"]:
            words[key(w)] = "address"
    return words


def detect(
    layer: Layer, columns: list[str], values: Mapping[str, list[Any]] | None = None
) -> ColumnMap:
    """The mapping guessed from the headers (each property or role taken once). A column
    that would hold a feature id (楼栋 → ``building_id``) but holds text is an address."""
    words = vocabulary(layer)
    mapped: dict[str, str] = {}
    ignored: list[str] = []
    for c in columns:
        target = words.get(key(c))
        p = layer.by_name.get(target or "")
        if p is not None and p.ref and values is not None and _textual(values.get(c, [])):
            target = "address" if "address" not in mapped.values() else None
        if target is None or target in mapped.values():
            ignored.append(c)
            continue
        mapped[c] = target
    return ColumnMap(mapped, ignored)


def _textual(column: list[Any]) -> bool:
    """True if most filled cells are text that is not a number."""
    filled = [v for v in column[:500] if v is not None]
    texts = [v for v in filled if isinstance(v, str) and not v.strip().isdigit()]
    return bool(filled) and len(texts) * 2 > len(filled)


def declared(layer: Layer, columns: list[str], path: Path) -> ColumnMap:
    """The mapping of a TOML file: ``[columns]`` header = property or role."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"the mapping file cannot be read: {str(exc)[:200]}") from None
    table = doc.get("columns")
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise MappingError('the mapping file needs a [columns] table of "header" = "property"')
    by_key = {key(c): c for c in columns}
    mapped: dict[str, str] = {}
    for header, target in table.items():
        col = by_key.get(key(header))
        if col is None:
            raise MappingError(f"the mapping names a column {header[:40]!r} the file does not have")
        if target not in layer.by_name and target not in ROLES:
            allowed = ", ".join([*layer.names, *ROLES])
            raise MappingError(f"the mapping names {target[:40]!r}; use one of: {allowed}")
        if target in mapped.values():
            raise MappingError(f"the mapping sends two columns to {target}; one column each")
        mapped[col] = target
    return ColumnMap(mapped, [c for c in columns if c not in mapped], declared=True)


_CRS_WORDS = {"wgs84": "EPSG:4326", "cgcs2000": "EPSG:4490", "gcj-02": "gcj02", "gcj02": "gcj02"}
_CRS_WORDS |= {"bd-09": "bd09", "bd09": "bd09"}


def crs_label(crs_uri: str, *, swapped: bool = False) -> str:
    """How a coordinate column's header names its CRS: ``经度(GCJ-02)``, ``x(EPSG:4547)``."""
    from gridmap.crs import BD09, CRS84, GCJ02

    label = {CRS84: "WGS84", GCJ02: "GCJ-02", BD09: "BD-09"}.get(crs_uri)
    if label is None:
        label = "EPSG:" + crs_uri.rstrip("/").rsplit("/", 1)[-1]
    return label + (" lat/lon" if swapped else "")


def header_crs(cmap: ColumnMap) -> tuple[str, bool] | None:
    """(CRS, latitude first) named in brackets by the coordinate columns' headers, if any."""
    for role in ("lon", "lat", "wkt"):
        col = cmap.role(role)
        m = re.search(r"[(（]\s*([^()（）]+?)\s*[)）]\s*$", col or "")
        if m is None:
            continue
        words = m.group(1).lower().split()
        swapped = words[-1] == "lat/lon" if len(words) > 1 else False
        name = words[0]
        if name in _CRS_WORDS:
            return _CRS_WORDS[name], swapped
        if re.fullmatch(r"epsg:\d{4,6}", name):
            return name.upper(), swapped
    return None


# ------------------------------------------------------------------ values


def _number_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _labels(p: Prop) -> dict[str, str]:
    out = {c.lower(): c for c in p.choices}
    out.update({label: c for c, label in p.choice_labels_zh.items()})
    return out


def _choice(p: Prop, v: str) -> str:
    found = _labels(p).get(v.strip().lower()) or _labels(p).get(v.strip())
    if found is None:
        shown = "、".join(f"{c}/{p.choice_labels_zh.get(c, c)}" for c in p.choices)
        raise ValueError(f"{v[:40]!r} is not one of {shown}")
    return found


def _date(v: Any, *, with_time: bool) -> str:
    if isinstance(v, dt.datetime):
        return v.isoformat() if with_time else v.date().isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, int | float) and not isinstance(v, bool) and 1 <= v < 2_958_466:
        t = _EXCEL_EPOCH + dt.timedelta(days=float(v))  # an Excel serial date
        return t.isoformat(timespec="seconds") if with_time else t.date().isoformat()
    s = str(v).strip()
    m = _DATE.match(s)
    if m is None:
        try:
            parsed = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{s[:40]!r} is not a date (2024-05-01, 2024/5/1, 2024年5月1日)"
            ) from None
        return parsed.isoformat() if with_time else parsed.date().isoformat()
    y, mo, d, h, mi, sec = m.groups()
    try:
        t = dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(float(sec or 0)))
    except ValueError:
        raise ValueError(f"{s[:40]!r} is not a date that exists") from None
    return t.isoformat() if with_time else t.date().isoformat()


def convert(p: Prop, v: Any) -> Any:
    """``v`` as property ``p`` holds it (ValueError saying why not); None for an empty cell."""
    kind = type(v)
    if kind is str and v and p.format is None and p.type == "str" and v[0] not in "' \t":
        return v  # the common cases first: text as text, numbers as numbers
    if (kind is int and p.type == "int") or (kind is float and p.type == "float"):
        return v
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, str) and len(v) > 1 and v[0] == "'" and v[1] in "=+-@\t\r":
        v = v[1:]  # a formula neutralised by gridmap's CSV export, taken back
    if hasattr(v, "tolist") and not isinstance(v, str):
        v = v.tolist()  # GDAL's list fields come as arrays
    match p.type:
        case "str":
            if p.format == "id_number" and (
                isinstance(v, float) or re.fullmatch(r"\d(\.\d+)?[eE]\+?\d+", str(v).strip())
            ):
                msg = (
                    "is stored as a number, which loses an ID number's last digits; format "
                    "the column as text in the spreadsheet and enter the numbers again"
                )
                raise ValueError(msg)
            return _number_text(v) if isinstance(v, int | float) else str(v)
        case "enum":
            return _choice(p, str(v))
        case "list":
            if isinstance(v, str) and v.startswith("["):
                with contextlib.suppress(ValueError):
                    v = json.loads(v)
            items = v if isinstance(v, list) else [x for x in _LIST_SPLIT.split(str(v)) if x]
            return [_choice(p, str(x)) if p.choices else str(x).strip() for x in items]
        case "int":
            if isinstance(v, bool):
                raise ValueError(f"{v!r} is not a whole number")
            f = float(v) if not isinstance(v, int) else v
            if isinstance(f, float) and not f.is_integer():
                raise ValueError(f"{v!r} is not a whole number")
            return int(f)
        case "float":
            if isinstance(v, bool):
                raise ValueError(f"{v!r} is not a number")
            return float(v)
        case "bool":
            if isinstance(v, bool):
                return v
            s = _number_text(v).strip().lower()
            if s in _TRUE:
                return True
            if s in _FALSE:
                return False
            raise ValueError(f"{str(v)[:20]!r} is not yes/no (是/否, true/false, 1/0)")
        case "date":
            return _date(v, with_time=False)
        case "datetime":
            return _date(v, with_time=True)
    return v


def row_values(
    layer: Layer, cmap: ColumnMap, values: Mapping[str, list[Any]], i: int
) -> dict[str, Any]:
    """Property values of row ``i`` (only mapped property columns; errors as ValueError)."""
    out: dict[str, Any] = {}
    for col, target in cmap.columns.items():
        p = layer.by_name.get(target)
        if p is None or p.derived:
            continue
        try:
            out[target] = convert(p, values[col][i])
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"{col} ({p.zh}): {exc}") from None
    return out
