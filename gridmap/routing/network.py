"""The walking network: walkable roads noded into a graph (metres, EPSG:4547), points attached
to their nearest edge, shortest paths by scipy.sparse.csgraph.

Roads are noded where they cross (``shapely.unary_union``), after each is snapped to the
road ends within ``snap_m`` of it, so that lines drawn to meet do (a road ending a fraction
of a metre beside another joins it: a T-junction). Only walkable roads take part, planned ones
only when asked. A point (a building entrance, a worker's office) is attached to the
nearest edge: a straight access leg to its foot on the edge.
Distances between points come from one multi-source Dijkstra over the network as built,
started from the ends of the edges the points join (fewer nodes than a graph with every
point spliced in, and the graph is built once per roads change).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
import shapely
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import dijkstra

from gridmap.crs import from_metric, to_metric
from gridmap.routing.matrix import WALK_SPEED_M_S, Matrix
from gridmap.routing.solver import UNREACHABLE
from gridmap.store.base import Query, Store

SNAP_M = 1.0
MAX_ACCESS_M = 500.0
"""A point farther than this from every walkable edge is not attached (unreachable)."""


@dataclass(frozen=True)
class Network:
    """Nodes (metric x, y) and undirected edges (u, v, metres) of the walkable roads."""

    xy: npt.NDArray[np.float64]
    u: npt.NDArray[np.int64]
    v: npt.NDArray[np.int64]
    length: npt.NDArray[np.float64]
    stamp: int = -1

    @cached_property
    def segments(self) -> npt.NDArray[np.object_]:
        """Each edge as a metric LineString (for the nearest-edge search)."""
        return shapely.linestrings(
            np.stack([self.xy[self.u], self.xy[self.v]], axis=1).reshape(-1, 2, 2)
        )

    @cached_property
    def tree(self) -> shapely.STRtree:
        """The edges' spatial index."""
        return shapely.STRtree(self.segments)

    @cached_property
    def graph(self) -> csr_matrix:
        """The edges both ways as a sparse matrix (metres; csgraph reads 0 as no edge)."""
        w = np.maximum(self.length, 1e-3)
        n = len(self.xy)
        return coo_matrix(
            (np.r_[w, w], (np.r_[self.u, self.v], np.r_[self.v, self.u])), shape=(n, n)
        ).tocsr()


