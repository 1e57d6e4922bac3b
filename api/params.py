"""Query parameters of the busiest routes, declared once: documented in the OpenAPI
schema and read straight from the query string.

FastAPI re-inspects every declared parameter on every request (about 10 µs each); the
feature routes take a dozen, so they read them here instead, with the same checks
(length, bounds, integers) and a 400 naming the parameter when one fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request

from api.errors import BadRequestError


@dataclasses.dataclass(frozen=True)
class Param:
    """One optional query parameter: a string (up to ``max_length``) or an integer
    (between ``ge`` and ``le``)."""

    name: str
    description: str
    integer: bool = False
    max_length: int | None = None
    ge: int | None = None
    le: int | None = None
    default: Any = None

    @property
    def key(self) -> str:
        """The Python name: ``filter-lang`` → ``filter_lang``."""
        return self.name.replace("-", "_")

    def schema(self) -> dict[str, Any]:
        """The parameter's JSON schema, as FastAPI would write it."""
        if self.integer:
            out: dict[str, Any] = {"type": "integer"}
            if self.ge is not None:
                out["minimum"] = self.ge
            if self.le is not None:
                out["maximum"] = self.le
        else:
            out = {"type": "string"}
            if self.max_length is not None:
                out["maxLength"] = self.max_length
        if self.default is not None:
            out["default"] = self.default
        return out

    def read(self, raw: str) -> Any:
        """The value of ``raw``; BadRequestError when it breaks a rule."""
        if not self.integer:
            if self.max_length is not None and len(raw) > self.max_length:
                msg = f"{self.name}: at most {self.max_length} characters"
                raise BadRequestError(msg)
            return raw
        text = raw.strip()
        if not (text.isascii() and text.lstrip("+-").isdigit()) or len(text) > 30:
            raise BadRequestError(f"{self.name}: must be an integer")
        value = int(text)
        if self.ge is not None and value < self.ge:
            raise BadRequestError(f"{self.name}: must be at least {self.ge}")
        if self.le is not None and value > self.le:
            raise BadRequestError(f"{self.name}: must be at most {self.le}")
        return value


def documented(params: Sequence[Param]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``params`` with :func:`read`."""
    return {
        "parameters": [
            {
                "name": p.name,
                "in": "query",
                "required": False,
                "description": p.description,
                "schema": p.schema(),
            }
            for p in params
        ]
    }


def read(request: Request, params: Sequence[Param]) -> dict[str, Any]:
    """The values of ``params`` in the request (the last one when repeated), by Python
    name; absent ones take their default."""
    given = request.query_params
    out: dict[str, Any] = {}
    for p in params:
        raw = given.get(p.name)
        out[p.key] = p.default if raw is None else p.read(raw)
    return out
