"""Walking reach between two point sets: each target's nearest source within a limit (one
multi-source Dijkstra) and every source–target pair within a limit (sparse), on the walking
network of :mod:`gridmap.routing.network`; straight line × detour where there is no network.

A point joins the network at the foot of the perpendicular on its nearest edge (as routes
do); one farther than ``MAX_ACCESS_M`` from every walkable road is unreachable on foot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from gridmap.crs import to_metric
from gridmap.routing.matrix import DETOUR_FACTOR
from gridmap.routing.network import Attached, Network, Walks, attach

CHUNK = 256
"""Sources per Dijkstra call in :func:`pairs_within` (bounds the rows held at once)."""
WALK = "walk"
STRAIGHT = "straight"


@dataclass(frozen=True)
class Nearest:
    """Each target's distance to its nearest source (inf: none within the limit or not
    reachable on foot) and that source's index (-1)."""

    metres: npt.NDArray[np.float64]
    source: npt.NDArray[np.int64]
    method: str
    """"walk" on the network, or "straight" (straight line × detour: no walkable roads)."""


def metric_xy(lon: npt.ArrayLike, lat: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """WGS84 points as metric (EPSG:4547) x, y rows."""
    pts = to_metric(shapely.points(np.asarray(lon, float), np.asarray(lat, float)))
    return shapely.get_coordinates(pts).reshape(-1, 2)


def _ends(att: Attached, dist: npt.NDArray[np.float64], idx: npt.NDArray[np.int64]) -> npt.NDArray:
    """For targets ``idx``: the distance through each of their edge's two ends (T×2)."""
    return dist[..., att.ends[idx]] + att.to_end[idx]


def nearest(
    net: Network,
    sources: tuple[npt.ArrayLike, npt.ArrayLike],
    targets: tuple[npt.ArrayLike, npt.ArrayLike],
    limit: float,
) -> Nearest:
    """Each target's walking distance to the nearest source, up to ``limit`` metres."""
    n = len(np.asarray(targets[0]))
    metres = np.full(n, np.inf)
    which = np.full(n, -1, dtype=np.int64)
    if len(np.asarray(sources[0])) == 0 or n == 0:
        return Nearest(metres, which, WALK if len(net.u) else STRAIGHT)
    if len(net.u) == 0:
        return _nearest_straight(sources, targets, limit)
    src, dst = attach(net, *sources), attach(net, *targets)
    walks = Walks.of(net, src)
    ok_s = np.flatnonzero(src.attached)
    ok_t = np.flatnonzero(dst.attached)
    if len(ok_s) == 0 or len(ok_t) == 0:
        return Nearest(metres, which, WALK)
    dist, _, origin = dijkstra(
        walks.graph,
        directed=True,
        indices=walks.row[ok_s],
        limit=limit,
        min_only=True,
        return_predecessors=True,
    )
    source_of_row = np.full(walks.graph.shape[0], -1, dtype=np.int64)
    source_of_row[walks.row[ok_s]] = ok_s
    through = _ends(dst, dist, ok_t)  # T×2
    k = np.argmin(through, axis=1)
    best = through[np.arange(len(ok_t)), k]
    end_nodes = dst.ends[ok_t, k]
    best_src = np.where(np.isfinite(best), source_of_row[np.maximum(origin[end_nodes], 0)], -1)
    # a source on the target's own edge may be nearer along the edge than through an end
    on_edge: dict[int, list[int]] = {}
    for s in ok_s:
        on_edge.setdefault(int(src.edge[s]), []).append(int(s))
    for pos, t in enumerate(ok_t):
        for s in on_edge.get(int(dst.edge[t]), ()):
            along = src.access[s] + abs(src.offset[s] - dst.offset[t]) + dst.access[t]
            if along < best[pos]:
                best[pos], best_src[pos] = along, s
    keep = best <= limit
    metres[ok_t[keep]] = best[keep]
    which[ok_t[keep]] = best_src[keep]
    return Nearest(metres, which, WALK)


def _nearest_straight(
    sources: tuple[npt.ArrayLike, npt.ArrayLike],
    targets: tuple[npt.ArrayLike, npt.ArrayLike],
    limit: float,
) -> Nearest:
    tree = cKDTree(metric_xy(*sources))
    d, i = tree.query(metric_xy(*targets), distance_upper_bound=limit / DETOUR_FACTOR)
    d = np.asarray(d, float) * DETOUR_FACTOR
    found = np.isfinite(d)
    return Nearest(np.where(found, d, np.inf), np.where(found, i, -1).astype(np.int64), STRAIGHT)


def pairs_within(
    net: Network,
    sources: tuple[npt.ArrayLike, npt.ArrayLike],
    targets: tuple[npt.ArrayLike, npt.ArrayLike],
    limit: float,
) -> tuple[csr_matrix, str]:
    """Walking metres of every source–target pair within ``limit`` (sources × targets,
    sparse; a stored 0 m is kept as 1e-6) and the method ("walk" or "straight")."""
    n_s, n_t = len(np.asarray(sources[0])), len(np.asarray(targets[0]))
    if n_s == 0 or n_t == 0:
        return csr_matrix((n_s, n_t)), WALK if len(net.u) else STRAIGHT
    if len(net.u) == 0:
        a, b = cKDTree(metric_xy(*sources)), cKDTree(metric_xy(*targets))
        m = a.sparse_distance_matrix(b, limit / DETOUR_FACTOR, output_type="coo_matrix")
        m.data = np.maximum(m.data * DETOUR_FACTOR, 1e-6)
        return m.tocsr(), STRAIGHT
    src, dst = attach(net, *sources), attach(net, *targets)
    walks = Walks.of(net, src)
    ok_s = np.flatnonzero(src.attached)
    ok_t = np.flatnonzero(dst.attached)
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    vals: list[npt.NDArray[np.float64]] = []
    for lo in range(0, len(ok_s), CHUNK):
        part = ok_s[lo : lo + CHUNK]
        dist = dijkstra(walks.graph, directed=True, indices=walks.row[part], limit=limit)
        through = _ends(dst, dist, ok_t)  # S×T×2
        best = through.min(axis=2)
        shared = src.edge[part, None] == dst.edge[None, ok_t]
        along = (
            src.access[part, None]
            + np.abs(src.offset[part, None] - dst.offset[None, ok_t])
            + dst.access[None, ok_t]
        )
        best = np.where(shared, np.minimum(best, along), best)
        i, j = np.nonzero(best <= limit)
        rows.append(part[i])
        cols.append(ok_t[j])
        vals.append(np.maximum(best[i, j], 1e-6))
    if not rows:
        return csr_matrix((n_s, n_t)), WALK
    m = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), (n_s, n_t))
    return m.tocsr(), WALK
