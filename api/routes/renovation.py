"""Old neighbourhood renovation over HTTP (thin: parse → gridmap.analysis.renovation → JSON):
profiles and the "renovate next" ranking, what works in a date range touch, dated status
changes, and the map with a month slider."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import orjson
import shapely
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import HTMLResponse, Response

from api.auth import record
from api.deps import PrincipalDep, ScopeDep, SettingsDep, StoreDep
from api.routes.analysis import policy
from api.routes.edit import expected_version
from api.routes.maps import BasemapParam, Lang, page_of, respond
from gridmap.analysis import renovation as rn
from gridmap.errors import PermissionDeniedError, QueryError
from gridmap.identifiers import check_text
from gridmap.layers import RENOVATION_STATUS, get_layer
from gridmap.maps.renovation_page import renovation_map
from gridmap.security import Principal
from gridmap.store.base import Query as StoreQuery
from gridmap.store.base import Scope, Store

router = APIRouter(tags=["Analysis"])

WeightsParam = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=r"^[a-z]+:[0-9.]+(,[a-z]+:[0-9.]+)*$",
        description="Weights of the reasons, e.g. age:0.5,hardship:0.5 (default "
        + ",".join(f"{k}:{v}" for k, v in rn.WEIGHTS.items())
        + ").",
    ),
]


def _found(store: Store, scope: Scope, principal: Principal) -> tuple[list[rn.Profile], bool]:
    """The profiles as the caller may see them, and whether their counts are rounded."""
    count_scope, small = policy(principal, scope)
    found = rn.profiles(store, count_scope)
    return (rn.protected(found, small), True) if small else (found, False)


def _weights(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    pairs = [part.split(":") for part in text.split(",")]
    try:
        return {k: float(v) for k, v in pairs}
    except ValueError:
        raise QueryError("weights are reason:number pairs, e.g. age:0.5,hardship:0.5") from None


def _profile(store: Store, p: rn.Profile) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "status": p.status,
        "built_year": p.built_year,
        "households": p.households,
        "buildings": p.buildings,
        "hardship": p.hardship,
        "elderly_alone": p.elderly,
        "works": list(p.works),
        "planned_start": p.planned_start,
        "planned_end": p.planned_end,
        "budget_wan": p.budget_wan,
        "timeline": rn.timeline(store, p),
    }


@router.get("/analysis/renovation", summary="Old neighbourhoods and what to renovate next")
def renovation(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    lang: Lang = "zh",
    weights: WeightsParam = None,
) -> Response:
    """Every old neighbourhood with its households, hardship and elderly counts, age, works
    and status timeline; and those not yet under way ranked with their reasons. Planners
    get the counts rounded to multiples of 5 (and the ranking from those)."""
    found, rounded = _found(store, scope, principal)
    body = {
        "rounded": rounded,
        "neighbourhoods": [_profile(store, p) for p in found],
        "next": rn.rank(found, today=dt.date.today(), weights=_weights(weights), lang=lang),
        "weights": rn.check_weights(_weights(weights)),
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/analysis/renovation/affected", summary="Neighbourhoods and buildings works touch in a range"
)
def affected(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    start: Annotated[dt.date, Query(description="First day (YYYY-MM-DD).")],
    end: Annotated[dt.date, Query(description="Last day (YYYY-MM-DD).")],
) -> Response:
    """The neighbourhoods whose planned works overlap the range, with their households, and
    their buildings as GeoJSON (CRS84)."""
    found, rounded = _found(store, scope, principal)
    hits = rn.affected(found, start, end)
    ids = [p.id for p in hits]
    fs = store.query("buildings", StoreQuery(), scope=scope).with_geometry()  # within scope
    features = [
        {
            "type": "Feature",
            "id": int(fid),
            "geometry": shapely.geometry.mapping(g),
            "properties": {"address": p.get("address"), "neighbourhood_id": p["neighbourhood_id"]},
        }
        for fid, g, p in zip(fs.ids.tolist(), fs.geometries, fs.properties, strict=True)
        if p.get("neighbourhood_id") in ids
    ]
    body = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "rounded": rounded,
        "neighbourhoods": [
            {
                "id": p.id,
                "name": p.name,
                "households": p.households,
                "buildings": p.buildings,
                "planned_start": p.planned_start,
                "planned_end": p.planned_end,
                "works": list(p.works),
            }
            for p in hits
        ],
        "households": sum(p.households for p in hits),
        "buildings": {"type": "FeatureCollection", "features": features},
    }
    return Response(orjson.dumps(body), media_type="application/json")


class StatusIn(BaseModel):
    """A dated status change."""

    model_config = ConfigDict(extra="forbid")
    status: str = Field(description=" → ".join(RENOVATION_STATUS))
    on: dt.date = Field(description="The day it took effect (YYYY-MM-DD).")
    note: str = Field("", max_length=500)

    @field_validator("note")
    @classmethod
    def _plain(cls, v: str) -> str:
        check_text(v)
        return v


@router.post(
    "/analysis/renovation/{neighbourhood_id}/status",
    status_code=201,
    summary="Record a neighbourhood's status change, dated",
)
async def change_status(
    request: Request,
    body: StatusIn,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    neighbourhood_id: Annotated[int, Path(ge=1, le=2**53)],
) -> Response:
    """Set the status (roles that may edit old neighbourhoods) and append a dated event to
    its timeline, in one transaction; `If-Match` with the feature's ETag (optional) guards
    against a change made meanwhile (412)."""
    policy(principal, scope)
    if not scope.allows_write("old_neighbourhoods"):
        raise PermissionDeniedError("this role may not change old neighbourhoods")
    header = request.headers.get("if-match")
    layer = get_layer("old_neighbourhoods")
    version = expected_version(layer, neighbourhood_id, header) if header else None
    event = await run_in_threadpool(
        lambda: rn.set_status(
            store,
            neighbourhood_id,
            body.status,
            on=body.on,
            by=principal.username or "",
            note=body.note,
            scope=scope,
            expected_version=version,
        )
    )
    obj = f"old_neighbourhoods/{neighbourhood_id}"
    detail = f"renovation_status {body.status} on {body.on.isoformat()}"
    await run_in_threadpool(record, request, principal, "update", object=obj, detail=detail)
    return Response(orjson.dumps(event), status_code=201, media_type="application/json")


@router.get("/map/renovation", response_class=HTMLResponse, summary="Renovation map")
def renovation_page(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    on: Annotated[dt.date | None, Query(description="Status on this day (default today).")] = None,
    lang: Lang = "zh",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """Old neighbourhoods coloured by their status on a day, with a month slider, the
    ranking's reasons in popups. Offline like every map page."""
    found, _ = _found(store, scope, principal)
    if basemap == "tianditu" and not settings.tianditu_key:
        raise QueryError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")
    day = on or rn.local_today()
    if not rn.EARLIEST <= day <= rn.LATEST:
        raise QueryError(f"on must lie between {rn.EARLIEST} and {rn.LATEST}")
    m = renovation_map(
        store,
        found,
        scope=scope,
        day=day,
        ranking=rn.rank(found, today=dt.date.today(), lang=lang),
        lang=lang,
        basemap=basemap,
        tianditu_key=settings.tianditu_key,
    )
    return respond(page_of(m, basemap))
