"""Dependencies that turn path and query parameters into domain objects.

They are ``async def`` because they never block: FastAPI runs a plain ``def`` dependency
in the thread pool, a hop that costs more than the dependency itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Annotated, TypeVar

from anyio import to_thread
from fastapi import Depends, Path, Request

from api.auth import client_address, get_principal
from api.errors import BadRequestError
from gridmap.access import ReadLog
from gridmap.crs import CRS84, SUPPORTED_CRS, UnsupportedCRSError, normalize_crs
from gridmap.errors import HiddenLayerError
from gridmap.layers import Layer, get_layer
from gridmap.security import Principal, scope_for
from gridmap.settings import Settings
from gridmap.store import BBox, Scope, Store

T = TypeVar("T")


async def solving(request: Request, job: Callable[[], T]) -> T:
    """Run a route solve off the event loop on threads of its own (as many as
    :data:`gridmap.ratelimit.SOLVING` admits at once), so that long solves never hold the
    threads every other request needs (``GRIDMAP_THREADS``)."""
    return await to_thread.run_sync(job, limiter=request.app.state.solver_threads)


async def get_store(request: Request) -> Store:
    """The store opened in the app's lifespan."""
    return request.app.state.store  # type: ignore[no-any-return]


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings  # type: ignore[no-any-return]


def reads_of(request: Request, principal: Principal) -> ReadLog:
    """This request's log of personal reads: the first read counts against the caller's
    rate limit, and the log becomes audit entries when the response starts
    (:class:`api.middleware.ReadAudit`)."""
    log: ReadLog | None = getattr(request.state, "reads", None)
    if log is None:
        limiter = request.app.state.household_limiter
        who = principal.username or client_address(request)
        log = ReadLog(on_first_read=lambda: limiter.hit(who, "household reads"))
        request.state.reads = log
    return log


async def get_scope(
    request: Request, principal: Annotated[Principal, Depends(get_principal)]
) -> Scope:
    """What the caller may see and do, from their role and grids (see gridmap.security),
    with this request's read log: every personal row the store returns under it is
    rate-limited and audited."""
    return dataclasses.replace(scope_for(principal), reads=reads_of(request, principal))


async def get_collection(
    collection_id: Annotated[str, Path(description="Collection (layer) id, e.g. `grids`.")],
    scope: Annotated[Scope, Depends(get_scope)],
) -> Layer:
    """The layer named in the path, or 404."""
    layer = get_layer(collection_id)
    if not scope.allows_layer(layer.id):
        msg = f"no collection {collection_id[:60]!r}"
        raise HiddenLayerError(msg)
    return layer


@dataclasses.dataclass(frozen=True)
class Reader:
    """The caller of a collection's route: who they are, what they may see and do, and
    the collection (one dependency where the busiest routes would otherwise resolve
    three)."""

    principal: Principal
    scope: Scope
    layer: Layer


async def get_reader(
    request: Request,
    collection_id: Annotated[str, Path(description="Collection (layer) id, e.g. `grids`.")],
    principal: Annotated[Principal, Depends(get_principal)],
) -> Reader:
    """The caller, their scope and the collection named in the path (404 if hidden)."""
    scope = await get_scope(request, principal)
    return Reader(principal, scope, await get_collection(collection_id, scope))


def crs_param(value: str | None, name: str) -> str:
    """A CRS parameter as its canonical URI (CRS84 when absent); 400 when unsupported."""
    if value is None or value == "":
        return CRS84
    try:
        return normalize_crs(value.strip("<>"))
    except UnsupportedCRSError as exc:
        raise BadRequestError(f"{name}: {exc}") from None


def parse_bbox_values(bbox: str) -> BBox:
    """Four finite comma-separated numbers with min ≤ max (axis order of the bbox CRS)."""
    parts = bbox.split(",")
    if len(parts) == 6:
        msg = "bbox with heights (6 numbers) is not supported; give minX,minY,maxX,maxY"
        raise BadRequestError(msg)
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
        msg = "bbox minimums must not exceed maximums (minX,minY,maxX,maxY)"
        raise BadRequestError(msg)
    return (v[0], v[1], v[2], v[3])


def check_lon_lat_bbox(v: BBox) -> None:
    """Reject a lon/lat bbox outside the valid ranges (often swapped axes)."""
    if not (
        -180 <= v[0] <= 180 and -180 <= v[2] <= 180 and -90 <= v[1] <= 90 and -90 <= v[3] <= 90
    ):
        msg = "bbox is outside longitude -180..180 / latitude -90..90; is it lon,lat order?"
        raise BadRequestError(msg)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ScopeDep = Annotated[Scope, Depends(get_scope)]
CollectionDep = Annotated[Layer, Depends(get_collection)]
ReaderDep = Annotated[Reader, Depends(get_reader)]
CRS_LIST = list(SUPPORTED_CRS)
