"""2-opt and Or-opt on the order of one route, vectorised with numpy.

PyVRP's search has no move that reverses part of a route, the move that untangles a tour
crossing itself; a few passes of 2-opt and Or-opt after it close most of the gap on
tour-like routes. Used only where it cannot break anything: symmetric distances (a
reversed stretch costs the same) and no time window on the route.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt


def polish(
    seq: list[int], dist: npt.NDArray[np.int64], *, deadline: float
) -> tuple[list[int], int]:
    """Improve ``seq`` (node indices; the first and last stay where they are) by 2-opt and
    Or-opt moves until none gains or ``deadline`` (``time.perf_counter``) passes.

    Returns the new order and how much shorter it is.
    """
    order = np.asarray(seq, dtype=np.int64)
    saved = 0
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        gain, order = _two_opt(order, dist, deadline)
        if gain > 0:
            saved += gain
            improved = True
        gain, order = _or_opt(order, dist, deadline)
        if gain > 0:
            saved += gain
            improved = True
    return order.tolist(), int(saved)


def _two_opt(
    order: npt.NDArray[np.int64], dist: npt.NDArray[np.int64], deadline: float
) -> tuple[int, npt.NDArray[np.int64]]:
    """Reverse order[i+1..j] where it shortens the route most, repeatedly."""
    total = 0
    n = len(order)
    i = 0
    while i < n - 3 and time.perf_counter() < deadline:
        a, b = order[i], order[i + 1]
        c = order[i + 2 : n - 1]
        e = order[i + 3 : n]
        gains = dist[a, b] + dist[c, e] - dist[a, c] - dist[b, e]
        k = int(np.argmax(gains))
        if gains[k] > 0:
            j = i + 2 + k
            order = np.concatenate([order[: i + 1], order[i + 1 : j + 1][::-1], order[j + 1 :]])
            total += int(gains[k])
            continue  # try the same i again
        i += 1
    return total, order


def _or_opt(
    order: npt.NDArray[np.int64], dist: npt.NDArray[np.int64], deadline: float
) -> tuple[int, npt.NDArray[np.int64]]:
    """Move a stretch of 1–3 stops (either way round) to where it costs least."""
    total = 0
    for length in (1, 2, 3):
        i = 1
        while i + length < len(order) and time.perf_counter() < deadline:
            seg = order[i : i + length]
            p, q = order[i - 1], order[i + length]
            removed = dist[p, seg[0]] + dist[seg[-1], q] - dist[p, q]
            rest = np.concatenate([order[:i], order[i + length :]])
            x, y = rest[:-1], rest[1:]
            fwd = dist[x, seg[0]] + dist[seg[-1], y] - dist[x, y]
            rev = dist[x, seg[-1]] + dist[seg[0], y] - dist[x, y]
            costs = np.minimum(fwd, rev)
            k = int(np.argmin(costs))
            if removed - costs[k] > 0:
                piece = seg if fwd[k] <= rev[k] else seg[::-1]
                order = np.concatenate([rest[: k + 1], piece, rest[k + 1 :]])
                total += int(removed - costs[k])
                continue
            i += 1
    return total, order
