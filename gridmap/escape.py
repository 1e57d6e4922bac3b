"""Escaping of stored values for each context a page puts them in (one helper per context).

Every value that comes from the database is hostile when it lands in a page. Each
function here makes a value safe for exactly one context; a value that crosses two
contexts (HTML inside a JavaScript string) goes through both, innermost first:
``js_string(html_text(v))``.

Every function also hides curly braces (``&#123;`` in HTML, ``\u007b`` in JavaScript):
folium/branca compile the scripts they render as Jinja templates a second time, so a
stored ``{{ … }}`` or ``{% … %}`` reaching a map page would run on the server.

- :func:`html_text`: element content and quoted attribute values (``<td>…</td>``,
  ``title="…"``).
- :func:`js_string`: a complete JavaScript string literal, safe in a ``<script>``
  element too (``</script>``, ``<!--``, U+2028/U+2029 cannot end or break it).
- :func:`js_template`: the inside of a JavaScript template literal (`` `…` ``): backticks,
  ``${`` and backslashes are escaped as well.
- :func:`script_json`: any JSON value for a ``<script>`` element.
"""

from __future__ import annotations

import html
from typing import Any

import orjson

_SCRIPT_UNSAFE = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "'": "\\u0027",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_SCRIPT_TABLE = str.maketrans(_SCRIPT_UNSAFE)
_BRACES_JS = str.maketrans({"{": "\\u007b", "}": "\\u007d"})
_BRACES_HTML = str.maketrans({"{": "&#123;", "}": "&#125;"})


def html_text(value: Any) -> str:
    """``value`` as HTML text (also safe inside a quoted attribute); None becomes ``""``."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return html.escape(text, quote=True).translate(_BRACES_HTML)


def script_json(value: Any) -> str:
    """``value`` as JSON that can stand anywhere in a ``<script>`` element.

    ``<``, ``>``, ``&`` and ``'`` become ``\\u`` escapes (no ``</script>``, no ``<!--``),
    and so do U+2028/U+2029, which older JavaScript engines read as line ends.
    """
    return _json(value).translate(_SCRIPT_TABLE)


def _json(value: Any) -> str:
    """JSON text whose strings hold no raw brace (structure itself never writes ``{{``)."""
    if isinstance(value, str):
        return orjson.dumps(value).decode().translate(_BRACES_JS)
    if isinstance(value, dict):
        return "{" + ",".join(_json(str(k)) + ":" + _json(v) for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def js_string(value: Any) -> str:
    """``value`` (made text) as one JavaScript string literal, quotes included."""
    return script_json("" if value is None else str(value))


def js_template(value: Any) -> str:
    """``value`` (made text) escaped for the inside of a JavaScript template literal.

    Prefer :func:`js_string`; this exists for templates of third-party libraries that
    put text between backticks.
    """
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("`", "\\`").replace("${", "\\${")
    return text.translate(_SCRIPT_TABLE).translate(_BRACES_JS)
