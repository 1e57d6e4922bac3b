"""Visit campaigns, their plans and the visit ledger (thin: parse → gridmap → JSON/GPX/CSV)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from api.auth import record, require
from api.deps import PrincipalDep, ScopeDep, StoreDep, solving
from api.routes.edit import IdempotencyKey
from api.routes.routing import clock_seconds
from gridmap import campaigns as camp
from gridmap import idempotency, plan_output, plans, queries, visits
from gridmap.errors import FeatureNotFoundError, InvalidFeatureError, OutOfScopeError
from gridmap.layers import LOCAL_TZ
from gridmap.ratelimit import SOLVING
from gridmap.security import Role, stats_scope

router = APIRouter(tags=["Visit campaigns"])

MANAGERS = (Role.SUBDISTRICT_ADMIN, Role.COMMUNITY_ADMIN)
FIELD = (Role.SUBDISTRICT_ADMIN, Role.COMMUNITY_ADMIN, Role.GRID_WORKER)
VIEWERS = (*FIELD, Role.PLANNER)
MAX_GRIDS = 60
MAX_PLAN_SECONDS = 120.0
"""Grids × time_limit_s of one plan request (the search usually stops well before)."""

Id = Annotated[int, Path(ge=1, le=2**53, description="An integer id.")]
HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM")]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


class RulesIn(BaseModel):
    """How the campaign's visits are planned."""

    model_config = ConfigDict(extra="forbid")
    service_min: float = Field(10, gt=0, le=120, allow_inf_nan=False)
    setup_min: float = Field(3, ge=0, le=60, allow_inf_nan=False)
    first_tags: list[str] = Field(["hardship", "elderly_alone"], max_length=10)


class CampaignIn(BaseModel):
    """A new campaign."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    starts: dt.date
    ends: dt.date
    target: str | dict[str, Any] | None = Field(
        None, description="CQL2 text or JSON over households; none: every household."
    )
    grid_ids: list[Annotated[int, Field(ge=1, le=2**31)]] | None = Field(None, max_length=500)
    rules: RulesIn = RulesIn()


@router.post("/campaigns", status_code=201, summary="Start a visit campaign")
async def create_campaign(
    request: Request,
    body: CampaignIn,
    principal: PrincipalDep,
    scope: ScopeDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A campaign: name, days, target households (CQL2 over households) and rules. With an
    ``Idempotency-Key``, a resend answers the campaign the first request started."""
    require(principal, *MANAGERS)
    key = None if idempotency_key is None else idempotency.check_key(idempotency_key)
    rules = camp.Rules(body.rules.service_min, body.rules.setup_min, tuple(body.rules.first_tags))

    def start() -> int:
        c = camp.create(
            store,
            name=body.name,
            starts=body.starts,
            ends=body.ends,
            target=body.target,
            grid_ids=body.grid_ids,
            rules=rules,
            scope=scope,
            by=principal.username,
        )
        record(request, principal, "create", object=f"campaigns/{c.id}")
        return c.id

    def once() -> tuple[int, bool]:
        if key is None:
            with store.transaction():
                return start(), False
        digest = idempotency.fingerprint("campaigns", body.model_dump(mode="json"))
        made = idempotency.create_once(store, principal.username, key, digest, "campaigns", start)
        return made.fid, made.replayed

    cid, replayed = await run_in_threadpool(once)
    try:
        c = await run_in_threadpool(_visible, store, cid, scope)
    except FeatureNotFoundError:
        if not replayed:
            raise
        raise idempotency.gone("campaign") from None
    location = f"{str(request.base_url).rstrip('/')}/campaigns/{c.id}"
    headers = {"Location": location} | ({"Idempotent-Replayed": "true"} if replayed else {})
    return _json(c.to_json(), 201, headers)


@router.get("/campaigns", summary="The campaigns you take part in")
async def list_campaigns(principal: PrincipalDep, scope: ScopeDep, store: StoreDep) -> Response:
    """Every campaign that covers a grid of yours."""
    require(principal, *VIEWERS)
    found = await run_in_threadpool(camp.all_campaigns, store)
    return _json({"campaigns": [c.to_json() for c in found if camp.visible_to(c, scope)]})


def _visible(store: Any, cid: int, scope: Any) -> camp.Campaign:
    c = camp.get(store, cid)
    if not camp.visible_to(c, scope):
        raise FeatureNotFoundError(f"no campaign {cid}")
    return c


