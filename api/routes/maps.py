"""Map pages (folium): the overview and one grid's sheet, drawn within the caller's scope."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from folium import Map
from starlette.responses import HTMLResponse

from api.auth import require
from api.deps import PrincipalDep, ScopeDep, SettingsDep, StoreDep
from api.errors import BadRequestError
from api.middleware import page_csp
from api.routes.campaigns import FIELD, Id
from api.routes.features import parse_fid
from gridmap import plans, queries
from gridmap.errors import PermissionDeniedError
from gridmap.layers import get_layer
from gridmap.maps import BASEMAPS, grid_sheet, overview_map, plan_sheet, render_page
from gridmap.maps.cache import PageCache
from gridmap.maps.pages import measure_of
from gridmap.security import Principal, business_data_allowed, stats_scope

router = APIRouter(tags=["Maps"])

Lang = Annotated[Literal["zh", "en"], Query(description="Label language.")]
BasemapParam = Annotated[
    Literal["none", "osm", "tianditu", "amap"],
    Query(description="none (offline default), osm, tianditu (CGCS2000), amap (GCJ-02)."),
]


def _page(m: Map, basemap: str) -> tuple[bytes, str]:
    """The page and its CSP: its own inline scripts by hash, the basemap's tile host."""
    page = render_page(m)
    return page.html.encode(), page_csp(page.script_hashes, BASEMAPS[basemap].hosts)


def _respond(page: tuple[bytes, str]) -> HTMLResponse:
    return HTMLResponse(page[0], headers={"Content-Security-Policy": page[1]})


def _business(principal: Principal) -> None:
    if not business_data_allowed(principal):
        raise PermissionDeniedError("auditors see the audit log only")


@router.get("/map", response_class=HTMLResponse, summary="Overview map")
def overview(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    lang: Lang = "zh",
    measure: Annotated[
        str,
        Query(
            pattern=r"^(households|visit_coverage|hardship|elderly_alone|campaign:[1-9][0-9]{0,14})$",
            description="What colours the grids (for roles that may see household figures): "
            "households, visit_coverage, hardship, elderly_alone, or campaign:ID (its share done).",
        ),
    ] = "households",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """Every layer the caller may see, grouped, with legends, search and tools; offline."""
    _business(principal)
    if basemap == "tianditu" and not settings.tianditu_key:
        raise BadRequestError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")
    policy = stats_scope(principal, scope) if principal.authenticated else None
    campaign = None
    if measure.startswith("campaign:"):
        if policy is None:
            raise PermissionDeniedError("this role may not see campaign figures")
        measure_of(store, measure, scope)  # 404 for a campaign the caller may not see
        campaign = int(measure.partition(":")[2])

    def render() -> tuple[bytes, str]:
        rows = None
        if policy is not None:
            stats_scope_, small = policy
            rows = queries.household_stats(
                store, "grids", scope=stats_scope_, small_cells=small, campaign=campaign
            )
        m = overview_map(
            store,
            scope=scope,
            lang=lang,
            measure=measure,
            basemap=basemap,
            grid_stats=rows,
            tianditu_key=settings.tianditu_key,
        )
        return _page(m, basemap)

    cache: PageCache = request.app.state.pages
    key = ("overview", scope, policy, lang, measure, basemap, cache.stamps(store))
    return _respond(cache.get_or_render(key, render, reads=scope.reads))


@router.get("/map/grids/{grid_id}", response_class=HTMLResponse, summary="One grid's sheet")
def grid_page(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    grid_id: Annotated[str, Path(max_length=40, description="Grid id (an integer).")],
    lang: Lang = "zh",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """A grid's sheet for its worker (网格作战图): households by visit status, printable."""
    _business(principal)
    if basemap == "tianditu" and not settings.tianditu_key:
        raise BadRequestError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")
    fid = parse_fid(get_layer("grids"), grid_id)  # ASCII digits only, like every feature id
    m = grid_sheet(
        store, fid, scope=scope, lang=lang, basemap=basemap, tianditu_key=settings.tianditu_key
    )
    return _respond(_page(m, basemap))


@router.get("/map/plans/{plan_id}", response_class=HTMLResponse, summary="A visit plan's map")
def plan_page(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    plan_id: Id,
    lang: Lang = "zh",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """A visit plan (走访路线图): routes, numbered stops with arrival times, households that
    need care marked, and the run sheet under the map for printing."""
    require(principal, *FIELD)
    if basemap == "tianditu" and not settings.tianditu_key:
        raise BadRequestError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")
    doc = plans.get(store, plan_id, scope=scope)
    m = plan_sheet(
        store, doc, scope=scope, lang=lang, basemap=basemap, tianditu_key=settings.tianditu_key
    )
    return _respond(_page(m, basemap))
