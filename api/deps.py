"""Dependencies that turn path and query parameters into domain objects."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from api.errors import BadRequestError
from gridmap.errors import UnknownLayerError
from gridmap.layers import Layer, get_layer
from gridmap.settings import Settings
from gridmap.store import BBox, Scope, Store


def get_store(request: Request) -> Store:
    """The store opened in the app's lifespan."""
    return request.app.state.store  # type: ignore[no-any-return]


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings  # type: ignore[no-any-return]


def get_scope(request: Request) -> Scope:
    """What the caller may see (everything until authentication arrives)."""
    return Scope.ALL


def get_collection(
    collection_id: Annotated[str, Path(description="Collection (layer) id, e.g. `grids`.")],
    scope: Annotated[Scope, Depends(get_scope)],
) -> Layer:
    """The layer named in the path, or 404."""
    layer = get_layer(collection_id)
    if not scope.allows_layer(layer.id):
        msg = f"no collection {collection_id[:60]!r}"
        raise UnknownLayerError(msg)
    return layer


def parse_bbox(
    bbox: Annotated[
        str | None,
        Query(
            description="minLon,minLat,maxLon,maxLat in WGS84 (CRS84).",
            examples=["113.28,34.80,113.30,34.82"],
            max_length=200,
        ),
    ] = None,
) -> BBox | None:
    """Validate a ``bbox`` parameter: four finite numbers, min ≤ max, within lon/lat ranges."""
    if bbox is None:
        return None
    parts = bbox.split(",")
    if len(parts) != 4:
        msg = "bbox must be 4 comma-separated numbers: minLon,minLat,maxLon,maxLat"
        raise BadRequestError(msg)
    try:
        v = [float(p) for p in parts]
    except ValueError:
        msg = "bbox values must be numbers: minLon,minLat,maxLon,maxLat"
        raise BadRequestError(msg) from None
    if not all(math.isfinite(x) for x in v):
        msg = "bbox values must be finite numbers"
        raise BadRequestError(msg)
    if v[0] > v[2] or v[1] > v[3]:
        msg = "bbox minimums must not exceed maximums (minLon,minLat,maxLon,maxLat)"
        raise BadRequestError(msg)
    if not (
        -180 <= v[0] <= 180 and -180 <= v[2] <= 180 and -90 <= v[1] <= 90 and -90 <= v[3] <= 90
    ):
        msg = "bbox is outside longitude -180..180 / latitude -90..90; is it lon,lat order?"
        raise BadRequestError(msg)
    return (v[0], v[1], v[2], v[3])


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ScopeDep = Annotated[Scope, Depends(get_scope)]
CollectionDep = Annotated[Layer, Depends(get_collection)]
BBoxDep = Annotated[BBox | None, Depends(parse_bbox)]
