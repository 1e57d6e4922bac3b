"""OGC API – Features Parts 1–3: landing page, conformance, collections, queryables and items."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from api.auth import record
from api.deps import (
    CRS_LIST,
    CollectionDep,
    ReaderDep,
    ScopeDep,
    SettingsDep,
    StoreDep,
    check_lon_lat_bbox,
    crs_param,
    parse_bbox_values,
)
from api.errors import BadRequestError
from api.html import render, wants_html
from api.params import Param, documented
from api.params import read as read_params
from gridmap import exports, geojson
from gridmap.cql import Filter, FilterError, check_filter, datetime_filter
from gridmap.cql.check import INT_MAX
from gridmap.crs import CRS84, bbox_to_wgs84
from gridmap.errors import FeatureNotFoundError
from gridmap.layers import LAYERS, Layer, Prop
from gridmap.settings import Settings
from gridmap.store import ID_LIMIT, Scope, Store
from gridmap.store import Query as StoreQuery

router = APIRouter()

GEOJSON = "application/geo+json"
JSON = "application/json"
HTML = "text/html"
SCHEMA = "application/schema+json"

_SPEC = "http://www.opengis.net/spec"
CONFORMANCE = [
    f"{_SPEC}/ogcapi-features-1/1.0/conf/core",
    f"{_SPEC}/ogcapi-features-1/1.0/conf/geojson",
    f"{_SPEC}/ogcapi-features-1/1.0/conf/html",
    f"{_SPEC}/ogcapi-features-1/1.0/conf/oas30",
    f"{_SPEC}/ogcapi-features-2/1.0/conf/crs",
    f"{_SPEC}/ogcapi-features-3/1.0/conf/queryables",
    f"{_SPEC}/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    f"{_SPEC}/ogcapi-features-3/1.0/conf/filter",
    f"{_SPEC}/ogcapi-features-3/1.0/conf/features-filter",
    f"{_SPEC}/cql2/1.0/conf/cql2-text",
    f"{_SPEC}/cql2/1.0/conf/cql2-json",
    f"{_SPEC}/cql2/1.0/conf/basic-cql2",
    f"{_SPEC}/cql2/1.0/conf/advanced-comparison-operators",
    f"{_SPEC}/cql2/1.0/conf/case-insensitive-comparison",
    f"{_SPEC}/cql2/1.0/conf/basic-spatial-functions",
    f"{_SPEC}/cql2/1.0/conf/basic-spatial-functions-plus",
    f"{_SPEC}/cql2/1.0/conf/spatial-functions",
    f"{_SPEC}/cql2/1.0/conf/temporal-functions",
    f"{_SPEC}/cql2/1.0/conf/array-functions",
    f"{_SPEC}/cql2/1.0/conf/property-property",
    f"{_SPEC}/cql2/1.0/conf/arithmetic",
    f"{_SPEC}/ogcapi-features-4/1.0/conf/create-replace-delete",
    f"{_SPEC}/ogcapi-features-4/1.0/conf/update",
    f"{_SPEC}/ogcapi-features-4/1.0/conf/features",
]


def _json(body: Any, media_type: str = JSON, status: int = 200) -> Response:
    return Response(orjson.dumps(body), media_type=media_type, status_code=status)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/", summary="Landing page", tags=["OGC API"])
def landing(request: Request, settings: SettingsDep) -> Response:
    """Landing page with links to the API description, conformance, collections and map."""
    b = _base(request)
    body = {
        "title": settings.title,
        "description": "中心路街道网格化管理服务 — OGC API Features, maps and grid queries.",
        "links": [
            {"href": f"{b}/", "rel": "self", "type": JSON, "title": "本页 This document"},
            {"href": f"{b}/?f=html", "rel": "alternate", "type": HTML, "title": "网页 HTML"},
            {
                "href": f"{b}/openapi.json",
                "rel": "service-desc",
                "type": "application/vnd.oai.openapi+json;version=3.0",
                "title": "API 定义 OpenAPI",
            },
            {"href": f"{b}/docs", "rel": "service-doc", "type": HTML, "title": "API 文档"},
            {
                "href": f"{b}/conformance",
                "rel": "conformance",
                "type": JSON,
                "title": "符合性 Conformance",
            },
            {"href": f"{b}/collections", "rel": "data", "type": JSON, "title": "图层 Collections"},
            {"href": f"{b}/map", "rel": "alternate", "type": HTML, "title": "地图 Map"},
        ],
    }
    if wants_html(request):
        return render("landing.html", **body)
    return _json(body)


@router.get("/conformance", summary="Conformance classes", tags=["OGC API"])
def conformance() -> Response:
    """The conformance classes this service implements."""
    return _json({"conformsTo": CONFORMANCE})


def _collection(layer: Layer, store: Store, base: str, scope: Scope) -> dict[str, Any]:
    """A collection's description; its extents are those of what ``scope`` shows."""
    ext = store.extent(layer.id, scope=scope)
    out: dict[str, Any] = {
        "id": layer.id,
        "title": layer.zh,
        "description": f"{layer.zh} {layer.en}",
        "itemType": "feature",
        "crs": CRS_LIST,
        "storageCrs": CRS84,
        "links": [
            {"href": f"{base}/collections/{layer.id}", "rel": "self", "type": JSON},
            {"href": f"{base}/collections/{layer.id}?f=html", "rel": "alternate", "type": HTML},
            {
                "href": f"{base}/collections/{layer.id}/items",
                "rel": "items",
                "type": GEOJSON,
                "title": f"{layer.zh} features",
            },
            {
                "href": f"{base}/collections/{layer.id}/queryables",
                "rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables",
                "type": SCHEMA,
            },
        ],
    }
    extent: dict[str, Any] = {}
    if ext is not None:
        extent["spatial"] = {"bbox": [list(ext)], "crs": CRS84}
    times = store.time_extent(layer.id, scope=scope)
    if times is not None:
        extent["temporal"] = {
            "interval": [list(times)],
            "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian",
        }
    if extent:
        out["extent"] = extent
    return out


