"""The one module that talks to the VRP solver (PyVRP): integer metres and seconds in, routes
out, every stop either visited or returned with the reason it was left out.

A problem is a matrix of walking distances and durations between nodes, the stops (a node,
a service time, alternative time windows, must-visit or optional with a prize, a demand)
and the shifts (a worker's span of time from a start node to an end node, or open-ended).
One worker's day may be several shifts (morning, afternoon: the break is spent back at
the start); a week is shifts on several days. A stop with several windows (an evening on
any day of the week) becomes one client per window in a group of which exactly one is
visited.

Before solving, each stop is checked on its own: one that no shift can reach and come
back from is ``unreachable``; one that cannot fit into any shift ``outside_shift``; one
whose windows no shift can meet ``time_window``. The rest are solved; one still left out
ran out of time or capacity (``capacity``). Must-visit stops are required; if they cannot
all fit, the problem is solved again with must-visit stops as optional stops of a prize
far above any route's cost, so the ones that fit are kept and the rest reported.
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np
import numpy.typing as npt

from gridmap.routing.tour import polish

UNREACHABLE = 2**40
"""A distance or duration standing for "no path" (well above any real value)."""
NEIGHBOURS = 25
"""Size of PyVRP's granular neighbourhood. Measured here on TSPLIB up to 100 nodes in a
second (benchmarks/bench_routing.py), 25 and PyVRP's default 50 each fall into a different
local optimum on some seeds (st70/eil76 with 25, kroA100 with 50); run side by side on two
cores (:data:`gridmap.routing.pool.VARIANTS`) the better of the two is within 0.2 % of the
optimum on every seed tried."""
MIN_MAX_PENALTY = 100_000.0
"""PyVRP's default ceiling of a penalty per unit of violation; raised to stay above the
prizes (else a plan that breaks a shift by a second but takes a big prize wins)."""

Reason = str  # "unreachable" | "outside_shift" | "time_window" | "capacity"


@dataclass(frozen=True)
class Stop:
    """A place to visit: its node, how long the visit takes, and when it may happen."""

    id: str
    node: int
    service_s: int = 0
    windows: tuple[tuple[int, int], ...] = ()
    """Alternative [earliest start, latest start] intervals in seconds (any one); () = any time."""
    required: bool = True
    prize: int = 0
    """For optional stops: what visiting it is worth, in cost units (metres)."""
    demand: int = 0


@dataclass(frozen=True)
class Shift:
    """One worker's span of work: leaves ``start`` no earlier than ``early``, is back at
    ``end`` (or, with ``end=None``, done at the last stop) no later than ``late``."""

    worker: int
    start: int
    end: int | None
    early: int
    late: int
    capacity: int = 0
    """Total demand the shift can take (0: no limit)."""
    label: str = ""


@dataclass(frozen=True)
class Problem:
    """Integer distances (m) and durations (s) between nodes, the stops and the shifts."""

    distance: npt.NDArray[np.int64]
    duration: npt.NDArray[np.int64]
    stops: Sequence[Stop]
    shifts: Sequence[Shift]

    def __post_init__(self) -> None:
        n = len(self.distance)
        if self.distance.shape != (n, n) or self.duration.shape != (n, n):
            msg = "distance and duration must be square matrices of the same size"
            raise ValueError(msg)
        if not self.shifts:
            msg = "a problem needs at least one shift"
            raise ValueError(msg)
        nodes = [s.node for s in self.stops] + [x.start for x in self.shifts]
        nodes += [x.end for x in self.shifts if x.end is not None]
        if nodes and (min(nodes) < 0 or max(nodes) >= n):
            msg = "a stop or shift names a node outside the matrix"
            raise ValueError(msg)


@dataclass(frozen=True)
class Visit:
    """One stop of a route: when the visit starts and ends (seconds)."""

    stop: str
    arrival: int
    start: int
    end: int


@dataclass(frozen=True)
class Route:
    """The visits of one shift, in order, with its times, distance and duration."""

    shift: int
    worker: int
    visits: tuple[Visit, ...]
    start: int
    end: int
    distance_m: int
    duration_s: int


@dataclass(frozen=True)
class Result:
    """Routes (one per shift that has visits) and the stops left out, each with a reason."""

    routes: tuple[Route, ...]
    unassigned: tuple[tuple[str, Reason], ...]
    solver: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------- checks


def _alone(problem: Problem, stop: Stop) -> Reason | None:
    """Why ``stop`` cannot be visited even as a shift's only stop (None if it can)."""
    d = problem.duration
    reachable = fits_shift = fits_window = False
    for sh in problem.shifts:
        there = int(d[sh.start, stop.node])
        back = 0 if sh.end is None else int(d[stop.node, sh.end])
        if there >= UNREACHABLE or back >= UNREACHABLE:
            continue
        reachable = True
        if sh.early + there + stop.service_s + back > sh.late:
            continue
        fits_shift = True
        windows = stop.windows or ((sh.early, sh.late),)
        for lo, hi in windows:
            begin = max(sh.early + there, lo)
            if begin <= hi and begin + stop.service_s + back <= sh.late:
                fits_window = True
                break
        if fits_window:
            return None
    if not reachable:
        return "unreachable"
    if not fits_shift:
        return "outside_shift"
    return "time_window"


