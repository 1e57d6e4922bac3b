"""Map pages (folium): the overview and one grid's sheet, drawn within the caller's scope."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from folium import Map
from starlette.responses import HTMLResponse, Response

from api.auth import require
from api.deps import (
    PrincipalDep,
    ScopeDep,
    SettingsDep,
    StoreDep,
    check_lon_lat_bbox,
    parse_bbox_values,
)
from api.errors import BadRequestError
from api.middleware import page_csp
from api.routes.campaigns import FIELD, Id
from api.routes.features import parse_fid
from gridmap import plans, queries
from gridmap.errors import FeatureNotFoundError, HiddenLayerError, PermissionDeniedError
from gridmap.layers import get_layer
from gridmap.maps import BASEMAPS, grid_sheet, plan_sheet, render_page
from gridmap.maps.cache import Figures, PageCache
from gridmap.maps.layer_data import (
    MAP_LAYERS,
    STATS_TABLES,
    Colouring,
    View,
    clip,
    clip_counts,
    depends_on,
    encoded,
    household_counts,
    layer_data,
    points_in_view,
)
from gridmap.maps.pages import measure_of, measure_values
from gridmap.maps.shell import SHELL_TABLES, overview_shell
from gridmap.security import Principal, business_data_allowed, stats_scope
from gridmap.store.base import Scope, Store

router = APIRouter(tags=["Maps"])

Lang = Annotated[Literal["zh", "en"], Query(description="Label language.")]
MEASURE = Query(
    pattern=r"^(households|visit_coverage|hardship|elderly_alone|campaign:[1-9][0-9]{0,14})$",
    description="What colours the grids (for roles that may see household figures): "
    "households, visit_coverage, hardship, elderly_alone, or campaign:ID (its share done).",
)
MeasureParam = Annotated[str | None, MEASURE]
NO_STORE = {"Cache-Control": "private, no-store"}
BasemapParam = Annotated[
    Literal["none", "osm", "tianditu", "amap"],
    Query(description="none (offline default), osm, tianditu (CGCS2000), amap (GCJ-02)."),
]


def page_of(m: Map, basemap: str) -> tuple[bytes, str]:
    """The page and its CSP: its own inline scripts by hash, the basemap's tile host."""
    page = render_page(m)
    return page.html.encode(), page_csp(page.script_hashes, BASEMAPS[basemap].hosts)


def respond(page: tuple[bytes, str]) -> HTMLResponse:
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
    measure: Annotated[str, MEASURE] = "households",
    basemap: BasemapParam = "none",
) -> HTMLResponse:
    """Every layer the caller may see, grouped, with legends, search and tools; offline."""
    _business(principal)
    if basemap == "tianditu" and not settings.tianditu_key:
        raise BadRequestError("the tianditu basemap needs GRIDMAP_TIANDITU_KEY to be set")
    policy = stats_scope(principal, scope) if principal.authenticated else None
    if measure.startswith("campaign:"):
        if policy is None:
            raise PermissionDeniedError("this role may not see campaign figures")
        measure_of(store, measure, scope)  # 404 for a campaign the caller may not see

    def render() -> tuple[bytes, str]:
        m = overview_shell(
            store,
            scope=scope,
            lang=lang,
            measure=measure,
            basemap=basemap,
            coloured=policy is not None,
            tianditu_key=settings.tianditu_key,
        )
        return page_of(m, basemap)

    cache: PageCache = request.app.state.pages
    key = ("overview", scope, policy, lang, measure, basemap, store.stamps(SHELL_TABLES))
    return respond(cache.get_or_render(key, render, reads=scope.reads))


@router.get(
    "/map/layers/{key}",
    summary="One layer of the overview map (GeoJSON for the map page)",
    responses={200: {"content": {"application/json": {}}}},
)
def overview_layer(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    key: Annotated[str, Path(max_length=40, description="Layer key: " + ", ".join(MAP_LAYERS))],
    lang: Lang = "zh",
    basemap: BasemapParam = "none",
    measure: MeasureParam = None,
    bbox: Annotated[
        str | None,
        Query(max_length=200, description="The view, in the basemap's datum (layers by view)."),
    ] = None,
    zoom: Annotated[int | None, Query(ge=0, le=22, description="The view's zoom.")] = None,
) -> Response:
    """The features of one overview layer the caller may see, with their styles, popup
    fields and legend; layers drawn by view (roads, buildings, households) take the view.
    Households come as positions only when zoomed in, else as a count per grid."""
    _business(principal)
    ml = MAP_LAYERS.get(key)
    if ml is None:
        raise FeatureNotFoundError(f"no map layer {key[:40]!r}; use one of {', '.join(MAP_LAYERS)}")
    if not scope.allows_layer(ml.source):
        raise HiddenLayerError(f"no map layer {key!r}")  # 404, audited as a refused attempt
    box = parse_bbox_values(bbox) if bbox is not None else None
    if box is not None:
        check_lon_lat_bbox(box)
    view = View(lang, basemap, box, zoom)
    policy = stats_scope(principal, scope) if principal.authenticated else None
    coloured = key == "grids" and policy is not None and measure is not None
    if coloured:
        measure_of(store, str(measure), scope)  # 404 for a campaign the caller may not see

    if key == "households" and points_in_view(view):  # positions in view: not cached
        body = orjson.dumps(layer_data(store, key, view, scope=scope))
        return Response(body, media_type="application/json", headers=NO_STORE)
    whole = View(lang, basemap)

    version, colouring = 0, None
    if coloured:
        figures: Figures = request.app.state.figures
        version, colouring = figures.get(
            (scope, policy, measure, lang),
            store.stamps(STATS_TABLES),
            lambda: _colouring(store, scope, policy, measure, lang),
            reads=scope.reads,
        )

    def render() -> tuple[dict[str, Any], bytes]:
        if key == "households":
            return household_counts(store, whole, scope), b""
        data = layer_data(store, key, whole, scope=scope, colouring=colouring)
        return data, b"" if ml.by_view else encoded(data)

    cache_key = ("layer", key, scope, policy, lang, basemap, coloured and measure, version)
    cache_key += (store.stamps(depends_on(key)),)
    cache: PageCache = request.app.state.layers
    data, body = cache.get_or_render(cache_key, render, reads=scope.reads)
    if key == "households":
        body = orjson.dumps(clip_counts(data, view))
    elif ml.by_view:
        body = encoded(clip(data, view, ml.min_zoom))
    # from the answer itself: an edit outside the caller's view does not change its tag
    tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _colouring(
    store: Store, scope: Scope, policy: Any, measure: str | None, lang: str
) -> Colouring | None:
    """Grid figures for a choropleth, if the caller may see them and asked for a measure."""
    if policy is None or measure is None:
        return None
    zh_name, en_name, fmt = measure_of(store, measure, scope)
    label = zh_name if lang == "zh" else en_name
    campaign = int(measure.partition(":")[2]) if measure.startswith("campaign:") else None
    stats_scope_, small = policy
    rows = queries.household_stats(
        store, "grids", scope=stats_scope_, small_cells=small, campaign=campaign
    )
    return Colouring(measure_values(rows, measure), label, fmt)


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
    return respond(page_of(m, basemap))


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
    return respond(page_of(m, basemap))
