"""Polygons that tile (zones, communities, grids): slivers snapped away, overlaps and gaps found.

An edge drawn past a neighbour's vertex without one of its own (a T-junction) leaves a
sliver: a hairline overlap or gap between two grids that looks shared on screen. Each
imported polygon is snapped to its neighbours' (and its parent's) vertices within a
tolerance, in two passes so that both sides of a T-junction gain the shared vertex; what
moved is reported. Then, over the layer as it would be after the import, any overlap of
two polygons and any gap inside a parent (a community not covered by its grids) above
the area tolerance is a problem. Snapping is in degrees, so a snapped vertex equals its
neighbour's exactly; areas are measured in metres (EPSG:4547).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.ops
from shapely.geometry.base import BaseGeometry

from gridmap.crs import to_metric
from gridmap.layers import Layer

METRES_PER_DEGREE = 111_320.0


@dataclass
class Tile:
    """One polygon of the layer after the import; ``row`` is None for one already stored."""

    key: str
    geometry: BaseGeometry
    parent: int | None
    row: int | None


def parent_prop(layer: Layer) -> str | None:
    """The property naming the polygon each feature lies inside (a grid's community)."""
    return next((p.name for p in layer.references if p.inside), None)


def snap(
    tiles: list[Tile], parents: dict[int, BaseGeometry], tolerance_m: float
) -> list[tuple[int, float]]:
    """Snap the imported tiles (``row`` set) to their neighbours and parent, in place;
    returns (index, metres the furthest vertex moved) for each tile that changed.

    First each vertex within the tolerance of a neighbour's edge is moved onto it (onto
    the neighbour's vertex if one is that close); then the vertices now lying on an
    imported tile's edges are inserted into it, so both sides of a T-junction share one.
    """
    tol = tolerance_m / METRES_PER_DEGREE
    if tol <= 0:
        return []
    geoms = np.array([t.geometry for t in tiles], dtype=object)
    tree = shapely.STRtree(geoms)
    moved: dict[int, float] = {}
    for i, t in enumerate(tiles):
        if t.row is None:
            continue
        near = [j for j in tree.query(shapely.buffer(geoms[i], tol)) if j != i]
        refs = [shapely.boundary(geoms[j]) for j in near]
        if t.parent is not None and t.parent in parents:
            refs.append(shapely.boundary(parents[t.parent]))
        if refs:
            geoms[i] = _onto(geoms[i], refs, tol)
    tree = shapely.STRtree(geoms)
    for i, t in enumerate(tiles):
        if t.row is None:
            continue
        near = [j for j in tree.query(shapely.buffer(geoms[i], tol)) if j != i]
        if near:
            points = shapely.multipoints(shapely.get_coordinates(geoms[near]))
            geoms[i] = shapely.snap(geoms[i], points, tol * 1e-3)
        if not geoms[i].is_valid:
            geoms[i] = shapely.make_valid(geoms[i])
        if not shapely.equals_exact(geoms[i], t.geometry, tolerance=0):
            moved[i] = shapely.hausdorff_distance(geoms[i], t.geometry) * METRES_PER_DEGREE
            t.geometry = geoms[i]
    return sorted(moved.items())


def _onto(g: BaseGeometry, refs: list[BaseGeometry], tol: float) -> BaseGeometry:
    """``g`` with each vertex that lies within ``tol`` of a neighbour's edge but not on it
    moved onto it (onto a neighbour's vertex if one is that close). Neighbours are taken
    one by one: a vertex on one neighbour's edge may still be near another's."""
    corners = shapely.multipoints(np.concatenate([shapely.get_coordinates(r) for r in refs]))

    def move(xy: np.ndarray) -> np.ndarray:
        out = xy.copy()
        pts = shapely.points(xy)
        for r in refs:
            dist = shapely.distance(pts, r)
            for k in np.flatnonzero((dist > 0) & (dist <= tol)):
                corner = shapely.ops.nearest_points(pts[k], corners)[1]
                near = shapely.distance(pts[k], corner) <= tol
                target = corner if near else shapely.ops.nearest_points(pts[k], r)[1]
                out[k] = (target.x, target.y)
                pts[k] = target
        return out

    return shapely.transform(g, move)


def _where(g: BaseGeometry) -> str:
    p = g.representative_point()
    return f"({p.x:.6f}, {p.y:.6f})"


def overlaps(tiles: Sequence[Tile], min_area_m2: float) -> list[tuple[int, int, float, str]]:
    """(i, j, m², where) for each pair of tiles, one of them imported, overlapping more
    than ``min_area_m2``."""
    geoms = np.array([t.geometry for t in tiles], dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    out = []
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i >= j or (tiles[i].row is None and tiles[j].row is None):
            continue
        piece = shapely.intersection(geoms[i], geoms[j])
        if piece.is_empty or piece.area == 0:
            continue
        area = float(to_metric([piece])[0].area)
        if area > min_area_m2:
            out.append((i, j, area, _where(piece)))
    return out


def gaps(
    tiles: Sequence[Tile], parents: dict[int, BaseGeometry], min_area_m2: float
) -> list[tuple[int | None, float, str]]:
    """(parent id or None, m², where) for each gap larger than ``min_area_m2``: a part of a
    parent its tiles do not cover, or (with no parents) a hole in the tiles' union."""
    out: list[tuple[int | None, float, str]] = []
    by_parent: dict[int | None, list[BaseGeometry]] = {}
    for t in tiles:
        by_parent.setdefault(t.parent if parents else None, []).append(t.geometry)
    for pid, members in by_parent.items():
        cover = shapely.union_all(members)
        if parents and pid is not None and pid in parents:
            rest = shapely.difference(parents[pid], cover)
        else:
            holes = [shapely.Polygon(r) for poly in _polygons(cover) for r in poly.interiors]
            rest = shapely.union_all(holes) if holes else shapely.Polygon()
        for piece in _polygons(rest):
            area = float(to_metric([piece])[0].area)
            if area > min_area_m2:
                out.append((pid, area, _where(piece)))
    return out


def _polygons(g: BaseGeometry) -> list[BaseGeometry]:
    if g.is_empty:
        return []
    parts = shapely.get_parts(g)
    return [p for p in parts if p.geom_type == "Polygon"]