def build(lines_wgs84: Sequence[shapely.LineString], *, snap_m: float = SNAP_M) -> Network:
    """Node the lines (where they cross, and vertices within ``snap_m``) into a graph."""
    if len(lines_wgs84) == 0:
        empty = np.empty(0, dtype=np.int64)
        return Network(np.empty((0, 2)), empty, empty, np.empty(0))
    metric = _snap_ends(to_metric(np.asarray(lines_wgs84, dtype=object)), snap_m)
    noded = shapely.get_parts(shapely.unary_union(metric))
    noded = shapely.set_precision(noded, snap_m)  # shared vertices stay shared, on a grid
    coords, index = shapely.get_coordinates(noded, return_index=True)
    same_line = index[1:] == index[:-1]
    a = coords[:-1][same_line]
    b = coords[1:][same_line]
    keys, inverse = np.unique(np.round(np.vstack([a, b]) / snap_m), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    u, v = inverse[: len(a)], inverse[len(a) :]
    xy = np.zeros((len(keys), 2))
    xy[inverse] = np.vstack([a, b])
    keep = u != v
    length = np.hypot(*(a[keep] - b[keep]).T)
    return Network(xy, u[keep].astype(np.int64), v[keep].astype(np.int64), length)


def _snap_ends(lines: npt.NDArray[np.object_], snap_m: float) -> npt.NDArray[np.object_]:
    """Each line snapped to the line ends within ``snap_m`` of it: GEOS inserts such an end
    into the segment it lies near, so a road drawn to end on another (a T-junction a
    fraction of a metre off) is noded into it, and ends drawn to meet do meet."""
    ends = np.r_[shapely.get_point(lines, 0), shapely.get_point(lines, -1)]
    which, near = shapely.STRtree(ends).query(lines, predicate="dwithin", distance=snap_m)
    out = lines.copy()
    if len(which) == 0:
        return out
    cut = np.flatnonzero(np.diff(which)) + 1
    for group, points in zip(np.split(which, cut), np.split(near, cut), strict=True):
        i = int(group[0])
        out[i] = shapely.snap(lines[i], shapely.multipoints(ends[points]), snap_m)
    return out


_cache: dict[tuple[int, bool], Network] = {}
_cache_lock = threading.Lock()


def of_store(store: Store, *, include_planned: bool = False) -> Network:
    """The walking network of a store's roads, cached until the roads change."""
    stamp = store.stamp("roads")
    key = (id(store), include_planned)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and hit.stamp == stamp:
        return hit
    fs = store.query("roads", Query()).with_geometry()
    lines = [
        g
        for g, p in zip(fs.geometries, fs.properties, strict=True)
        if p.get("walkable") is not False and (include_planned or p.get("status") != "planned")
    ]
    net = build(lines)
    net = Network(net.xy, net.u, net.v, net.length, stamp)
    with _cache_lock:
        _cache[key] = net
    return net


@dataclass(frozen=True)
class Attached:
    """Points attached to a network: each point's edge, its foot on it and the way from
    the point to the edge's two ends."""

    xy: npt.NDArray[np.float64]
    """The points (metric)."""
    attached: npt.NDArray[np.bool_]
    edge: npt.NDArray[np.int64]
    """The edge each point joins (-1: none within MAX_ACCESS_M)."""
    access: npt.NDArray[np.float64]
    """Metres from the point to its foot on the edge."""
    offset: npt.NDArray[np.float64]
    """Metres along the edge from its first end (``u``) to the foot."""
    foot: npt.NDArray[np.float64]
    ends: npt.NDArray[np.int64]
    """The edge's two nodes per point (P×2)."""
    to_end: npt.NDArray[np.float64]
    """Metres from the point to each end (P×2): access, then along the edge."""


def attach(net: Network, lon: npt.ArrayLike, lat: npt.ArrayLike) -> Attached:
    """Attach each point to its nearest edge within MAX_ACCESS_M (at the foot of the
    perpendicular); the network itself is left as it is."""
    pts = to_metric(shapely.points(np.asarray(lon, float), np.asarray(lat, float)))
    n = len(pts)
    xy = shapely.get_coordinates(pts).reshape(n, 2)
    edge = np.full(n, -1, dtype=np.int64)
    access = np.zeros(n)
    if len(net.u) and n:
        which, dist = net.tree.query_nearest(pts, max_distance=MAX_ACCESS_M, return_distance=True)
        src, seg = which
        first = np.unique(src, return_index=True)[1]  # one edge per point (ties: the first)
        edge[src[first]] = seg[first]
        access[src[first]] = dist[first]
    attached = edge >= 0
    ok = edge[attached]
    offset = np.zeros(n)
    foot = xy.copy()
    ends = np.zeros((n, 2), dtype=np.int64)
    to_end = np.full((n, 2), np.inf)
    if len(ok):
        segs = net.segments[ok]
        offset[attached] = shapely.line_locate_point(segs, pts[attached])
        foot[attached] = shapely.get_coordinates(
            shapely.line_interpolate_point(segs, offset[attached])
        ).reshape(-1, 2)
        ends[attached] = np.c_[net.u[ok], net.v[ok]]
        a, o = access[attached], offset[attached]
        to_end[attached] = np.c_[a + o, a + net.length[ok] - o]
    return Attached(xy, attached, edge, access, offset, foot, ends, to_end)


@dataclass
class Walks:
    """The network with one source node per attached point (edges out to its edge's two
    ends, none in, so no search passes through it), and predecessor rows for drawing."""

    net: Network
    att: Attached
    graph: csr_matrix
    row: npt.NDArray[np.int64]
    """Each point's source node in ``graph`` (-1: not attached)."""
    _from: dict[int, tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]] = field(
        default_factory=dict
    )

    @classmethod
    def of(cls, net: Network, att: Attached) -> Walks:
        """The network plus the points' source nodes."""
        base = len(net.xy)
        ok = np.flatnonzero(att.attached)
        row = np.full(len(att.xy), -1, dtype=np.int64)
        row[ok] = base + np.arange(len(ok))
        size = base + len(ok)
        g = net.graph.tocoo()
        u = np.r_[g.row, row[ok], row[ok]]
        v = np.r_[g.col, att.ends[ok, 0], att.ends[ok, 1]]
        w = np.r_[g.data, np.maximum(att.to_end[ok, 0], 1e-3), np.maximum(att.to_end[ok, 1], 1e-3)]
        graph = coo_matrix((w, (u, v)), shape=(size, size)).tocsr()
        return cls(net, att, graph, row)

    def search(self, i: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]:
        """Metres and shortest-path predecessors from point ``i`` to every node."""
        if i not in self._from:
            self._from[i] = dijkstra(
                self.graph, directed=True, indices=int(self.row[i]), return_predecessors=True
            )
        return self._from[i]