# ---------------------------------------------------------------------------- solving


def solve(
    problem: Problem,
    *,
    time_limit_s: float = 1.0,
    seed: int = 0,
    no_improvement: int | None = None,
    neighbours: int = NEIGHBOURS,
) -> Result:
    """Route the stops over the shifts; every stop is visited or returned with a reason.

    The whole call keeps within ``time_limit_s`` (wall); ``no_improvement`` also stops
    the search after that many iterations without a better solution (small problems);
    ``neighbours`` is the size of the search's granular neighbourhood.
    """
    started = time.perf_counter()
    deadline = started + time_limit_s * 0.92  # the rest polishes (gridmap.routing.tour)
    reasons = {s.id: _alone(problem, s) for s in problem.stops}
    stops = [s for s in problem.stops if reasons[s.id] is None]
    found: tuple[Route, ...] | None = ()
    if stops:
        found = None
        load = _load(problem, stops)
        room = sum(sh.late - sh.early for sh in problem.shifts)
        tight = load > 0.7 * room
        run = functools.partial(
            _solve, problem, stops, seed=seed, no_improvement=no_improvement, neighbours=neighbours
        )
        if len(problem.shifts) == 1 and not any(s.windows for s in stops) and not tight:
            # a tour: PyVRP searches better without time windows (even slack ones), so
            # try without the shift's, and keep the answer if it fits the shift anyway
            found = run(_share(deadline, 1.0), required_ok=True, timed=False)
            sh = problem.shifts[0]
            if found is not None and any(r.start + r.duration_s > sh.late for r in found):
                found = None
        if found is None and load <= room:
            found = run(_share(deadline, 0.5 if tight else 1.0), required_ok=True)
        if found is None:  # must-visit stops do not all fit: keep what fits
            found = run(_share(deadline, 1.0), required_ok=False)
    assert found is not None
    routes = tuple(_polished(problem, r, started + time_limit_s) for r in found)
    visited = {v.stop for r in routes for v in r.visits}
    unassigned = tuple(
        (s.id, reasons[s.id] or "capacity") for s in problem.stops if s.id not in visited
    )
    info = {
        "name": "pyvrp",
        "version": version("pyvrp"),
        "seconds": round(time.perf_counter() - started, 3),
        "seed": seed,
    }
    return Result(routes, unassigned, info)


def rank(problem: Problem, result: Result) -> tuple[int, int, int]:
    """How good a result is (smaller is better): must-visit stops left out, then the
    prizes of optional stops left out, then the metres walked."""
    left = {sid for sid, _ in result.unassigned}
    must = sum(1 for s in problem.stops if s.required and s.id in left)
    prizes = sum(s.prize for s in problem.stops if not s.required and s.id in left)
    return must, prizes, sum(r.distance_m for r in result.routes)


def _share(deadline: float, fraction: float) -> float:
    """Seconds for one solver run: ``fraction`` of what is left (at least a little)."""
    return max((deadline - time.perf_counter()) * fraction, 0.02)


def _load(problem: Problem, stops: list[Stop]) -> int:
    """A lower bound of the seconds the must-visit stops take: service plus the shortest
    way into each."""
    must = [s for s in stops if s.required]
    if not must:
        return 0
    nodes = np.asarray([s.node for s in must])
    d = problem.duration[:, nodes].astype(float)
    d[nodes, np.arange(len(nodes))] = np.inf  # not from itself
    d[d >= UNREACHABLE] = np.inf
    into = d.min(axis=0)
    into[~np.isfinite(into)] = 0
    return int(sum(s.service_s for s in must) + into.sum())


