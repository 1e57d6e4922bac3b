"""Idempotency keys of creating requests: a retried POST answers what the first one made.

A phone that sent "create this household" and lost the answer sends it again with the same
``Idempotency-Key``; the key is kept with the feature it created, in the same transaction,
so either both are stored or neither is. A key is each user's own, lives
:data:`KEEP_S` seconds, and may not be reused for a different request.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gridmap.errors import IntegrityError, InvalidFeatureError, QueryError
from gridmap.store import Store

KEEP_S = 24 * 3600
"""How long a key is remembered (a resend comes within hours)."""
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True)
class Created:
    """The feature a request created, and whether this answer repeats an earlier one (the
    caller then reads it again; if it is gone, see :func:`gone`)."""

    layer: str
    fid: int
    replayed: bool


def gone(what: str) -> IntegrityError:
    """The error for a resend whose creation is no longer there for the caller (deleted,
    or moved out of their reach): 409, and a new key is the way on."""
    msg = f"the {what} this Idempotency-Key created is no longer there for you; use a new key"
    return IntegrityError(msg)


def check_key(key: str) -> str:
    """The key itself; QueryError (400) unless 1–255 visible ASCII characters (a UUID)."""
    text = key.strip().strip('"')  # the draft standard writes it as a quoted string
    if not _KEY.fullmatch(text):
        msg = "Idempotency-Key must be 1–255 visible ASCII characters (e.g. a UUID)"
        raise QueryError(msg)
    return text


def fingerprint(layer_id: str, body: Any, extra: Mapping[str, Any] | None = None) -> str:
    """A digest of what was asked: the same key must come with the same request."""
    canon = orjson.dumps(
        {"layer": layer_id, "body": body, **(extra or {})}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canon).hexdigest()


def create_once(
    store: Store,
    username: str,
    key: str,
    digest: str,
    layer_id: str,
    create: Callable[[], int],
) -> Created:
    """Run ``create`` (which returns the new feature's id) unless ``username`` already
    created something with ``key``; then answer that instead. A key reused for another
    request is refused (InvalidFeatureError, 422). Two requests racing with one key: one
    creates, the other answers its result."""
    for attempt in range(2):
        try:
            return _once(store, username, key, digest, layer_id, create)
        except IntegrityError:
            if attempt or store.backend.idempotent_find(username, key) is None:
                raise  # not the race on this key: a unique value of the feature itself
    raise AssertionError("unreachable")  # pragma: no cover


def _once(
    store: Store, username: str, key: str, digest: str, layer_id: str, create: Callable[[], int]
) -> Created:
    now = time.time()
    with store.transaction():
        found = store.backend.idempotent_find(username, key)
        if found is not None and found[3] < now - KEEP_S:  # outlived: the key is free again
            store.backend.idempotent_drop(username, key)
            found = None
        if found is not None:
            kept, layer, fid, _ = found
            if kept != digest or layer != layer_id:
                msg = "this Idempotency-Key was used for another request; use a new key"
                raise InvalidFeatureError(msg)
            return Created(layer, fid, True)
        fid = create()
        store.backend.idempotent_keep(username, key, digest, layer_id, fid, now)
    if random.random() < 0.01:  # now and then, forget the keys of yesterday
        store.backend.idempotent_forget(now - KEEP_S)
    return Created(layer_id, fid, False)