@router.get("/collections", summary="Collections", tags=["OGC API"])
def collections(request: Request, store: StoreDep, scope: ScopeDep) -> Response:
    """Every layer the caller may see."""
    b = _base(request)
    visible = [layer for layer in LAYERS if scope.allows_layer(layer.id)]
    cols = [_collection(layer, store, b, scope) for layer in visible]
    if wants_html(request):
        rows = [
            {
                "id": c["id"],
                "title": c["title"],
                "count": store.count(c["id"], scope=scope),
                "extent": ", ".join(f"{v:.5f}" for v in c["extent"]["spatial"]["bbox"][0])
                if "extent" in c and "spatial" in c["extent"]
                else "",
            }
            for c in cols
        ]
        return render("collections.html", title="图层 Collections", collections=rows)
    return _json(
        {
            "collections": cols,
            "crs": CRS_LIST,
            "links": [{"href": f"{b}/collections", "rel": "self", "type": JSON}],
        }
    )


@router.get("/collections/{collection_id}", summary="One collection", tags=["OGC API"])
def collection(
    request: Request, layer: CollectionDep, store: StoreDep, scope: ScopeDep
) -> Response:
    """A layer's description: extent, item type, CRS and links."""
    c = _collection(layer, store, _base(request), scope)
    if wants_html(request):
        return render("collection.html", title=layer.zh, c=c, props=layer.properties)
    return _json(c)


_JSON_TYPES = {
    "str": {"type": "string"},
    "enum": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "datetime": {"type": "string", "format": "date-time"},
    "list": {"type": "array", "items": {"type": "string"}},
}
_GEOM_FORMAT = {
    "Point": "geometry-point",
    "LineString": "geometry-linestring",
    "Polygon": "geometry-polygon",
    "MultiPolygon": "geometry-multipolygon",
}


def property_schema(p: Prop) -> dict[str, Any]:
    """JSON Schema of one property."""
    s: dict[str, Any] = {"title": p.zh, "description": p.en, **_JSON_TYPES[p.type]}
    if p.choices and p.type == "enum":
        s["enum"] = list(p.choices)
    if p.choices and p.type == "list":
        s["items"] = {"type": "string", "enum": list(p.choices)}
    if p.minimum is not None:
        s["minimum"] = p.minimum
    if p.maximum is not None:
        s["maximum"] = p.maximum
    if p.derived:
        s["readOnly"] = True
    return s


