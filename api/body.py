"""Request bodies read with a size cap (413 before buffering) and parsed strictly."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from gridmap.errors import GridmapError

MAX_DEPTH = 32


class PayloadTooLargeError(GridmapError):
    """The request body is larger than the service accepts."""


class MalformedBodyError(GridmapError, ValueError):
    """The request body is not acceptable JSON."""


class UnsupportedMediaTypeError(GridmapError):
    """The request body is declared as something other than JSON."""


JSON_TYPES = ("application/json", "application/geo+json", "application/merge-patch+json")


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """Read and parse a JSON body: at most ``max_bytes``, no NaN/Infinity, nesting ≤ 32."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        msg = f"send the body as one of {', '.join(JSON_TYPES)}, not {ctype[:60]!r}"
        raise UnsupportedMediaTypeError(msg)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise MalformedBodyError("Content-Length is not a number") from None
        if size > max_bytes:
            msg = f"request body of {size} bytes exceeds the limit of {max_bytes} bytes"
            raise PayloadTooLargeError(msg)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            msg = f"request body exceeds the limit of {max_bytes} bytes"
            raise PayloadTooLargeError(msg)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise MalformedBodyError("the request has no body; send a GeoJSON Feature")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"the body is not valid JSON (NaN and Infinity are not JSON): {str(exc)[:120]}"
        raise MalformedBodyError(msg) from None
    _check_depth(data)
    return data


def _check_depth(data: Any) -> None:
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            msg = f"the JSON body is nested more than {MAX_DEPTH} levels deep"
            raise MalformedBodyError(msg)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
