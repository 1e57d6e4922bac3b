"""The checks an import makes row by row before anything is written: geometry, location,
named grid (and the GCJ-02 signature), values, references, duplicates. Each problem is
noted against its row; a row with a problem takes no further part."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap.errors import InvalidFeatureError
from gridmap.io import rows as rowsmod
from gridmap.io.report import Report
from gridmap.io.rows import Candidates
from gridmap.layers import Layer, get_layer
from gridmap.store import FeatureStore, Query
from gridmap.store.relations import GRID_KEY, INSIDE_TOLERANCE_DEG

_FAMILY = {"Point": "Point", "LineString": "LineString", "Polygon": "Polygon"}


def geometry(layer: Layer, c: Candidates, report: Report, bad: set[int], *, repair: bool) -> None:
    """Type, emptiness, finiteness and validity of each geometry (repaired if asked);
    vectorised, with a row looked at alone only when something is wrong with it."""
    geoms = np.array([_single(g, layer) for g in c.geometries], dtype=object)
    present = ~np.asarray(shapely.is_missing(geoms), dtype=bool)
    ok = present.copy()
    ok[present] &= ~shapely.is_empty(geoms[present])
    types = np.array(
        [g.geom_type if p else "" for g, p in zip(geoms, ok, strict=True)], dtype=object
    )
    accepted = np.array([layer.accepts_geometry(t) for t in types], dtype=bool) & ok
    coords, owner = shapely.get_coordinates(geoms[accepted], return_index=True)
    finite = np.ones(len(geoms), bool)
    finite[np.flatnonzero(accepted)[owner[~np.isfinite(coords).all(axis=1)]]] = False
    valid = np.zeros(len(geoms), bool)
    valid[accepted & finite] = shapely.is_valid(geoms[accepted & finite])
    for i in np.flatnonzero(~valid).tolist():
        row, g = c.rows[i], geoms[i]
        if not ok[i]:
            report.add(row, "the geometry is empty")
        elif not accepted[i]:
            report.add(row, f"a {types[i]} cannot be a {layer.geometry_type} of {layer.id}")
        elif not finite[i]:
            report.add(row, "coordinates must be finite numbers")
        else:
            reason = shapely.is_valid_reason(g)
            fixed = _repaired(g, layer) if repair else None
            if fixed is not None and not isinstance(fixed, str):
                report.repaired.append(f"row {row}: {reason}; made valid")
                geoms[i] = fixed
                continue
            hint = f"; {fixed}" if fixed else "; --repair makes it valid (and reports what changed)"
            report.add(row, f"invalid geometry: {reason}{hint}")
        bad.add(i)
    c.geometries[:] = list(geoms)


def _single(g: BaseGeometry | None, layer: Layer) -> BaseGeometry | None:
    """A one-part multi-geometry taken as its part (KML and shapefiles write them so), and
    a third dimension dropped."""
    if g is None or (g.geom_type == "Point" and not g.has_z):
        return g  # the common case, at once
    if shapely.has_z(g):
        g = shapely.force_2d(g)
    multi = g.geom_type.startswith("Multi") and layer.geometry_type != g.geom_type
    if multi and len(g.geoms) == 1:
        return g.geoms[0]
    return g


def _repaired(g: BaseGeometry, layer: Layer) -> BaseGeometry | str:
    """The geometry made valid, or why that is no geometry of the layer."""
    fixed = shapely.make_valid(g)
    polys = [p for p in shapely.get_parts(fixed) if p.geom_type == "Polygon"]
    if layer.geometry_type in ("Polygon", "MultiPolygon") and polys:
        fixed = shapely.union_all(polys)
    if fixed.is_empty or not fixed.is_valid:
        return "it cannot be made valid"
    if not layer.accepts_geometry(fixed.geom_type):
        return f"made valid it is a {fixed.geom_type}, which a {layer.id} feature cannot be"
    return fixed


def one(layer_id: str) -> str:
    """A layer's name for one of its features (communities → community)."""
    return layer_id[:-3] + "y" if layer_id.endswith("ies") else layer_id.removesuffix("s")


