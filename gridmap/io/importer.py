"""Importing one file into one layer: read, map, check every row, then write all or nothing.

Modes: ``append`` adds rows whose key (or id) is new, skips rows identical to a stored
feature and refuses rows that differ from the feature with their key; ``upsert`` updates
those instead; ``replace`` also deletes the stored features the file does not hold. So
running the same file twice writes nothing the second time. The whole import is one
transaction of the store, with its audit entry and an ``import`` record (the file's
SHA-256 and counts); a refused import writes nothing and is audited as refused.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely

from gridmap.accounts import audit
from gridmap.errors import (
    IntegrityError,
    InvalidFeatureError,
    PermissionDeniedError,
    VersionConflictError,
)
from gridmap.io import checks, fields, sources, topology
from gridmap.io.report import ImportRefusedError, Report
from gridmap.io.rows import Candidates, candidates
from gridmap.layers import Layer, get_layer
from gridmap.security import Principal, Role, mask_value, scope_for
from gridmap.store import FeatureStore, Query, relations

Mode = Literal["append", "upsert", "replace"]
MODES = ("append", "upsert", "replace")


@dataclass
class Options:
    """What to import and how (the CLI's and the API's options, one to one)."""

    layer: str
    mode: Mode = "append"
    crs: str | None = None
    encoding: str | None = None
    mapping: Path | None = None
    source_layer: str | None = None
    dry_run: bool = False
    repair: bool = False
    allow_outside_grid: bool = False
    snap_m: float = 0.5
    min_area_m2: float = 1.0


@dataclass
class _Plan:
    rows: Candidates
    clean: dict[int, dict[str, Any]]
    names: frozenset[str]  # the properties the file gives: compared and written
    inserts: list[int]
    updates: list[tuple[int, int]]  # (row index, feature id)
    deletes: list[int]
    versions: dict[int, int]  # feature id → version the checks saw (a change meanwhile: 412)


def run(
    store: FeatureStore,
    path: Path,
    options: Options,
    *,
    principal: Principal,
    source: str | None = None,
    request_id: str | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Import ``path`` into ``options.layer``; the report of what was (or would be) done.

    Raises ImportRefusedError (with the report) if any row has a problem; nothing is
    written then. Only a subdistrict admin imports.
    """
    layer = get_layer(options.layer)
    report = Report(file=name or Path(path).name, layer=layer.id, mode=options.mode)
    report.dry_run = options.dry_run
    say = progress or (lambda _m: None)
    try:
        _allowed(principal, layer, options)
        report.digest = _digest(Path(path))
        with tempfile.TemporaryDirectory(prefix="gridmap-import-") as work:
            say("reading")
            table = sources.read(
                Path(path),
                encoding=options.encoding,
                source_layer=options.source_layer,
                work_dir=Path(work),
            )
        plan = _check(store, layer, table, options, report, principal, say)
        report.problems.sort(key=lambda p: (p.row is not None, p.row or 0))
        if not report.ok:
            raise ImportRefusedError(report)
        if options.dry_run:
            _audit(store, principal, report, "dry-run", "nothing written", source, request_id)
            return report
        say("writing")
        _commit(store, layer, plan, report, principal, source, request_id)
    except InvalidFeatureError as exc:
        if not isinstance(exc, ImportRefusedError):
            report.add(None, str(exc), "file")
            exc = ImportRefusedError(report)
        _audit(store, principal, report, "refused", _refused(report), source, request_id)
        raise exc from None
    except (VersionConflictError, IntegrityError) as exc:  # found while writing: nothing kept
        report.add(None, f"{exc}; nothing was imported: check the file again and retry", "conflict")
        _audit(store, principal, report, "refused", _refused(report), source, request_id)
        raise
    return report


