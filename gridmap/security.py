"""Roles, what each may read, write and see unmasked, and the masking of personal data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gridmap.layers import REGISTRY
from gridmap.store.base import Scope


class Role(StrEnum):
    """The roles of the service; ``public`` is anyone without a token."""

    SUBDISTRICT_ADMIN = "subdistrict_admin"
    COMMUNITY_ADMIN = "community_admin"
    GRID_WORKER = "grid_worker"
    PLANNER = "planner"
    AUDITOR = "auditor"
    PUBLIC = "public"


ROLE_ZH = {
    Role.SUBDISTRICT_ADMIN: "街道管理员",
    Role.COMMUNITY_ADMIN: "社区管理员",
    Role.GRID_WORKER: "网格员",
    Role.PLANNER: "规划人员",
    Role.AUDITOR: "审计员",
    Role.PUBLIC: "公众",
}

_ALL = frozenset(REGISTRY)
_NONE: frozenset[str] = frozenset()
_LEDGERS = frozenset(lay.id for lay in REGISTRY.values() if lay.append_only)
"""Append-only layers: written only through their own path (POST /visits), never edited."""

READ: dict[Role, frozenset[str]] = {
    Role.SUBDISTRICT_ADMIN: _ALL,
    Role.COMMUNITY_ADMIN: _ALL,
    Role.GRID_WORKER: _ALL - {"cameras"},
    Role.PLANNER: _ALL - {"households", "visits", "cameras"},
    Role.AUDITOR: _NONE,
    Role.PUBLIC: frozenset({"zones", "communities", "grids", "toilets", "facilities"}),
}
"""Layers each role may read (others are 404 for it, as if they did not exist)."""

WRITE: dict[Role, frozenset[str]] = {
    Role.SUBDISTRICT_ADMIN: _ALL - _LEDGERS,
    Role.COMMUNITY_ADMIN: frozenset({"households", "buildings"}),
    Role.GRID_WORKER: frozenset({"households"}),
    Role.PLANNER: frozenset({"old_neighbourhoods", "toilets", "roads"}),
    Role.AUDITOR: _NONE,
    Role.PUBLIC: _NONE,
}
"""Layers each role may create and update features in (within its grids)."""

DELETE: dict[Role, frozenset[str]] = {
    **WRITE,
    Role.GRID_WORKER: _NONE,
}
"""Layers each role may delete from; grid workers delete nothing."""

_SENSITIVE = frozenset((layer.id, n) for layer in REGISTRY.values() for n in layer.sensitive)
_IDENTIFIERS = frozenset((lay, n) for lay, n in _SENSITIVE if n in ("phone", "id_number"))

MASKED: dict[Role, frozenset[tuple[str, str]]] = {
    Role.SUBDISTRICT_ADMIN: _IDENTIFIERS,
    Role.COMMUNITY_ADMIN: _IDENTIFIERS,
    Role.GRID_WORKER: _IDENTIFIERS,
    Role.PLANNER: _SENSITIVE,
    Role.AUDITOR: _SENSITIVE,
    Role.PUBLIC: _SENSITIVE,
}
"""(layer, field) pairs each role sees masked: the personal fields of personal layers only
(a community's public phone is not one). The reveal action shows one, with a reason."""

CAN_REVEAL = frozenset({Role.SUBDISTRICT_ADMIN, Role.COMMUNITY_ADMIN, Role.GRID_WORKER})
HOUSEHOLD_AGGREGATES = frozenset(
    {Role.SUBDISTRICT_ADMIN, Role.COMMUNITY_ADMIN, Role.GRID_WORKER, Role.PLANNER}
)
SMALL_CELL = 5
"""Planners see household counts below this as "<5"."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (or the public) with a role and, for some roles, grids."""

    username: str
    role: Role
    grid_ids: frozenset[int] | None = None
    community_id: int | None = None

    @property
    def authenticated(self) -> bool:
        """False for the public."""
        return self.role is not Role.PUBLIC


PUBLIC = Principal("", Role.PUBLIC)


def scope_for(principal: Principal) -> Scope:
    """The data-layer scope of a principal: every store call goes through it."""
    role = principal.role
    grid_ids = (
        None
        if role in (Role.SUBDISTRICT_ADMIN, Role.PLANNER, Role.PUBLIC)
        else (principal.grid_ids or frozenset())
    )
    return Scope(
        layers=READ[role],
        grid_ids=grid_ids,
        writable=WRITE[role],
        deletable=DELETE[role],
        masked=MASKED[role],
    )


# ------------------------------------------------------------------------ masking


def mask_id_number(value: str) -> str:
    """410***********1234: the first 3 and last 4 characters, length kept."""
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_phone(value: str) -> str:
    """138****5678: the first 3 and last 4 digits, length kept."""
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_name(value: str) -> str:
    """张*: the surname, one star per other character."""
    if not value:
        return value
    return value[0] + "*" * (len(value) - 1)


MASKERS = {"id_number": mask_id_number, "phone": mask_phone, "head_name": mask_name}


def mask_value(name: str, value: object) -> object:
    """A property value as a role with ``name`` masked sees it."""
    if value is None or not isinstance(value, str):
        return value
    return MASKERS.get(name, mask_name)(value)


def business_data_allowed(principal: Principal) -> bool:
    """Auditors see the audit log and nothing else."""
    return principal.role is not Role.AUDITOR


def stats_scope(principal: Principal, scope: Scope) -> tuple[Scope, int | None] | None:
    """How a principal may see household statistics: (scope to count in, small-cell limit).

    None: not at all (public, auditor). Planners count over every household but see
    small counts suppressed (see :mod:`gridmap.disclosure`); others count what their own
    ``scope`` shows. The scope's read log goes along: counting households reads them.
    """
    if principal.role not in HOUSEHOLD_AGGREGATES:
        return None
    if principal.role is Role.PLANNER:
        layers = frozenset({"households", "visits", "grids", "communities", "zones"})
        return Scope(layers=layers, reads=scope.reads), SMALL_CELL
    return scope, None