@router.get(
    "/collections/{collection_id}/queryables", summary="Queryable properties", tags=["OGC API"]
)
def queryables(request: Request, layer: CollectionDep) -> Response:
    """The properties a filter may use, as JSON Schema."""
    b = _base(request)
    props: dict[str, Any] = {
        "geom": {"title": "几何", "format": _GEOM_FORMAT[layer.geometry_type]},
        "id": {"title": "编号", "type": "integer"},
    }
    props.update({p.name: property_schema(p) for p in layer.properties})
    return _json(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{b}/collections/{layer.id}/queryables",
            "type": "object",
            "title": layer.zh,
            "properties": props,
            "additionalProperties": False,
        },
        media_type=SCHEMA,
    )


def _value_for(prop: Prop, raw: str) -> Any:
    if prop.type in ("int", "float") and not raw.isascii():
        msg = f"{prop.name} takes a number in ASCII digits, got {raw[:30]!r}"
        raise BadRequestError(msg)
    try:
        if prop.type == "int":
            v = int(raw)
            if abs(v) > INT_MAX:
                msg = f"{prop.name} must lie within ±{INT_MAX}"
                raise BadRequestError(msg)
            return v
        if prop.type == "float":
            v = float(raw)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError
            return v
        if prop.type == "bool":
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
    except ValueError:
        msg = f"{prop.name} takes a {prop.type} value, got {raw[:30]!r}"
        raise BadRequestError(msg) from None
    return raw


def _select(layer: Layer, properties: str | None) -> list[str] | None:
    if properties is None:
        return None
    names = [n.strip() for n in properties.split(",") if n.strip()]
    unknown = [n for n in names if n not in layer.by_name]
    if unknown:
        bad = ", ".join(u[:40] for u in unknown[:5])
        msg = f"properties: unknown {bad}; known: {', '.join(layer.names)}"
        raise BadRequestError(msg)
    return names


def _sortby(layer: Layer, sortby: str | None) -> list[str]:
    if not sortby:
        return []
    keys = []
    for part in sortby.split(","):
        key = part.strip()
        name = key.lstrip("+-")
        if name != "id" and name not in layer.by_name:
            msg = f"sortby: unknown property {name[:40]!r}; sortable: id, {', '.join(layer.names)}"
            raise BadRequestError(msg)
        keys.append(("-" if key.startswith("-") else "") + name)
    return keys


ITEMS_QUERY = (
    Param("bbox", "minX,minY,maxX,maxY in bbox-crs (CRS84 lon/lat by default).", max_length=300),
    Param("bbox-crs", "CRS of bbox (URI, EPSG:n, gcj02, bd09).", max_length=200),
    Param("crs", "CRS of the returned geometries (default CRS84).", max_length=200),
    Param(
        "limit", "Features per page (default 100; larger values are clamped).", integer=True, ge=1
    ),
    Param("offset", "Features to skip.", integer=True, ge=0, le=100_000_000, default=0),
    Param(
        "datetime",
        "Instant or interval (start/end, '..' open) on the layer's time.",
        max_length=100,
    ),
    Param("properties", "Comma-separated properties to return.", max_length=2000),
    Param("sortby", "Comma-separated properties, '-' for descending.", max_length=500),
    Param("filter", "CQL2 filter (text or JSON, see filter-lang).", max_length=20_000),
    Param("filter-lang", "cql2-text (default) or cql2-json.", max_length=20),
    Param("filter-crs", "CRS of geometries in the filter.", max_length=200),
    Param("f", "json (default) or html.", max_length=10),
)
ITEM_PARAMS = {p.name for p in ITEMS_QUERY}


