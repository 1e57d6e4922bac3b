"""OGC API – Features Part 4: create, replace, update (merge patch) and delete features."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.geometry.base import BaseGeometry
from starlette.responses import Response

from api.auth import record, require
from api.body import read_json
from api.deps import CollectionDep, PrincipalDep, ScopeDep, SettingsDep, StoreDep, crs_param
from api.errors import PreconditionRequiredError
from api.routes.features import etag, feature_response, parse_fid
from gridmap import idempotency
from gridmap.crs import from_input
from gridmap.errors import (
    AuthenticationError,
    FeatureNotFoundError,
    InvalidFeatureError,
    VersionConflictError,
)
from gridmap.geometry import from_geojson
from gridmap.identifiers import check_text
from gridmap.layers import Layer
from gridmap.security import CAN_REVEAL, Principal
from gridmap.settings import Settings
from gridmap.store import Scope, Store

router = APIRouter(tags=["OGC API – editing"])

FeatureId = Annotated[str, Path(max_length=40, description="Feature id (an integer).")]
IfMatch = Annotated[
    str | None, Header(alias="If-Match", description="The ETag the edit is based on (required).")
]
ContentCrs = Annotated[
    str | None,
    Header(alias="Content-Crs", description="CRS of the geometry in the body (default CRS84)."),
]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A key of the client's choice (a UUID): a resend with it creates nothing.",
    ),
]

_FEATURE_MEMBERS = {"type", "id", "geometry", "properties", "bbox", "links"}


def _geometry(obj: Any, crs: str) -> BaseGeometry:
    g = from_geojson(obj)
    return from_input([g], crs)[0] if crs else g


def _parse_feature(body: Any, crs: str) -> tuple[BaseGeometry, dict[str, Any]]:
    if not isinstance(body, dict) or body.get("type") != "Feature":
        raise InvalidFeatureError('the body must be a GeoJSON Feature ({"type": "Feature", …})')
    extra = sorted(set(body) - _FEATURE_MEMBERS)
    if extra:
        raise InvalidFeatureError(f"unexpected members in the Feature: {', '.join(extra[:5])}")
    if body.get("geometry") is None:
        raise InvalidFeatureError("the Feature needs a geometry")
    props = body.get("properties") or {}
    if not isinstance(props, dict):
        raise InvalidFeatureError("properties must be a JSON object")
    return _geometry(body["geometry"], crs), props


def expected_version(layer: Layer, fid: int, if_match: str | None) -> int | None:
    """The version named by If-Match; 428 when missing, 412 when it names another feature.

    ``*`` matches any existing feature (RFC 9110 §13.1.1): None, no version check. Weak
    tags (``W/"…"``) never match: If-Match compares strongly.
    """
    if if_match is None or not if_match.strip():
        msg = "this edit needs an If-Match header with the feature's current ETag (GET it first)"
        raise PreconditionRequiredError(msg)
    if if_match.strip() == "*":
        return None
    tags = [t.strip() for t in if_match.split(",")]
    prefix = f'"{layer.id}-{fid}-v'
    for t in tags:
        n = t[len(prefix) : -1]
        if t.startswith(prefix) and t.endswith('"') and n.isascii() and n.isdigit():
            return int(t[len(prefix) : -1])
    msg = f"If-Match {if_match[:80]!r} does not match feature {fid}; GET it again for its ETag"
    raise VersionConflictError(msg)


async def _edit_request(
    request: Request,
    layer: Layer,
    store: Store,
    scope: Scope,
    settings: Settings,
    feature_id: str,
    if_match: str | None,
    content_crs: str | None,
) -> tuple[int, int | None, str, Any]:
    """Feature id (404 first), If-Match version (428/412), body CRS and parsed body."""
    fid = parse_fid(layer, feature_id)
    await run_in_threadpool(store.get, layer.id, fid, scope=scope)
    version = expected_version(layer, fid, if_match)
    crs = crs_param(content_crs, "Content-Crs")
    body = await read_json(request, max_bytes=settings.max_body_bytes)
    return fid, version, crs, body


@router.post("/collections/{collection_id}/items", status_code=201, summary="Create a feature")
async def create(
    request: Request,
    layer: CollectionDep,
    store: StoreDep,
    scope: ScopeDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    content_crs: ContentCrs = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Add one feature (GeoJSON Feature body); 201 with its Location and ETag.

    With an ``Idempotency-Key`` header, sending the same request again (a lost answer)
    creates nothing more: it answers the feature the first one created, as it is now, with
    ``Idempotent-Replayed: true``. The feature, its audit entry and the key are stored in
    one transaction."""
    _login(principal)
    crs = crs_param(content_crs, "Content-Crs")
    key = None if idempotency_key is None else idempotency.check_key(idempotency_key)
    body = await read_json(request, max_bytes=settings.max_body_bytes)
    geom, props = _parse_feature(body, crs)

    created: list[Any] = []  # the feature as stored, answered unless this is a resend

    def insert() -> int:
        fid = store.insert(layer.id, [geom], [props], scope=scope)[0]
        created.append(store.get(layer.id, fid, scope=scope))
        _audit(request, principal, "create", layer, created[-1])
        return fid

    if key is None:
        fid = await run_in_threadpool(_in, store.transaction, insert)
        replayed = False
    else:
        digest = idempotency.fingerprint(layer.id, body, {"crs": crs})
        made = await run_in_threadpool(
            idempotency.create_once, store, principal.username, key, digest, layer.id, insert
        )
        fid, replayed = made.fid, made.replayed
    if created and not replayed:
        feat = created[-1]
    else:  # a resend: the feature as it is now, if it still is
        try:
            feat = await run_in_threadpool(store.get, layer.id, fid, scope=scope)
        except FeatureNotFoundError:
            raise idempotency.gone("feature") from None
    location = f"{str(request.base_url).rstrip('/')}/collections/{layer.id}/items/{feat.id}"
    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return feature_response(request, layer, feat, status=201, headers=headers)


