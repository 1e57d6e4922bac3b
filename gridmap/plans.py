"""Visit plans: a campaign's open households of one grid grouped into stops (one per
building entrance), routed for the grid's workers over one or several days, and stored.

A stop is the households of one building's unit (单元: its own stairwell and door) still
open in the campaign — the must-visit ones apart from the others, so that they can be
seen first without the whole stairwell — at most :data:`MAX_STOP_MIN` minutes of visits;
its service time is
the campaign's set-up minutes plus its minutes per household. Households whose latest
outcome is ``not_home`` (未遇) get evening and (when weekends are worked) weekend windows;
the rest are visited in the daytime. Households with the campaign's first tags, or marked
``follow_up``, make their stop must-visit; other stops are optional with a prize per
household, so they are the ones dropped when the days run out. Every household left out
comes back with its stop's reason.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from gridmap import campaigns as camp
from gridmap.crs import from_metric, to_metric
from gridmap.errors import FeatureNotFoundError, InvalidFeatureError, OutOfScopeError
from gridmap.routing import network as net_mod
from gridmap.routing.optimize import Place, Plan, Request, optimize_many
from gridmap.store.base import Feature, FeatureSet, Query, Scope, Store

KIND = "plan"
MAX_STOP_MIN = 90
"""A stop holds at most this many minutes of visits (a big unit is split)."""
PRIZE_PER_HOUSEHOLD = 20_000
"""What an optional household is worth, in metres of walking (visiting beats walking)."""
NO_IMPROVEMENT = (700, 5_000)
"""Iterations without a better plan after which a day's (a longer span's) search stops.
Measured on the sample with every household open (40 grids, two workers, one day):
700 plans 2,381 households in 5.4 s on two cores, 2,000 plans 2,397 in 15.3 s — 0.7 %
more for three times the wait (a one-off comparison with this value changed;
benchmarks/bench_routing.py measures the 700 case against the 10 s goal)."""
DAY = 86_400
MAX_DAYS = 14
MAX_WORKERS = 10
_UNIT = re.compile(r"^\s*(\d{1,3})\s*单元")


def _hm(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 3600 + int(m) * 60


@dataclass(frozen=True)
class PlanRequest:
    """What to plan: a campaign's grid, from a date over some days, by some workers."""

    campaign_id: int
    grid_id: int
    date: dt.date
    days: int = 1
    workers: int = 1
    shifts: tuple[tuple[int, int], ...] = (
        (_hm("08:30"), _hm("12:00")),
        (_hm("14:30"), _hm("17:30")),
    )
    """A working day's parts (seconds of the day); the breaks between are spent at the start."""
    evening: tuple[int, int] | None = (_hm("18:30"), _hm("20:30"))
    """When households not met are visited again on working days (None: never)."""
    weekend: bool = False
    """Work Saturdays and Sundays too (daytime parts; households not met may come then)."""
    start: tuple[float, float] | None = None
    """Where the workers start and return (WGS84); default the grid's community office."""
    mode: str = "walk"
    time_limit_s: float = 2.0
    seed: int = 0
    planned_roads: bool = False
    """Walk along planned roads too."""

    def __post_init__(self) -> None:
        if not 1 <= self.days <= MAX_DAYS:
            raise InvalidFeatureError(f"days must lie in 1..{MAX_DAYS}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InvalidFeatureError(f"workers must lie in 1..{MAX_WORKERS}")
        spans = [*self.shifts, *([self.evening] if self.evening else [])]
        if not self.shifts or any(not 0 <= a < b <= DAY for a, b in spans):
            raise InvalidFeatureError("each shift must end after it starts, within the day")
        if list(self.shifts) != sorted(self.shifts):
            raise InvalidFeatureError("give a day's shifts in the order of the day")
        ordered = list(self.shifts)
        if any(a[1] > b[0] for a, b in itertools.pairwise(ordered)):
            raise InvalidFeatureError("a day's shifts must not overlap")
        if not camp.FIRST_YEAR <= self.date.year <= camp.LAST_YEAR:
            msg = f"plan dates lie in {camp.FIRST_YEAR}–{camp.LAST_YEAR}"
            raise InvalidFeatureError(msg)
        if self.evening and self.evening[0] < ordered[-1][1]:
            raise InvalidFeatureError("the evening must start after the day's last shift")


@dataclass
class Group:
    """One stop: households of one entrance, visited together."""

    id: str
    building_id: int
    unit: str | None
    households: list[int]
    evening: bool
    must: bool
    lon: float = 0.0
    lat: float = 0.0


@dataclass
class Built:
    """The stops of a grid and the households left out before routing (with reasons)."""

    groups: list[Group]
    buildings: dict[int, Feature]
    left_out: list[tuple[int, str]] = field(default_factory=list)


def _unit(room: Any) -> str | None:
    m = _UNIT.match(room) if isinstance(room, str) else None
    return f"{int(m.group(1))}单元" if m else None


def group_stops(
    hh: FeatureSet, standing: dict[int, camp.Standing], rules: camp.Rules
) -> list[Group]:
    """Open households as stops: by building, unit and day/evening, split to fit a stop."""
    per_stop = max(1, int((MAX_STOP_MIN - rules.setup_min) // rules.service_min))
    first = set(rules.first_tags)
    keyed: dict[tuple[int, str | None, bool, bool], list[str | int]] = defaultdict(list)
    for fid, p in zip(hh.ids.tolist(), hh.properties, strict=True):
        st = standing.get(fid)
        if st is not None and st.final:
            continue
        b = p.get("building_id")
        if not isinstance(b, int):
            continue  # a household without a building is planned by hand
        evening = st is not None and st.outcome == "not_home"
        must = bool(first & set(p.get("tags") or ())) or (
            st is not None and st.outcome == "follow_up"
        )
        room = p.get("room") if isinstance(p.get("room"), str) else ""
        keyed[(b, _unit(room), evening, must)].append((room, fid))  # type: ignore[arg-type]
    out = []
    for (b, unit, evening, must), members in sorted(keyed.items(), key=lambda kv: repr(kv[0])):
        members.sort()
        for k in range(0, len(members), per_stop):
            chunk = members[k : k + per_stop]
            sid = f"b{b}" + (f"-{unit}" if unit else "") + ("-evening" if evening else "")
            sid += ("-must" if must else "") + (
                f"-{k // per_stop + 1}" if len(members) > per_stop else ""
            )
            out.append(Group(sid, b, unit, [f for _, f in chunk], evening, must))  # type: ignore[misc]
    return out


def _entrances(store: Store, groups: list[Group], scope: Scope) -> dict[int, Feature]:
    """Each stop's point: the building's entrance, else its footprint's point nearest to a
    walkable road (else its representative point)."""
    ids = sorted({g.building_id for g in groups})
    fs = store.query("buildings", Query(ids=ids), scope=scope).with_geometry()
    buildings = {f.id: f for f in fs}
    net = net_mod.of_store(store)
    tree = net.tree if len(net.u) else None
    where: dict[int, tuple[float, float]] = {}
    for bid, f in buildings.items():
        lon, lat = f.properties.get("entrance_lon"), f.properties.get("entrance_lat")
        if isinstance(lon, float) and isinstance(lat, float):
            where[bid] = (lon, lat)
            continue
        foot = to_metric([f.geometry])[0]
        if tree is not None and not foot.is_empty:
            seg = net.segments[int(tree.query_nearest(foot)[0])]
            pt = shapely.get_coordinates(shapely.shortest_line(foot.boundary, seg))[0]
            p = from_metric([shapely.Point(pt)])[0]
        else:
            p = f.geometry.representative_point()
        where[bid] = (p.x, p.y)
    for g in groups:
        if g.building_id in where:
            g.lon, g.lat = where[g.building_id]
    return buildings


def build(store: Store, c: camp.Campaign, grid_id: int, scope: Scope) -> Built:
    """The campaign's open households of the grid, as stops with their entrances."""
    hh = camp.targets(store, c, scope=scope, grid_id=grid_id)
    standing = camp.standings(store, c, scope=scope, households=hh.ids.tolist())
    groups = group_stops(hh, standing, c.rules)
    buildings = _entrances(store, groups, scope)
    missing = [g for g in groups if g.building_id not in buildings]
    left = [(h, "unreachable") for g in missing for h in g.households]
    groups = [g for g in groups if g.building_id in buildings]
    no_building = [
        (int(f), "unreachable")
        for f, p in zip(hh.ids.tolist(), hh.properties, strict=True)
        if not isinstance(p.get("building_id"), int)
        and not (standing.get(int(f)) and standing[int(f)].final)
    ]
    return Built(groups, buildings, left + no_building)


def _calendar(req: PlanRequest) -> list[tuple[int, dt.date, bool]]:
    """(day index, date, is a working day) for the planned days."""
    out = []
    for d in range(req.days):
        day = req.date + dt.timedelta(days=d)
        out.append((d, day, day.weekday() < 5 or req.weekend))
    return out


def shifts_and_windows(
    req: PlanRequest, any_evening: bool
) -> tuple[list[tuple[int, int, str]], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """The shifts (start, end, label) over the days, and the windows of daytime stops and
    of stops not met before (evenings of working weekdays, weekend days when worked)."""
    shifts: list[tuple[int, int, str]] = []
    daytime: list[tuple[int, int]] = []
    later: list[tuple[int, int]] = []
    for d, day, works in _calendar(req):
        if not works:
            continue
        base = d * DAY
        label = day.isoformat()
        for k, (a, b) in enumerate(req.shifts):
            shifts.append((base + a, base + b, f"{label} {('上午', '下午', '第三段')[min(k, 2)]}"))
        span = (base + req.shifts[0][0], base + req.shifts[-1][1])
        daytime.append(span)
        if day.weekday() >= 5:
            later.append(span)
        elif req.evening and any_evening:
            a, b = req.evening
            shifts.append((base + a, base + b, f"{label} 晚间"))
            later.append((base + a, base + b))
    return shifts, tuple(daytime), tuple(later)


def default_start(store: Store, grid: Feature) -> tuple[float, float]:
    """The community office (a facility) nearest the grid, if within about 2 km, else a
    point inside the grid."""
    offices = store.query("facilities", Query(equals={"kind": "community_office"})).with_geometry()
    best = None
    for f in offices:
        p = f.geometry
        if best is None or p.distance(grid.geometry) < best.distance(grid.geometry):
            best = p
    if best is not None and best.distance(grid.geometry) < 0.02:  # about 2 km
        return best.x, best.y
    p = grid.geometry.representative_point()
    return p.x, p.y


def make(store: Store, req: PlanRequest, *, scope: Scope, by: str | None = None) -> dict[str, Any]:
    """Plan one grid of a campaign and store the plan; return the stored document."""
    return save(store, [compute(store, req, scope=scope)], by=by)[0]


def check(store: Store, req: PlanRequest, *, scope: Scope) -> camp.Campaign:
    """The campaign, if ``req`` may be planned by this scope (else the refusal)."""
    c = camp.get(store, req.campaign_id)
    if not camp.visible_to(c, scope):
        raise FeatureNotFoundError(f"no campaign {req.campaign_id}")
    if not scope.allows_grid(req.grid_id):
        raise OutOfScopeError(f"no feature {req.grid_id} in collection grids")
    if c.status != "open":
        raise InvalidFeatureError(f"campaign {c.id} is closed")
    if c.grid_ids is not None and req.grid_id not in c.grid_ids:
        raise InvalidFeatureError(f"grid {req.grid_id} is not part of campaign {c.id}")
    last = req.date + dt.timedelta(days=req.days - 1)
    if req.date < c.starts or last > c.ends:
        msg = f"the days planned ({req.date}–{last}) lie outside the campaign ({c.starts}–{c.ends})"
        raise InvalidFeatureError(msg)
    return c


def compute(store: Store, req: PlanRequest, *, scope: Scope) -> dict[str, Any]:
    """A plan's body for one grid (nothing is written)."""
    return compute_many(store, [req], scope=scope)[0]


def compute_many(
    store: Store,
    reqs: Sequence[PlanRequest],
    *,
    scope: Scope,
    on_done: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Plans' bodies for several grids (nothing is written): every request is checked
    first, then each grid's stops are built and handed to the solvers, which run in
    parallel on every core."""
    campaigns = [check(store, req, scope=scope) for req in reqs]
    staged: list[tuple[dict[str, Any], Request | None, dict[str, Group]]] = []
    routed: list[int] = []

    def requests() -> Iterator[Request]:
        for k, (req, c) in enumerate(zip(reqs, campaigns, strict=True)):
            grid = store.get("grids", req.grid_id, scope=scope)
            built = build(store, c, req.grid_id, scope)
            start = default_start(store, grid) if req.start is None else req.start
            staged.append(_stage(req, c, built, start))
            if staged[-1][1] is None:
                if on_done is not None:
                    on_done(k)
                continue
            routed.append(k)
            yield staged[-1][1]

    done = optimize_many(
        requests(), store, on_done=None if on_done is None else lambda i: on_done(routed[i])
    )
    plans = dict(zip(routed, done, strict=True))
    return [
        _describe(body, routing, plans[k], groups) if routing is not None else body
        for k, (body, routing, groups) in enumerate(staged)
    ]


def save(store: Store, bodies: list[dict[str, Any]], *, by: str | None) -> list[dict[str, Any]]:
    """Store plan bodies in one transaction; return the stored documents."""
    with store.transaction():
        ids = [
            store.add_document(
                KIND, b, parent=b["campaign_id"], grid_id=b["grid_id"], created_by=by
            )
            for b in bodies
        ]
    docs = [store.document(KIND, i) for i in ids]
    return [d for d in docs if d is not None]


def _stage(
    req: PlanRequest, c: camp.Campaign, built: Built, start: tuple[float, float]
) -> tuple[dict[str, Any], Request | None, dict[str, Group]]:
    """The plan's description so far, the routing request (None: nothing to route) and
    the stops by id (seconds counted from the first day's 00:00)."""
    groups = built.groups
    any_evening = any(g.evening for g in groups)
    shifts, daytime, later = shifts_and_windows(req, any_evening)
    timed = req.days > 1 or any_evening
    places = [
        Place(
            g.id,
            g.lon,
            g.lat,
            _service_s(g, c.rules),
            (later if g.evening else daytime) if timed else (),
            g.must,
            0 if g.must else PRIZE_PER_HOUSEHOLD * len(g.households),
        )
        for g in groups
    ]
    body: dict[str, Any] = {
        "campaign_id": c.id,
        "grid_id": req.grid_id,
        "date": req.date.isoformat(),
        "days": req.days,
        "workers": req.workers,
        "shifts": [[_clock(a), _clock(b)] for a, b in req.shifts],
        "evening": [_clock(a) for a in req.evening] if req.evening else None,
        "weekend": req.weekend,
        "planned_roads": req.planned_roads,
        "start": [round(start[0], 7), round(start[1], 7)],
        "routes": [],
        "unassigned": [
            {"household_id": h, "building_id": None, "reason": why} for h, why in built.left_out
        ],
        "households_open": sum(len(g.households) for g in groups) + len(built.left_out),
    }
    if not places or not shifts:
        reason = "outside_shift" if places else None
        body["unassigned"] += [
            {"household_id": h, "building_id": g.building_id, "reason": reason}
            for g in groups
            for h in g.households
        ]
        body.update(mode=req.mode, note="no working day in the planned days" if places else None)
        body["solver"] = None
        return body, None, {}
    routing = Request(
        places,
        start,
        workers=req.workers,
        shifts=[(a, b) for a, b, _ in shifts],
        labels=[label for *_, label in shifts],
        mode=req.mode,
        time_limit_s=req.time_limit_s,
        seed=req.seed,
        no_improvement=NO_IMPROVEMENT[0] if req.days == 1 else NO_IMPROVEMENT[1],
        planned_roads=req.planned_roads,
    )
    return body, routing, {g.id: g for g in groups}


def _describe(
    body: dict[str, Any], routing: Request, plan: Plan, by_id: dict[str, Group]
) -> dict[str, Any]:
    """The plan's routes and who was left out, added to its description."""
    labels = list(routing.labels)
    for r, line in zip(plan.result.routes, plan.lines, strict=True):
        body["routes"].append(
            {
                "worker": r.worker + 1,
                "shift": labels[r.shift % len(labels)],
                "depart": r.start,
                "back": r.end,
                "distance_m": r.distance_m,
                "duration_s": r.duration_s,
                "line": np.round(shapely.get_coordinates(line), 7).tolist(),
                "stops": [_stop(by_id[v.stop], v) for v in r.visits],
            }
        )
    body["unassigned"] += [
        {"household_id": h, "building_id": by_id[sid].building_id, "reason": why}
        for sid, why in plan.result.unassigned
        for h in by_id[sid].households
    ]
    body.update(mode=plan.mode, note=plan.detour_note, solver=plan.result.solver)
    return body


def _service_s(g: Group, rules: camp.Rules) -> int:
    """Seconds at a stop: entering once, then each household."""
    return round(60 * (rules.setup_min + rules.service_min * len(g.households)))


def _stop(g: Group, v: Any) -> dict[str, Any]:
    return {
        "stop": g.id,
        "building_id": g.building_id,
        "unit": g.unit,
        "households": g.households,
        "must": g.must,
        "evening": g.evening,
        "arrival": v.arrival,
        "start": v.start,
        "end": v.end,
        "lon": round(g.lon, 7),
        "lat": round(g.lat, 7),
    }


def _clock(seconds: int) -> str:
    """Seconds of a day as HH:MM."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def get(store: Store, plan_id: int, *, scope: Scope) -> dict[str, Any]:
    """A stored plan the scope may see (its grid), else FeatureNotFound/OutOfScope (404)."""
    doc = store.document(KIND, int(plan_id))
    if doc is None:
        raise FeatureNotFoundError(f"no plan {plan_id}")
    if not scope.allows_grid(doc["grid_id"]):
        raise OutOfScopeError(f"no plan {plan_id}")
    return doc


def of_campaign(store: Store, campaign_id: int, *, scope: Scope) -> list[dict[str, Any]]:
    """The campaign's plans of grids the scope may see (without their routes)."""
    out = []
    for d in store.documents(KIND, parent=int(campaign_id)):
        if scope.allows_grid(d["grid_id"]):
            b = d["body"]
            out.append(
                {
                    "id": d["id"],
                    "grid_id": d["grid_id"],
                    "date": b.get("date"),
                    "days": b.get("days"),
                    "workers": b.get("workers"),
                    "stops": sum(len(r.get("stops", [])) for r in b.get("routes", [])),
                    "unassigned": len(b.get("unassigned", [])),
                    "created_by": d["created_by"],
                    "created_at": d["created_at"],
                }
            )
    return out


def planned_households(doc: dict[str, Any]) -> list[int]:
    """Every household of a plan's routes, in visit order."""
    return [h for r in doc["body"].get("routes", []) for s in r["stops"] for h in s["households"]]
