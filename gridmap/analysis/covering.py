"""The one module that talks to the MILP solver for facility siting (HiGHS through
``scipy.optimize.milp``): the maximal covering location problem, the p-median with
facilities already open, and greedy answers beside both.

Candidates × demands come in as a sparse matrix (a cover, or walking metres of the pairs
within reach); weights are households. Exact answers carry the solver's proven bound and
gap, so "optimal" is the solver's proof, not a claim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix as _coo
from scipy.sparse import csr_matrix, hstack, identity, vstack

SOLVER = "HiGHS (scipy.optimize.milp)"
TIME_LIMIT_S = 60.0


@dataclass(frozen=True)
class Siting:
    """Chosen candidates (in the order their marginal gains were taken), each one's gain,
    the objective (weight covered, or total weighted metres), the solver's proven bound
    and relative gap, and how long it took."""

    chosen: list[int]
    gains: list[float]
    objective: float
    bound: float
    gap: float
    optimal: bool
    seconds: float
    method: str
    """"milp" (HiGHS) or "greedy"."""


def _distinct(cover: csr_matrix) -> npt.NDArray[np.int64]:
    """One candidate per distinct non-empty column set (identical candidates are
    interchangeable: keeping one loses nothing)."""
    cover = cover.tocsr()
    cover.sort_indices()
    seen: dict[bytes, int] = {}
    for i in range(cover.shape[0]):
        lo, hi = cover.indptr[i], cover.indptr[i + 1]
        if hi > lo:
            seen.setdefault(cover.indices[lo:hi].tobytes(), i)
    return np.array(sorted(seen.values()), dtype=np.int64)


def covered_weight(cover: csr_matrix, weights: npt.ArrayLike, chosen: list[int]) -> float:
    """The weight of the demands at least one chosen candidate covers."""
    w = np.asarray(weights, float)
    if not chosen:
        return 0.0
    hit = np.asarray(cover[chosen].sum(axis=0)).ravel() > 0
    return float(w[hit].sum())


def _gains_order(
    cover: csr_matrix, weights: npt.NDArray[np.float64], chosen: list[int]
) -> tuple[list[int], list[float]]:
    """The chosen candidates re-ordered greedily: each next is the one adding most."""
    left = list(chosen)
    done = np.zeros(cover.shape[1], dtype=bool)
    order: list[int] = []
    gains: list[float] = []
    while left:
        add = [float(weights[(cover[i].toarray().ravel() > 0) & ~done].sum()) for i in left]
        k = int(np.argmax(add))
        i = left.pop(k)
        order.append(i)
        gains.append(add[k])
        done |= cover[i].toarray().ravel() > 0
    return order, gains


def mclp(
    cover: csr_matrix, weights: npt.ArrayLike, k: int, *, time_limit: float = TIME_LIMIT_S
) -> Siting:
    """Choose ``k`` candidates covering the most weight, exactly (MILP).

    max Σ w_j y_j  s.t.  y_j ≤ Σ_i a_ij x_i,  Σ_i x_i = k,  x binary, 0 ≤ y ≤ 1.
    Only candidates with distinct non-empty cover sets and demands some candidate covers
    enter the model.
    """
    t0 = time.perf_counter()
    w_all = np.asarray(weights, float)
    cover = csr_matrix(cover, dtype=float)
    cover.data[:] = 1.0
    keep = _distinct(cover)
    k = min(k, len(keep))
    if k <= 0:
        return Siting([], [], 0.0, 0.0, 0.0, True, time.perf_counter() - t0, "milp")
    a = cover[keep]
    reached = np.flatnonzero(np.asarray(a.sum(axis=0)).ravel() > 0)
    a = a[:, reached]
    w = w_all[reached]
    n_x, n_y = a.shape
    c = np.r_[np.zeros(n_x), -w]
    link = hstack([-a.T, identity(n_y, format="csr")], format="csr")  # y − Σ a x ≤ 0
    count = csr_matrix(np.r_[np.ones(n_x), np.zeros(n_y)][None, :])
    res = milp(
        c,
        integrality=np.r_[np.ones(n_x), np.zeros(n_y)],
        bounds=Bounds(0, 1),
        constraints=[LinearConstraint(link, -np.inf, 0), LinearConstraint(count, k, k)],
        options={"time_limit": time_limit, "mip_rel_gap": 0.0, "presolve": True},
    )
    greedy = greedy_mclp(cover, w_all, k)
    picked = [] if res.x is None else [int(keep[i]) for i in np.flatnonzero(res.x[:n_x] > 0.5)]
    order, gains = _gains_order(cover, w_all, picked)
    value = covered_weight(cover, w_all, order)
    if greedy.objective > value:  # stopped early with less than the greedy answer: take it
        order, gains, value = greedy.chosen, greedy.gains, greedy.objective
    dual = res.mip_dual_bound
    bound = -float(dual) if dual is not None and np.isfinite(dual) else float(w.sum())
    bound = max(min(bound, float(w.sum())), value)
    gap = 0.0 if bound <= 0 else max((bound - value) / bound, 0.0)
    order, gains = _useful(order, gains)
    optimal = res.status == 0 and res.x is not None
    return Siting(order, gains, value, bound, gap, optimal, time.perf_counter() - t0, "milp")


def _useful(order: list[int], gains: list[float]) -> tuple[list[int], list[float]]:
    """The sites that add something (a site of no gain is no proposal)."""
    keep = [k for k, g in enumerate(gains) if g > 1e-9]
    return [order[k] for k in keep], [gains[k] for k in keep]


def greedy_mclp(cover: csr_matrix, weights: npt.ArrayLike, k: int) -> Siting:
    """Choose ``k`` candidates one at a time, each covering the most weight not yet covered
    (ties: the lowest index). Within 1 − 1/e of the optimum; no bound of its own."""
    t0 = time.perf_counter()
    w = np.asarray(weights, float)
    a = csr_matrix(cover, dtype=float)
    a.data[:] = 1.0
    left = w.copy()
    chosen: list[int] = []
    gains: list[float] = []
    for _ in range(min(k, a.shape[0])):
        gain = a @ left
        if chosen:
            gain[chosen] = -1.0
        i = int(np.argmax(gain))
        if gain[i] <= 0:
            break
        chosen.append(i)
        gains.append(float(gain[i]))
        left[a[i].indices] = 0.0
    value = float(sum(gains))
    return Siting(chosen, gains, value, np.nan, np.nan, False, time.perf_counter() - t0, "greedy")


def total_distance(
    dist: csr_matrix, base: npt.ArrayLike, weights: npt.ArrayLike, chosen: list[int]
) -> float:
    """Σ w_j · min(base_j, metres from j to the nearest chosen candidate)."""
    best = np.asarray(base, float).copy()
    for i in chosen:
        row = dist[i]
        best[row.indices] = np.minimum(best[row.indices], row.data)
    return float(np.dot(np.asarray(weights, float), best))


def pmedian(
    dist: csr_matrix,
    base: npt.ArrayLike,
    weights: npt.ArrayLike,
    k: int,
    *,
    time_limit: float = TIME_LIMIT_S,
) -> Siting:
    """Open ``k`` candidates minimising the total weighted walk to the nearest facility,
    where each demand already has ``base_j`` metres to an open one (or a cap), exactly.

    With savings s_ij = base_j − d_ij over the pairs where d_ij < base_j:
    max Σ w_j s_ij z_ij  s.t.  Σ_i z_ij ≤ 1,  z_ij ≤ x_i,  Σ x_i = k,  x binary, z ≥ 0.
    The objective reported is the total distance Σ w_j base_j − savings.
    """
    t0 = time.perf_counter()
    b = np.asarray(base, float)
    w = np.asarray(weights, float)
    m = dist.tocoo()
    good = m.data < b[m.col]
    ii, jj = m.row[good], m.col[good]
    save = (b[jj] - m.data[good]) * w[jj]
    n_c = dist.shape[0]
    k = min(k, n_c)
    start = float(np.dot(w, b))
    if k <= 0 or len(ii) == 0:
        return Siting([], [], start, start, 0.0, True, time.perf_counter() - t0, "milp")
    n_z = len(ii)
    c = np.r_[np.zeros(n_c), -save]
    z = np.arange(n_z)
    one_each = _coo((np.ones(n_z), (jj, n_c + z)), shape=(dist.shape[1], n_c + n_z)).tocsr()
    open_only = _coo(
        (np.r_[np.ones(n_z), -np.ones(n_z)], (np.r_[z, z], np.r_[n_c + z, ii])),
        shape=(n_z, n_c + n_z),
    ).tocsr()
    count = csr_matrix(np.r_[np.ones(n_c), np.zeros(n_z)][None, :])
    res = milp(
        c,
        integrality=np.r_[np.ones(n_c), np.zeros(n_z)],
        bounds=Bounds(0, 1),
        constraints=[
            LinearConstraint(
                vstack([one_each, open_only]).tocsr(), -np.inf, _ones_then(dist.shape[1], n_z)
            ),
            LinearConstraint(count, k, k),
        ],
        options={"time_limit": time_limit, "mip_rel_gap": 0.0},
    )
    greedy = greedy_pmedian(dist, b, w, k)
    picked = [] if res.x is None else [int(i) for i in np.flatnonzero(res.x[:n_c] > 0.5)]
    order, gains = _saving_order(dist, b, w, picked)
    value = total_distance(dist, b, w, order)
    if greedy.objective < value:  # stopped early with more walking than the greedy answer
        order, gains, value = greedy.chosen, greedy.gains, greedy.objective
    nearest = _nearest_each(dist, b)
    bound = float(np.dot(w, nearest))  # everyone at their nearest candidate: never beaten
    dual = res.mip_dual_bound
    if dual is not None and np.isfinite(dual):
        bound = max(bound, start + float(dual))
    bound = min(bound, value)
    gap = 0.0 if value <= 0 else max((value - bound) / value, 0.0)
    order, gains = _useful(order, gains)
    optimal = res.status == 0 and res.x is not None
    return Siting(order, gains, value, bound, gap, optimal, time.perf_counter() - t0, "milp")


def _nearest_each(dist: csr_matrix, base: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each demand's distance to its nearest candidate, or its base if nearer."""
    best = base.copy()
    m = dist.tocoo()
    np.minimum.at(best, m.col, m.data)
    return best