def _allowed(principal: Principal, layer: Layer, options: Options) -> None:
    if principal.role is not Role.SUBDISTRICT_ADMIN:
        raise PermissionDeniedError("only a subdistrict admin (街道管理员) imports files")
    if layer.append_only:
        msg = f"{layer.id} is a ledger: visits are recorded in batches (POST /visits/batches)"
        raise PermissionDeniedError(msg)
    if options.mode not in MODES:
        raise InvalidFeatureError(f"mode must be one of {', '.join(MODES)}")
    if not (0 <= options.snap_m <= 5) or not (0 <= options.min_area_m2 <= 1000):
        raise InvalidFeatureError("snap must lie within 0–5 m and the area tolerance 0–1000 m²")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _check(
    store: FeatureStore,
    layer: Layer,
    table: sources.Table,
    options: Options,
    report: Report,
    principal: Principal,
    say: Callable[[str], None],
) -> _Plan:
    report.format, report.rows, report.notes = table.format, len(table), list(table.notes)
    report.encoding = table.encoding
    cmap = (
        fields.declared(layer, table.columns, options.mapping)
        if options.mapping is not None
        else fields.detect(layer, table.columns, table.values)
    )
    report.columns, report.ignored_columns = dict(cmap.columns), list(cmap.ignored)
    say("checking rows")
    c = candidates(store, layer, table, cmap, options.crs, report)
    bad: set[int] = set()
    checks.geometry(layer, c, report, bad, repair=options.repair)
    grid_of = checks.location(
        store, layer, c, report, bad, allow_outside=options.allow_outside_grid
    )
    stored = store.query(layer.id, Query())
    by_id = {int(i): k for k, i in enumerate(stored.ids.tolist())}
    _unmask(layer, c, stored, by_id, principal)
    clean = checks.values(store, layer, c, report, bad)
    checks.references(store, layer, c, clean, grid_of, report, bad)
    checks.duplicates(layer, c, clean, report, bad)
    plan = _match(layer, c, clean, stored, by_id, options, report)
    if layer.tiles:
        say("checking topology")
        _tiles(store, layer, c, clean, stored, plan, options, report)
    return plan


def _unmask(
    layer: Layer, c: Candidates, stored: Any, by_id: dict[int, int], principal: Principal
) -> None:
    """A masked value (from gridmap's own export) that masks the stored one keeps it."""
    masked = scope_for(principal).masked_in(layer)
    if not masked:
        return
    for i, fid in enumerate(c.ids):
        k = by_id.get(fid) if fid is not None else None
        if k is None:
            continue
        for name in masked:
            now = stored.properties[k].get(name)
            if now is not None and c.properties[i].get(name) == mask_value(name, now):
                c.properties[i][name] = now


def _match(
    layer: Layer,
    c: Candidates,
    clean: dict[int, dict[str, Any]],
    stored: Any,
    by_id: dict[int, int],
    options: Options,
    report: Report,
) -> _Plan:
    index = checks.index_existing(layer, stored.ids.tolist(), stored.properties)
    names = checks.given(c)
    versions = dict(zip(stored.ids.tolist(), stored.versions.tolist(), strict=True))
    plan = _Plan(c, clean, names, [], [], [], versions)
    kept: set[int] = set()
    for i in sorted(clean):
        fid = index.get(("id", c.ids[i])) if c.ids[i] is not None else None
        if fid is None:
            k = checks.key_of(layer, clean[i])
            fid = index.get(k) if k is not None else None
        if fid is None:
            plan.inserts.append(i)
            continue
        if fid in kept:
            report.add(
                c.rows[i], f"names the same stored feature ({fid}) as another row", "duplicate"
            )
            continue
        kept.add(fid)
        key = checks.key_of(layer, clean[i])
        other = index.get(key) if key is not None else None
        if other is not None and other != fid:  # matched by id, but its key is another's
            what = "/".join(key[0]) if key else "key"
            report.add(
                c.rows[i], f"its {what} is feature {other}'s, not feature {fid}'s", "duplicate"
            )
            continue
        k = by_id[fid]
        same = checks.comparable(stored.properties[k], names) == checks.comparable(
            clean[i], names
        ) and checks.same_geometry(stored.geometries[k], c.geometries[i])
        if same:
            report.unchanged += 1
        elif options.mode == "append":
            msg = f"differs from stored feature {fid} with the same key; --mode upsert updates it"
            report.add(c.rows[i], msg, "exists")
        else:
            plan.updates.append((i, fid))
    if options.mode == "replace":
        plan.deletes = sorted(set(stored.ids.tolist()) - kept)
        if not clean and plan.deletes:
            msg = (
                f"the file holds no row to keep: replace would delete every {checks.one(layer.id)}"
            )
            report.add(None, msg, "file")
    report.inserted, report.updated, report.deleted = (
        len(plan.inserts),
        len(plan.updates),
        len(plan.deletes),
    )
    return plan


