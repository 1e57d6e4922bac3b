"""OGC API – Features: landing page, conformance, collections and items."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from api.deps import BBoxDep, CollectionDep, ScopeDep, SettingsDep, StoreDep
from gridmap import geojson
from gridmap.crs import CRS84
from gridmap.errors import FeatureNotFoundError
from gridmap.layers import LAYERS, Layer
from gridmap.store import Query as StoreQuery

router = APIRouter()

GEOJSON = "application/geo+json"
JSON = "application/json"

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
]


def _json(body: Any, media_type: str = JSON, status: int = 200) -> Response:
    return Response(orjson.dumps(body), media_type=media_type, status_code=status)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/", summary="Landing page", tags=["OGC API"])
def landing(request: Request, settings: SettingsDep) -> Response:
    """Landing page with links to the API description, conformance, collections and map."""
    b = _base(request)
    return _json(
        {
            "title": settings.title,
            "description": "中心路街道网格化管理服务 — OGC API Features, maps and grid queries.",
            "links": [
                {"href": f"{b}/", "rel": "self", "type": JSON, "title": "本页 This document"},
                {
                    "href": f"{b}/openapi.json",
                    "rel": "service-desc",
                    "type": "application/vnd.oai.openapi+json;version=3.0",
                    "title": "API 定义",
                },
                {
                    "href": f"{b}/docs",
                    "rel": "service-doc",
                    "type": "text/html",
                    "title": "API 文档",
                },
                {
                    "href": f"{b}/conformance",
                    "rel": "conformance",
                    "type": JSON,
                    "title": "符合性 Conformance",
                },
                {
                    "href": f"{b}/collections",
                    "rel": "data",
                    "type": JSON,
                    "title": "图层 Collections",
                },
                {"href": f"{b}/map", "rel": "alternate", "type": "text/html", "title": "地图 Map"},
            ],
        }
    )


@router.get("/conformance", summary="Conformance classes", tags=["OGC API"])
def conformance() -> Response:
    """The conformance classes this service implements."""
    return _json({"conformsTo": CONFORMANCE})


def _collection(layer: Layer, store: Any, base: str) -> dict[str, Any]:
    ext = store.extent(layer.id)
    out: dict[str, Any] = {
        "id": layer.id,
        "title": layer.zh,
        "description": f"{layer.zh} {layer.en}",
        "itemType": "feature",
        "crs": [CRS84],
        "storageCrs": CRS84,
        "links": [
            {"href": f"{base}/collections/{layer.id}", "rel": "self", "type": JSON},
            {
                "href": f"{base}/collections/{layer.id}/items",
                "rel": "items",
                "type": GEOJSON,
                "title": f"{layer.zh} features",
            },
        ],
    }
    if ext is not None:
        out["extent"] = {"spatial": {"bbox": [list(ext)], "crs": CRS84}}
    return out


@router.get("/collections", summary="Collections", tags=["OGC API"])
def collections(request: Request, store: StoreDep, scope: ScopeDep) -> Response:
    """Every layer the caller may see."""
    b = _base(request)
    cols = [_collection(layer, store, b) for layer in LAYERS if scope.allows_layer(layer.id)]
    return _json(
        {
            "collections": cols,
            "links": [{"href": f"{b}/collections", "rel": "self", "type": JSON}],
        }
    )


@router.get("/collections/{collection_id}", summary="One collection", tags=["OGC API"])
def collection(request: Request, layer: CollectionDep, store: StoreDep) -> Response:
    """A layer's description: extent, item type, CRS and links."""
    return _json(_collection(layer, store, _base(request)))


@router.get("/collections/{collection_id}/items", summary="Features", tags=["OGC API"])
def items(
    request: Request,
    layer: CollectionDep,
    store: StoreDep,
    scope: ScopeDep,
    settings: SettingsDep,
    bbox: BBoxDep,
    limit: Annotated[
        int | None,
        Query(ge=1, description="Features per page (default 100; larger values are clamped)."),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Features to skip.")] = 0,
) -> Response:
    """Features of a layer as GeoJSON, filtered by bbox and paged with next/prev links."""
    n = min(limit or settings.default_limit, settings.max_limit)
    fs = store.query(layer.id, StoreQuery(bbox=bbox, limit=n, offset=offset), scope=scope)
    b = _base(request)
    url = f"{b}/collections/{layer.id}/items"
    params = {k: v for k, v in request.query_params.items() if k not in ("offset", "limit")}

    def link(rel: str, off: int) -> dict[str, Any]:
        q = urlencode({**params, "limit": n, "offset": off})
        return {"href": f"{url}?{q}", "rel": rel, "type": GEOJSON}

    links = [link("self", offset)]
    if fs.number_matched is not None and offset + len(fs) < fs.number_matched:
        links.append(link("next", offset + n))
    if offset > 0:
        links.append(link("prev", max(0, offset - n)))
    links.append({"href": f"{b}/collections/{layer.id}", "rel": "collection", "type": JSON})
    return Response(
        geojson.feature_collection(fs, links=links),
        media_type=GEOJSON,
        headers={"Content-Crs": f"<{CRS84}>"},
    )


@router.get(
    "/collections/{collection_id}/items/{feature_id}", summary="One feature", tags=["OGC API"]
)
def item(
    request: Request,
    layer: CollectionDep,
    store: StoreDep,
    scope: ScopeDep,
    feature_id: Annotated[str, Path(max_length=40, description="Feature id (an integer).")],
) -> Response:
    """One feature as GeoJSON, with a strong ETag derived from its id and version."""
    if not feature_id.isdigit() or not 0 < int(feature_id) < 2**62:
        msg = f"no feature {feature_id[:40]!r} in collection {layer.id}"
        raise FeatureNotFoundError(msg)
    f = store.get(layer.id, int(feature_id), scope=scope)
    b = _base(request)
    links = [
        {"href": f"{b}/collections/{layer.id}/items/{f.id}", "rel": "self", "type": GEOJSON},
        {"href": f"{b}/collections/{layer.id}", "rel": "collection", "type": JSON},
    ]
    return Response(
        geojson.feature(f, links=links),
        media_type=GEOJSON,
        headers={"ETag": f'"{layer.id}-{f.id}-v{f.version}"', "Content-Crs": f"<{CRS84}>"},
    )