def _solve(
    problem: Problem,
    stops: list[Stop],
    time_limit_s: float,
    *,
    seed: int,
    required_ok: bool,
    timed: bool = True,
    no_improvement: int | None = None,
    neighbours: int = NEIGHBOURS,
) -> tuple[Route, ...] | None:
    """One PyVRP run; None when must-visit stops are required and cannot all be served.
    ``timed=False`` leaves the shifts' time bounds out (the caller checks them)."""
    import pyvrp
    from pyvrp.search import NeighbourhoodParams
    from pyvrp.stop import MaxRuntime, MultipleCriteria, NoImprovement

    depot_nodes = sorted(
        {sh.start for sh in problem.shifts}
        | {sh.end for sh in problem.shifts if sh.end is not None}
    )
    nodes = depot_nodes + sorted({s.node for s in stops} - set(depot_nodes))
    at = {node: k for k, node in enumerate(nodes)}
    open_end = any(sh.end is None for sh in problem.shifts)
    idx = np.asarray(nodes)
    dist = problem.distance[np.ix_(idx, idx)]
    dur = problem.duration[np.ix_(idx, idx)]
    if open_end:  # a sink every stop reaches for nothing and that leads nowhere
        k = len(nodes)
        dist = np.pad(dist, ((0, 1), (0, 1)), constant_values=UNREACHABLE)
        dur = np.pad(dur, ((0, 1), (0, 1)), constant_values=UNREACHABLE)
        dist[:, k] = 0
        dur[:, k] = 0
        dist[k, k] = dur[k, k] = 0
    locations = [pyvrp.Location(0, 0) for _ in range(len(dist))]
    depots = [pyvrp.Depot(location=at[node]) for node in depot_nodes]
    depot_of = {node: d for d, node in enumerate(depot_nodes)}
    if open_end:
        depots.append(pyvrp.Depot(location=len(nodes)))
    dims = 1 if any(s.demand for s in stops) else 0
    vehicle_types = [
        pyvrp.VehicleType(
            1,
            capacity=[sh.capacity or 2**31] if dims else [],
            start_depot=depot_of[sh.start],
            end_depot=depot_of[sh.end] if sh.end is not None else len(depots) - 1,
            **({"tw_early": sh.early, "tw_late": sh.late} if timed else {}),
            name=sh.label or f"worker {sh.worker}",
        )
        for sh in problem.shifts
    ]
    finite = dist[dist < UNREACHABLE]
    longest = int(finite.max()) if finite.size else 0
    # a must-visit stop (when they cannot all fit) outweighs every optional one together
    must_prize = 2 * longest + sum(s.prize for s in stops if not s.required) + 1
    clients: list[pyvrp.Client] = []
    owner: list[Stop] = []  # the stop of each PyVRP client
    groups: list[pyvrp.ClientGroup] = []
    for s in stops:
        windows = s.windows or ((0, pyvrp.Client(location=0).tw_late),)  # PyVRP's "any time"
        required = s.required and required_ok
        prize = s.prize if not s.required else (0 if required_ok else must_prize)
        group = len(groups) if len(windows) > 1 else None
        members = []
        for lo, hi in windows:
            members.append(len(clients))
            clients.append(
                pyvrp.Client(
                    location=at[s.node],
                    delivery=[s.demand] if dims else [],
                    service_duration=s.service_s,
                    tw_early=lo,
                    tw_late=hi,
                    prize=prize,
                    required=required if group is None else False,
                    group=group,
                    name=s.id,
                )
            )
            owner.append(s)
        if group is not None:
            groups.append(pyvrp.ClientGroup(clients=members, required=required))
    data = pyvrp.ProblemData(
        locations=locations,
        clients=clients,
        depots=depots,
        vehicle_types=vehicle_types,
        distance_matrices=[np.ascontiguousarray(dist, dtype=np.int64)],
        duration_matrices=[np.ascontiguousarray(dur, dtype=np.int64)],
        groups=groups,
    )
    top = max(must_prize * len(stops), *(s.prize for s in stops), 1)
    params = sys.modules["pyvrp.solve"].SolveParams(
        penalty=pyvrp.PenaltyParams(max_penalty=max(MIN_MAX_PENALTY, 10.0 * top)),
        neighbourhood=NeighbourhoodParams(num_neighbours=neighbours),
    )
    stop = MaxRuntime(time_limit_s)
    if no_improvement is not None:
        stop = MultipleCriteria([stop, NoImprovement(no_improvement)])
    with warnings.catch_warnings():  # penalty bounds reached: answered by feasibility below
        warnings.simplefilter("ignore", category=pyvrp.exceptions.PenaltyBoundWarning)
        result = pyvrp.solve(data, stop=stop, seed=seed, display=False, params=params)
    if not result.is_feasible():
        if required_ok and any(s.required for s in stops):
            return None
        return ()  # nothing feasible found in time: every stop comes back left out
    return _routes(result.best, problem, owner, shifted=not timed)


