"""What a storage backend does: move rows. The small interfaces it implements, and Selection.

A backend knows tables, columns, SQL and indexes; it knows no layer by name and applies
no policy. Everything it is asked is already checked by :mod:`gridmap.store.core`:
property names exist, values are typed, filters are checked CQL2 trees, geometries are
valid WGS84 and promoted to the layer's type, and a scope's grid restriction arrives as a
plain ``column IN (values)`` condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from shapely.geometry.base import BaseGeometry

from gridmap.cql import Filter
from gridmap.layers import Layer
from gridmap.store.base import BBox, FeatureSet, Predicate, Progress


@dataclass(frozen=True)
class Selection:
    """Which rows of one table: every condition given must hold.

    ``bbox``: the geometry intersects the box (exactly); ``geometry``/``predicate``: an
    exact spatial relation; ``equals``: column = value (None: IS NULL; on a list column:
    the list holds the value); ``filters``: checked CQL2 trees; ``ids``: feature ids;
    ``within``: (column, allowed values), the value must be one of them; ``after``: ids
    greater than this (keyset paging for streaming).
    """

    bbox: BBox | None = None
    geometry: BaseGeometry | None = None
    predicate: Predicate = "intersects"
    equals: Mapping[str, Any] = field(default_factory=dict)
    filters: Sequence[Filter] = ()
    ids: Sequence[int] | None = None
    within: tuple[str, frozenset[int]] | None = None
    after: int | None = None


EVERY_ROW = Selection()


@dataclass(frozen=True)
class Measure:
    """One figure per group: ``count`` of the rows (those where the checked condition
    ``where`` holds, if given), or ``sum`` of an integer column (other values count 0)."""

    kind: Literal["count", "sum"] = "count"
    column: str | None = None
    where: Filter | None = None


Order = Sequence[tuple[str, bool]]
"""(column, descending) pairs; ``id`` is the feature id. Ties are broken by id."""


class Rows(Protocol):
    """Reading and writing the rows of the layers' tables."""

    def select(
        self,
        layer: Layer,
        sel: Selection = EVERY_ROW,
        *,
        order: Order = (),
        limit: int | None = None,
        offset: int = 0,
        count: bool = True,
    ) -> FeatureSet:
        """One page of the rows (values typed as the registry says, geometries WGS84);
        ``number_matched`` is set when ``count``."""
        ...

    def select_ids(
        self,
        layer: Layer,
        sel: Selection = EVERY_ROW,
        *,
        order: Order = (),
        limit: int | None = None,
        offset: int = 0,
        column: str | None = None,
    ) -> tuple[npt.NDArray[np.int64], list[Any] | None, int]:
        """Ids of one page, the page's values of ``column`` (if named), the number matched."""
        ...

    def count(self, layer: Layer, sel: Selection = EVERY_ROW) -> int:
        """How many rows match."""
        ...

    def envelope(self, layer: Layer, sel: Selection = EVERY_ROW) -> BBox | None:
        """Bounding box of the matching rows' geometries (None when there are none)."""
        ...

    def min_max(
        self, layer: Layer, column: str, sel: Selection = EVERY_ROW
    ) -> tuple[Any, Any] | None:
        """Smallest and largest non-null value of a column among the matching rows."""
        ...

    def group_count(self, layer: Layer, column: str, sel: Selection = EVERY_ROW) -> dict[Any, int]:
        """Rows per value of ``column`` (a GROUP BY in the database)."""
        ...

    def aggregate(
        self, layer: Layer, by: str, measures: Mapping[str, Measure], sel: Selection = EVERY_ROW
    ) -> dict[Any, dict[str, int]]:
        """Each measure per value of column ``by`` among the matching rows (one GROUP BY
        in the database)."""
        ...

    def knn_ids(
        self, layer: Layer, lon: float, lat: float, k: int, sel: Selection = EVERY_ROW
    ) -> list[int]:
        """Ids of (up to) ``k`` matching rows nearest the point by plain distance in lon/lat
        degrees, nearest first (ties by id; rows without a geometry are left out). The
        candidates of a nearest search, which the caller ranks again in metres."""
        ...

    def latest(
        self,
        layer: Layer,
        key: str,
        order: str,
        columns: Sequence[str],
        sel: Selection = EVERY_ROW,
    ) -> list[tuple[Any, ...]]:
        """For each value of column ``key`` among the matching rows (null is one value):
        ``(id, *columns, n)`` of its latest row by column ``order`` (``id``: the feature id;
        nulls are earliest, ties go to the highest id), values typed as reads give them,
        and ``n`` the number of matching rows with that value. By id; reduced in the
        database (one window query)."""
        ...

    def insert_rows(
        self,
        layer: Layer,
        geometries: npt.NDArray[np.object_],
        rows: Sequence[Mapping[str, Any]],
        *,
        progress: Progress | None = None,
    ) -> list[int]:
        """Insert rows (every column of the layer given); their new ids, in order."""
        ...

    def update_row(
        self, layer: Layer, fid: int, geometry: BaseGeometry, row: Mapping[str, Any], version: int
    ) -> bool:
        """Replace a row's geometry and values and add one to its version, if the row is
        still at ``version``; False (nothing written) if it is not."""
        ...

    def set_values(self, layer: Layer, column: str, pairs: Sequence[tuple[int, Any]]) -> None:
        """Set one column of some rows from (fid, value) pairs: values the server derives,
        kept true when what they derive from changes. Each row's version moves on."""
        ...

    def delete_row(self, layer: Layer, fid: int, version: int) -> bool:
        """Delete a row if it is still at ``version``; False if it is not (or is gone)."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing for the writes inside; nested: a savepoint. Reads inside see the
        transaction's writes, and rows read before a write are locked against other
        writers until it ends."""
        ...


