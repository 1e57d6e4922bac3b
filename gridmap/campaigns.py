"""Visit campaigns (千家万户大走访, 燃煤户复查 …): what one is, whom it targets, and where
each targeted household stands in it according to the visit ledger.

A campaign is a document of the store (not a layer): a name, a date window, a target (all
households, or a CQL2 filter over them, optionally limited to some grids) and its rules
(minutes per household, set-up minutes per building entry, the tags visited first). The
target is evaluated when asked, so a household that gains the tag joins the campaign.
Every household read here goes through the caller's scope, and so through its read log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from gridmap.cql import Filter, FilterError, check_filter, one_of
from gridmap.cql.tree import Prop
from gridmap.errors import FeatureNotFoundError, InvalidFeatureError, PermissionDeniedError
from gridmap.identifiers import IdentifierError, check_text
from gridmap.layers import FINAL_OUTCOMES, HOUSEHOLD_TAGS, LOCAL_TZ, get_layer
from gridmap.store.base import FeatureSet, Query, Scope, Store

KIND = "campaign"
MAX_DAYS = 366
MAX_OPEN = 10
"""Campaigns open at once. Each enters every protected statistic: on the sample, a
planner's first table after a change took 2.5 s with 10 open, 9.5 s with 20 (measured
by hand, not by a benchmark)."""
FIRST_YEAR, LAST_YEAR = 2000, 2099
"""Campaigns, plans and visits lie in these years (others are typing mistakes)."""
STATUSES = ("open", "closed")


@dataclass(frozen=True)
class Rules:
    """How a campaign's visits are planned."""

    service_min: float = 10.0
    """Minutes spent with each household."""
    setup_min: float = 3.0
    """Minutes to enter a building (or one unit's stairwell) and find the doors."""
    first_tags: tuple[str, ...] = ("hardship", "elderly_alone")
    """Households with any of these tags (and those marked follow-up) are must-visit."""

    def __post_init__(self) -> None:
        if not 0 < self.service_min <= 120:
            raise InvalidFeatureError("service_min must lie in (0, 120] minutes")
        if not 0 <= self.setup_min <= 60:
            raise InvalidFeatureError("setup_min must lie in [0, 60] minutes")
        unknown = sorted(set(self.first_tags) - set(HOUSEHOLD_TAGS))
        if unknown:
            msg = f"unknown tags {unknown[:5]}; tags are: {', '.join(HOUSEHOLD_TAGS)}"
            raise InvalidFeatureError(msg)


@dataclass(frozen=True)
class Campaign:
    """One campaign as stored."""

    id: int
    name: str
    starts: dt.date
    ends: dt.date
    target: str | None = None
    """The CQL2 text (or JSON) the creator gave; None: every household."""
    target_json: Any = None
    grid_ids: frozenset[int] | None = None
    rules: Rules = field(default_factory=Rules)
    status: str = "open"
    created_by: str | None = None
    created_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The campaign as the API shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "starts": self.starts.isoformat(),
            "ends": self.ends.isoformat(),
            "target": self.target,
            "grid_ids": sorted(self.grid_ids) if self.grid_ids is not None else None,
            "rules": dataclasses.asdict(self.rules),
            "status": self.status,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }

    def covers(self, when: dt.datetime) -> bool:
        """True if ``when`` (local time) falls on a day of the campaign."""
        return self.starts <= when.date() <= self.ends


def _body(c: Campaign) -> dict[str, Any]:
    out = c.to_json()
    for k in ("id", "created_by", "created_at"):
        out.pop(k)
    out["rules"]["first_tags"] = list(c.rules.first_tags)
    out["target_json"] = c.target_json
    return out


def _from_doc(doc: Mapping[str, Any]) -> Campaign:
    b = doc["body"]
    rules = b.get("rules") or {}
    return Campaign(
        id=int(doc["id"]),
        name=str(b.get("name", "")),
        starts=dt.date.fromisoformat(b["starts"]),
        ends=dt.date.fromisoformat(b["ends"]),
        target=b.get("target"),
        target_json=b.get("target_json"),
        grid_ids=frozenset(b["grid_ids"]) if b.get("grid_ids") is not None else None,
        rules=Rules(
            float(rules.get("service_min", 10)),
            float(rules.get("setup_min", 3)),
            tuple(rules.get("first_tags", ())),
        ),
        status=str(b.get("status", "open")),
        created_by=doc.get("created_by"),
        created_at=doc.get("created_at"),
    )