def _ones_then(n_one: int, n_zero: int) -> npt.NDArray[np.float64]:
    return np.r_[np.ones(n_one), np.zeros(n_zero)]


def _saving_order(
    dist: csr_matrix, base: npt.NDArray[np.float64], w: npt.NDArray[np.float64], chosen: list[int]
) -> tuple[list[int], list[float]]:
    """The chosen candidates re-ordered greedily by the walking they save (weighted metres)."""
    best = base.copy()
    left = list(chosen)
    order: list[int] = []
    gains: list[float] = []
    while left:
        save = []
        for i in left:
            row = dist[i]
            save.append(float(np.dot(w[row.indices], np.maximum(best[row.indices] - row.data, 0))))
        k = int(np.argmax(save))
        i = left.pop(k)
        row = dist[i]
        best[row.indices] = np.minimum(best[row.indices], row.data)
        order.append(i)
        gains.append(save[k])
    return order, gains


def greedy_pmedian(dist: csr_matrix, base: npt.ArrayLike, weights: npt.ArrayLike, k: int) -> Siting:
    """Open ``k`` candidates one at a time, each saving the most weighted walking."""
    t0 = time.perf_counter()
    b = np.asarray(base, float)
    w = np.asarray(weights, float)
    d = dist.tocsr()
    best = b.copy()
    chosen: list[int] = []
    gains: list[float] = []
    row_of = np.repeat(np.arange(d.shape[0]), np.diff(d.indptr))
    for _ in range(min(k, d.shape[0])):
        save = np.maximum(best[d.indices] - d.data, 0) * w[d.indices]
        per = np.bincount(row_of, weights=save, minlength=d.shape[0])
        if chosen:
            per[chosen] = -1.0
        i = int(np.argmax(per))
        if per[i] <= 0:
            break
        chosen.append(i)
        gains.append(float(per[i]))
        row = d[i]
        best[row.indices] = np.minimum(best[row.indices], row.data)
    value = float(np.dot(w, best))
    return Siting(chosen, gains, value, np.nan, np.nan, False, time.perf_counter() - t0, "greedy")
