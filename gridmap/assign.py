"""Point-in-polygon assignment: which grid (or community, zone …) each point falls in, in bulk."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import shapely

IntArray = npt.NDArray[np.int64]

_OUTSIDE = -1
_BORDER = -2


class PolygonIndex:
    """Assign many points to non-overlapping polygons (grid cells) quickly and exactly.

    A raster of cells over the polygons' extent is classified once: a cell wholly in the
    interior of one polygon answers for every point in it with integer arithmetic; a cell
    touching no polygon answers "outside"; only points in cells crossed by a boundary go
    through the exact STRtree test. Points on a shared boundary belong to the polygon with
    the lowest index, so every point gets exactly one answer.

    Parameters
    ----------
    polygons
        Polygon or MultiPolygon geometries (any CRS; points must be in the same one).
    cells
        Approximate number of raster cells (default 65,536: ~0.15 s to build for 40 grids).
    """

    def __init__(self, polygons: npt.ArrayLike, *, cells: int = 65_536) -> None:
        self.polygons = np.asarray(polygons, dtype=object)
        self.tree = shapely.STRtree(self.polygons)
        n = len(self.polygons)
        if n == 0:
            self._labels = np.full((1, 1), _OUTSIDE, dtype=np.int64)
            self._origin = (0.0, 0.0)
            self._size = (1.0, 1.0)
            return
        minx, miny, maxx, maxy = shapely.total_bounds(self.polygons)
        w = max(maxx - minx, 1e-12)
        h = max(maxy - miny, 1e-12)
        side = float(np.sqrt(w * h / max(cells, 1)))
        nx = max(1, int(np.ceil(w / side)))
        ny = max(1, int(np.ceil(h / side)))
        cw, ch = w / nx, h / ny
        ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))
        x0 = minx + ix.ravel() * cw
        y0 = miny + iy.ravel() * ch
        boxes = shapely.box(x0, y0, x0 + cw, y0 + ch)
        box_tree = shapely.STRtree(boxes)
        labels = np.full(nx * ny, _OUTSIDE, dtype=np.int64)
        touched = box_tree.query(self.polygons, predicate="intersects")
        labels[touched[1]] = _BORDER
        inner = box_tree.query(self.polygons, predicate="contains_properly")
        labels[inner[1]] = inner[0]
        self._labels = labels.reshape(ny, nx)
        self._origin = (float(minx), float(miny))
        self._size = (cw, ch)

    def lookup(self, x: npt.ArrayLike, y: npt.ArrayLike) -> IntArray:
        """Index of the polygon containing each point, or -1. Vectorised over arrays."""
        xa = np.atleast_1d(np.asarray(x, dtype=np.float64))
        ya = np.atleast_1d(np.asarray(y, dtype=np.float64))
        ny, nx = self._labels.shape
        cx = np.floor((xa - self._origin[0]) / self._size[0])
        cy = np.floor((ya - self._origin[1]) / self._size[1])
        # points on the far edge of the extent belong to the last cell
        cx[(cx == nx) & (xa <= self._origin[0] + nx * self._size[0])] = nx - 1
        cy[(cy == ny) & (ya <= self._origin[1] + ny * self._size[1])] = ny - 1
        ok = (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
        out = np.full(xa.shape, _OUTSIDE, dtype=np.int64)
        out[ok] = self._labels[cy[ok].astype(np.int64), cx[ok].astype(np.int64)]
        border = np.flatnonzero(out == _BORDER)
        out[border] = _OUTSIDE
        if border.size:
            pts = shapely.points(xa[border], ya[border])
            hit = self.tree.query(pts, predicate="intersects")
            if hit.shape[1]:
                # lowest polygon index per point: sort by (point, polygon), keep first
                order = np.lexsort((hit[1], hit[0]))
                p, g = hit[0][order], hit[1][order]
                first = np.ones(p.size, dtype=bool)
                first[1:] = p[1:] != p[:-1]
                out[border[p[first]]] = g[first]
        return out

    def lookup_geometries(self, geoms: npt.ArrayLike) -> IntArray:
        """Like :meth:`lookup` for point geometries (other types use a representative point)."""
        arr = np.asarray(geoms, dtype=object)
        pts = arr.copy()
        not_point = shapely.get_type_id(arr) != 0
        if not_point.any():
            pts[not_point] = shapely.point_on_surface(arr[not_point])
        return self.lookup(shapely.get_x(pts), shapely.get_y(pts))


def assign_points(x: npt.ArrayLike, y: npt.ArrayLike, polygons: npt.ArrayLike) -> IntArray:
    """Index of the polygon containing each point (x, y), or -1; see :class:`PolygonIndex`.

    Vectorised; the raster is sized to the number of points (one cell per ~16 points,
    between 4,096 and 131,072 cells) so that building it never dominates.
    """
    n = int(np.asarray(x).size)
    cells = min(max(n // 16, 4_096), 131_072)
    return PolygonIndex(polygons, cells=cells).lookup(x, y)