def items_query(
    request: Request,
    layer: Layer,
    a: dict[str, Any],
    *,
    limit: int,
    offset: int,
    known: set[str] | frozenset[str],
) -> StoreQuery:
    """The store query of an items-like request: property equalities (any parameter not in
    ``known``), CQL2 filter, datetime and bbox, sorted and paged."""
    bbox, datetime, sortby, filter = a["bbox"], a["datetime"], a["sortby"], a["filter"]
    bbox_crs, filter_lang, filter_crs = a["bbox_crs"], a["filter_lang"], a["filter_crs"]
    in_crs = crs_param(bbox_crs, "bbox-crs")
    fcrs = crs_param(filter_crs, "filter-crs")
    equals: dict[str, Any] = {}
    for key, raw in request.query_params.multi_items():
        if key in known:
            continue
        prop = layer.by_name.get(key)
        if prop is None:
            accepted = ", ".join(sorted(known))
            msg = (
                f"unknown parameter {key[:40]!r}; use one of {accepted} "
                f"or a property of {layer.id}: {', '.join(layer.names)}"
            )
            raise BadRequestError(msg)
        equals[key] = _value_for(prop, raw)

    filters: list[Filter] = []
    try:
        if filter is not None:
            filters.append(
                check_filter(filter, layer, lang=filter_lang or "cql2-text", filter_crs=fcrs)
            )
        elif filter_lang is not None:
            raise BadRequestError("filter-lang given without a filter")
        if datetime is not None:
            filters.append(datetime_filter(datetime, layer))
    except FilterError as exc:
        raise BadRequestError(str(exc)) from None

    box = None
    geometry = None
    if bbox is not None:
        values = parse_bbox_values(bbox)
        box, geometry = bbox_to_wgs84(values, in_crs)
        check_lon_lat_bbox(box)

    return StoreQuery(
        bbox=box,
        geometry=geometry,
        equals=equals,
        filters=filters,
        order_by=_sortby(layer, sortby),
        limit=limit,
        offset=offset,
    )


@router.get(
    "/collections/{collection_id}/items",
    summary="Features",
    tags=["OGC API"],
    openapi_extra=documented(ITEMS_QUERY),
)
def items(request: Request, reader: ReaderDep) -> Response:
    """Features of a layer as GeoJSON: bbox, datetime, property filters, CQL2, paging, CRS.

    Besides the parameters listed, any property of the layer filters by equality.
    """
    layer, scope, principal = reader.layer, reader.scope, reader.principal
    store: Store = request.app.state.store
    settings: Settings = request.app.state.settings
    a = read_params(request, ITEMS_QUERY)
    crs, limit, offset, properties, f = a["crs"], a["limit"], a["offset"], a["properties"], a["f"]
    out_crs = crs_param(crs, "crs")
    if f is not None and f.lower() not in ("json", "geojson", "html", "csv"):
        raise BadRequestError("f must be json, html or csv")
    csv_export = f is not None and f.lower() == "csv"
    # a download holds everything asked for (up to max_export), a page up to max_limit
    n = (
        min(limit or settings.max_export, settings.max_export)
        if csv_export
        else min(limit or settings.default_limit, settings.max_limit)
    )

    q = items_query(request, layer, a, limit=n, offset=offset, known=ITEM_PARAMS)
    selected = _select(layer, properties)
    html = wants_html(request)
    if csv_export:
        if scope.reads is not None:
            scope.reads.action = "export"  # personal rows read here leave as a file
        fs = store.query(layer.id, q, scope=scope)
        if not layer.personal:
            record(
                request,
                principal,
                "export",
                object=f"{layer.id}: {len(fs)} features as CSV",
                detail=str(request.url.query)[:500],
            )
        name = f"{layer.id}-{offset}-{offset + len(fs)}.csv"
        return Response(
            exports.to_csv(fs, properties=selected, crs=out_crs),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Crs": f"<{out_crs}>",
                "OGC-NumberMatched": str(fs.number_matched),
            },
        )
    if selected is None and out_crs == CRS84 and not html:
        # the hot path: ids from the index, features from the encoded cache
        ids, matched = store.query_ids(layer.id, q, scope=scope)
        parts = request.app.state.features.page(store, layer.id, ids.tolist(), scope=scope)
        fs = None
    else:
        fs = store.query(layer.id, q, scope=scope)
        matched = int(fs.number_matched or 0)
        parts = None
    b = _base(request)
    url = f"{b}/collections/{layer.id}/items"
    kept = urlencode(
        [(k, v) for k, v in request.query_params.multi_items() if k not in ("offset", "limit", "f")]
    )  # encoded once for every link

    def link(rel: str, off: int, media: str = GEOJSON, fmt: str | None = None) -> dict[str, Any]:
        parts = [kept] if kept else []
        parts += [f"f={fmt}"] if fmt else []
        q = "&".join([*parts, f"limit={n}&offset={off}"])
        return {"href": f"{url}?{q}", "rel": rel, "type": media}

    links = [link("self", offset), link("alternate", offset, HTML, "html")]
    returned = len(parts) if parts is not None else len(fs)  # type: ignore[arg-type]
    has_next = offset + returned < matched
    if has_next:
        links.append(link("next", offset + n))
    if offset > 0:
        links.append(link("prev", max(0, offset - n)))
    links.append({"href": f"{b}/collections/{layer.id}", "rel": "collection", "type": JSON})

    if parts is not None:
        return Response(
            geojson.collection_bytes(parts, matched=matched, links=links),
            media_type=GEOJSON,
            headers={"Content-Crs": f"<{out_crs}>"},
        )
    assert fs is not None
    if html:
        shown = [p for p in layer.properties if selected is None or p.name in selected]
        return render(
            "items.html",
            title=f"{layer.zh} · 要素",
            layer_id=layer.id,
            props=shown,
            features=list(fs),
            matched=fs.number_matched,
            returned=len(fs),
            next=link("next", offset + n, HTML, "html")["href"] if has_next else None,
            prev=link("prev", max(0, offset - n), HTML, "html")["href"] if offset > 0 else None,
        )
    return Response(
        geojson.feature_collection(fs, links=links, properties=selected, crs=out_crs),
        media_type=GEOJSON,
        headers={"Content-Crs": f"<{out_crs}>"},
    )


