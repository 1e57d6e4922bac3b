"""File import (multipart upload, subdistrict admins) and file export (any role, scoped and
masked) of a collection: parse → :mod:`gridmap.io` → serialise."""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from api.auth import client_address, record
from api.body import MalformedBodyError, PayloadTooLargeError, UnsupportedMediaTypeError
from api.deps import (
    PrincipalDep,
    ReaderDep,
    ScopeDep,
    SettingsDep,
    StoreDep,
    crs_param,
    get_collection,
)
from api.errors import BadRequestError, problem
from api.params import Param, documented
from api.params import read as read_params
from api.routes.features import ITEMS_QUERY, items_query
from gridmap.errors import AuthenticationError, PermissionDeniedError
from gridmap.io import writers
from gridmap.io.importer import MODES, Options, run
from gridmap.io.report import ImportRefusedError
from gridmap.ratelimit import Gate
from gridmap.security import Role

router = APIRouter(tags=["Import and export"])

IMPORTING = Gate(limit=1, retry_after=60, what=("an import", "importer"))
"""One import at a time in this server process (each is one write transaction anyway)."""

_SAFE_NAME = re.compile(r"[^\w.\-\u4e00-\u9fff]+")


async def _capped(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise PayloadTooLargeError(f"the upload is larger than {limit // 1_000_000} MB")
        yield chunk


async def _upload(request: Request, limit: int, work: Path) -> tuple[Path, str, Path | None]:
    """(saved file, its name, saved mapping or None) from a multipart body with a ``file``
    part (and optionally a ``mapping`` part, TOML)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError(
            "send the file as multipart/form-data, in a part named file"
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"the upload is larger than {limit // 1_000_000} MB")
    parser = MultiPartParser(request.headers, _capped(request, limit), max_files=2, max_fields=10)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MalformedBodyError(f"the multipart body cannot be read: {exc.message}") from None
    try:
        unknown = sorted(set(form.keys()) - {"file", "mapping"})
        if unknown or len(form.getlist("file")) > 1 or len(form.getlist("mapping")) > 1:
            msg = "send one part named file (and at most one named mapping), nothing else"
            raise MalformedBodyError(msg)
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise MalformedBodyError("the body needs a file part: -F file=@roster.xlsx")
        name = _SAFE_NAME.sub("_", Path(upload.filename).name)[-120:].lstrip(".") or "upload"
        path = work / name
        with path.open("wb") as out:
            while chunk := await upload.read(1 << 20):
                out.write(chunk)
        mapping = form.get("mapping")
        mpath = None
        if mapping is not None:  # a file part, or the TOML as a text field
            text = await mapping.read(100_001) if isinstance(mapping, UploadFile) else mapping
            data = text.encode() if isinstance(text, str) else text
            if len(data) > 100_000:
                raise MalformedBodyError("the mapping is larger than 100 kB")
            mpath = work / "mapping.toml"
            mpath.write_bytes(data)
        return path, name, mpath
    finally:
        await form.close()


@router.post(
    "/collections/{collection_id}/import",
    summary="Import a file into the collection (subdistrict admins)",
)
async def import_file(
    request: Request,
    collection_id: str,
    store: StoreDep,
    scope: ScopeDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    mode: Annotated[str, Query(max_length=10, description="append, upsert or replace.")] = "append",
    crs: Annotated[
        str | None, Query(max_length=100, description="wgs84, cgcs2000, gcj02, bd09, EPSG:n.")
    ] = None,
    encoding: Annotated[
        str | None, Query(max_length=20, description="Text encoding (gbk, utf-8 …).")
    ] = None,
    source_layer: Annotated[
        str | None, Query(max_length=100, description="Layer or sheet to read.")
    ] = None,
    dry_run: Annotated[bool, Query(description="Check everything, write nothing.")] = False,
    repair: Annotated[bool, Query(description="Make invalid geometries valid (reported).")] = False,
    allow_outside_grid: Annotated[
        bool, Query(description="Import rows outside the grid they name.")
    ] = False,
    snap: Annotated[
        float, Query(ge=0, le=5, description="Snap tolerance for grid edges (m).")
    ] = 0.5,
) -> Response:
    """Import a GeoPackage, zipped Shapefile, GeoJSON, KML/KMZ, GPX, CSV or XLSX (multipart
    part ``file``; optional part ``mapping``, TOML): all rows or none. 200 with the report
    (also for a dry run); 422 with the report, listing problems by row, when refused."""
    if not principal.authenticated:
        raise AuthenticationError("log in as a subdistrict admin to import (POST /token)")
    layer = await get_collection(collection_id, scope)
    if principal.role is not Role.SUBDISTRICT_ADMIN:
        raise PermissionDeniedError("only a subdistrict admin (街道管理员) imports files")
    if mode not in MODES:
        raise BadRequestError(f"mode must be one of {', '.join(MODES)}")
    options = Options(
        layer=layer.id,
        mode=mode,  # type: ignore[arg-type]
        crs=crs,
        encoding=encoding,
        source_layer=source_layer,
        dry_run=dry_run,
        repair=repair,
        allow_outside_grid=allow_outside_grid,
        snap_m=snap,
    )
    with IMPORTING.enter(principal.username), tempfile.TemporaryDirectory() as tmp:
        path, name, mapping = await _upload(request, settings.max_upload_bytes, Path(tmp))
        options.mapping = mapping
        try:
            report = await run_in_threadpool(
                run,
                store,  # type: ignore[arg-type]
                path,
                options,
                principal=principal,
                source=client_address(request),
                request_id=getattr(request.state, "request_id", None),
                name=name,
            )
        except ImportRefusedError as exc:
            body = orjson.loads(problem(422, str(exc)).body)
            body["report"] = exc.report.to_dict()
            return Response(orjson.dumps(body), 422, media_type="application/problem+json")
    return Response(orjson.dumps(report.to_dict()), media_type="application/json")


EXPORT_QUERY = (
    *(p for p in ITEMS_QUERY if p.name not in ("f", "properties")),
    Param("f", "gpkg (default), shp (zipped), geojson, csv, xlsx, kml or gpx.", max_length=10),
    Param("encoding", "Shapefile text encoding: utf-8 (default) or gbk.", max_length=10),
    Param("lang", "zh (default: Chinese headers and labels in Excel) or en.", max_length=5),
)
EXPORT_PARAMS = {p.name for p in EXPORT_QUERY}


@router.get(
    "/collections/{collection_id}/export",
    summary="The collection as a file",
    openapi_extra=documented(EXPORT_QUERY),
)
def export_file(request: Request, reader: ReaderDep, settings: SettingsDep) -> Response:
    """What the caller may see of the collection (the items' filters apply) as a file,
    personal fields masked; every export is audited. Up to ``max_export`` features."""
    layer, scope, principal = reader.layer, reader.scope, reader.principal
    a = read_params(request, EXPORT_QUERY)
    out_crs = crs_param(a["crs"], "crs")
    fmt = writers.check_format(a["f"] or "gpkg", layer, encoding=a["encoding"], crs=out_crs)
    if (a["lang"] or "zh") not in ("zh", "en"):
        raise BadRequestError("lang must be zh or en")
    limit = min(a["limit"] or settings.max_export, settings.max_export)
    q = items_query(request, layer, a, limit=limit, offset=a["offset"], known=EXPORT_PARAMS)
    store = request.app.state.store
    if scope.reads is not None:
        scope.reads.action = "export"  # personal rows read here leave as a file
    fs = store.query(layer.id, q, scope=scope)
    if a["limit"] is None and (fs.number_matched or 0) > len(fs) + a["offset"]:
        msg = (
            f"{fs.number_matched} features match, more than one export holds "
            f"({settings.max_export}); narrow it (bbox, filter) or page with limit and offset"
        )
        raise BadRequestError(msg)  # a cut file, imported with mode=replace, would delete the rest
    data = writers.write(fs, fmt, crs=out_crs, encoding=a["encoding"], lang=a["lang"] or "zh")
    if not layer.personal:
        record(
            request,
            principal,
            "export",
            object=f"{layer.id}: {len(fs)} features as {fmt}",
            detail=str(request.url.query)[:500],
        )
    media, ext = writers.FORMATS[fmt]
    return Response(
        data,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="{layer.id}.{ext}"',
            "OGC-NumberMatched": str(fs.number_matched),
        },
    )