def _in(transaction: Any, work: Any) -> Any:
    """``work()`` inside ``transaction()``: all of it is stored, or none."""
    with transaction():
        return work()


@router.put("/collections/{collection_id}/items/{feature_id}", summary="Replace a feature")
async def replace(
    request: Request,
    layer: CollectionDep,
    store: StoreDep,
    scope: ScopeDep,
    settings: SettingsDep,
    feature_id: FeatureId,
    principal: PrincipalDep,
    if_match: IfMatch = None,
    content_crs: ContentCrs = None,
) -> Response:
    """Replace a feature's geometry and every property; needs If-Match."""
    _login(principal)
    fid, version, crs, body = await _edit_request(
        request, layer, store, scope, settings, feature_id, if_match, content_crs
    )
    geom, props = _parse_feature(body, crs)
    feat = await run_in_threadpool(
        lambda: store.update(
            layer.id,
            fid,
            geometry=geom,
            properties=props,
            replace=True,
            expected_version=version,
            scope=scope,
        )
    )
    await run_in_threadpool(_audit, request, principal, "update", layer, feat)
    return feature_response(request, layer, feat)


@router.patch("/collections/{collection_id}/items/{feature_id}", summary="Update a feature")
async def update(
    request: Request,
    layer: CollectionDep,
    store: StoreDep,
    scope: ScopeDep,
    settings: SettingsDep,
    feature_id: FeatureId,
    principal: PrincipalDep,
    if_match: IfMatch = None,
    content_crs: ContentCrs = None,
) -> Response:
    """JSON merge patch (RFC 7396) of properties and/or geometry; needs If-Match."""
    _login(principal)
    fid, version, crs, body = await _edit_request(
        request, layer, store, scope, settings, feature_id, if_match, content_crs
    )
    if not isinstance(body, dict):
        raise InvalidFeatureError("a merge patch must be a JSON object")
    extra = sorted(set(body) - _FEATURE_MEMBERS)
    if extra:
        raise InvalidFeatureError(f"unexpected members in the patch: {', '.join(extra[:5])}")
    if "geometry" in body and body["geometry"] is None:
        raise InvalidFeatureError("a feature's geometry cannot be removed")
    geom = _geometry(body["geometry"], crs) if "geometry" in body else None
    props = body.get("properties") or {}
    if not isinstance(props, dict):
        raise InvalidFeatureError("properties must be a JSON object")
    feat = await run_in_threadpool(
        lambda: store.update(
            layer.id, fid, geometry=geom, properties=props, expected_version=version, scope=scope
        )
    )
    await run_in_threadpool(_audit, request, principal, "update", layer, feat)
    return feature_response(request, layer, feat)