def location(
    store: FeatureStore,
    layer: Layer,
    c: Candidates,
    report: Report,
    bad: set[int],
    *,
    allow_outside: bool,
) -> dict[int, int]:
    """Service area and grids: the grid each row lies in (by index), rows outside refused.
    A row outside the grid its 网格 column names is refused unless ``allow_outside``. When
    rows fall outside, the same coordinates read as GCJ-02 are tried, and the report says
    if that is what the file holds."""
    area = store.service_area
    idx = [i for i in range(len(c.rows)) if i not in bad]
    geoms = np.array([c.geometries[i] for i in idx], dtype=object)
    outside_area: list[int] = []
    if area is not None and len(geoms):
        shapely.prepare(area)
        outside_area = [i for i, ok in zip(idx, shapely.covers(area, geoms), strict=True) if not ok]
    grid_of: dict[int, int] = {}
    wrong_grid: list[int] = []
    if layer.grid_scoped and len(geoms):
        found = store.derive_grid_ids(geoms)
        grids = _grid_names(store)
        for i, g in zip(
            idx, (found if found is not None else np.full(len(idx), -1)).tolist(), strict=True
        ):
            grid_of[i] = int(g)
            named = c.named_grids[i]
            if g >= 0 and named is not None and grids.get(named.strip()) not in (None, g):
                wrong_grid.append(i)
            elif g >= 0 and named is not None and named.strip() not in grids:
                report.add(c.rows[i], f"the grid {named[:40]!r} it names does not exist")
                bad.add(i)
    for i in outside_area:
        report.add(c.rows[i], "lies outside the subdistrict", "outside")
        bad.add(i)
    for i, g in grid_of.items():
        if g < 0 and i not in bad:
            report.add(c.rows[i], "lies in no grid", "outside")
            bad.add(i)
    for i in wrong_grid:
        if i in bad:
            continue
        msg = f"lies outside the grid it names ({c.named_grids[i]})"
        if allow_outside:
            report.warnings.append(f"row {c.rows[i]}: {msg}; imported where it lies")
        else:
            report.add(
                c.rows[i], msg + "; --allow-outside-grid imports it where it lies", "outside"
            )
            bad.add(i)
    if outside_area or wrong_grid:
        _gcj_signature(store, layer, c, outside_area + wrong_grid, report)
    elif "building_id" in layer.by_name and report.crs not in ("gcj02", "bd09"):
        _off_buildings(store, c, [i for i in idx if i not in bad], report, allow_outside)
    return grid_of


def _off_buildings(
    store: FeatureStore, c: Candidates, idx: list[int], report: Report, allow: bool
) -> None:
    """Households with coordinates of their own should mostly lie in buildings: when most
    do not, and read as GCJ-02 most would, the file is GCJ-02 declared as WGS84."""
    own = [i for i in idx if c.source_geometries[i] is not None]
    if len(own) < 10:
        return
    b = store.query("buildings").geometries
    tree = shapely.STRtree(b)
    near = 2e-5  # about 2 m: a point picked at a door
    now = _in_buildings(tree, np.array([c.geometries[i] for i in own], dtype=object), near)
    if now * 2 > len(own):
        return  # most lie in buildings: nothing to explain
    src = np.array([c.source_geometries[i] for i in own], dtype=object)
    for name in ("gcj02", "bd09"):
        then = _in_buildings(tree, rowsmod.to_wgs84(src, name), near)
        if now * 2 <= len(own) and then * 2 > len(own) and then >= 2 * max(now, 1):
            msg = (
                f"{len(own) - now} of {len(own)} rows lie in no building; read as {name.upper()} "
                f"coordinates, {then} would: import it again with --crs {name}"
            )
            if allow:
                report.warnings.append(msg)
            else:
                report.add(None, msg + " (or --allow-outside-grid to keep them)", "outside")
            return


def _in_buildings(tree: shapely.STRtree, points: np.ndarray, near: float) -> int:
    hits = tree.query(points, predicate="dwithin", distance=near)
    return len(np.unique(hits[0]))


def _grid_names(store: FeatureStore) -> dict[str, int]:
    """Each grid by its code, its name and its id as text."""
    fs = store.query("grids", Query())
    out: dict[str, int] = {}
    for fid, p in zip(fs.ids.tolist(), fs.properties, strict=True):
        for k in (str(fid), p.get("name"), p.get("code")):
            if k:
                out.setdefault(str(k), int(fid))
    return out


