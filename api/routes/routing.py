"""Walking routes for any client: ``POST /routes/optimize`` (thin: parse → gridmap → JSON)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import orjson
import shapely
from fastapi import APIRouter
from fastapi import Request as HttpRequest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from api.auth import require
from api.deps import PrincipalDep, StoreDep, crs_param, solving
from gridmap import geojson
from gridmap.crs import CRS84, from_input, to_output
from gridmap.errors import InvalidFeatureError
from gridmap.ratelimit import SOLVING
from gridmap.routing.optimize import MAX_STOPS, Place, Request, optimize
from gridmap.security import Role

router = APIRouter(tags=["Routing"])

PLANNERS = (Role.SUBDISTRICT_ADMIN, Role.COMMUNITY_ADMIN, Role.GRID_WORKER, Role.PLANNER)
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def clock_seconds(hhmm: str) -> int:
    """HH:MM as seconds since midnight (ValueError if malformed)."""
    m = _CLOCK.match(hhmm)
    if m is None:
        msg = f"times are HH:MM (00:00–23:59), got {hhmm[:20]!r}"
        raise ValueError(msg)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def clock(seconds: int) -> str:
    """Seconds since midnight as HH:MM:SS (past midnight: +1d)."""
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" + (f"+{days}d" if days else "")


Coord = Annotated[float, Field(allow_inf_nan=False)]


class PointIn(BaseModel):
    """A point in the request's CRS."""

    model_config = ConfigDict(extra="forbid")
    lon: Coord
    lat: Coord


class StopIn(BaseModel):
    """One stop to visit."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    lon: Coord
    lat: Coord
    service_s: int = Field(0, ge=0, le=4 * 3600, description="Seconds spent at the stop.")
    time_window: tuple[str, str] | None = Field(None, description='["HH:MM", "HH:MM"]')
    priority: Literal["must", "optional"] = "must"
    prize: int | None = Field(
        None, ge=0, le=10**6, description="Optional stops: worth this many metres of walk."
    )
    demand: int = Field(0, ge=0, le=10**6)

    @field_validator("time_window")
    @classmethod
    def _window(cls, v: tuple[str, str] | None) -> tuple[str, str] | None:
        if v is not None and clock_seconds(v[0]) > clock_seconds(v[1]):
            msg = "a time window must not end before it starts"
            raise ValueError(msg)
        return v


class OptimizeIn(BaseModel):
    """A routing request (see the README)."""

    model_config = ConfigDict(extra="forbid")
    stops: list[StopIn] = Field(min_length=1)
    start: PointIn
    end: PointIn | None = None
    workers: int = Field(1, ge=1, le=50)
    shift: tuple[str, str] = ("08:30", "17:30")
    return_to_start: bool = True
    mode: Literal["walk", "straight"] = "walk"
    time_limit_s: float = Field(1.0, gt=0, le=30)
    crs: str | None = Field(None, max_length=200, description="CRS of all coordinates.")
    seed: int = Field(0, ge=0, le=2**31)
    capacity: int = Field(0, ge=0, le=10**9, description="Demand a worker can take (0: any).")
    planned_roads: bool = Field(False, description="Walk along planned roads too.")

    @field_validator("shift")
    @classmethod
    def _shift(cls, v: tuple[str, str]) -> tuple[str, str]:
        if clock_seconds(v[0]) >= clock_seconds(v[1]):
            msg = "a shift must end after it starts"
            raise ValueError(msg)
        return v


@router.post("/routes/optimize", summary="Order stops into walking routes for workers")
async def route(
    request: HttpRequest, body: OptimizeIn, principal: PrincipalDep, store: StoreDep
) -> Response:
    """Routes over the walking network (or straight lines × a detour factor, flagged) for
    one or several workers within their shift; every stop left out has a reason."""
    require(principal, *PLANNERS)
    if len(body.stops) > MAX_STOPS:
        msg = f"at most {MAX_STOPS} stops per request; split the area"
        raise InvalidFeatureError(msg)
    crs = crs_param(body.crs, "crs")
    pts = [body.start, *([body.end] if body.end else []), *body.stops]
    given = shapely.points([[p.lon, p.lat] for p in pts])
    wgs = from_input(given, crs) if crs != CRS84 else given
    xy = shapely.get_coordinates(wgs)
    if not all(math.isfinite(c) for c in xy.ravel()) or (
        (abs(xy[:, 0]) > 180).any() or (abs(xy[:, 1]) > 90).any()
    ):
        raise InvalidFeatureError("coordinates lie outside lon −180..180 / lat −90..90")
    first = 2 if body.end else 1
    places = [
        Place(
            s.id,
            float(xy[first + k, 0]),
            float(xy[first + k, 1]),
            s.service_s,
            ((clock_seconds(s.time_window[0]), clock_seconds(s.time_window[1])),)
            if s.time_window
            else (),
            s.priority == "must",
            s.prize if s.prize is not None else (1000 if s.priority == "optional" else 0),
            s.demand,
        )
        for k, s in enumerate(body.stops)
    ]
    req = Request(
        places,
        (float(xy[0, 0]), float(xy[0, 1])),
        (float(xy[1, 0]), float(xy[1, 1])) if body.end else None,
        body.return_to_start,
        body.workers,
        ((clock_seconds(body.shift[0]), clock_seconds(body.shift[1])),),
        body.mode,
        body.time_limit_s,
        body.seed,
        body.capacity,
        planned_roads=body.planned_roads,
    )
    try:
        with SOLVING.enter(principal.username):
            plan = await solving(request, lambda: optimize(req, store))
    except ValueError as exc:
        raise InvalidFeatureError(str(exc)) from None
    lines = to_output(plan.lines, crs) if plan.lines and crs != CRS84 else plan.lines
    geoms = geojson.geometry_fragments(lines, CRS84) if len(lines) else []
    out: dict[str, Any] = {
        "routes": [
            {
                "worker": r.worker + 1,
                "stops": [v.stop for v in r.visits],
                "arrivals": [clock(v.arrival) for v in r.visits],
                "starts": [clock(v.start) for v in r.visits],
                "depart": clock(r.start),
                "back": clock(r.end),
                "distance_m": r.distance_m,
                "duration_s": r.duration_s,
                "geometry": g,
            }
            for r, g in zip(plan.result.routes, geoms, strict=True)
        ],
        "unassigned": [{"id": i, "reason": why} for i, why in plan.result.unassigned],
        "mode": plan.mode,
        "crs": crs,
        "solver": plan.result.solver,
    }
    if plan.detour_note:
        out["note"] = plan.detour_note
    return Response(orjson.dumps(out), media_type="application/json")
