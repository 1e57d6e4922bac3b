"""The Store interface every backend implements, the Scope every query takes, and result types."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import numpy.typing as npt
from shapely.geometry.base import BaseGeometry

from gridmap.cql import Filter
from gridmap.layers import Layer

if TYPE_CHECKING:
    from gridmap.access import ReadLog

BBox = tuple[float, float, float, float]
"""(min lon, min lat, max lon, max lat) in WGS84."""

Predicate = Literal["intersects", "within", "contains"]
Progress = Callable[[int], None]
"""Called with the number of features written so far."""
ID_LIMIT = 2**62
"""Feature ids lie in 1 … ID_LIMIT - 1, the ids the API addresses, on every backend: an
id at the end of the integer range would leave no room for the rows made after it."""


@dataclass(frozen=True)
class Scope:
    """What a caller may see and do: layers, grids, writes, and which fields are masked.

    ``layers=None`` means every layer; ``grid_ids=None`` means every grid. A grid
    restriction applies to the layers whose features belong to a grid (those with a
    ``grid_id`` property: households, buildings); every other layer (zones, communities,
    grids, facilities …) is governed by ``layers`` alone, so a grid worker sees at least
    what the public sees. ``writable`` and ``deletable`` name the layers that may be
    edited (None: all); ``masked`` the (layer, field) pairs returned masked, which cannot
    be used in filters or sorting. ``reads``, when set, is told of every personal row the
    store returns under this scope (see :mod:`gridmap.access`); it takes no part in
    comparisons, so caches keyed by scope ignore it.
    """

    layers: frozenset[str] | None = None
    grid_ids: frozenset[int] | None = None
    writable: frozenset[str] | None = None
    deletable: frozenset[str] | None = None
    masked: frozenset[tuple[str, str]] = frozenset()
    reads: ReadLog | None = field(default=None, compare=False, hash=False, repr=False)

    ALL: ClassVar[Scope]

    @property
    def view_key(self) -> tuple[object, ...]:
        """What distinguishes two scopes' views of the same feature (for caches)."""
        return tuple(sorted(self.masked))

    def masked_in(self, layer: Layer) -> frozenset[str]:
        """The fields of ``layer`` this scope sees masked."""
        return frozenset(f for lay, f in self.masked if lay == layer.id)

    def limits(self, layer: Layer) -> bool:
        """True if the grid restriction applies to ``layer`` (its features belong to grids)."""
        return self.grid_ids is not None and layer.grid_scoped

    def allows_write(self, layer_id: str) -> bool:
        """True if features of the layer may be created and updated."""
        return self.writable is None or layer_id in self.writable

    def allows_delete(self, layer_id: str) -> bool:
        """True if features of the layer may be deleted."""
        return self.deletable is None or layer_id in self.deletable

    def allows_layer(self, layer_id: str) -> bool:
        """True if the layer is visible at all."""
        return self.layers is None or layer_id in self.layers

    def allows_grid(self, grid_id: int | None) -> bool:
        """True if a feature of grid ``grid_id`` is visible (None: belongs to no grid)."""
        return self.grid_ids is None or (grid_id is not None and grid_id in self.grid_ids)


Scope.ALL = Scope()


@dataclass
class Feature:
    """One stored feature: id, WGS84 geometry, properties and edit version."""

    id: int
    geometry: BaseGeometry
    properties: dict[str, Any]
    version: int


@dataclass
class FeatureSet:
    """A page of features as parallel columns (cheap to serialise in bulk)."""

    layer: Layer
    ids: npt.NDArray[np.int64]
    geometries: npt.NDArray[np.object_]
    properties: list[dict[str, Any]]
    versions: npt.NDArray[np.int64]
    number_matched: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(len(self.ids)):
            yield Feature(
                int(self.ids[i]), self.geometries[i], self.properties[i], int(self.versions[i])
            )

    def with_geometry(self) -> FeatureSet:
        """The features that have a non-empty geometry (another program may have stored
        rows without one: they are left out of maps and geometric checks)."""
        import shapely

        keep = np.flatnonzero(
            ~shapely.is_missing(self.geometries) & ~shapely.is_empty(self.geometries)
        )
        if len(keep) == len(self):
            return self
        return FeatureSet(
            self.layer,
            self.ids[keep],
            self.geometries[keep],
            [self.properties[i] for i in keep],
            self.versions[keep],
            len(keep),
        )

    def to_geodataframe(self):  # type: ignore[no-untyped-def]
        """The features as a GeoDataFrame indexed by feature id (CRS EPSG:4326)."""
        import geopandas as gpd
        import pandas as pd

        df = pd.DataFrame(self.properties, columns=list(self.layer.names))
        df.index = pd.Index(self.ids, name="fid")
        return gpd.GeoDataFrame(df, geometry=list(self.geometries), crs="EPSG:4326")


@dataclass(frozen=True)
class Query:
    """What to select from one layer; every field optional.

    ``equals`` holds property=value filters (names checked against the layer);
    ``filters`` checked CQL2 / datetime conditions (neutral trees, :mod:`gridmap.cql`);
    ``geometry``/``predicate`` an exact spatial filter; ``order_by`` property names with
    an optional leading ``-`` for descending; ``after`` only ids greater than this (keyset
    paging through a whole layer).
    """

    bbox: BBox | None = None
    equals: Mapping[str, Any] = field(default_factory=dict)
    geometry: BaseGeometry | None = None
    predicate: Predicate = "intersects"
    ids: Sequence[int] | None = None
    filters: Sequence[Filter] = ()
    order_by: Sequence[str] = ()
    limit: int | None = None
    offset: int = 0
    after: int | None = None


