"""CQL2 text and JSON parsed by the maintained ``cql2`` package into CQL2-JSON, with limits."""

from __future__ import annotations

import json
from typing import Any

import cql2

from gridmap.cql.check import FilterError

MAX_TEXT = 20_000
MAX_DEPTH = 20
MAX_NODES = 500
LANGS = ("cql2-text", "cql2-json")


def parse(value: str | dict[str, Any], lang: str = "cql2-text") -> Any:
    """Parse a CQL2 filter (text or JSON) into its CQL2-JSON tree; FilterError if malformed.

    Size (characters), nesting and number of terms are limited before and after parsing.
    """
    if lang not in LANGS:
        msg = f"unsupported filter-lang {lang[:40]!r}; use cql2-text or cql2-json"
        raise FilterError(msg)
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > MAX_TEXT:
        msg = f"filter is longer than {MAX_TEXT} characters"
        raise FilterError(msg)
    try:
        if lang == "cql2-text":
            if not isinstance(value, str):
                msg = "a cql2-text filter must be text"
                raise FilterError(msg)
            expr = cql2.parse_text(value)
        else:
            tree = json.loads(text) if isinstance(value, str) else value
            _check_shape(tree)
            expr = cql2.parse_json(text)
        tree = expr.to_json()
    except FilterError:
        raise
    except Exception as exc:  # cql2's ParseError/ValidationError, JSON errors, recursion
        first = str(exc).strip().splitlines()
        hint = " ".join(line.strip() for line in first[:4])[:300]
        msg = f"could not parse the {lang} filter: {hint}"
        raise FilterError(msg) from None
    _check_shape(tree)
    return tree


def _check_shape(tree: Any) -> None:
    count = 0
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            msg = f"filter is nested more than {MAX_DEPTH} levels deep"
            raise FilterError(msg)
        if count > MAX_NODES:
            msg = f"filter has more than {MAX_NODES} terms"
            raise FilterError(msg)
        if isinstance(node, dict):
            if "coordinates" in node:
                continue
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
