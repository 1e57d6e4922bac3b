"""Structural rules of the map of governance, checked over a whole store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import shapely

from gridmap.assign import PolygonIndex
from gridmap.cql import times
from gridmap.errors import InvalidFeatureError
from gridmap.layers import LAYERS, Prop
from gridmap.store.base import ID_LIMIT, Query, Store
from gridmap.store.core import UNFINISHED

# Tolerances in degrees (≈ 1 cm and ≈ 1 m² at 35° N).
_EPS_DEG = 1e-7
_AREA_EPS = 1e-10
SHOWN = 10
"""Problems of one kind listed one by one; the rest are counted."""


def _listed(kind: str, problems: Iterable[str]) -> list[str]:
    """Up to SHOWN problems of one kind, then how many more there are."""
    items = list(problems)
    more = len(items) - SHOWN
    return items[:SHOWN] + ([f"… and {more} more: {kind}"] if more > 0 else [])


def check_store(store: Store) -> list[str]:
    """Return a list of problems (empty when the store is consistent).

    Rules: every grid lies in its community and every community in its zone; grids of a
    community do not overlap; every household and building lies in exactly one grid and
    carries that grid's id; every reference the registry declares names an existing
    feature (in the same grid where declared so); every stored value passes the property
    rules of today and is in its normal form (identifiers, local times), and every id lies
    in 1 … ID_LIMIT - 1, so data written
    before a rule existed, or by another program, is found. Each kind of problem lists
    its first cases and counts the rest.
    """
    problems: list[str] = []
    unfinished = store.meta(UNFINISHED)
    if unfinished:
        problems.append(
            f"the store's build was interrupted and never finished ({unfinished}): "
            "make it again in an empty database or a new file"
        )
    # features without geometry are reported by _geometry_problems and left out here
    zones = store.query("zones").with_geometry()
    comms = store.query("communities").with_geometry()
    grids = store.query("grids").with_geometry()
    zone_geom = dict(zip(zones.ids.tolist(), zones.geometries, strict=True))
    comm_geom = dict(zip(comms.ids.tolist(), comms.geometries, strict=True))

    outside = []
    for cid, g, p in zip(comms.ids.tolist(), comms.geometries, comms.properties, strict=True):
        z = p.get("zone_id")
        if z is None or z not in zone_geom:
            outside.append(f"community {cid} ({p.get('name')}) references no existing zone")
        elif not zone_geom[z].buffer(_EPS_DEG).covers(g):
            outside.append(f"community {cid} ({p.get('name')}) is not inside zone {z}")
    problems += _listed("communities outside their zone", outside)

    by_comm: dict[int, list[int]] = {}
    outside = []
    for i, (gid, g, p) in enumerate(
        zip(grids.ids.tolist(), grids.geometries, grids.properties, strict=True)
    ):
        c = p.get("community_id")
        if c not in comm_geom:
            outside.append(f"grid {gid} ({p.get('code')}) references no existing community")
            continue
        by_comm.setdefault(c, []).append(i)
        if not comm_geom[c].buffer(_EPS_DEG).covers(g):
            outside.append(f"grid {gid} ({p.get('code')}) is not inside community {c}")
    problems += _listed("grids outside their community", outside)

    overlaps = []
    for c, idx in by_comm.items():
        geoms = grids.geometries[idx]
        a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
        for i, j in zip(a.tolist(), b.tolist(), strict=True):
            if i < j and shapely.area(shapely.intersection(geoms[i], geoms[j])) > _AREA_EPS:
                overlaps.append(
                    f"grids {grids.ids[idx[i]]} and {grids.ids[idx[j]]} of community {c} overlap"
                )
    problems += _listed("overlapping grids", overlaps)
    if len(grids):
        problems += _membership_problems(store, grids)
    problems += _reference_problems(store)
    problems += _value_problems(store)
    problems += _geometry_problems(store)
    problems += _ledger_problems(store)
    return problems


def _geometry_problems(store: Store) -> list[str]:
    """Geometries that are missing, empty, unreadable, of the wrong type, invalid, or
    outside the service area (another program may have written them)."""
    out: list[str] = []
    area = store.service_area
    for layer in LAYERS:
        fs = store.query(layer.id)
        found = []
        for fid, g in zip(fs.ids.tolist(), fs.geometries, strict=True):
            if g is None:
                why = "has no (readable) geometry"
            elif g.is_empty:
                why = "has an empty geometry"
            elif not layer.accepts_geometry(g.geom_type):
                why = f"is a {g.geom_type}, which {layer.id} does not hold"
            elif not shapely.is_valid(g):
                why = f"has an invalid geometry ({shapely.is_valid_reason(g)})"
            elif area is not None and not area.covers(g):
                why = "lies outside the service area"
            else:
                continue
            found.append(f"{layer.id} {fid} {why}")
        out += _listed(f"{layer.id} geometries", found)
    return out


def _membership_problems(store: Store, grids) -> list[str]:  # type: ignore[no-untyped-def]
    """Households and buildings in exactly one grid, carrying its id."""
    out: list[str] = []
    index = PolygonIndex(grids.geometries, cells=16_384)
    for layer in ("households", "buildings"):
        fs = store.query(layer).with_geometry()
        if not len(fs):
            continue
        pos = index.lookup_geometries(fs.geometries)
        where = np.where(pos >= 0, grids.ids[np.maximum(pos, 0)], -1)
        stored = [p.get("grid_id") for p in fs.properties]
        out += _listed(
            f"{layer} in no grid",
            (f"{layer} {fs.ids[k]} lies in no grid" for k in np.flatnonzero(where < 0).tolist()),
        )
        out += _listed(
            f"{layer} with a wrong grid_id",
            (
                f"{layer} {fs.ids[k]} has grid_id {stored[k]} but lies in grid {where[k]}"
                for k in range(len(fs))
                if where[k] >= 0 and where[k] != stored[k]
            ),
        )
        if layer == "households":  # exactly one: a point on a shared edge touches two
            hits = shapely.STRtree(grids.geometries).query(fs.geometries, predicate="intersects")
            counts = np.bincount(hits[0], minlength=len(fs))
            out += _listed(
                "households on the edge of several grids",
                (
                    f"household {fs.ids[k]} lies on the edge of several grids"
                    for k in np.flatnonzero(counts > 1).tolist()
                ),
            )
    return out


def _reference_problems(store: Store) -> list[str]:
    """References that name no feature, or one in another grid where the registry says so."""
    out: list[str] = []
    grids_of: dict[str, dict[int, int | None]] = {}
    for layer in LAYERS:
        refs = [p for p in layer.references if p.name != "grid_id"]
        if not refs:
            continue
        fs = store.query(layer.id)
        for p in refs:
            target = p.ref or ""
            if target not in grids_of:
                t = store.query(target)
                grids_of[target] = {
                    int(i): q.get("grid_id") for i, q in zip(t.ids, t.properties, strict=True)
                }
            known = grids_of[target]
            found = []
            for fid, q in zip(fs.ids.tolist(), fs.properties, strict=True):
                v = q.get(p.name)
                if v is None:
                    continue
                if v not in known:
                    found.append(
                        f"{layer.id} {fid} {p.name}: names {target} {v}, which does not exist"
                    )
                elif p.same_grid and known[v] != q.get("grid_id"):
                    found.append(
                        f"{layer.id} {fid} {p.name}: lies in grid {q.get('grid_id')} "
                        f"but its {target} {v} in grid {known[v]}"
                    )
            out += _listed(f"{layer.id} {p.name} references", found)
    return out


def _ledger_problems(store: Store) -> list[str]:
    """Households whose last visit is not their latest entry in the visit ledger (an edit
    by another program), and ledger rows naming a campaign that does not exist.

    Times are compared as instants (:func:`_instant`), however each is written: another
    program's '2026-11-01T08:00:00.000000' is the ledger's '2026-11-01T08:00:00'. A visit
    whose time is no date cannot be the latest (``_value_problems`` names it)."""
    visits = store.query("visits")
    latest: dict[int, tuple[str, Any, set[str]]] = {}
    campaigns = {d["id"] for d in store.documents("campaign")}
    unknown = []
    for fid, p in zip(visits.ids.tolist(), visits.properties, strict=True):
        h, outcome = p.get("household_id"), p.get("outcome")
        if p.get("campaign_id") is not None and p["campaign_id"] not in campaigns:
            unknown.append(f"visits {fid}: names campaign {p['campaign_id']}, which does not exist")
        at = _instant(p.get("visited_at"))
        if not isinstance(h, int) or at is None:
            continue
        if h not in latest or at > latest[h][0]:
            latest[h] = (at, p.get("visited_at"), {str(outcome)})
        elif at == latest[h][0]:
            latest[h][2].add(str(outcome))
    hh = store.query("households", Query(ids=sorted(latest))) if latest else None
    stale = []
    for fid, p in zip(hh.ids.tolist() if hh else [], hh.properties if hh else [], strict=True):
        at, written, outcomes = latest[fid]
        last = p.get("last_visit_at")
        if _instant(last) != at or p.get("last_visit_status") not in outcomes:
            stale.append(
                f"households {fid}: last visit {last} "
                f"{p.get('last_visit_status')}, but the ledger's latest is {written} "
                f"{'/'.join(sorted(outcomes))}"
            )
    return _listed("households behind their visit ledger", stale) + _listed(
        "visits naming no campaign", unknown
    )


def _instant(value: Any) -> str | None:
    """A stored timestamp (ISO text on both backends, in any form another program wrote)
    as the text it compares as (:func:`gridmap.cql.times.stored`: one text per instant,
    in time order); None when it is no date."""
    return times.stored(value, "datetime")


def _value_problems(store: Store) -> list[str]:
    """Stored values that today's property rules refuse, or that are not in normal form,
    and ids outside 1 … ID_LIMIT - 1 (another program wrote them)."""
    out: list[str] = []
    synthetic = bool(getattr(store, "synthetic", False))
    for layer in LAYERS:
        fs = store.query(layer.id)
        found = []
        times_of = [p for p in layer.properties if p.type in times.TIME_TYPES]
        for fid, q in zip(fs.ids.tolist(), fs.properties, strict=True):
            if not 0 < fid < ID_LIMIT:
                found.append(
                    f"{layer.id} {fid}: its id is outside 1–{ID_LIMIT - 1}, the ids the API "
                    "addresses; give the row a free id in that range"
                )
            unreadable = _unreadable_times(times_of, q)
            found += [f"{layer.id} {fid}: {why}" for why in unreadable.values()]
            if unreadable:  # the rest checked as usual
                q = {k: v for k, v in q.items() if k not in unreadable}
            try:
                clean = layer.validate_properties(
                    q, allow_derived=True, partial=bool(unreadable), synthetic=synthetic
                )
            except InvalidFeatureError:  # name every property at fault, not the first only
                for name, v in q.items():
                    try:
                        layer.validate_properties(
                            {name: v}, allow_derived=True, partial=True, synthetic=synthetic
                        )
                    except InvalidFeatureError as exc:
                        found.append(f"{layer.id} {fid}: {exc}")
                continue
            for name, v in clean.items():
                if v != q.get(name):
                    found.append(
                        f"{layer.id} {fid}: {name} is stored as {q.get(name)!r}, "
                        f"not in its normal form {v!r}"
                    )
        out += _listed(f"invalid {layer.id} values", found)
    return out


def _unreadable_times(props: list[Prop], q: dict[str, Any]) -> dict[str, str]:
    """Date and timestamp values that are no date or time in the years 1–9999 (another
    program wrote them: a PostgreSQL infinity or BC date, read as text; a GeoPackage
    column's text or number, or a day the calendar lacks such as 2021-02-30, which no
    PostgreSQL column can hold), by property name, with what is wrong."""
    out = {}
    for p in props:
        v = q.get(p.name)
        if v is None:
            continue
        kind = "date (YYYY-MM-DD)" if p.type == "date" else "date and time"
        try:
            times.cast(v, p.type)
        except ValueError:
            far = times.beyond(v) if isinstance(v, str) else None
            where = " (outside the years 1–9999)" if far is not None else ""
            out[p.name] = f"{p.name} holds {str(v)[:40]!r}, which is no {kind}{where}"
    return out