@router.delete(
    "/collections/{collection_id}/items/{feature_id}", status_code=204, summary="Delete a feature"
)
async def delete(
    request: Request,
    layer: CollectionDep,
    store: StoreDep,
    scope: ScopeDep,
    feature_id: FeatureId,
    principal: PrincipalDep,
    if_match: IfMatch = None,
) -> Response:
    """Delete a feature; needs If-Match."""
    _login(principal)
    fid = parse_fid(layer, feature_id)
    feat = await run_in_threadpool(store.get, layer.id, fid, scope=scope)
    version = expected_version(layer, fid, if_match)
    await run_in_threadpool(
        lambda: store.delete(layer.id, fid, expected_version=version, scope=scope)
    )
    await run_in_threadpool(_audit, request, principal, "delete", layer, feat)
    return Response(status_code=204)


def _login(principal: Principal) -> None:
    if not principal.authenticated:
        raise AuthenticationError("log in to edit (POST /token)")


def _audit(request: Request, principal: Principal, action: str, layer: Layer, feat: Any) -> None:
    record(
        request,
        principal,
        action,
        object=f"{layer.id}/{feat.id}",
        grid_id=feat.properties.get("grid_id"),
        detail=f"version {feat.version}",
    )


class RevealRequest(BaseModel):
    """Which personal field to show unmasked, and why."""

    model_config = ConfigDict(extra="forbid", strict=True)
    field: str = Field(max_length=40, description="e.g. id_number or phone")
    reason: str = Field(min_length=6, max_length=500, description="Why it is needed (audited).")

    @field_validator("reason")
    @classmethod
    def _plain(cls, v: str) -> str:
        check_text(v)  # no control or bidi characters in the audit log
        return v


@router.post(
    "/collections/{collection_id}/items/{feature_id}/reveal",
    summary="Show one personal field unmasked (audited, rate-limited)",
    tags=["Privacy"],
)
def reveal(
    request: Request,
    layer: CollectionDep,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    feature_id: FeatureId,
    body: RevealRequest,
) -> dict[str, Any]:
    """One field of one feature without masking, for a stated reason; every reveal is logged."""
    require(principal, *sorted(CAN_REVEAL))
    fid = parse_fid(layer, feature_id)
    if body.field not in layer.sensitive:
        raise InvalidFeatureError(
            f"{body.field[:40]!r} is not a personal field of {layer.id}; "
            f"personal fields: {', '.join(layer.sensitive) or 'none'}"
        )
    # the feature first: a refused read (404, 429) does not use up a reveal
    feat = store.get(layer.id, fid, scope=dataclasses.replace(scope, masked=frozenset()))
    request.app.state.reveal_limiter.hit(principal.username, "reveals")
    record(
        request,
        principal,
        "reveal",
        object=f"{layer.id}/{fid}.{body.field}",
        grid_id=feat.properties.get("grid_id"),
        detail=body.reason,
    )
    return {"id": fid, "field": body.field, "value": feat.properties.get(body.field)}


__all__ = ["etag", "router"]
