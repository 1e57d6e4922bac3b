"""The walking network: walkable roads noded into a graph (metres, EPSG:4547), points attached
to their nearest edge, shortest paths by scipy.sparse.csgraph.

Roads are noded where they cross (``shapely.unary_union``) and their vertices snapped to
``snap_m``, so that lines drawn to meet do. Only walkable roads take part, planned ones
only when asked. A point (a building entrance, a worker's office) is attached to the
nearest edge: a straight access leg to its foot on the edge, which splits the edge.
Distances between points are then one multi-source Dijkstra over the graph with the points
in it, the same work as plain ``csgraph.dijkstra`` between those nodes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from scipy.sparse import coo_matrix
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

    @property
    def segments(self) -> npt.NDArray[np.object_]:
        """Each edge as a metric LineString (for the nearest-edge search)."""
        return shapely.linestrings(
            np.stack([self.xy[self.u], self.xy[self.v]], axis=1).reshape(-1, 2, 2)
        )


def build(lines_wgs84: Sequence[shapely.LineString], *, snap_m: float = SNAP_M) -> Network:
    """Node the lines (where they cross, and vertices within ``snap_m``) into a graph."""
    if len(lines_wgs84) == 0:
        empty = np.empty(0, dtype=np.int64)
        return Network(np.empty((0, 2)), empty, empty, np.empty(0))
    metric = to_metric(np.asarray(lines_wgs84, dtype=object))
    metric = shapely.set_precision(metric, snap_m)  # snap vertices to a snap_m grid
    noded = shapely.get_parts(shapely.unary_union(metric))
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
    """Points attached to a network: the graph with them in it, and each point's node."""

    graph: object  # scipy.sparse csr matrix
    nodes: npt.NDArray[np.int64]
    xy: npt.NDArray[np.float64]
    attached: npt.NDArray[np.bool_]


def attach(net: Network, lon: npt.ArrayLike, lat: npt.ArrayLike) -> Attached:
    """Put points into the graph: each joins its nearest edge (within MAX_ACCESS_M) at its
    foot, which splits the edge; points on one edge are chained along it in order."""
    pts = to_metric(shapely.points(np.asarray(lon, float), np.asarray(lat, float)))
    n_pts = len(pts)
    base = len(net.xy)
    xy = [net.xy]
    us, vs, ws = [net.u], [net.v], [net.length]
    attached = np.zeros(n_pts, dtype=bool)
    point_nodes = np.arange(base, base + n_pts, dtype=np.int64)
    xy.append(shapely.get_coordinates(pts))
    if len(net.u):
        segs = net.segments
        tree = shapely.STRtree(segs)
        which, dist = tree.query_nearest(pts, max_distance=MAX_ACCESS_M, return_distance=True)
        src, seg = which
        if len(src) == 0:  # nothing within reach of the network
            return _graph(net, xy, us, vs, ws, point_nodes, attached)
        first = np.unique(src, return_index=True)[1]  # one edge per point (ties: the first)
        src, seg, dist = src[first], seg[first], dist[first]
        attached[src] = True
        offset = shapely.line_locate_point(segs[seg], pts[src])
        feet = shapely.get_coordinates(shapely.line_interpolate_point(segs[seg], offset))
        foot_nodes = np.arange(base + n_pts, base + n_pts + len(src), dtype=np.int64)
        xy.append(feet)
        us.append(point_nodes[src])  # access legs
        vs.append(foot_nodes)
        ws.append(dist)
        order = np.lexsort((offset, seg))  # chain the feet along each edge
        seg_o, off_o, foot_o = seg[order], offset[order], foot_nodes[order]
        starts = np.r_[True, seg_o[1:] != seg_o[:-1]]
        ends = np.r_[seg_o[1:] != seg_o[:-1], True]
        prev_node = np.where(starts, net.u[seg_o], np.r_[-1, foot_o[:-1]])
        prev_off = np.where(starts, 0.0, np.r_[0.0, off_o[:-1]])
        us.append(prev_node)
        vs.append(foot_o)
        ws.append(off_o - prev_off)
        us.append(foot_o[ends])
        vs.append(net.v[seg_o[ends]])
        ws.append(net.length[seg_o[ends]] - off_o[ends])
    return _graph(net, xy, us, vs, ws, point_nodes, attached)


def _graph(net: Network, xy: list, us: list, vs: list, ws: list, nodes, attached) -> Attached:
    """The undirected graph of the network's edges plus the access and split edges."""
    u = np.concatenate(us)
    v = np.concatenate(vs)
    w = np.maximum(np.concatenate(ws), 1e-3)  # csgraph reads 0 as "no edge"
    size = len(np.vstack(xy))
    graph = coo_matrix((np.r_[w, w], (np.r_[u, v], np.r_[v, u])), shape=(size, size)).tocsr()
    return Attached(graph, nodes, np.vstack(xy), attached)


def walking_matrix(
    net: Network, lon: npt.ArrayLike, lat: npt.ArrayLike, *, speed_m_s: float = WALK_SPEED_M_S
) -> tuple[Matrix, Attached, npt.NDArray[np.int32]]:
    """Walking distances and durations between the points, the graph they were attached
    to, and the shortest-path predecessors (for drawing the legs)."""
    att = attach(net, lon, lat)
    dist, pred = dijkstra(att.graph, directed=False, indices=att.nodes, return_predecessors=True)
    metres = dist[:, att.nodes]
    metres[~att.attached, :] = np.inf
    metres[:, ~att.attached] = np.inf
    np.fill_diagonal(metres, 0.0)
    finite = np.isfinite(metres)
    distance = np.where(finite, np.rint(metres), UNREACHABLE).astype(np.int64)
    duration = np.where(finite, np.rint(metres / speed_m_s), UNREACHABLE).astype(np.int64)
    return Matrix(distance, duration, "walk"), att, pred


def leg(att: Attached, pred: npt.NDArray[np.int32], i: int, j: int) -> npt.NDArray[np.float64]:
    """Metric coordinates of the walk from point ``i`` to point ``j`` (rows of the matrix)."""
    target = int(att.nodes[j])
    path = [target]
    while path[-1] != att.nodes[i] and pred[i, path[-1]] >= 0:
        path.append(int(pred[i, path[-1]]))
    return att.xy[path[::-1]]


def to_wgs84_line(xy: npt.NDArray[np.float64]) -> shapely.LineString:
    """A metric path as a WGS84 LineString."""
    return from_metric([shapely.linestrings(xy)])[0]