def _none_match(header: str | None, tag: str) -> bool:
    """If-None-Match matches ``tag`` (weak comparison, RFC 9110 §13.1.2) or is ``*``."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or tag in tags


def etag(layer_id: str, fid: int, version: int) -> str:
    """Strong ETag of a feature version (independent of the body and of masking)."""
    return f'"{layer_id}-{fid}-v{version}"'


def parse_fid(layer: Layer, feature_id: str) -> int:
    """A path feature id as an integer; FeatureNotFoundError when it cannot be one.

    ASCII digits only: ``str.isdigit`` also accepts ``²`` (which ``int`` refuses) and
    ``１``/``١`` (which ``int`` reads as 1), so one feature would have many URLs."""
    if not (feature_id.isascii() and feature_id.isdigit()) or not 0 < int(feature_id) < ID_LIMIT:
        msg = f"no feature {feature_id[:40]!r} in collection {layer.id}"
        raise FeatureNotFoundError(msg)
    return int(feature_id)


def feature_response(
    request: Request,
    layer: Layer,
    f: Any,
    *,
    crs: str = CRS84,
    properties: list[str] | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A single feature as GeoJSON with ETag and Content-Crs headers."""
    b = _base(request)
    links = [
        {"href": f"{b}/collections/{layer.id}/items/{f.id}", "rel": "self", "type": GEOJSON},
        {
            "href": f"{b}/collections/{layer.id}/items/{f.id}?f=html",
            "rel": "alternate",
            "type": HTML,
        },
        {"href": f"{b}/collections/{layer.id}", "rel": "collection", "type": JSON},
    ]
    return Response(
        geojson.feature(f, links=links, properties=properties, crs=crs),
        status_code=status,
        media_type=GEOJSON,
        headers={
            "ETag": etag(layer.id, f.id, f.version),
            "Content-Crs": f"<{crs}>",
            **(headers or {}),
        },
    )


ITEM_QUERY = (
    Param("crs", "CRS of the geometry.", max_length=200),
    Param("properties", "Comma-separated properties to return.", max_length=2000),
    Param("f", "json (default) or html.", max_length=10),
)


@router.get(
    "/collections/{collection_id}/items/{feature_id}",
    summary="One feature",
    tags=["OGC API"],
    openapi_extra=documented(ITEM_QUERY),
)
def item(
    request: Request,
    reader: ReaderDep,
    feature_id: Annotated[str, Path(max_length=40, description="Feature id (an integer).")],
) -> Response:
    """One feature as GeoJSON, with a strong ETag derived from its id and version."""
    layer, scope, store = reader.layer, reader.scope, request.app.state.store
    a = read_params(request, ITEM_QUERY)
    crs, properties = a["crs"], a["properties"]
    out_crs = crs_param(crs, "crs")
    feat = store.get(layer.id, parse_fid(layer, feature_id), scope=scope)
    tag = etag(layer.id, feat.id, feat.version)
    html = wants_html(request)
    # the ETag names the GeoJSON representation; the HTML view has none of its own
    if not html and _none_match(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    if html:
        return render(
            "item.html",
            title=f"{layer.zh} {feat.id}",
            layer_id=layer.id,
            f=feat,
            props=layer.properties,
            geom_type=feat.geometry.geom_type if feat.geometry is not None else "",
        )
    return feature_response(
        request, layer, feat, crs=out_crs, properties=_select(layer, properties)
    )
