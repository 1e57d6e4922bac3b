"""The visit ledger: outcomes recorded append-only, idempotently by a client's key, and each
household's ``last_visit_at``/``last_visit_status`` kept equal to its latest entry.

A phone that was offline sends its whole queue again when it reconnects: entries whose
``client_key`` is already in the ledger with the same content are answered as duplicates
and not written twice; the same key with other content is refused (nothing is written).
Every check runs before the first write, and the batch is one transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from gridmap import campaigns as camp
from gridmap.errors import FeatureNotFoundError, IntegrityError, InvalidFeatureError
from gridmap.layers import get_layer
from gridmap.store.base import Query, Scope, Store

MAX_BATCH = 1000
FUTURE_SLACK = dt.timedelta(minutes=10)
"""How far ahead of the server's clock a phone's clock may run."""


@dataclass(frozen=True)
class Outcome:
    """One visit outcome as a worker records it."""

    household_id: int
    outcome: str
    visited_at: dt.datetime | str
    campaign_id: int | None = None
    note: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class Recorded:
    """What became of one outcome: its ledger id, and whether it was already there."""

    id: int
    client_key: str | None
    duplicate: bool


def _checked(items: Sequence[Outcome]) -> list[dict[str, object]]:
    """Each outcome as ledger properties, validated by the layer's own rules."""
    if not items:
        raise InvalidFeatureError("no visits to record")
    if len(items) > MAX_BATCH:
        raise InvalidFeatureError(f"at most {MAX_BATCH} visits per request; send the rest next")
    layer = get_layer("visits")
    out = []
    for i, o in enumerate(items):
        when = o.visited_at.isoformat() if isinstance(o.visited_at, dt.datetime) else o.visited_at
        props = {
            "household_id": o.household_id,
            "campaign_id": o.campaign_id,
            "visited_at": when,
            "outcome": o.outcome,
            "note": _one_line(o.note),
            "client_key": o.client_key,
        }
        try:
            out.append(layer.validate_properties(props))
        except InvalidFeatureError as exc:
            raise InvalidFeatureError(f"visit {i}: {exc}") from None
    keys = [p["client_key"] for p in out if p["client_key"] is not None]
    if len(set(keys)) != len(keys):
        raise InvalidFeatureError("a client_key appears twice in the batch")
    return out


def _one_line(note: str | None) -> str | None:
    """A note typed on a phone with line breaks or tabs, as one line (not refused: a whole
    offline queue would be stuck behind it)."""
    return None if note is None else " ".join(note.split()) or None


def _check_times(
    rows: list[dict[str, object]], store: Store, now: dt.datetime, scope: Scope
) -> None:
    """Campaigns exist for the caller, are open, and hold each visit's day; no visit lies
    in the future or before FIRST_YEAR."""
    cache: dict[int, camp.Campaign] = {}
    for i, p in enumerate(rows):
        when = dt.datetime.fromisoformat(str(p["visited_at"]))
        if when > now + FUTURE_SLACK:
            msg = f"visit {i}: visited_at {when.isoformat()} lies in the future (Beijing time)"
            raise InvalidFeatureError(msg)
        if when.year < camp.FIRST_YEAR:
            raise InvalidFeatureError(f"visit {i}: visited_at {when.date()} is too long ago")
        cid = p["campaign_id"]
        if cid is None:
            continue
        c = cache.get(int(cid))  # type: ignore[call-overload]
        if c is None:
            c = cache[int(cid)] = camp.get(store, int(cid))  # type: ignore[call-overload]
            if not camp.visible_to(c, scope):
                raise FeatureNotFoundError(f"no campaign {c.id}")
        if c.status != "open":
            raise InvalidFeatureError(f"visit {i}: campaign {c.id} is closed")
        if not c.covers(when):
            msg = f"visit {i}: {when.date()} lies outside campaign {c.id} ({c.starts}–{c.ends})"
            raise InvalidFeatureError(msg)