@router.get("/campaigns/{campaign_id}", summary="A campaign with its coverage")
async def get_campaign(
    campaign_id: Id, principal: PrincipalDep, scope: ScopeDep, store: StoreDep
) -> Response:
    """The campaign, its coverage per grid, community and zone (households in its target,
    those done, share; planners see small counts withheld) and its plans."""
    require(principal, *VIEWERS)
    policy = stats_scope(principal, scope)
    assert policy is not None
    count_scope, small = policy

    def build() -> dict[str, Any]:
        c = _visible(store, campaign_id, scope)
        out = c.to_json()
        if small and c.status != "open":
            out["coverage"] = None
            out["note"] = "a closed campaign's figures are for the roles that see households"
            return out
        coverage = {}
        for level in queries.LEVELS:
            rows = queries.household_stats(
                store, level, scope=count_scope, small_cells=small, campaign=c.id
            )
            coverage[level] = [
                {
                    "id": r["id"],
                    "name": r["name"],
                    **{k: v for k, v in r["campaign"].items() if k != "id"},
                }
                for r in rows
            ]
        out["coverage"] = coverage
        if principal.role is not Role.PLANNER:
            out["plans"] = plans.of_campaign(store, c.id, scope=scope)
        return out

    return _json(await run_in_threadpool(build))


