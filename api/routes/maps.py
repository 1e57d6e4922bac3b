"""Map pages (folium) and the local front-end assets they load."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import HTMLResponse

from api.deps import ScopeDep, StoreDep
from gridmap.maps import overview_map

router = APIRouter()


@router.get("/map", response_class=HTMLResponse, summary="Overview map", tags=["Maps"])
def overview(
    store: StoreDep,
    scope: ScopeDep,
    lang: Annotated[Literal["zh", "en"], Query(description="Label language.")] = "zh",
) -> HTMLResponse:
    """Every layer on one interactive map; works with no internet (assets served locally)."""
    html = overview_map(store, scope=scope, lang=lang).get_root().render()
    return HTMLResponse(html)