class Store(Protocol):
    """Storage of every layer, with scope applied below every caller."""

    def layers(self) -> list[Layer]:
        """The layers this store holds."""
        ...

    def query(self, layer_id: str, query: Query = ..., *, scope: Scope = ...) -> FeatureSet:
        """Features matching ``query`` within ``scope``; ``number_matched`` is set."""
        ...

    def query_ids(
        self, layer_id: str, query: Query = ..., *, scope: Scope = ...
    ) -> tuple[npt.NDArray[np.int64], int]:
        """Ids of one page of ``query`` and the number matched, without reading rows."""
        ...

    def stamp(self, layer_id: str) -> int:
        """A number that changes whenever the layer changes, by any client."""
        ...

    def stamps(self, tables: Sequence[str]) -> tuple[int, ...]:
        """Several layers' (or record tables') stamps in one read."""
        ...

    def changed_since(self, layer_id: str, stamp: int, limit: int) -> frozenset[int] | None:
        """Ids of the layer's features written or deleted at or after ``stamp``, if at most
        ``limit`` and known; else None (all may have changed)."""
        ...

    @property
    def remote(self) -> bool:
        """True if the data lives on a server (keep reads off an event loop)."""
        ...

    def aggregate(
        self,
        layer_id: str,
        by: str,
        measures: Mapping[str, Any],
        query: Query = ...,
        *,
        scope: Scope = ...,
    ) -> dict[Any, dict[str, int]]:
        """Figures (:class:`~gridmap.store.backend.Measure`) per value of one property,
        counted by the database."""
        ...

    def values(
        self, layer_id: str, column: str, query: Query = ..., *, scope: Scope = ...
    ) -> dict[int, Any]:
        """Feature id → one property's value, for the features of ``query``."""
        ...

    def count(self, layer_id: str, query: Query = ..., *, scope: Scope = ...) -> int:
        """Number of features matching ``query`` within ``scope``."""
        ...

    def nearest_ids(
        self,
        layer_id: str,
        lon: float,
        lat: float,
        k: int,
        query: Query = ...,
        *,
        scope: Scope = ...,
    ) -> list[int]:
        """Ids of (up to) ``k`` features nearest a point in lon/lat degrees (ties by id),
        found by the database's index: candidates for an exact ranking in metres."""
        ...

    def latest(
        self,
        layer_id: str,
        key: str,
        order: str,
        columns: Sequence[str],
        query: Query = ...,
        *,
        scope: Scope = ...,
    ) -> list[tuple[Any, ...]]:
        """Per value of ``key``: ``(id, *columns, n)`` of its latest feature by ``order``
        (ties: the highest id) and its number of features, reduced in the database."""
        ...

    def get(self, layer_id: str, fid: int, *, scope: Scope = ...) -> Feature:
        """One feature, or FeatureNotFoundError (also when outside ``scope``)."""
        ...

    def insert(
        self,
        layer_id: str,
        geometries: Sequence[BaseGeometry] | npt.NDArray[np.object_],
        properties: Sequence[Mapping[str, Any]],
        *,
        scope: Scope = ...,
        progress: Progress | None = None,
        trusted: bool = False,
    ) -> list[int]:
        """Insert features in one transaction (all or nothing); return their ids."""
        ...

    def update(
        self,
        layer_id: str,
        fid: int,
        *,
        geometry: BaseGeometry | None = None,
        properties: Mapping[str, Any] | None = None,
        replace: bool = False,
        expected_version: int | None = None,
        scope: Scope = ...,
    ) -> Feature:
        """Update (merge, or replace with ``replace=True``) one feature; bump its version."""
        ...

    def delete(
        self, layer_id: str, fid: int, *, expected_version: int | None = None, scope: Scope = ...
    ) -> None:
        """Delete one feature."""
        ...

    def extent(self, layer_id: str, *, scope: Scope = ...) -> BBox | None:
        """Bounding box of the layer's features within ``scope`` (None when empty)."""
        ...

    def time_extent(self, layer_id: str, *, scope: Scope = ...) -> tuple[str, str] | None:
        """(earliest, latest) value of the layer's temporal property within ``scope``."""
        ...

    @property
    def service_area(self) -> BaseGeometry | None:
        """Where features may lie (WGS84), if set."""
        ...

    def meta(self, key: str) -> str | None:
        """A stored setting of the service."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting of the service."""
        ...

    def user(self, username: str) -> dict[str, Any] | None:
        """A user record, or None."""
        ...

    def users(self) -> list[dict[str, Any]]:
        """Every user record, without password hashes."""
        ...

    def save_user(self, record: Mapping[str, Any]) -> None:
        """Insert or replace a user record."""
        ...

    def audit_append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry to the append-only audit log."""
        ...

    def audit_entries(
        self, *, limit: int = 100, offset: int = 0, equals: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Audit entries, newest first, and how many match."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes so that all or none happen (nested: a savepoint)."""
        ...

    def take_turn(self, key: str, now: float, interval: float, burst: float) -> float | None:
        """One event for ``key`` under a limit every process shares: None if allowed,
        else the seconds to wait."""
        ...

    def forget_turns(self, before: float) -> None:
        """Drop the limit rows whose turn was due before ``before``."""
        ...

    def add_document(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        parent: int | None = None,
        grid_id: int | None = None,
        created_by: str | None = None,
    ) -> int:
        """Store a record that is no feature (a campaign, a plan); return its id."""
        ...

    def replace_document(self, kind: str, doc_id: int, body: Mapping[str, Any]) -> None:
        """Replace a document's body."""
        ...

    def document(self, kind: str, doc_id: int) -> dict[str, Any] | None:
        """One document (id, kind, parent, grid_id, created_at, created_by, body), or None."""
        ...

    def documents(self, kind: str, *, parent: int | None = None) -> list[dict[str, Any]]:
        """The documents of a kind (of one parent), oldest first."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