CHUNK = 512
"""Points per Dijkstra call (bounds the rows held at once on a big network)."""


def walking_matrix(
    net: Network, lon: npt.ArrayLike, lat: npt.ArrayLike, *, speed_m_s: float = WALK_SPEED_M_S
) -> tuple[Matrix, Attached, Walks]:
    """Walking distances and durations between the points, how they were attached, and
    the walks (for drawing the legs).

    One multi-source Dijkstra from the points over the network as built; each point
    reaches another through one of that one's two edge ends, or along the edge they share.
    """
    att = attach(net, lon, lat)
    walks = Walks.of(net, att)
    n = len(att.xy)
    metres = np.full((n, n), np.inf)
    ok = np.flatnonzero(att.attached)
    e0, e1 = att.ends[ok, 0], att.ends[ok, 1]
    t0, t1 = att.to_end[ok, 0][None, :], att.to_end[ok, 1][None, :]
    edge, off, acc = att.edge[ok], att.offset[ok], att.access[ok]
    for lo in range(0, len(ok), CHUNK):
        part = slice(lo, lo + CHUNK)
        rows = dijkstra(walks.graph, directed=True, indices=walks.row[ok[part]])
        best = np.minimum(rows[:, e0] + t0, rows[:, e1] + t1)
        shared = edge[part, None] == edge[None, :]
        along = acc[part, None] + np.abs(off[part, None] - off[None, :]) + acc[None, :]
        metres[ok[part, None], ok[None, :]] = np.where(shared, np.minimum(best, along), best)
    np.fill_diagonal(metres, 0.0)
    finite = np.isfinite(metres)
    distance = np.where(finite, np.rint(metres), UNREACHABLE).astype(np.int64)
    duration = np.where(finite, np.rint(metres / speed_m_s), UNREACHABLE).astype(np.int64)
    return Matrix(distance, duration, "walk"), att, walks


def leg(att: Attached, walks: Walks, i: int, j: int) -> npt.NDArray[np.float64]:
    """Metric coordinates of the walk from point ``i`` to point ``j`` (rows of the matrix)."""
    if i == j or not (att.attached[i] and att.attached[j]):
        return att.xy[[i, j]]
    metres, pred = walks.search(i)
    dist = metres[att.ends[j]] + att.to_end[j]  # the same sums as the matrix
    k = int(np.argmin(dist))
    along = (
        att.access[i] + abs(att.offset[i] - att.offset[j]) + att.access[j]
        if att.edge[i] == att.edge[j]
        else np.inf
    )
    if along <= dist[k]:
        return np.vstack([att.xy[i], att.foot[i], att.foot[j], att.xy[j]])
    path = [int(att.ends[j, k])]
    while pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
    base = len(walks.net.xy)
    nodes = walks.net.xy[[p for p in path[::-1] if p < base]]  # not i's own source node
    return np.vstack([att.xy[i], att.foot[i], nodes, att.foot[j], att.xy[j]])


def to_wgs84_line(xy: npt.NDArray[np.float64]) -> shapely.LineString:
    """A metric path as a WGS84 LineString."""
    return from_metric([shapely.linestrings(xy)])[0]
