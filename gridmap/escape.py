"""Escaping of stored values for each context a page puts them in (one helper per context).

Every value that comes from the database is hostile when it lands in a page. Each
function here makes a value safe for exactly one context; a value that crosses two
contexts (HTML inside a JavaScript string) goes through both, innermost first:
``js_string(html_text(v))``.

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


def html_text(value: Any) -> str:
    """``value`` as HTML text (also safe inside a quoted attribute); None becomes ``""``."""
    if value is None:
        return ""
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


def script_json(value: Any) -> str:
    """``value`` as JSON that can stand anywhere in a ``<script>`` element.

    ``<``, ``>``, ``&`` and ``'`` become ``\\u`` escapes (no ``</script>``, no ``<!--``),
    and so do U+2028/U+2029, which older JavaScript engines read as line ends.
    """
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text.translate(_SCRIPT_TABLE)


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
    return text.translate(_SCRIPT_TABLE)