def _routes(best, problem: Problem, owner: list[Stop], *, shifted: bool) -> tuple[Route, ...]:  # type: ignore[no-untyped-def]
    """Routes from PyVRP's solution; ``shifted``: solved without the shifts' times, so the
    schedule is moved to start when the shift does."""
    out = []
    for route in best.routes():
        k = route.vehicle_type()
        sh = problem.shifts[k]
        lag = sh.early if shifted else 0
        visits = []
        prev = sh.start
        clock = route.start_time() + lag
        for act in route.schedule():
            if not act.is_client():
                continue
            stop = owner[act.idx]
            arrival = clock + int(problem.duration[prev, stop.node])
            visits.append(
                Visit(stop.id, arrival, int(act.start_time) + lag, int(act.end_time) + lag)
            )
            clock = int(act.end_time) + lag
            prev = stop.node
        end = route.end_time() + lag if sh.end is not None else clock
        distance = route.distance() if sh.end is not None else _length(problem, sh, visits)
        out.append(
            Route(
                shift=k,
                worker=sh.worker,
                visits=tuple(visits),
                start=int(route.start_time()) + lag,
                end=int(end),
                distance_m=int(distance),
                duration_s=int(end - route.start_time() - lag),
            )
        )
    return tuple(sorted(out, key=lambda r: (r.worker, r.start)))


def _polished(problem: Problem, route: Route, deadline: float) -> Route:
    """The route after 2-opt and Or-opt, where that cannot break it: no time window on its
    stops, symmetric distances; kept only if it still ends within the shift."""
    sh = problem.shifts[route.shift]
    stop_of = {s.id: s for s in problem.stops}
    stops = [stop_of[v.stop] for v in route.visits]
    if len(stops) < 3 or any(s.windows for s in stops):
        return route
    nodes = [sh.start, *(s.node for s in stops)] + ([sh.end] if sh.end is not None else [])
    idx = np.asarray(sorted(set(nodes)))
    sub = problem.distance[np.ix_(idx, idx)]
    if not np.array_equal(sub, sub.T):
        return route
    local = {node: k for k, node in enumerate(idx.tolist())}
    dist = sub
    seq = [local[n] for n in nodes]
    if sh.end is None:  # an open end: a free last node every stop reaches for nothing
        dist = np.pad(sub, ((0, 1), (0, 1)))
        seq.append(len(idx))
    new, saved = polish(seq, dist, deadline=deadline)
    if saved <= 0:
        return route
    inner = new[1:-1]  # between the start and the end (or the free open end)
    by_local = {}
    for s in stops:
        by_local.setdefault(local[s.node], []).append(s)
    order = [by_local[k].pop(0) for k in inner]
    clock = route.start
    prev = sh.start
    visits = []
    for s in order:
        arrival = clock + int(problem.duration[prev, s.node])
        visits.append(Visit(s.id, arrival, arrival, arrival + s.service_s))
        clock, prev = arrival + s.service_s, s.node
    end = clock + (int(problem.duration[prev, sh.end]) if sh.end is not None else 0)
    if end > sh.late:
        return route
    distance = _length(problem, sh, visits) + (
        int(problem.distance[prev, sh.end]) if sh.end is not None else 0
    )
    return Route(
        route.shift, route.worker, tuple(visits), route.start, end, distance, end - route.start
    )


def _length(problem: Problem, sh: Shift, visits: list[Visit]) -> int:
    by_id = {s.id: s.node for s in problem.stops}
    nodes = [sh.start, *(by_id[v.stop] for v in visits)]
    return int(sum(problem.distance[a, b] for a, b in itertools.pairwise(nodes)))
