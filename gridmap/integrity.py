"""Structural rules of the map of governance, checked over a whole store."""

from __future__ import annotations

import numpy as np
import shapely

from gridmap.assign import PolygonIndex
from gridmap.errors import InvalidFeatureError
from gridmap.layers import LAYERS
from gridmap.store.base import Store

# Tolerances in degrees (≈ 1 cm and ≈ 1 m² at 35° N).
_EPS_DEG = 1e-7
_AREA_EPS = 1e-10


def check_store(store: Store) -> list[str]:
    """Return a list of problems (empty when the store is consistent).

    Rules: every grid lies in its community and every community in its zone; grids of a
    community do not overlap; every household and building lies in exactly one grid and
    carries that grid's id; every reference the registry declares names an existing
    feature (in the same grid where declared so); every stored value passes the property
    rules of today (identifier formats, no control characters), so data written before a
    rule existed, or by another program, is found.
    """
    problems: list[str] = []
    zones = store.query("zones")
    comms = store.query("communities")
    grids = store.query("grids")
    zone_geom = dict(zip(zones.ids.tolist(), zones.geometries, strict=True))
    comm_geom = dict(zip(comms.ids.tolist(), comms.geometries, strict=True))

    for cid, g, p in zip(comms.ids.tolist(), comms.geometries, comms.properties, strict=True):
        z = p.get("zone_id")
        if z is None or z not in zone_geom:
            problems.append(f"community {cid} ({p.get('name')}) references no existing zone")
        elif not zone_geom[z].buffer(_EPS_DEG).covers(g):
            problems.append(f"community {cid} ({p.get('name')}) is not inside zone {z}")

    by_comm: dict[int, list[int]] = {}
    for i, (gid, g, p) in enumerate(
        zip(grids.ids.tolist(), grids.geometries, grids.properties, strict=True)
    ):
        c = p.get("community_id")
        if c not in comm_geom:
            problems.append(f"grid {gid} ({p.get('code')}) references no existing community")
            continue
        by_comm.setdefault(c, []).append(i)
        if not comm_geom[c].buffer(_EPS_DEG).covers(g):
            problems.append(f"grid {gid} ({p.get('code')}) is not inside community {c}")

    for c, idx in by_comm.items():
        geoms = grids.geometries[idx]
        tree = shapely.STRtree(geoms)
        a, b = tree.query(geoms, predicate="intersects")
        for i, j in zip(a.tolist(), b.tolist(), strict=True):
            if i < j and shapely.area(shapely.intersection(geoms[i], geoms[j])) > _AREA_EPS:
                problems.append(
                    f"grids {grids.ids[idx[i]]} and {grids.ids[idx[j]]} of community {c} overlap"
                )

    if len(grids):
        index = PolygonIndex(grids.geometries, cells=16_384)
        for layer in ("households", "buildings"):
            fs = store.query(layer)
            if not len(fs):
                continue
            pos = index.lookup_geometries(fs.geometries)
            where = np.where(pos >= 0, grids.ids[np.maximum(pos, 0)], -1)
            stored = np.array(
                [-2 if p.get("grid_id") is None else p["grid_id"] for p in fs.properties]
            )
            for k in np.flatnonzero(where < 0)[:10].tolist():
                problems.append(f"{layer} {fs.ids[k]} lies in no grid")
            wrong = np.flatnonzero((where >= 0) & (where != stored))
            for k in wrong[:10].tolist():
                problems.append(
                    f"{layer} {fs.ids[k]} has grid_id {stored[k]} but lies in grid {where[k]}"
                )
            # exactly one: a point on a shared edge would touch two grids
            if layer == "households":
                hits = shapely.STRtree(grids.geometries).query(
                    fs.geometries, predicate="intersects"
                )
                counts = np.bincount(hits[0], minlength=len(fs))
                for k in np.flatnonzero(counts > 1)[:10].tolist():
                    problems.append(f"household {fs.ids[k]} lies on the edge of several grids")
    problems += _reference_problems(store)
    problems += _value_problems(store)
    return problems


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
            bad = 0
            for fid, q in zip(fs.ids.tolist(), fs.properties, strict=True):
                v = q.get(p.name)
                if v is None:
                    continue
                if v not in known:
                    why = f"names {target} {v}, which does not exist"
                elif p.same_grid and known[v] != q.get("grid_id"):
                    why = f"lies in grid {q.get('grid_id')} but its {target} {v} in grid {known[v]}"
                else:
                    continue
                bad += 1
                if bad <= 10:
                    out.append(f"{layer.id} {fid} {p.name}: {why}")
    return out


def _value_problems(store: Store) -> list[str]:
    """Stored values that today's property rules refuse (checked as a write would be)."""
    out: list[str] = []
    synthetic = bool(getattr(store, "synthetic", False))
    for layer in LAYERS:
        fs = store.query(layer.id)
        bad = 0
        for fid, q in zip(fs.ids.tolist(), fs.properties, strict=True):
            try:
                layer.validate_properties(q, allow_derived=True, synthetic=synthetic)
            except InvalidFeatureError as exc:
                bad += 1
                if bad <= 10:
                    out.append(f"{layer.id} {fid}: {exc}")
    return out
