"""CQL2 text and JSON parsed by the maintained ``cql2`` package into CQL2-JSON, with limits."""

from __future__ import annotations

import json
from typing import Any

from gridmap.cql import times
from gridmap.cql.check import FilterError
from gridmap.cql.process import PARSER

MAX_TEXT = 20_000
MAX_DEPTH = 20
MAX_NODES = 500
MAX_PARENS = 10
"""Deepest nesting of parentheses in CQL2 text; cql2's parse time doubles with each level
(see :mod:`gridmap.cql.process`)."""
LANGS = ("cql2-text", "cql2-json")


def _paren_depth(text: str) -> int:
    """The deepest nesting of parentheses outside 'string literals'."""
    depth = deepest = 0
    quoted = False
    for c in text:
        if c == "'":
            quoted = not quoted  # '' inside a literal toggles twice: still inside
        elif not quoted:
            if c == "(":
                depth += 1
                deepest = max(deepest, depth)
            elif c == ")":
                depth -= 1
    return deepest


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
            if _paren_depth(text) > MAX_PARENS:
                msg = f"filter nests parentheses more than {MAX_PARENS} deep"
                raise FilterError(msg)
        else:
            _check_shape(json.loads(text) if isinstance(value, str) else value)
    except FilterError:
        raise
    except (ValueError, RecursionError) as exc:  # JSON errors, too deep for json
        msg = f"could not parse the {lang} filter: {str(exc)[:200]}"
        raise FilterError(msg) from None
    status, tree = PARSER.parse(lang, _local_instants(lang, text))
    if status != "ok":
        first = str(tree).strip().splitlines()
        hint = " ".join(line.strip() for line in first[:4])[:300]
        msg = f"could not parse the {lang} filter: {hint}"
        raise FilterError(msg)
    _check_shape(tree)
    return tree


def _local_instants(lang: str, text: str) -> str:
    """The filter with each TIMESTAMP and INTERVAL instant that has no offset given as
    the UTC instant of that Beijing time: cql2 reads such an instant as UTC, gridmap as
    Beijing time wherever a time has no offset (:mod:`gridmap.cql.times`)."""
    if lang == "cql2-text":
        return times.local_instants(text)
    return json.dumps(times.local_instants_json(json.loads(text)), ensure_ascii=False)


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
