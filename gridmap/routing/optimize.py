"""Routes for any client: points in, a walking (or straight-line) matrix, the solver, routes
out with clock times, lengths and geometries.

Used by ``POST /routes/optimize`` and by the campaign plans. Coordinates are WGS84
lon/lat here (the API converts); times are seconds since midnight of the first day.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

from gridmap.routing import network as net_mod
from gridmap.routing.matrix import DETOUR_FACTOR, Matrix, straight
from gridmap.routing.pool import POOL
from gridmap.routing.solver import Problem, Result, Shift, Stop
from gridmap.store.base import Store

MAX_STOPS = 2000


@dataclass(frozen=True)
class Place:
    """A stop to route: an id, a WGS84 point, service seconds, windows, priority."""

    id: str
    lon: float
    lat: float
    service_s: int = 0
    windows: tuple[tuple[int, int], ...] = ()
    required: bool = True
    prize: int = 0
    demand: int = 0


@dataclass(frozen=True)
class Request:
    """What to route: the places, where the workers start (and end), their shifts."""

    places: Sequence[Place]
    start: tuple[float, float]
    end: tuple[float, float] | None = None
    return_to_start: bool = True
    workers: int = 1
    shifts: Sequence[tuple[int, int]] = ((8 * 3600 + 1800, 17 * 3600 + 1800),)
    """Each worker's shifts as [start, end] seconds: one per day part or day."""
    mode: str = "walk"
    time_limit_s: float = 1.0
    seed: int = 0
    capacity: int = 0
    labels: Sequence[str] = ()
    """A name for each of ``shifts`` (e.g. its day and part)."""
    no_improvement: int | None = None
    """Stop searching after this many iterations without improvement (small problems)."""
    planned_roads: bool = False
    """Walk along planned roads too (what a new road would change)."""


@dataclass(frozen=True)
class Plan:
    """The solver's routes with geometries, the places left out, and how it was computed."""

    result: Result
    lines: list[shapely.LineString] = field(default_factory=list)
    mode: str = "walk"
    detour_note: str | None = None


@dataclass
class Prepared:
    """A request turned into a solver problem, with what drawing its routes needs."""

    problem: Problem
    options: dict[str, Any]
    lon: npt.NDArray[np.float64]
    lat: npt.NDArray[np.float64]
    closed: bool
    mode: str
    att: Any
    walks: Any
    note: str | None


def prepare(req: Request, store: Store | None = None) -> Prepared:
    """The matrix (walking network when the store has one, else straight lines × detour
    factor, and the note says so) and the solver problem of ``req``."""
    if not req.places:
        msg = "no stops to route"
        raise ValueError(msg)
    ids = [p.id for p in req.places]
    if len(set(ids)) != len(ids):
        msg = "stop ids must be unique"
        raise ValueError(msg)
    end = req.start if req.return_to_start else req.end
    points = [req.start, *([end] if end is not None else []), *((p.lon, p.lat) for p in req.places)]
    lon = np.array([x for x, _ in points], dtype=float)
    lat = np.array([y for _, y in points], dtype=float)
    first = 2 if end is not None else 1  # node 0 the start, node 1 the end (if any)
    matrix, att, walks, note = _matrix(req.mode, lon, lat, store, req.planned_roads, first)
    stops = [
        Stop(p.id, first + k, p.service_s, p.windows, p.required, p.prize, p.demand)
        for k, p in enumerate(req.places)
    ]
    labels = list(req.labels) or [""] * len(req.shifts)
    shifts = [
        Shift(w, 0, (1 if end is not None else None), lo, hi, req.capacity, f"{w + 1} {label}")
        for w in range(req.workers)
        for (lo, hi), label in zip(req.shifts, labels, strict=True)
    ]
    options = {
        "time_limit_s": req.time_limit_s,
        "seed": req.seed,
        "no_improvement": req.no_improvement,
    }
    problem = Problem(matrix.distance, matrix.duration, stops, shifts)
    return Prepared(problem, options, lon, lat, end is not None, matrix.mode, att, walks, note)


def finish(prep: Prepared, result: Result) -> Plan:
    """The solver's routes with their geometries."""
    node_of = {s.id: s.node for s in prep.problem.stops}
    lines = []
    for r in result.routes:
        seq = [0, *(node_of[v.stop] for v in r.visits)] + ([1] if prep.closed else [])
        lines.append(_line(seq, prep.lon, prep.lat, prep.att, prep.walks))
    return Plan(result, lines, prep.mode, prep.note)


def optimize(req: Request, store: Store | None = None) -> Plan:
    """Route ``req`` (see :func:`prepare`)."""
    prep = prepare(req, store)
    return finish(prep, POOL.solve_best(prep.problem, prep.options))


def optimize_many(
    reqs: Iterable[Request],
    store: Store | None = None,
    *,
    on_done: Callable[[int], None] | None = None,
) -> list[Plan]:
    """Route independent requests, solved in parallel on every core (each handed to the
    solvers as soon as its matrix is ready)."""
    preps: list[Prepared] = []

    def jobs() -> Iterator[tuple[Problem, dict[str, Any]]]:
        for r in reqs:
            preps.append(prepare(r, store))
            yield preps[-1].problem, preps[-1].options

    results = POOL.solve_all(jobs(), on_done)
    return [finish(p, r) for p, r in zip(preps, results, strict=True)]


def _matrix(mode: str, lon, lat, store, planned: bool, first: int):  # type: ignore[no-untyped-def]
    if mode == "walk" and store is not None:
        net = net_mod.of_store(store, include_planned=planned)
        if len(net.u):
            m, att, walks = net_mod.walking_matrix(net, lon, lat)
            off = ~att.attached
            if not off.any():
                return m, att, walks, None
            if not off.all():  # the roads known cover only some of the points
                return _patched(m, straight(lon, lat), off), att, walks, _off_note(off, first)
        note = (
            "no walking network (no walkable roads): straight lines × detour factor"
            if not len(net.u)
            else f"no walkable road within {net_mod.MAX_ACCESS_M:.0f} m of any point: "
            "straight lines × detour factor"
        )
    elif mode == "walk":
        note = "no walking network here: straight lines × detour factor"
    else:
        note = None
    m: Matrix = straight(lon, lat)
    return m, None, None, note


def _patched(walk: Matrix, line: Matrix, off: npt.NDArray[np.bool_]) -> Matrix:
    """The walking matrix with straight-line legs to and from the points ``off`` it."""
    dist, dur = walk.distance.copy(), walk.duration.copy()
    for m, s in ((dist, line.distance), (dur, line.duration)):
        m[off, :] = s[off, :]
        m[:, off] = s[:, off]
    return Matrix(dist, dur, "walk")


def _off_note(off: npt.NDArray[np.bool_], first: int) -> str:
    """What the plan says of the points off the network (``first``: the first stop)."""
    stops = off[first:]
    what = f"{int(stops.sum())} of {len(stops)} stops" + (" and the start" if off[0] else "")
    return (
        f"{what} lie more than {net_mod.MAX_ACCESS_M:.0f} m from any walkable road: "
        f"straight lines × {DETOUR_FACTOR} for their legs"
    )


def _line(seq: list[int], lon, lat, att, pred) -> shapely.LineString:  # type: ignore[no-untyped-def]
    if att is None:
        return shapely.linestrings(np.c_[lon[seq], lat[seq]])
    parts = [net_mod.leg(att, pred, a, b) for a, b in itertools.pairwise(seq)]
    if not parts:
        return shapely.linestrings(np.c_[lon[seq], lat[seq]].repeat(2, axis=0))
    return net_mod.to_wgs84_line(np.vstack(parts))