class StatusIn(BaseModel):
    """A campaign's new status."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["open", "closed"]


@router.patch("/campaigns/{campaign_id}", summary="Close or reopen a campaign")
async def set_campaign_status(
    request: Request,
    campaign_id: Id,
    body: StatusIn,
    principal: PrincipalDep,
    scope: ScopeDep,
    store: StoreDep,
) -> Response:
    """A closed campaign takes no more visits or plans."""
    require(principal, *MANAGERS)

    def run() -> camp.Campaign:
        c = _visible(store, campaign_id, scope)
        if c.grid_ids is None and scope.grid_ids is not None:
            raise OutOfScopeError(f"no campaign {campaign_id} you manage")
        if scope.grid_ids is not None and c.grid_ids and not c.grid_ids <= scope.grid_ids:
            raise OutOfScopeError(f"no campaign {campaign_id} you manage")
        return camp.set_status(store, c.id, body.status)

    c = await run_in_threadpool(run)
    detail = f"status={body.status}"
    await run_in_threadpool(
        record, request, principal, "update", object=f"campaigns/{c.id}", detail=detail
    )
    return _json(c.to_json())


class PlanIn(BaseModel):
    """What to plan: grids, the first day, days, workers and their hours."""

    model_config = ConfigDict(extra="forbid")
    grid_ids: list[Annotated[int, Field(ge=1, le=2**31)]] = Field(
        min_length=1, max_length=MAX_GRIDS
    )
    date: dt.date
    days: int = Field(1, ge=1, le=plans.MAX_DAYS)
    workers: int = Field(1, ge=1, le=plans.MAX_WORKERS)
    shifts: list[tuple[HHMM, HHMM]] = Field(
        [("08:30", "12:00"), ("14:30", "17:30")], min_length=1, max_length=3
    )
    evening: tuple[HHMM, HHMM] | None = ("18:30", "20:30")
    weekend: bool = False
    mode: Literal["walk", "straight"] = "walk"
    time_limit_s: float = Field(2.0, gt=0, le=30, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2**31)
    planned_roads: bool = Field(False, description="Walk along planned roads too.")


@router.post("/campaigns/{campaign_id}/plans", status_code=201, summary="Plan walking routes")
async def create_plans(
    request: Request,
    campaign_id: Id,
    body: PlanIn,
    principal: PrincipalDep,
    scope: ScopeDep,
    store: StoreDep,
) -> Response:
    """One stored plan per grid: the open households grouped by building entrance, routed
    for the workers over the days; households left out come back with a reason."""
    require(principal, *FIELD)
    if len(set(body.grid_ids)) != len(body.grid_ids):
        raise InvalidFeatureError("a grid is named twice")
    shifts = tuple((clock_seconds(a), clock_seconds(b)) for a, b in body.shifts)
    evening = (
        (clock_seconds(body.evening[0]), clock_seconds(body.evening[1])) if body.evening else None
    )
    reqs = [
        plans.PlanRequest(
            campaign_id,
            g,
            body.date,
            days=body.days,
            workers=body.workers,
            shifts=shifts,
            evening=evening,
            weekend=body.weekend,
            mode=body.mode,
            time_limit_s=body.time_limit_s,
            seed=body.seed,
            planned_roads=body.planned_roads,
        )
        for g in body.grid_ids
    ]

    if len(reqs) * body.time_limit_s > MAX_PLAN_SECONDS:
        msg = (
            f"at most {MAX_PLAN_SECONDS:.0f} s of search per request: plan at most "
            f"{int(MAX_PLAN_SECONDS // body.time_limit_s)} grids at once with time_limit_s "
            f"{body.time_limit_s:g}"
        )
        raise InvalidFeatureError(msg)

    def run() -> list[dict[str, Any]]:
        for r in reqs:  # every grid checked before any is planned
            plans.check(store, r, scope=scope)
        bodies = plans.compute_many(store, reqs, scope=scope)
        return plans.save(store, bodies, by=principal.username)

    with SOLVING.enter(principal.username):
        docs = await solving(request, run)
    for d in docs:
        await run_in_threadpool(
            record, request, principal, "create", object=f"plans/{d['id']}", grid_id=d["grid_id"]
        )
    return _json({"plans": [plan_output.summary(d) for d in docs]}, 201)


@router.get("/plans/{plan_id}", summary="A plan: GeoJSON, GPX or the roster (CSV)")
async def get_plan(
    plan_id: Id,
    principal: PrincipalDep,
    scope: ScopeDep,
    store: StoreDep,
    f: Annotated[Literal["json", "geojson", "gpx", "csv"], Query()] = "json",
) -> Response:
    """Routes and numbered stops with arrival times (GeoJSON); ``f=gpx`` for a phone's
    navigation app (no names of people); ``f=csv`` the roster in visit order, masked."""
    require(principal, *FIELD)

    def run() -> Response:
        doc = plans.get(store, plan_id, scope=scope)
        name = f"plan-{doc['id']}"
        if f == "gpx":
            return Response(
                plan_output.to_gpx(store, doc, scope).encode(),
                media_type="application/gpx+xml",
                headers={"Content-Disposition": f'attachment; filename="{name}.gpx"'},
            )
        if f == "csv":
            rows = plan_output.roster(store, doc, scope)
            return Response(
                plan_output.roster_csv(rows),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
            )
        body = orjson.dumps(plan_output.to_geojson(store, doc, scope))
        return Response(body, media_type="application/geo+json")

    return await run_in_threadpool(run)


class VisitIn(BaseModel):
    """One visit outcome."""

    model_config = ConfigDict(extra="forbid")
    household_id: int = Field(ge=1, le=2**53)
    outcome: Literal["visited", "not_home", "refused", "follow_up", "moved_out"]
    visited_at: dt.datetime
    campaign_id: int | None = Field(None, ge=1, le=2**53)
    note: str | None = Field(None, max_length=500)
    client_key: str | None = Field(
        None, min_length=8, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
        description="A key the phone makes once per outcome: a batch sent again is recorded once.",
    )  # fmt: skip

    @field_validator("visited_at", mode="before")
    @classmethod
    def _iso(cls, v: Any) -> Any:
        if not isinstance(v, str):  # pydantic would read a number as a Unix time
            raise ValueError("visited_at is an ISO 8601 date and time, e.g. 2026-12-03T09:30:00")
        return v

    @field_validator("visited_at")
    @classmethod
    def _year(cls, v: dt.datetime) -> dt.datetime:
        if not camp.FIRST_YEAR <= v.year <= camp.LAST_YEAR:
            raise ValueError(f"visited_at lies in {camp.FIRST_YEAR}–{camp.LAST_YEAR}")
        return v


class VisitsIn(BaseModel):
    """Outcomes to record (a phone that was offline sends its whole queue)."""

    model_config = ConfigDict(extra="forbid")
    visits: list[VisitIn] = Field(min_length=1, max_length=visits.MAX_BATCH)


@router.post("/visits", summary="Record visit outcomes (idempotent by client_key)")
async def record_visits(
    request: Request, body: VisitsIn, principal: PrincipalDep, scope: ScopeDep, store: StoreDep
) -> Response:
    """Append outcomes to the ledger in one transaction; each household's last visit
    follows. Entries already recorded under their ``client_key`` come back as duplicates."""
    require(principal, *FIELD)
    items = [
        visits.Outcome(
            v.household_id,
            v.outcome,
            _local(v.visited_at),
            v.campaign_id,
            v.note,
            v.client_key,
        )
        for v in body.visits
    ]
    done = await run_in_threadpool(
        lambda: visits.record(store, items, scope=scope, worker=principal.username)
    )
    new = [r for r in done if not r.duplicate]
    if new:
        await run_in_threadpool(
            record,
            request,
            principal,
            "create",
            object="visits/" + ",".join(str(r.id) for r in new[:50]),
            detail=f"{len(new)} visits recorded",
        )
    return _json(
        {
            "recorded": [
                {"id": r.id, "client_key": r.client_key, "duplicate": r.duplicate} for r in done
            ],
            "new": len(new),
            "duplicates": len(done) - len(new),
        },
        201 if new else 200,
    )


def _local(t: dt.datetime) -> dt.datetime:
    """A datetime as naive Beijing time (an offset is converted)."""
    if t.tzinfo is None:
        return t
    return t.astimezone(LOCAL_TZ).replace(tzinfo=None)
