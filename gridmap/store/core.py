"""The feature service: every rule of reading and writing features, once, over any backend.

Reads: layer visible → query checked (names, masked fields, foreign filters) → the scope's
grid restriction added → rows from the backend → noted in the read log → masked. Writes:
validate → derive located references (the grid) → check scope → check references →
check version → write, all inside one backend transaction. The backend only moves rows.
"""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap import geometry as geo
from gridmap.assign import PolygonIndex
from gridmap.cql import equal_time, within_calendar
from gridmap.errors import (
    FeatureNotFoundError,
    HiddenLayerError,
    IntegrityError,
    InvalidFeatureError,
    InvalidGeometryError,
    OutOfScopeError,
    PermissionDeniedError,
    QueryError,
    VersionConflictError,
)
from gridmap.layers import LAYERS, Layer, get_layer
from gridmap.store import relations
from gridmap.store.backend import Backend, Measure, Order, Selection
from gridmap.store.base import BBox, Feature, FeatureSet, Progress, Query, Scope
from gridmap.store.views import mask, mask_feature, require, unmask_unchanged

SYNTHETIC = "synthetic_identifiers"
MIN_FREE_BYTES = 4 * 2**20
"""Below this much free space beside a GeoPackage the service is not ready (507s ahead)."""
"""Setting: "true" in a store of invented people (the sample), whose identifiers take the
forms that can belong to nobody (see gridmap.identifiers)."""
UNFINISHED = "unfinished_build"
"""Meta key naming a build under way (``gridmap city``; empty once finished): an
interrupted build leaves it set, and ``gridmap check`` reports the store as unfinished."""
SERVICE_AREA = "service_area"
"""Setting: WKT of the area every feature must lie inside."""
_ALL_ROWS = Query()
_APPEND_ONLY = "{} is append-only: record a correction as a new entry"
_GEOMETRY_TYPES = ("Point", "LineString", "Polygon", "MultiPolygon")


