"""A map rendered to an HTML page, with the hashes of the inline scripts gridmap wrote itself.

The page's content security policy names exactly these scripts: the hashes are taken from
the parts as rendered, never by reading the finished page back, so markup that slipped
into a page (an escaping bug, a stored ``</script><script>``) is never approved — and if
it cut one of gridmap's own scripts short, that script stops matching and the page fails
closed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import folium

# folium's only inline script outside the map script: two constant switches, no data
_SWITCHES = re.compile(
    r"<script>(\s*L_NO_TOUCH = (?:true|false);\s*L_DISABLE_3D = (?:true|false);\s*)</script>"
)


@dataclass(frozen=True)
class Page:
    """An HTML page and the CSP source expressions (``'sha256-…'``) of its own scripts."""

    html: str
    script_hashes: tuple[str, ...]


def script_hash(body: str) -> str:
    """The CSP source expression of an inline script whose text is ``body``."""
    digest = hashlib.sha256(body.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def render_page(m: folium.Map) -> Page:
    """Render ``m``'s whole page (as branca's Figure would) and hash its own scripts."""
    fig = m.get_root()
    for child in fig._children.values():
        child.render()
    header = fig.header.render()
    body = fig.html.render()
    script = "\n    " + fig.script.render() + "\n"
    hashes = {script_hash(script), *(script_hash(s) for s in _SWITCHES.findall(header))}
    head = f"<title>{fig.title}</title>\n" if fig.title else ""  # escaped by add_title
    html = (
        "<!DOCTYPE html>\n<html>\n<head>\n" + head + "    " + header + "\n</head>\n<body>\n    "
        + body + "\n</body>\n<script>" + script + "</script>\n</html>\n"
    )  # fmt: skip
    return Page(html, tuple(sorted(hashes)))
