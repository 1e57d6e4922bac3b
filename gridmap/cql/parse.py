"""CQL2 text and JSON parsed by the maintained ``cql2`` package into CQL2-JSON, with limits."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cql2

from gridmap.cql.check import FilterError

MAX_TEXT = 20_000
MAX_DEPTH = 20
MAX_NODES = 500
LANGS = ("cql2-text", "cql2-json")
PARSER_STACK = 512 * 1024 * 1024
"""Stack of the thread that runs cql2's recursive parser (virtual; touched pages only).

cql2 (Rust) recurses once per nesting level and does not stop itself: a few thousand
parentheses, NOTs or minus signs overflow an ordinary thread's stack and kill the
process. On this stack every filter of up to MAX_TEXT characters parses, and the
nesting limit is then applied to the result."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _parser() -> ThreadPoolExecutor:
    """The single worker thread with a deep stack (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            old = threading.stack_size(PARSER_STACK)
            try:
                pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cql2-parser")
                pool.submit(lambda: None).result()  # the thread starts now, on this stack size
            finally:
                threading.stack_size(old)
            _pool = pool
        return _pool


def _to_json(lang: str, text: str) -> Any:
    expr = cql2.parse_text(text) if lang == "cql2-text" else cql2.parse_json(text)
    return expr.to_json()


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
        else:
            _check_shape(json.loads(text) if isinstance(value, str) else value)
        tree = _parser().submit(_to_json, lang, text).result()
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