class FeatureStore:
    """A Store: the rules of :mod:`gridmap.store.core` over one backend.

    Accounts, audit, documents, settings and stamps pass straight to the backend (their
    policy lives in :mod:`gridmap.accounts`, :mod:`gridmap.campaigns` …).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._located: dict[str, tuple[int, PolygonIndex, npt.NDArray[np.int64]] | None] = {}
        self._service_area: BaseGeometry | None = None
        self.synthetic = False
        self._load_settings()

    # ---------------------------------------------------------------- lifecycle, settings

    @property
    def url(self) -> str:
        """Where the data lives (a GeoPackage path or a postgresql:// URL)."""
        return self.backend.url

    @property
    def path(self) -> Any:
        """The GeoPackage file (None for a database server)."""
        return getattr(self.backend, "path", None)

    def close(self) -> None:
        """Release the backend's connections."""
        self.backend.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_settings(self) -> None:
        wkt = self.backend.meta(SERVICE_AREA)
        area = shapely.from_wkt(wkt) if wkt else None
        if area is not None:
            shapely.prepare(area)
        self._service_area = area
        self.synthetic = self.backend.meta(SYNTHETIC) == "true"

    @property
    def service_area(self) -> BaseGeometry | None:
        """Where features may lie (WGS84), if set."""
        return self._service_area

    def set_service_area(self, area: BaseGeometry) -> None:
        """Set the area every feature must lie inside (WGS84 polygon)."""
        geo.check_geometries([area], accepted_types=frozenset({"Polygon", "MultiPolygon"}))
        self.backend.set_meta(SERVICE_AREA, shapely.to_wkt(area, rounding_precision=-1))
        self._load_settings()

    def meta(self, key: str) -> str | None:
        """A stored setting of the service."""
        return self.backend.meta(key)

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting of the service."""
        self.backend.set_meta(key, value)
        self._load_settings()

    def layers(self) -> list[Layer]:
        """The layers this store holds (all registered layers)."""
        return list(LAYERS)

    def stamp(self, layer_id: str) -> int:
        """A number that changes whenever the layer changes, by any client."""
        return self.backend.stamp(layer_id)

    def stamps(self, tables: Sequence[str]) -> tuple[int, ...]:
        """Several layers' (or record tables') stamps in one read."""
        return self.backend.stamps(tables)

    def changed_since(self, layer_id: str, stamp: int, limit: int) -> frozenset[int] | None:
        """Ids of the layer's features written or deleted at or after ``stamp``, if at most
        ``limit`` and known; else None (all may have changed)."""
        return self.backend.changed_since(layer_id, stamp, limit)

    def stamps_at_hand(self, tables: Sequence[str]) -> tuple[int, ...] | None:
        """The stamps if known without a round trip to a server (None: call stamps())."""
        return self.backend.stamps_at_hand(tables)

    def readiness(self) -> str | None:
        """None if the store answers and holds this release's schema, else why not."""
        try:
            current = self.backend.schema_current()
        except Exception as exc:  # any failure to answer means: not ready
            return f"the database does not answer: {type(exc).__name__}"
        if not current:
            return "the database schema is not this release's; run `gridmap upgrade`"
        if self.path is not None:  # a full disk refuses log-ins and audited reads too
            free = shutil.disk_usage(Path(self.path).resolve().parent).free
            if free < MIN_FREE_BYTES:
                return f"the disk holding the database has {free // 1024} KB free; free space"
        return None

    @property
    def remote(self) -> bool:
        """True if the data lives on a server (keep reads off an event loop)."""
        return bool(self.backend.remote)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (features, documents) so that all or none happen."""
        with self.backend.transaction(), self._rolled_back_forgets():
            yield

    @contextmanager
    def _rolled_back_forgets(self) -> Iterator[None]:
        """What was cached from inside a transaction that then rolled back (a grid's
        uncommitted shape, keyed by an uncommitted stamp) is forgotten with it, before the
        rollback lets another writer in (so it is entered inside the transaction); what was
        cached before it is kept (a refused edit, e.g. a version conflict, must not cost
        the next edits a rebuild of the grids' index)."""
        before = dict(self._located)
        try:
            yield
        except BaseException:
            with self._lock:
                for key, entry in list(self._located.items()):
                    if before.get(key) is not entry:
                        del self._located[key]
            raise

    # ---------------------------------------------------------------- passed through

    def user(self, username: str) -> dict[str, Any] | None:
        """A user record, or None."""
        return self.backend.user(username)

    def users(self) -> list[dict[str, Any]]:
        """Every user record, without password hashes."""
        return self.backend.users()

    def save_user(self, record: Mapping[str, Any]) -> None:
        """Insert or replace a user record."""
        self.backend.save_user(record)

    def audit_append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry to the append-only audit log."""
        self.backend.audit_append(entry)

    def audit_entries(
        self, *, limit: int = 100, offset: int = 0, equals: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Audit entries, newest first, and how many match."""
        return self.backend.audit_entries(limit=limit, offset=offset, equals=equals)

    def take_turn(self, key: str, now: float, interval: float, burst: float) -> float | None:
        """One event for ``key`` under a limit every process shares: None if allowed,
        else the seconds to wait (see :mod:`gridmap.store.records`)."""
        return self.backend.take_turn(key, now, interval, burst)

    def forget_turns(self, before: float) -> None:
        """Drop the limit rows whose turn was due before ``before``."""
        self.backend.forget_turns(before)

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
        return self.backend.add_document(
            kind, body, parent=parent, grid_id=grid_id, created_by=created_by
        )

    def replace_document(self, kind: str, doc_id: int, body: Mapping[str, Any]) -> None:
        """Replace a document's body."""
        self.backend.replace_document(kind, doc_id, body)

    def document(self, kind: str, doc_id: int) -> dict[str, Any] | None:
        """One document, or None."""
        return self.backend.document(kind, doc_id)

    def documents(self, kind: str, *, parent: int | None = None) -> list[dict[str, Any]]:
        """The documents of a kind (of one parent), oldest first."""
        return self.backend.documents(kind, parent=parent)

    # ---------------------------------------------------------------- reading

    def _layer(self, layer_id: str, scope: Scope) -> Layer:
        layer = get_layer(layer_id)
        if not scope.allows_layer(layer_id):
            msg = f"no collection {layer_id[:60]!r}"
            raise HiddenLayerError(msg)
        return layer

    def _selection(self, layer: Layer, query: Query, scope: Scope) -> Selection:
        """The query checked against the layer and the scope, as a backend selection."""
        hidden = scope.masked_in(layer) & (
            set(query.equals)
            | {k.lstrip("+-") for k in query.order_by}
            | {p for f in query.filters for p in f.properties}
        )
        foreign = [f.layer_id for f in query.filters if f.layer_id != layer.id]
        if foreign:
            msg = f"a filter checked for {foreign[0]} cannot select from {layer.id}"
            raise InvalidFeatureError(msg)
        if hidden:
            msg = f"{', '.join(sorted(hidden))} cannot be used to filter or sort (masked for you)"
            raise PermissionDeniedError(msg)
        equals: dict[str, Any] = {}
        filters = list(query.filters)
        for name, value in query.equals.items():
            if name not in layer.by_name:
                known = ", ".join(layer.names)
                msg = f"unknown property {name[:40]!r} for layer {layer.id}; known: {known}"
                raise InvalidFeatureError(msg)
            _check_equal_value(layer.by_name[name], value)
            if value is not None and layer.by_name[name].type in ("date", "datetime"):
                # compared as instants by the filter renderers (gridmap.cql.times), not
                # as text (GeoPackage) or with the offset dropped (PostGIS)
                filters.append(equal_time(layer, name, value))
            else:
                equals[name] = value
        if query.predicate not in ("intersects", "within", "contains"):
            msg = (
                f"unknown spatial predicate {query.predicate!r}; use intersects, within or contains"
            )
            raise InvalidFeatureError(msg)
        within = None
        if scope.limits(layer):
            within = (relations.GRID_KEY, frozenset(scope.grid_ids or ()))
        return Selection(
            bbox=query.bbox,
            geometry=query.geometry,
            predicate=query.predicate,
            equals=equals,
            filters=tuple(filters),
            ids=None if query.ids is None else [int(i) for i in query.ids],
            within=within,
            after=None if query.after is None else int(query.after),
        )

    @staticmethod
    def _order(layer: Layer, order_by: Sequence[str]) -> Order:
        out = []
        for key in order_by:
            name = key.lstrip("+-")
            if name not in layer.by_name and name != "id":
                msg = f"cannot sort by {name[:40]!r}; sortable: id, {', '.join(layer.names)}"
                raise InvalidFeatureError(msg)
            if name != "id" and layer.by_name[name].type == "list":
                # lists have no order both backends share (JSON text vs. jsonb)
                msg = f"cannot sort by {name}: it holds a list"
                raise QueryError(msg)
            out.append((name, key.startswith("-")))
        return out

    def _seen(self, layer: Layer, fs: FeatureSet, scope: Scope) -> FeatureSet:
        """Masked for the scope, and noted in its read log when the layer is personal."""
        if scope.reads is not None and layer.personal:
            keys = [p.get(relations.GRID_KEY) for p in fs.properties]
            scope.reads.saw(layer.id, fs.ids.tolist(), keys)
        return mask(fs, scope)

    def query(
        self, layer_id: str, query: Query = _ALL_ROWS, *, scope: Scope = Scope.ALL
    ) -> FeatureSet:
        """Features matching ``query`` within ``scope``, with ``number_matched`` set."""
        layer = self._layer(layer_id, scope)
        sel = self._selection(layer, query, scope)
        fs = self.backend.select(
            layer,
            sel,
            order=self._order(layer, query.order_by),
            limit=query.limit,
            offset=query.offset,
        )
        return self._seen(layer, fs, scope)

    def query_ids(
        self, layer_id: str, query: Query = _ALL_ROWS, *, scope: Scope = Scope.ALL
    ) -> tuple[npt.NDArray[np.int64], int]:
        """Ids of one page of ``query`` (in its order) and the number matched, no rows read."""
        layer = self._layer(layer_id, scope)
        sel = self._selection(layer, query, scope)
        personal = scope.reads is not None and layer.personal
        ids, keys, matched = self.backend.select_ids(
            layer,
            sel,
            order=self._order(layer, query.order_by),
            limit=query.limit,
            offset=query.offset,
            column=relations.GRID_KEY if personal and layer.grid_scoped else None,
        )
        if personal and scope.reads is not None:
            scope.reads.saw(layer.id, ids.tolist(), keys or [None] * len(ids))
        return ids, matched

    def count(self, layer_id: str, query: Query = _ALL_ROWS, *, scope: Scope = Scope.ALL) -> int:
        """Number of features matching ``query`` within ``scope``."""
        layer = self._layer(layer_id, scope)
        return self.backend.count(layer, self._selection(layer, query, scope))

    def count_by(
        self, layer_id: str, column: str, query: Query = _ALL_ROWS, *, scope: Scope = Scope.ALL
    ) -> dict[Any, int]:
        """Features matching ``query`` within ``scope`` per value of one property."""
        layer = self._layer(layer_id, scope)
        if column not in layer.by_name:
            msg = f"unknown property {column[:40]!r} for layer {layer.id}"
            raise InvalidFeatureError(msg)
        require(column not in scope.masked_in(layer), f"{column} is masked for you")
        return self.backend.group_count(layer, column, self._selection(layer, query, scope))

    def aggregate(
        self,
        layer_id: str,
        by: str,
        measures: Mapping[str, Measure],
        query: Query = _ALL_ROWS,
        *,
        scope: Scope = Scope.ALL,
    ) -> dict[Any, dict[str, int]]:
        """Figures per value of one property, counted in the database (GROUP BY). No row
        leaves it; the scope's read log notes what was counted (personal data used for a
        statistic is limited and audited like a read). Masked properties take no part."""
        layer = self._layer(layer_id, scope)
        used = {by} | {m.column for m in measures.values() if m.column}
        for m in measures.values():
            if m.where is not None:
                if m.where.layer_id != layer.id:
                    msg = f"a condition checked for {m.where.layer_id} cannot count {layer.id}"
                    raise InvalidFeatureError(msg)
                used |= m.where.properties
        unknown = sorted(u for u in used if u not in layer.by_name and u != "id")
        if unknown:
            msg = f"unknown properties for layer {layer.id}: {', '.join(unknown)}"
            raise InvalidFeatureError(msg)
        hidden = sorted(used & scope.masked_in(layer))
        require(not hidden, f"{', '.join(hidden)} cannot be counted by (masked for you)")
        found = self.backend.aggregate(layer, by, measures, self._selection(layer, query, scope))
        if scope.reads is not None and layer.personal:
            rows = self.backend.count(layer, self._selection(layer, query, scope))
            groups = list(found) if by == relations.GRID_KEY else [None]
            scope.reads.counted(layer.id, rows, groups)
        return found

    def values(
        self, layer_id: str, column: str, query: Query = _ALL_ROWS, *, scope: Scope = Scope.ALL
    ) -> dict[int, Any]:
        """Feature id → the value of one property, for the features of ``query`` (read as
        rows are: noted in the scope's read log; a masked property is refused)."""
        layer = self._layer(layer_id, scope)
        if column not in layer.by_name:
            msg = f"unknown property {column[:40]!r} for layer {layer.id}"
            raise InvalidFeatureError(msg)
        require(column not in scope.masked_in(layer), f"{column} is masked for you")
        sel = self._selection(layer, query, scope)
        ids, vals, _ = self.backend.select_ids(layer, sel, column=column)
        if scope.reads is not None and layer.personal:
            keys = vals if column == relations.GRID_KEY else None
            if keys is None and layer.grid_scoped:
                keys = self.backend.select_ids(
                    layer, Selection(ids=ids.tolist()), column=relations.GRID_KEY
                )[1]
            scope.reads.saw(layer.id, ids.tolist(), keys or [None] * len(ids))
        return dict(zip(ids.tolist(), vals or [], strict=True))

    def nearest_ids(
        self,
        layer_id: str,
        lon: float,
        lat: float,
        k: int,
        query: Query = _ALL_ROWS,
        *,
        scope: Scope = Scope.ALL,
    ) -> list[int]:
        """Ids of (up to) ``k`` features of ``query`` within ``scope`` nearest a point by
        plain distance in lon/lat degrees, nearest first (ties by id), found by the
        database's index; features without a geometry take no part. Candidates for an
        exact ranking (:func:`gridmap.queries.nearest`). No rows are read; the ids are
        noted in the scope's read log as :meth:`query_ids` notes them (a ranking that
        returns only some of them passes a scope without a log, and reads its answers)."""
        layer = self._layer(layer_id, scope)
        x, y = float(lon), float(lat)
        if not (math.isfinite(x) and math.isfinite(y)):
            msg = "lon and lat must be finite numbers"
            raise InvalidGeometryError(msg)
        if int(k) < 1:
            msg = "k must be at least 1"
            raise QueryError(msg)
        sel = self._selection(layer, query, scope)
        ids = self.backend.knn_ids(layer, x, y, int(k), sel)
        if scope.reads is not None and layer.personal:
            grid_of: dict[int, Any] = {}
            if layer.grid_scoped and ids:
                found, keys, _ = self.backend.select_ids(
                    layer, Selection(ids=ids), column=relations.GRID_KEY
                )
                grid_of = dict(zip(found.tolist(), keys or [], strict=True))
            scope.reads.saw(layer.id, ids, [grid_of.get(i) for i in ids])
        return ids

    def latest(
        self,
        layer_id: str,
        key: str,
        order: str,
        columns: Sequence[str],
        query: Query = _ALL_ROWS,
        *,
        scope: Scope = Scope.ALL,
    ) -> list[tuple[Any, ...]]:
        """For each value of property ``key`` among the features of ``query`` within
        ``scope``: ``(id, *columns, n)`` of its latest feature by property ``order`` (``id``
        allowed; nulls earliest, ties to the highest id) and ``n`` its number of features,
        by id; reduced in the database (a ledger's latest entry per subject and its number
        of entries). The rows returned are noted in the scope's read log as :meth:`values`
        notes them, and the others counted for ``n`` as :meth:`aggregate` notes a count;
        masked properties take no part."""
        layer = self._layer(layer_id, scope)
        used = [key, *columns] + ([] if order == "id" else [order])
        unknown = sorted({u for u in used if u not in layer.by_name})
        if unknown:
            msg = f"unknown properties for layer {layer.id}: {', '.join(unknown)}"
            raise InvalidFeatureError(msg)
        hidden = sorted(set(used) & scope.masked_in(layer))
        require(not hidden, f"{', '.join(hidden)} cannot be read here (masked for you)")
        sel = self._selection(layer, query, scope)
        personal = scope.reads is not None and layer.personal
        extra = (
            [relations.GRID_KEY]
            if personal and layer.grid_scoped and relations.GRID_KEY not in columns
            else []
        )
        rows = self.backend.latest(layer, key, order, [*columns, *extra], sel)
        if personal and scope.reads is not None:
            g = 1 + ([*columns, *extra].index(relations.GRID_KEY) if layer.grid_scoped else 0)
            keys = [r[g] if layer.grid_scoped else None for r in rows]
            scope.reads.saw(layer.id, [r[0] for r in rows], keys)
            others = sum(r[-1] for r in rows) - len(rows)
            if others:
                scope.reads.counted(layer.id, others, [None])
        if extra:
            rows = [(*r[: 1 + len(columns)], r[-1]) for r in rows]
        return rows

    def get(self, layer_id: str, fid: int, *, scope: Scope = Scope.ALL) -> Feature:
        """One feature; FeatureNotFoundError when missing or outside ``scope`` (alike)."""
        layer = self._layer(layer_id, scope)
        f = self._current(layer, fid, scope)
        if scope.reads is not None and layer.personal:
            scope.reads.saw(layer.id, [f.id], [f.properties.get(relations.GRID_KEY)])
        return mask_feature(layer, f, scope)

    def _current(self, layer: Layer, fid: int, scope: Scope) -> Feature:
        """The stored feature, unmasked (OutOfScopeError if it exists outside the scope)."""
        sel = self._selection(layer, Query(ids=[int(fid)]), scope)
        fs = self.backend.select(layer, sel, count=False)
        if not len(fs):
            msg = f"no feature {fid} in collection {layer.id}"
            if scope.limits(layer) and self.backend.count(layer, Selection(ids=[int(fid)])):
                raise OutOfScopeError(msg)
            raise FeatureNotFoundError(msg)
        return next(iter(fs))

    def extent(self, layer_id: str, *, scope: Scope = Scope.ALL) -> BBox | None:
        """Bounding box of the layer's features within ``scope`` (None when empty)."""
        layer = self._layer(layer_id, scope)
        return self.backend.envelope(layer, self._selection(layer, _ALL_ROWS, scope))

    def time_extent(self, layer_id: str, *, scope: Scope = Scope.ALL) -> tuple[str, str] | None:
        """(earliest, latest) value of the layer's temporal property within ``scope``."""
        layer = self._layer(layer_id, scope)
        if layer.temporal is None:
            return None
        readable = Query(filters=[within_calendar(layer, layer.temporal)])
        found = self.backend.min_max(layer, layer.temporal, self._selection(layer, readable, scope))
        return None if found is None else (str(found[0]), str(found[1]))

    # ---------------------------------------------------------------- locating

    def _locator(self, target: Layer) -> tuple[PolygonIndex, npt.NDArray[np.int64]] | None:
        """Polygon index over the target layer's features (rebuilt when it changes)."""
        stamp = self.backend.stamp(target.id)
        cached = self._located.get(target.id)
        if cached is not None and cached[0] == stamp and stamp >= 0:
            return cached[1], cached[2]
        fs = self.backend.select(target, count=False, order=[("id", False)]).with_geometry()
        if not len(fs):
            self._located.pop(target.id, None)
            return None
        built = (stamp, PolygonIndex(fs.geometries, cells=16_384), fs.ids)
        with self._lock:
            self._located[target.id] = built
        return built[1], built[2]

    def locate(self, target_id: str, geoms: npt.ArrayLike) -> npt.NDArray[np.int64] | None:
        """Id of the feature of ``target_id`` each geometry lies in (-1: none); None if the
        target layer is empty."""
        lookup = self._locator(get_layer(target_id))
        if lookup is None:
            return None
        index, ids = lookup
        pos = index.lookup_geometries(geoms)
        return np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)

    def derive_grid_ids(self, geoms: npt.ArrayLike) -> npt.NDArray[np.int64] | None:
        """Grid id of each geometry's location (-1 where in no grid); None if no grids exist."""
        grid_ref = next(
            (p.ref for lay in LAYERS for p in relations.derived_references(lay) if p.ref), None
        )
        return None if grid_ref is None else self.locate(grid_ref, geoms)

    # ---------------------------------------------------------------- writing

    def _prepare(
        self,
        layer: Layer,
        geoms: npt.NDArray[np.object_],
        props: Sequence[Mapping[str, Any]],
        scope: Scope,
        *,
        trusted: bool,
    ) -> tuple[npt.NDArray[np.object_], list[dict[str, Any]]]:
        """Validate geometries and properties and derive located references; raise before
        any write. Returns the geometries promoted to the layer's type and clean values."""
        if len(geoms) != len(props):
            msg = f"{len(geoms)} geometries but {len(props)} property sets"
            raise InvalidFeatureError(msg)
        geo.check_geometries(
            geoms,
            accepted_types=frozenset(t for t in _GEOMETRY_TYPES if layer.accepts_geometry(t)),
            service_area=self._service_area,
            layer_id=layer.id,
        )
        geoms = geo.promote(geoms, layer.geometry_type)
        clean: list[dict[str, Any]] = []
        for i, p in enumerate(props):
            if isinstance(p, Checked) and p.layer_id == layer.id and p.synthetic == self.synthetic:
                clean.append(dict(p))  # validated by check_properties: not twice
                continue
            try:
                clean.append(
                    layer.validate_properties(p, allow_derived=trusted, synthetic=self.synthetic)
                )
            except InvalidFeatureError as exc:
                msg = f"feature {i}: {exc}"
                raise InvalidFeatureError(msg) from None
        for p in relations.derived_references(layer):
            found = self.locate(p.ref or "", geoms)
            if found is None:
                continue
            outside = np.flatnonzero(found < 0)
            if outside.size:
                i = int(outside[0])
                x, y = shapely.get_coordinates(geoms[i])[0]
                msg = (
                    f"feature {i}: location ({x:.6f}, {y:.6f}) lies in no {_one(p.ref)}; "
                    f"every feature of this layer must lie inside one {_one(p.ref)}"
                )
                raise InvalidGeometryError(msg)
            for d, v in zip(clean, found.tolist(), strict=True):
                d[p.name] = v
        if scope.limits(layer):
            for i, d in enumerate(clean):
                if not scope.allows_grid(d.get(relations.GRID_KEY)):
                    msg = f"feature {i}: outside the grids you may edit"
                    raise OutOfScopeError(msg)
        relations.check_references(self.backend, layer, clean, geoms)
        return geoms, clean

    def check_properties(
        self, layer_id: str, properties: Sequence[Mapping[str, Any]]
    ) -> list[Checked | InvalidFeatureError]:
        """Each property set validated as :meth:`insert` validates it, or the error in its
        place (a bulk import reports every bad row). The checked sets may be passed to
        :meth:`insert` as they are, which then does not validate them again."""
        layer = get_layer(layer_id)
        out: list[Checked | InvalidFeatureError] = []
        for p in properties:
            try:
                out.append(
                    Checked(
                        layer.validate_properties(p, synthetic=self.synthetic),
                        layer_id,
                        self.synthetic,
                    )
                )
            except InvalidFeatureError as exc:
                out.append(exc)
        return out

    def insert(
        self,
        layer_id: str,
        geometries: Sequence[BaseGeometry] | npt.NDArray[np.object_],
        properties: Sequence[Mapping[str, Any]],
        *,
        scope: Scope = Scope.ALL,
        progress: Progress | None = None,
        trusted: bool = False,
    ) -> list[int]:
        """Insert features in one transaction: all are written or none.

        Everything is validated before the first row is written. ``trusted=True`` lets a
        bulk loader set derived properties itself (they are still validated). ``progress``
        is called with the running count after each chunk of rows.
        """
        layer = self._layer(layer_id, scope)
        require(scope.allows_write(layer.id), f"you may not add features to {layer.id}")
        geoms = np.asarray(
            list(geometries) if not isinstance(geometries, np.ndarray) else geometries, dtype=object
        )
        with self.backend.transaction(), self._rolled_back_forgets():
            # checked inside the transaction: a referenced feature cannot vanish meanwhile
            geoms, clean = self._prepare(layer, geoms, properties, scope, trusted=trusted)
            return self.backend.insert_rows(layer, geoms, clean, progress=progress)

    def load(
        self,
        layer_id: str,
        ids: Sequence[int],
        geometries: npt.NDArray[np.object_],
        properties: Sequence[Mapping[str, Any]],
        versions: Sequence[int],
    ) -> None:
        """Write features as another store holds them, ids and versions kept (a copy).

        Checked as a trusted bulk load is; located references are derived again, so a
        copy agrees with its own grids. Call inside :meth:`transaction`.
        """
        layer = get_layer(layer_id)
        geoms, clean = self._prepare(
            layer, np.asarray(geometries, dtype=object), properties, Scope.ALL, trusted=True
        )
        self.backend.load_rows(layer, ids, geoms, clean, versions)

    def update(
        self,
        layer_id: str,
        fid: int,
        *,
        geometry: BaseGeometry | None = None,
        properties: Mapping[str, Any] | None = None,
        replace: bool = False,
        expected_version: int | None = None,
        scope: Scope = Scope.ALL,
    ) -> Feature:
        """Update one feature and bump its version; nothing changes if any check fails.

        ``replace=True`` replaces every property (absent ones become null) and requires a
        geometry; otherwise ``properties`` are merged (a None value clears one).
        ``expected_version`` guards against lost updates (VersionConflictError).
        """
        layer = self._layer(layer_id, scope)
        with self.backend.transaction(), self._rolled_back_forgets():
            current = self._current(layer, fid, scope)
            require(scope.allows_write(layer.id), f"you may not edit {layer.id}")
            require(not layer.append_only, _APPEND_ONLY.format(layer.id))
            _check_version(layer, fid, current.version, expected_version)
            properties = unmask_unchanged(layer, properties, current, scope)
            if replace and geometry is None:
                msg = "a replacement needs a geometry"
                raise InvalidFeatureError(msg)
            derived = {p.name for p in layer.properties if p.derived}
            if replace:
                merged = dict(properties or {})
            else:
                merged = {k: v for k, v in current.properties.items() if k not in derived}
                merged.update(properties or {})
            geom = geometry if geometry is not None else current.geometry
            geoms, clean = self._prepare(
                layer, np.asarray([geom], dtype=object), [merged], scope, trusted=False
            )
            if scope.limits(layer) and not scope.allows_grid(clean[0].get(relations.GRID_KEY)):
                msg = f"no feature {fid} in collection {layer_id}"
                raise OutOfScopeError(msg)
            if clean[0] == current.properties and shapely.equals_exact(
                geoms[0], current.geometry, tolerance=0
            ):  # nothing changes: no write, no new version (other editors' ETags hold)
                return mask_feature(layer, current, scope)
            if not self.backend.update_row(layer, fid, geoms[0], clean[0], current.version):
                _check_version(layer, fid, current.version + 1, current.version)
            if geometry is not None:
                relations.check_named_by(
                    self.backend, layer, fid, geoms[0], clean[0].get(relations.GRID_KEY)
                )
                if relations.located_by(layer.id):
                    self._relocate(layer, shapely.union(current.geometry, geoms[0]).bounds)
            return mask_feature(layer, self._current(layer, fid, Scope.ALL), scope)

    def reshape(
        self,
        layer_id: str,
        geometries: Mapping[int, BaseGeometry],
        *,
        expected_versions: Mapping[int, int] | None = None,
        scope: Scope = Scope.ALL,
    ) -> list[Feature]:
        """New geometries for several features at once, in one transaction: every row is
        checked and written, and only then are the features located in them derived again
        (grids redrawn together: land passing from one to another is never in two grids, or
        in none, between the steps). Properties stay as they are."""
        layer = self._layer(layer_id, scope)
        expected = expected_versions or {}
        with self.backend.transaction(), self._rolled_back_forgets():
            require(scope.allows_write(layer.id), f"you may not edit {layer.id}")
            require(not layer.append_only, _APPEND_ONLY.format(layer.id))
            derived = {p.name for p in layer.properties if p.derived}
            written: list[tuple[int, BaseGeometry, dict[str, Any]]] = []
            boxes = []
            for fid, geom in geometries.items():
                current = self._current(layer, fid, scope)
                _check_version(layer, fid, current.version, expected.get(fid))
                kept = {k: v for k, v in current.properties.items() if k not in derived}
                geoms, clean = self._prepare(
                    layer, np.asarray([geom], dtype=object), [kept], scope, trusted=False
                )
                if not self.backend.update_row(layer, fid, geoms[0], clean[0], current.version):
                    _check_version(layer, fid, current.version + 1, current.version)
                written.append((fid, geoms[0], clean[0]))
                boxes.append(shapely.box(*shapely.union(current.geometry, geoms[0]).bounds))
            if written and relations.located_by(layer.id):
                self._relocate(layer, shapely.union_all(boxes).bounds)
            for fid, geom, props in written:
                relations.check_named_by(
                    self.backend, layer, fid, geom, props.get(relations.GRID_KEY)
                )
            return [
                mask_feature(layer, self._current(layer, f, Scope.ALL), scope) for f, *_ in written
            ]

    def delete(
        self,
        layer_id: str,
        fid: int,
        *,
        expected_version: int | None = None,
        scope: Scope = Scope.ALL,
    ) -> None:
        """Delete one feature (FeatureNotFoundError / VersionConflictError as for update)."""
        layer = self._layer(layer_id, scope)
        with self.backend.transaction(), self._rolled_back_forgets():
            current = self._current(layer, fid, scope)
            require(scope.allows_delete(layer.id), f"you may not delete features of {layer.id}")
            require(not layer.append_only, _APPEND_ONLY.format(layer.id))
            _check_version(layer, fid, current.version, expected_version)
            relations.refuse_if_named(self.backend, layer, fid)
            if not self.backend.delete_row(layer, fid, current.version):
                _check_version(layer, fid, current.version + 1, current.version)

    def relocate(self, layer_id: str, bounds: tuple[float, ...]) -> None:
        """Derive again, within ``bounds``, the references located in ``layer_id`` (after
        several features of it were written at once); IntegrityError if one is left in none."""
        with self.backend.transaction(), self._rolled_back_forgets():
            self._relocate(get_layer(layer_id), bounds)

    def _relocate(self, target: Layer, bounds: tuple[float, ...]) -> None:
        """After a feature of ``target`` (a grid) moved: derive again the references of the
        features around it that are located in ``target``; a feature left in none refuses
        the edit. Runs inside the caller's transaction."""
        self._located.pop(target.id, None)
        box = (bounds[0], bounds[1], bounds[2], bounds[3])
        moved_by_layer: list[tuple[Layer, dict[int, int]]] = []
        for other, p in relations.located_by(target.id):
            found = self.backend.select(other, Selection(bbox=box), count=False).with_geometry()
            if not len(found):
                continue
            new = self.locate(target.id, found.geometries)
            if new is None or (new < 0).any():
                k = 0 if new is None else int(np.flatnonzero(new < 0)[0])
                msg = (
                    f"this edit would leave {other.id} {int(found.ids[k])} in no "
                    f"{_one(target.id)}; each must lie in exactly one {_one(target.id)}"
                )
                raise IntegrityError(msg)
            changed = [
                (int(i), int(g))
                for i, props, g in zip(found.ids, found.properties, new.tolist(), strict=True)
                if props.get(p.name) != g
            ]
            if changed:
                self.backend.set_values(other, p.name, changed)
                moved_by_layer.append((other, dict(changed)))
        for other, moved in moved_by_layer:
            relations.check_same_grid(self.backend, other, moved)


class Checked(dict[str, Any]):
    """A property set validated by :meth:`FeatureStore.check_properties` for one layer."""

    def __init__(self, values: Mapping[str, Any], layer_id: str, synthetic: bool) -> None:
        super().__init__(values)
        self.layer_id = layer_id
        self.synthetic = synthetic


def _check_equal_value(prop: Any, value: Any) -> None:
    """QueryError (400) for a value no stored one can equal, the same on every backend:
    text with a NUL character (a date or time that is none: gridmap.cql.equal_time)."""
    if isinstance(value, str) and "\x00" in value:
        msg = f"{prop.name}: a value may not hold the NUL character (U+0000)"
        raise QueryError(msg)


def _one(layer_id: str | None) -> str:
    """A layer's id as the name of one of its features ("grids" → "grid")."""
    return (layer_id or "").removesuffix("s")


def _check_version(layer: Layer, fid: int, current: int, expected: int | None) -> None:
    if expected is not None and current != expected:
        msg = (
            f"feature {fid} of {layer.id} is at version {current}, "
            f"not {expected}; fetch it again and reapply your change"
        )
        raise VersionConflictError(msg)
