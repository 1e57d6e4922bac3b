"""Old neighbourhood renovation (老旧小区改造): each neighbourhood's households, hardship and
elderly, age and works; its status timeline (planned → approved → in progress → accepted)
from dated status events; a "renovate next" ranking with its reasons; and what works in a
date range touch.

Status changes made here are dated events (documents of kind ``renovation_event``, one per
change, never edited) written in the same transaction as the feature's
``renovation_status``. A status edited elsewhere (a PATCH, QGIS) has no date: the timeline
shows it as the current status since an unknown day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gridmap.campaigns import local_now
from gridmap.errors import QueryError
from gridmap.layers import RENOVATION_STATUS, RENOVATION_STATUS_ZH
from gridmap.store.base import Query, Scope, Store


def local_today() -> dt.date:
    """Today in Beijing time (as every date of the service)."""
    return local_now().date()


EVENT = "renovation_event"
EARLIEST = dt.date(1950, 1, 1)
LATEST = dt.date(2100, 12, 31)
"""Days a status change or a map may be dated on (nothing of this kind is older or later)."""
WEIGHTS: dict[str, float] = {
    "age": 0.3,
    "households": 0.25,
    "hardship": 0.2,
    "elderly": 0.15,
    "works": 0.1,
}
"""How much each reason counts in the "renovate next" score (they sum to 1)."""
URGENT_WORKS = frozenset({"gas", "pipes", "elevators", "roof", "drainage"})
"""Works that count double: safety and daily hardship (gas, water, lifts, leaks, floods)."""
REASON_ZH = {
    "age": "房龄{v}年",
    "households": "涉及{v}户",
    "hardship": "困难户占{v:.0%}",
    "elderly": "独居老人占{v:.0%}",
    "works": "改造项目{v}项（急需{u}项）",
}
REASON_EN = {
    "age": "{v} years old",
    "households": "{v} households",
    "hardship": "{v:.0%} hardship households",
    "elderly": "{v:.0%} elderly living alone",
    "works": "{v} works needed ({u} urgent)",
}


@dataclass(frozen=True)
class Profile:
    """One old neighbourhood as a planner weighs it."""

    id: int
    name: str
    status: str | None
    built_year: int | None
    households: int
    """Households living in its buildings (counted from the households layer)."""
    buildings: int
    hardship: int
    elderly: int
    works: tuple[str, ...]
    planned_start: str | None
    planned_end: str | None
    budget_wan: float | None


def profiles(store: Store, scope: Scope) -> list[Profile]:
    """Every old neighbourhood with the households in its buildings that ``scope`` sees
    (their reads noted) and its hardship and elderly-alone counts."""
    hoods = store.query("old_neighbourhoods", Query())
    b_hood = store.values("buildings", "neighbourhood_id")
    n_buildings: dict[int, int] = defaultdict(int)
    for h in b_hood.values():
        if h is not None:
            n_buildings[int(h)] += 1
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    if scope.allows_layer("households"):
        building = store.values("households", "building_id", scope=scope)
        tags = store.values("households", "tags", scope=scope)
        for f, b in building.items():
            hood = b_hood.get(int(b)) if b is not None else None
            if hood is None:
                continue
            t = tags.get(f) or []
            c = counts[int(hood)]
            c[0] += 1
            c[1] += "hardship" in t
            c[2] += "elderly_alone" in t
    out = []
    for fid, p in zip(hoods.ids.tolist(), hoods.properties, strict=True):
        hh, hard, old = counts.get(fid, [0, 0, 0])
        out.append(
            Profile(
                fid,
                str(p.get("name")),
                p.get("renovation_status"),
                p.get("built_year"),
                hh,
                n_buildings.get(fid, 0),
                hard,
                old,
                tuple(p.get("works") or ()),
                p.get("planned_start"),
                p.get("planned_end"),
                p.get("budget_wan"),
            )
        )
    return out


def protected(found: list[Profile], threshold: int) -> list[Profile]:
    """The counts as a role with protected statistics may see them: rounded to multiples
    of 5 (1–2 become 0, 3–7 become 5 …), so that no neighbourhood's count tells of one
    household; every figure and ranking for that role is computed from these."""

    def r(n: int) -> int:
        return int(threshold * round(n / threshold))

    return [
        dataclasses.replace(
            p, households=r(p.households), hardship=r(p.hardship), elderly=r(p.elderly)
        )
        for p in found
    ]


def _factors(p: Profile, today: dt.date) -> dict[str, float]:
    works = sum(2 if w in URGENT_WORKS else 1 for w in p.works)
    return {
        "age": float(today.year - p.built_year) if p.built_year else 0.0,
        "households": float(p.households),
        "hardship": p.hardship / p.households if p.households else 0.0,
        "elderly": p.elderly / p.households if p.households else 0.0,
        "works": float(works),
    }


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Weights for the ranking: known reasons only, none negative, not all zero."""
    if not weights:
        return dict(WEIGHTS)
    unknown = set(weights) - set(WEIGHTS)
    if unknown:
        msg = f"unknown reasons {sorted(unknown)}; use {', '.join(WEIGHTS)}"
        raise QueryError(msg)
    merged = {k: float(weights.get(k, 0.0)) for k in WEIGHTS}
    if any(v < 0 for v in merged.values()) or sum(merged.values()) <= 0:
        raise QueryError("weights must be zero or more, and not all zero")
    return merged