def _gcj_signature(
    store: FeatureStore, layer: Layer, c: Candidates, misplaced: list[int], report: Report
) -> None:
    if report.crs in ("gcj02", "bd09"):
        return
    src = [c.source_geometries[i] for i in misplaced]
    if any(g is None for g in src):
        return
    for name in ("gcj02", "bd09"):
        moved = rowsmod.to_wgs84(np.array(src, dtype=object), name)
        fits = _fits(store, layer, c, misplaced, moved)
        if fits >= max(1, len(misplaced) // 2):
            site = "Amap/Tencent (GCJ-02)" if name == "gcj02" else "Baidu (BD-09)"
            report.warnings.append(
                f"{len(misplaced)} rows lie outside the subdistrict or their grid; read as "
                f"{site} coordinates, {fits} of them would fit. The file is probably "
                f"{name.upper()}: import it again with --crs {name}"
            )
            return


def _fits(
    store: FeatureStore, layer: Layer, c: Candidates, idx: list[int], moved: np.ndarray
) -> int:
    area = store.service_area
    inside = shapely.covers(area, moved) if area is not None else np.ones(len(idx), bool)
    if not layer.grid_scoped:
        return int(inside.sum())
    found = store.derive_grid_ids(moved)
    names = _grid_names(store)
    n = 0
    for k, i in enumerate(idx):
        named = c.named_grids[i]
        g = -1 if found is None else int(found[k])
        if inside[k] and g >= 0 and (named is None or names.get(named.strip()) in (None, g)):
            n += 1
    return n


def values(
    store: FeatureStore, layer: Layer, c: Candidates, report: Report, bad: set[int]
) -> dict[int, dict[str, Any]]:
    """Each remaining row's properties validated by the store as an insert would be."""
    idx = [i for i in range(len(c.properties)) if i not in bad]
    checked = store.check_properties(layer.id, [c.properties[i] for i in idx])
    clean: dict[int, dict[str, Any]] = {}
    for i, d in zip(idx, checked, strict=True):
        if isinstance(d, InvalidFeatureError):
            report.add(c.rows[i], str(d).replace(f"invalid properties for layer {layer.id}: ", ""))
            bad.add(i)
        else:
            clean[i] = d
    return clean


def references(
    store: FeatureStore,
    layer: Layer,
    c: Candidates,
    clean: dict[int, dict[str, Any]],
    grid_of: Mapping[int, int],
    report: Report,
    bad: set[int],
) -> None:
    """Each reference names a stored feature (in the same grid, or around the row, where
    the registry says so); rows in another grid than what they name are tried as GCJ-02."""
    misplaced: list[int] = []
    for p in layer.references:
        if p.derived:
            continue
        wanted = sorted({d[p.name] for d in clean.values() if d.get(p.name) is not None})
        if not wanted:
            continue
        target = get_layer(p.ref or "")
        fs = store.query(target.id, Query(ids=wanted))
        shape = dict(zip(fs.ids.tolist(), fs.geometries, strict=True))
        grid = {int(i): q.get(GRID_KEY) for i, q in zip(fs.ids, fs.properties, strict=True)}
        for i, d in list(clean.items()):
            v = d.get(p.name)
            if v is None:
                continue
            if v not in shape:
                report.add(c.rows[i], f"{p.name} {v} names no {one(target.id)}")
            elif p.same_grid and grid[v] != grid_of.get(i):
                report.add(c.rows[i], f"{p.name} {v} lies in another grid than the row", "outside")
                misplaced.append(i)
            elif p.inside and not shape[v].buffer(INSIDE_TOLERANCE_DEG).covers(c.geometries[i]):
                report.add(c.rows[i], f"does not lie inside {one(target.id)} {v} ({p.zh})")
            else:
                continue
            bad.add(i)
            del clean[i]
    if misplaced:
        _gcj_signature(store, layer, c, misplaced, report)


def key_of(layer: Layer, props: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The first of the layer's keys whose values ``props`` all has, as a tuple."""
    for names in layer.keys:
        vals = tuple(props.get(n) for n in names)
        if all(v is not None and v != "" for v in vals):
            return (names, *vals)
    return None


def duplicates(
    layer: Layer, c: Candidates, clean: dict[int, dict[str, Any]], report: Report, bad: set[int]
) -> None:
    """A row with the same id or key as an earlier row of the file is refused."""
    seen: dict[Any, int] = {}
    for i in sorted(clean):
        marks = []
        if c.ids[i] is not None:
            marks.append(("id", c.ids[i]))
        k = key_of(layer, clean[i])
        if k is not None:
            marks.append(k)
        for m in marks:
            if m in seen:
                what = "id" if m[0] == "id" else "/".join(m[0])
                report.add(c.rows[i], f"repeats row {seen[m]} ({what})", "duplicate")
                bad.add(i)
                del clean[i]
                break
            seen[m] = c.rows[i]


def same_geometry(a: BaseGeometry | None, b: BaseGeometry | None) -> bool:
    """Equal within about a centimetre (a CSV's 7 decimals keep 5e-8 degrees per axis); a
    one-part multi-geometry equals its part (a Shapefile or KML does not tell them apart)."""
    if a is None or b is None:
        return a is b
    a, b = _one_part(a), _one_part(b)
    return bool(shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), tolerance=1e-7))


def _one_part(g: BaseGeometry) -> BaseGeometry:
    parts = shapely.get_parts(g)
    return parts[0] if g.geom_type.startswith("Multi") and len(parts) == 1 else g


def given(c: Candidates) -> frozenset[str]:
    """The properties the file gives a value for (a column it has, even if empty there);
    an import compares and writes these only: a column the file lacks keeps its values."""
    return frozenset(k for props in c.properties for k in props)


def only(props: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """The properties named."""
    return {k: v for k, v in props.items() if k in names}


def comparable(props: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """The named properties as files can hold them: an empty list as no value."""
    return {k: (None if props.get(k) == [] else props.get(k)) for k in names}


def index_existing(
    layer: Layer, ids: Sequence[int], props: Sequence[Mapping[str, Any]]
) -> dict[Any, int]:
    """Stored features by every key they have (and by id)."""
    out: dict[Any, int] = {}
    for fid, p in zip(ids, props, strict=True):
        out[("id", fid)] = fid
        for names in layer.keys:
            vals = tuple(p.get(n) for n in names)
            if all(v is not None and v != "" for v in vals):
                out.setdefault((names, *vals), fid)
    return out