def record(
    store: Store,
    items: Sequence[Outcome],
    *,
    scope: Scope,
    worker: str,
    now: dt.datetime | None = None,
) -> list[Recorded]:
    """Append the outcomes to the ledger and bring each household's last visit up to date.

    The caller must be able to see and edit each household (else OutOfScopeError, a 404),
    and the household must belong to the campaign's grids. All or nothing.
    """
    now = now or camp.local_now()
    rows = _checked(items)
    _check_times(rows, store, now, scope)
    ledger = dataclasses.replace(
        scope, writable=None if scope.writable is None else scope.writable | {"visits"}
    )
    with store.transaction():
        households = {}  # the scope first: nothing is said of households outside it
        for p in rows:
            hid = int(p["household_id"])  # type: ignore[call-overload]
            if hid not in households:
                households[hid] = store.get("households", hid, scope=scope)
        out: list[Recorded | None] = [None] * len(rows)
        fresh: list[int] = []
        for i, p in enumerate(rows):
            seen = _already(store, p, worker[:40])
            if seen is not None:
                out[i] = Recorded(seen, str(p["client_key"]), True)
            else:
                fresh.append(i)
        for i in fresh:
            hid = int(rows[i]["household_id"])  # type: ignore[call-overload]
            cid = rows[i]["campaign_id"]
            if cid is not None:
                c = camp.get(store, int(cid))  # type: ignore[call-overload]
                g = households[hid].properties.get("grid_id")
                if c.grid_ids is not None and g not in c.grid_ids:
                    msg = f"visit {i}: household {hid} is not in campaign {c.id}'s grids"
                    raise InvalidFeatureError(msg)
        stamp = now.isoformat(timespec="seconds")
        new = [{**rows[i], "worker": worker[:40], "recorded_at": stamp} for i in fresh]
        geoms = [households[int(p["household_id"])].geometry for p in new]  # type: ignore[call-overload]
        ids = store.insert("visits", geoms, new, scope=ledger, trusted=True) if new else []
        for i, fid in zip(fresh, ids, strict=True):
            out[i] = Recorded(fid, rows[i]["client_key"], False)  # type: ignore[arg-type]
        _follow(store, households, new, scope)
    return [r for r in out if r is not None]


def _already(store: Store, p: dict[str, object], worker: str) -> int | None:
    """The ledger id of this worker's entry with the same client key and content (None: no
    such key); IntegrityError when they used the key for something else. Keys are each
    worker's own: another's key says nothing and blocks nothing."""
    key = p["client_key"]
    if key is None:
        return None
    found = store.query("visits", Query(equals={"client_key": key, "worker": worker}, limit=1))
    if not len(found):
        return None
    old = found.properties[0]
    fields = ("household_id", "campaign_id", "visited_at", "outcome", "note")
    same = all(old.get(k) == p[k] for k in fields)
    if not same:
        msg = f"client_key {str(key)[:64]!r} was already used for another visit; use a new key"
        raise IntegrityError(msg)
    return int(found.ids[0])


def _follow(store: Store, households: dict, new: list[dict[str, object]], scope: Scope) -> None:  # type: ignore[type-arg]
    """Set each household's last visit to its latest ledger entry when that one is newer."""
    latest: dict[int, dict[str, object]] = {}
    for p in new:
        h = int(p["household_id"])  # type: ignore[call-overload]
        if h not in latest or str(p["visited_at"]) >= str(latest[h]["visited_at"]):
            latest[h] = p
    for h, p in latest.items():
        cur = households[h].properties.get("last_visit_at")
        if isinstance(cur, str) and cur > str(p["visited_at"]):
            continue  # an older outcome from a phone that was offline
        store.update(
            "households",
            h,
            properties={"last_visit_at": p["visited_at"], "last_visit_status": p["outcome"]},
            scope=scope,
        )