def create(
    store: Store,
    *,
    name: str,
    starts: dt.date,
    ends: dt.date,
    target: str | dict[str, Any] | None = None,
    grid_ids: Sequence[int] | None = None,
    rules: Rules | None = None,
    scope: Scope = Scope.ALL,
    by: str | None = None,
) -> Campaign:
    """Check and store a new campaign.

    The target filter is checked as the creator would run it (fields masked for them
    cannot be used); the grids must be grids the creator's scope holds.
    """
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidFeatureError("a campaign needs a name of 1–100 characters")
    try:
        check_text(name)
    except IdentifierError as exc:
        raise InvalidFeatureError(f"name {exc}") from None
    if not (FIRST_YEAR <= starts.year <= LAST_YEAR and FIRST_YEAR <= ends.year <= LAST_YEAR):
        raise InvalidFeatureError(f"campaign dates lie in {FIRST_YEAR}–{LAST_YEAR}")
    _room_for_one_more(store)
    if ends < starts:
        raise InvalidFeatureError("a campaign must not end before it starts")
    if (ends - starts).days >= MAX_DAYS:
        raise InvalidFeatureError(f"a campaign lasts at most {MAX_DAYS} days")
    target_json = None
    text = None
    if target is not None and target != "":
        lang = "cql2-text" if isinstance(target, str) else "cql2-json"
        flt = check_filter(target, get_layer("households"), lang=lang)
        personal = sorted(_properties(flt) & set(get_layer("households").sensitive))
        if personal:
            msg = (
                f"a campaign's households are chosen by tags, members, grid, building or visits,"
                f" not by personal fields ({', '.join(personal)}): its target is shown to "
                "everyone who works on it"
            )
            raise InvalidFeatureError(msg)
        store.count("households", Query(filters=[flt], limit=1), scope=scope)  # masked fields
        target_json = _parse_json(target)
        text = target if isinstance(target, str) else orjson.dumps(target).decode()
    grids = None
    if grid_ids is not None:
        grids = frozenset(int(g) for g in grid_ids)
        if not grids:
            raise InvalidFeatureError("grid_ids must name at least one grid (or be left out)")
        if scope.grid_ids is not None and not grids <= scope.grid_ids:
            raise PermissionDeniedError("a campaign may only cover grids you manage")
        known = set(store.query_ids("grids", Query(ids=sorted(grids)))[0].tolist())
        if known != grids:
            raise InvalidFeatureError(f"no grids {sorted(grids - known)[:10]}")
    elif scope.grid_ids is not None:
        grids = scope.grid_ids  # a community admin's campaign covers their grids
    c = Campaign(0, name, starts, ends, text, target_json, grids, rules or Rules())
    doc_id = store.add_document(KIND, _body(c), created_by=by)
    return get(store, doc_id)


def _parse_json(target: str | dict[str, Any]) -> Any:
    from gridmap.cql import parse

    return parse(target, "cql2-text" if isinstance(target, str) else "cql2-json")


def _properties(node: Any) -> set[str]:
    """Names of the properties a checked filter reads."""
    if isinstance(node, Prop):
        return {node.name}
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return set().union(*(_properties(getattr(node, f.name)) for f in dataclasses.fields(node)))
    if isinstance(node, tuple | list):
        return set().union(*(_properties(x) for x in node))
    return set()


def get(store: Store, campaign_id: int) -> Campaign:
    """One campaign, or FeatureNotFoundError."""
    doc = store.document(KIND, int(campaign_id))
    if doc is None:
        raise FeatureNotFoundError(f"no campaign {campaign_id}")
    return _from_doc(doc)


def all_campaigns(store: Store) -> list[Campaign]:
    """Every campaign, oldest first."""
    return [_from_doc(d) for d in store.documents(KIND)]


