"""Map pages (folium) and the local front-end assets they load."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import HTMLResponse

from api.deps import PrincipalDep, ScopeDep, StoreDep
from gridmap.errors import PermissionDeniedError
from gridmap.maps import overview_map
from gridmap.security import business_data_allowed

router = APIRouter()


@router.get("/map", response_class=HTMLResponse, summary="Overview map", tags=["Maps"])
def overview(
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    lang: Annotated[Literal["zh", "en"], Query(description="Label language.")] = "zh",
) -> HTMLResponse:
    """Every layer on one interactive map; works with no internet (assets served locally)."""
    if not business_data_allowed(principal):
        raise PermissionDeniedError("auditors see the audit log only")
    html = overview_map(store, scope=scope, lang=lang).get_root().render()
    return HTMLResponse(html)