class Loading(Protocol):
    """Writing rows as they are, ids and versions kept (copying a whole store)."""

    def load_rows(
        self,
        layer: Layer,
        ids: Sequence[int],
        geometries: npt.NDArray[np.object_],
        rows: Sequence[Mapping[str, Any]],
        versions: Sequence[int],
    ) -> None:
        """Insert rows with the given ids and versions (checked by the core beforehand)."""
        ...

    def load_documents(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Insert documents with their ids and creation fields."""
        ...

    def all_documents(self) -> list[dict[str, Any]]:
        """Every document of every kind, by id."""
        ...

    def load_audit(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append audit entries with their ids (oldest first)."""
        ...

    def all_meta(self) -> dict[str, str]:
        """Every stored setting."""
        ...


class Stamps(Protocol):
    """Change stamps: a number per table that moves whenever the table changes."""

    def stamp(self, table: str) -> int:
        """The table's stamp (-1 if it has none), changed by any client's write."""
        ...

    def stamps(self, tables: Sequence[str]) -> tuple[int, ...]:
        """Several tables' stamps in one read."""
        ...

    def stamps_at_hand(self, tables: Sequence[str]) -> tuple[int, ...] | None:
        """The stamps if they are known without asking a server (None: use stamps())."""
        ...

    def changed_since(self, table: str, stamp: int, limit: int) -> frozenset[int] | None:
        """Ids of the table's rows written or deleted (by any client) at or after ``stamp``,
        if at most ``limit`` and the backend keeps a log of row changes; else None (all may
        have changed)."""
        ...


class Accounts(Protocol):
    """User records (the policy on them is :mod:`gridmap.accounts`)."""

    def user(self, username: str) -> dict[str, Any] | None:
        """A user record (``grid_ids`` a list, ``disabled`` a bool), or None."""
        ...

    def users(self) -> list[dict[str, Any]]:
        """Every user record without its password hash, by username."""
        ...

    def save_user(self, record: Mapping[str, Any]) -> None:
        """Insert or replace a user record."""
        ...


class AuditLog(Protocol):
    """The append-only audit log (the database refuses updates and deletes)."""

    def audit_append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry."""
        ...

    def audit_entries(
        self, *, limit: int = 100, offset: int = 0, equals: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Entries newest first, and how many match."""
        ...


class Documents(Protocol):
    """Records that are no features (campaigns, plans), kept forever."""

    def add_document(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        parent: int | None = None,
        grid_id: int | None = None,
        created_by: str | None = None,
    ) -> int:
        """Store a document; its id."""
        ...

    def replace_document(self, kind: str, doc_id: int, body: Mapping[str, Any]) -> None:
        """Replace a document's body (FeatureNotFoundError if there is none)."""
        ...

    def document(self, kind: str, doc_id: int) -> dict[str, Any] | None:
        """One document, or None."""
        ...

    def documents(self, kind: str, *, parent: int | None = None) -> list[dict[str, Any]]:
        """The documents of a kind (of one parent), oldest first."""
        ...


class Limits(Protocol):
    """Rate limits shared by every process over the store."""

    def take_turn(self, key: str, now: float, interval: float, burst: float) -> float | None:
        """One event for ``key``: None if allowed, else the seconds to wait."""
        ...

    def forget_turns(self, before: float) -> None:
        """Drop the limit rows whose turn was due before ``before``."""
        ...


class Idempotency(Protocol):
    """The idempotency keys of creating requests (:mod:`gridmap.idempotency`)."""

    def idempotent_find(self, username: str, key: str) -> tuple[str, str, int, float] | None:
        """The (fingerprint, layer, feature id, time kept) of a user's key, if any."""
        ...

    def idempotent_drop(self, username: str, key: str) -> None:
        """Forget one key."""
        ...

    def idempotent_keep(
        self, username: str, key: str, fingerprint: str, layer: str, fid: int, now: float
    ) -> None:
        """Remember what a key created."""
        ...

    def idempotent_forget(self, before: float) -> None:
        """Drop keys kept before ``before``."""
        ...


class Settings(Protocol):
    """Key-value settings of the service (service area, sample flags, secrets)."""

    def meta(self, key: str) -> str | None:
        """A stored setting."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        ...

    def schema_current(self) -> bool:
        """True if the store records this release's schema."""
        ...


class Backend(
    Rows, Loading, Stamps, Accounts, AuditLog, Documents, Limits, Idempotency, Settings, Protocol
):
    """Everything a backend implements; :func:`gridmap.store.open_store` picks one by URL."""

    url: str
    remote: bool
    """True if reads cross a network (a server): callers keep them off an event loop."""

    def close(self) -> None:
        """Release connections."""
        ...