def _room_for_one_more(store: Store, but: int | None = None) -> None:
    """InvalidFeatureError when MAX_OPEN campaigns are open already."""
    n = sum(1 for c in all_campaigns(store) if c.status == "open" and c.id != but)
    if n >= MAX_OPEN:
        msg = f"{n} campaigns are open, the most there may be: close one that is done first"
        raise InvalidFeatureError(msg)


def set_status(store: Store, campaign_id: int, status: str) -> Campaign:
    """Open or close a campaign (a closed one takes no more visits or plans)."""
    if status not in STATUSES:
        raise InvalidFeatureError(f"status must be one of {', '.join(STATUSES)}")
    c = dataclasses.replace(get(store, campaign_id), status=status)
    if status == "open":
        _room_for_one_more(store, but=c.id)
    store.replace_document(KIND, c.id, _body(c))
    return c


def visible_to(c: Campaign, scope: Scope) -> bool:
    """True if the scope holds any grid of the campaign (others see no such campaign)."""
    return c.grid_ids is None or scope.grid_ids is None or bool(c.grid_ids & scope.grid_ids)


def target_scope(c: Campaign, scope: Scope) -> Scope:
    """``scope`` narrowed to the campaign's grids."""
    if c.grid_ids is None:
        return scope
    grids = c.grid_ids if scope.grid_ids is None else c.grid_ids & scope.grid_ids
    return dataclasses.replace(scope, grid_ids=grids)


@lru_cache(maxsize=64)
def _filter(target_json: str) -> Filter:
    return check_filter(orjson.loads(target_json), get_layer("households"), lang="cql2-json")


def target_filters(c: Campaign) -> list[Filter]:
    """The campaign's target as store filters (none: every household)."""
    if c.target_json is None:
        return []
    try:
        return [_filter(orjson.dumps(c.target_json, option=orjson.OPT_SORT_KEYS).decode())]
    except FilterError as exc:  # stored by an older release with other rules
        msg = f"campaign {c.id} has a target this release rejects: {exc}"
        raise InvalidFeatureError(msg) from None


def targets(store: Store, c: Campaign, *, scope: Scope, grid_id: int | None = None) -> FeatureSet:
    """The campaign's households that ``scope`` may see (of one grid), with geometries."""
    q = Query(filters=target_filters(c), equals={"grid_id": grid_id} if grid_id else {})
    return store.query("households", q, scope=target_scope(c, scope)).with_geometry()


@dataclass(frozen=True)
class Standing:
    """Where a household stands in a campaign: its latest outcome and how many tries."""

    outcome: str
    visited_at: str
    tries: int

    @property
    def final(self) -> bool:
        """True if the household is done for this campaign."""
        return self.outcome in FINAL_OUTCOMES


_STANDINGS_BY_ID = 5_000
"""At most this many households' standings are asked for by id (a bound parameter each)."""


def standings(
    store: Store, c: Campaign, *, scope: Scope, households: Sequence[int] | None = None
) -> dict[int, Standing]:
    """Household id → its latest outcome in the campaign's ledger (visible rows only): the
    entry latest by ``visited_at`` (of equal times the last recorded) and how many entries
    the household has, reduced in the database (only each household's latest entry is
    read). With ``households``, of those alone (a grid's plan reads its own households'
    entries, not the whole city's ledger; by household, not by the entries' grid, which
    is the grid a household was in when visited)."""
    filters = []
    if households is not None and not len(households):
        return {}
    ids = sorted({int(h) for h in households}) if households is not None else []
    if 0 < len(ids) <= _STANDINGS_BY_ID:  # beyond: the campaign's whole ledger, then picked
        filters.append(one_of(get_layer("visits"), "household_id", ids))
    rows = store.latest(
        "visits",
        "household_id",
        "visited_at",
        ("household_id", "outcome", "visited_at"),
        Query(equals={"campaign_id": c.id}, filters=filters),
        scope=target_scope(c, scope),
    )
    wanted = set(ids) if ids else None
    return {
        h: Standing(str(outcome), str(visited_at), int(tries))
        for _id, h, outcome, visited_at, tries in rows
        if isinstance(h, int) and (wanted is None or h in wanted)
    }


def local_now() -> dt.datetime:
    """Now as naive Beijing time (how datetimes are stored)."""
    return dt.datetime.now(LOCAL_TZ).replace(tzinfo=None)
