"""The textbook walking matrix, as an anchor: every point spliced into the graph as a node
(its foot splits its nearest edge), then plain ``scipy.sparse.csgraph.dijkstra`` from the
points' nodes. Written independently of ``gridmap.routing.network``'s search."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import shapely
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import dijkstra

from gridmap.crs import to_metric
from gridmap.routing.network import MAX_ACCESS_M, Network


def spliced_graph(
    net: Network, lon: npt.ArrayLike, lat: npt.ArrayLike
) -> tuple[csr_matrix, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """The network with the points in it: the graph, each point's node, and which joined."""
    pts = to_metric(shapely.points(np.asarray(lon, float), np.asarray(lat, float)))
    n, base = len(pts), len(net.xy)
    segs = shapely.linestrings(np.stack([net.xy[net.u], net.xy[net.v]], axis=1))
    (src, seg), dist = shapely.STRtree(segs).query_nearest(
        pts, max_distance=MAX_ACCESS_M, return_distance=True
    )
    first = np.unique(src, return_index=True)[1]
    src, seg, dist = src[first], seg[first], dist[first]
    joined = np.zeros(n, dtype=bool)
    joined[src] = True
    point_node = base + np.arange(n)
    foot_node = base + n + np.arange(len(src))
    offset = shapely.line_locate_point(segs[seg], pts[src])
    us, vs, ws = [net.u], [net.v], [net.length]
    us.append(point_node[src])
    vs.append(foot_node)
    ws.append(dist)
    # split each edge at its feet, in order along it
    split = set(seg.tolist())
    keep = np.array([k not in split for k in range(len(net.u))], dtype=bool)
    us[0], vs[0], ws[0] = net.u[keep], net.v[keep], net.length[keep]
    for e in split:
        on = np.flatnonzero(seg == e)
        on = on[np.argsort(offset[on])]
        chain = [int(net.u[e]), *foot_node[on].tolist(), int(net.v[e])]
        at = [0.0, *offset[on].tolist(), float(net.length[e])]
        for a, b, x, y in zip(chain, chain[1:], at, at[1:], strict=False):
            us.append(np.array([a]))
            vs.append(np.array([b]))
            ws.append(np.array([y - x]))
    u, v = np.concatenate(us), np.concatenate(vs)
    w = np.maximum(np.concatenate(ws), 1e-3)
    size = base + n + len(src)
    graph = coo_matrix((np.r_[w, w], (np.r_[u, v], np.r_[v, u])), shape=(size, size)).tocsr()
    return graph, point_node, joined


def spliced_matrix(net: Network, lon: npt.ArrayLike, lat: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Metres between the points (inf where no walk exists)."""
    graph, nodes, joined = spliced_graph(net, lon, lat)
    metres = dijkstra(graph, directed=False, indices=nodes)[:, nodes]
    metres[~joined, :] = np.inf
    metres[:, ~joined] = np.inf
    np.fill_diagonal(metres, 0.0)
    return metres