def _tiles(
    store: FeatureStore,
    layer: Layer,
    c: Candidates,
    clean: dict[int, dict[str, Any]],
    stored: Any,
    plan: _Plan,
    options: Options,
    report: Report,
) -> None:
    """Snap the imported polygons to their neighbours; refuse overlaps and gaps."""
    parent = topology.parent_prop(layer)
    touched = {fid for _, fid in plan.updates} | set(plan.deletes)
    tiles: list[topology.Tile] = []
    for k, fid in enumerate(stored.ids.tolist()):
        if fid not in touched:
            p = stored.properties[k].get(parent) if parent else None
            tiles.append(topology.Tile(f"{layer.id} {fid}", stored.geometries[k], p, None))
    first = len(tiles)
    rows = [i for i in plan.inserts] + [i for i, _ in plan.updates]
    for i in rows:
        p = clean[i].get(parent) if parent else None
        tiles.append(topology.Tile(f"row {c.rows[i]}", c.geometries[i], p, c.rows[i]))
    parents = _parents(store, layer, parent)
    for t, shift in topology.snap(tiles, parents, options.snap_m):
        what = f"moved ≤ {shift:.2f} m" if shift >= 0.005 else "vertices shared, none moved"
        report.snapped.append(f"{tiles[t].key}: snapped to its neighbours ({what})")
    for n, i in enumerate(rows):
        g = tiles[first + n].geometry
        if not layer.accepts_geometry(g.geom_type):  # snapping pinched it into pieces
            msg = f"snapped to its neighbours it falls into pieces ({g.geom_type}); redraw it"
            report.add(c.rows[i], msg, "topology")
        c.geometries[i] = g
    for a, b, area, where in topology.overlaps(tiles, options.min_area_m2):
        row = tiles[b].row if tiles[b].row is not None else tiles[a].row
        msg = f"{tiles[a].key} and {tiles[b].key} overlap by {area:.1f} m² at {where}"
        report.add(row, msg, "topology")
    for pid, area, where in topology.gaps(tiles, parents, options.min_area_m2):
        inside = f" inside {parent.removesuffix('_id')} {pid}" if pid is not None and parent else ""
        report.add(
            None,
            f"a gap of {area:.1f} m²{inside} at {where}: no feature of {layer.id} covers it",
            "topology",
        )


def _parents(store: FeatureStore, layer: Layer, parent: str | None) -> dict[int, Any]:
    if parent is None:
        return {}
    target = layer.by_name[parent].ref or ""
    fs = store.query(target, Query())
    return dict(zip(fs.ids.tolist(), fs.geometries, strict=True))


def _commit(
    store: FeatureStore,
    layer: Layer,
    plan: _Plan,
    report: Report,
    principal: Principal,
    source: str | None,
    request_id: str | None,
) -> None:
    """All writes, the import record and the audit entry in one transaction."""
    c, clean = plan.rows, plan.clean
    with store.transaction():
        boxes = []
        if plan.inserts:
            geoms = np.array([c.geometries[i] for i in plan.inserts], dtype=object)
            props = [clean[i] for i in plan.inserts]  # checked by the store: not again
            store.insert(layer.id, geoms, props)
            boxes.extend(geoms)
        moved = {fid: c.geometries[i] for i, fid in plan.updates}
        located = bool(relations.located_by(layer.id))
        if located and moved:
            store.reshape(layer.id, moved, expected_versions=plan.versions)
        for i, fid in plan.updates:
            store.update(
                layer.id,
                fid,
                geometry=None if located else c.geometries[i],
                properties=checks.only(clean[i], plan.names),
                expected_version=None if located else plan.versions[fid],
            )
        boxes.extend(moved.values())
        if located and boxes:
            store.relocate(layer.id, shapely.union_all(boxes).bounds)
        for fid in plan.deletes:
            store.delete(layer.id, fid, expected_version=plan.versions[fid])
        counts = {
            "inserted": report.inserted,
            "updated": report.updated,
            "deleted": report.deleted,
            "unchanged": report.unchanged,
        }
        store.add_document(
            "import",
            {
                "file": report.file,
                "sha256": report.digest,
                "layer": layer.id,
                "mode": report.mode,
                **counts,
            },
            created_by=principal.username or None,
        )
        done = ", ".join(f"{k} {v}" for k, v in counts.items())
        _audit(store, principal, report, "ok", done, source, request_id)
    report.committed = True


def _audit(
    store: FeatureStore,
    principal: Principal,
    report: Report,
    result: str,
    what: str,
    source: str | None,
    rid: str | None,
) -> None:
    """The import's audit entry: the file, its rows and digest, and ``what`` came of it."""
    audit(
        store,
        principal,
        "import",
        result=result,
        object=f"{report.layer}: {report.file}"[:200],
        source=source,
        request_id=rid,
        detail=f"{report.rows} rows, sha256 {report.digest[:16]}; {what}"[:1000],
    )


def _refused(report: Report) -> str:
    first = report.problems[0].message[:300] if report.problems else ""
    return f"{report.problem_count} problems; first: {first}"
