"""HTML views of the OGC API resources for a person in a browser (Chinese labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


def wants_html(request: Request) -> bool:
    """True when ``f=html`` is asked, or a browser asks for HTML and no ``f`` is given."""
    f = request.query_params.get("f")
    if f is not None:
        return f.lower() == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept


def render(template: str, **context: Any) -> HTMLResponse:
    """Render one of the templates in ``api/templates``."""
    return HTMLResponse(_env.get_template(template).render(**context))