def rank(
    found: list[Profile],
    *,
    today: dt.date,
    weights: Mapping[str, float] | None = None,
    lang: str = "zh",
) -> list[dict[str, Any]]:
    """The neighbourhoods not yet under way (planned, approved), best first: each reason
    scaled 0–1 across them (min to max), weighted and summed; the reasons that count most
    are said in words."""
    w = check_weights(weights)
    todo = [p for p in found if p.status in ("planned", "approved", None)]
    raw = {p.id: _factors(p, today) for p in todo}
    lo = {k: min((f[k] for f in raw.values()), default=0.0) for k in WEIGHTS}
    hi = {k: max((f[k] for f in raw.values()), default=0.0) for k in WEIGHTS}
    words = REASON_ZH if lang == "zh" else REASON_EN
    rows = []
    for p in todo:
        f = raw[p.id]
        part = {
            k: w[k] * ((f[k] - lo[k]) / (hi[k] - lo[k]) if hi[k] > lo[k] else 0.0) for k in WEIGHTS
        }
        top = sorted((k for k in WEIGHTS if part[k] > 0), key=lambda k: -part[k])[:3]
        shown = {k: int(f[k]) if k in ("age", "households") else f[k] for k in f}
        shown["works"] = len(p.works)
        urgent = sum(w in URGENT_WORKS for w in p.works)
        rows.append(
            {
                "id": p.id,
                "name": p.name,
                "status": p.status,
                "score": round(sum(part.values()), 4),
                "parts": {k: round(v, 4) for k, v in part.items()},
                "reasons": [words[k].format(v=shown[k], u=urgent) for k in top],
            }
        )
    rows.sort(key=lambda r: (-r["score"], r["id"]))
    for n, r in enumerate(rows, start=1):
        r["rank"] = n
    return rows


def events(store: Store, neighbourhood: int | None = None) -> list[dict[str, Any]]:
    """Dated status events (of one neighbourhood), by date then as recorded."""
    docs = store.documents(EVENT, parent=neighbourhood)
    out = [{**d["body"], "id": d["id"]} for d in docs]
    return sorted(out, key=lambda e: (e["on"], e["id"]))


def set_status(
    store: Store,
    neighbourhood: int,
    status: str,
    *,
    on: dt.date,
    by: str,
    note: str = "",
    scope: Scope = Scope.ALL,
    expected_version: int | None = None,
) -> dict[str, Any]:
    """Change a neighbourhood's status as of ``on``: the feature and a dated event, in one
    transaction. Going back a stage is allowed (a correction) and recorded like any other."""
    if status not in RENOVATION_STATUS:
        msg = f"status must be one of {', '.join(RENOVATION_STATUS)}"
        raise QueryError(msg)
    today = local_today()
    if not EARLIEST <= on <= today:
        msg = f"date a status change between {EARLIEST.isoformat()} and today ({today})"
        raise QueryError(msg)
    with store.transaction():
        before = events(store, neighbourhood)
        if before and on.isoformat() < before[-1]["on"]:
            msg = (
                f"its timeline already has a change dated {before[-1]['on']}; date this one "
                "on or after it"
            )
            raise QueryError(msg)
        current = store.get("old_neighbourhoods", neighbourhood, scope=scope)
        if current.properties.get("renovation_status") == status:
            msg = f"old neighbourhood {neighbourhood} is {status} already"
            raise QueryError(msg)
        feat = store.update(
            "old_neighbourhoods",
            neighbourhood,
            properties={"renovation_status": status},
            expected_version=expected_version,
            scope=scope,
        )
        body = {"neighbourhood_id": neighbourhood, "status": status, "on": on.isoformat()}
        body |= {"by": by, "note": note}
        eid = store.add_document(EVENT, body, parent=neighbourhood, created_by=by)
    return {**body, "id": eid, "version": feat.version}


def timeline(store: Store, p: Profile) -> list[dict[str, Any]]:
    """A neighbourhood's stages with the day each began (None: not known — the status as
    it is now when it was set without a dated change, e.g. by a PATCH)."""
    seen = [
        {"status": e["status"], "on": e["on"], "zh": RENOVATION_STATUS_ZH[e["status"]]}
        for e in events(store, p.id)
    ]
    if not seen or seen[-1]["status"] != p.status:
        seen.append(
            {"status": p.status, "on": None, "zh": RENOVATION_STATUS_ZH.get(p.status or "")}
        )
    return seen


def status_on(store: Store, found: list[Profile], day: dt.date) -> dict[int, str | None]:
    """Each neighbourhood's status on ``day``: its last event on or before it; with no
    events, its current status; before its first event, not yet listed (None). A status
    set later without a date (a PATCH) counts from the last event on."""
    by_hood: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events(store):
        by_hood[int(e["neighbourhood_id"])].append(e)
    out: dict[int, str | None] = {}
    for p in found:
        mine = by_hood.get(p.id, [])
        before = [e for e in mine if e["on"] <= day.isoformat()]
        if not mine:
            out[p.id] = p.status
        elif not before:
            out[p.id] = None
        elif before[-1] is mine[-1]:
            out[p.id] = p.status  # the last dated change, or what was set without a date since
        else:
            out[p.id] = before[-1]["status"]
    return out


def affected(found: list[Profile], start: dt.date, end: dt.date) -> list[Profile]:
    """The neighbourhoods whose planned works (planned_start … planned_end) overlap the
    range, by start date."""
    if end < start:
        raise QueryError("the range ends before it starts")
    hits = [
        p
        for p in found
        if p.planned_start
        and p.planned_end
        and p.planned_start <= end.isoformat()
        and p.planned_end >= start.isoformat()
    ]
    return sorted(hits, key=lambda p: (p.planned_start or "", p.id))
