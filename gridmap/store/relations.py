"""The relations the layer registry declares, kept true by every write of the GeoPackage store.

A reference (``Prop.ref``) names an existing feature; ``same_grid`` adds that both lie in
one grid (a household and its building), ``inside`` that the feature lies inside the one
it names (a grid in its community, a community in its zone). Checked on the side that
names (insert, update) and on the side that is named (a move, a delete), inside the
write's transaction, so nothing is half-written. No layer is named here: everything is
read from the registry.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from gridmap import geometry as geo
from gridmap.errors import IntegrityError, InvalidFeatureError
from gridmap.layers import LAYERS, Layer, Prop, get_layer
from gridmap.store.gpkg_sql import _q

INSIDE_TOLERANCE_DEG = 1e-7
"""About a centimetre: shared boundaries drawn apart by rounding still count as inside."""


def _covers(outer: BaseGeometry, inner: BaseGeometry) -> bool:
    return bool(outer.buffer(INSIDE_TOLERANCE_DEG).covers(inner))


def _naming(layer_id: str) -> list[tuple[Layer, Prop]]:
    """(layer, property) pairs that name features of ``layer_id``."""
    return [(other, p) for other in LAYERS for p in other.references if p.ref == layer_id]


def check_references(
    c: sqlite3.Connection,
    layer: Layer,
    clean: Sequence[Mapping[str, Any]],
    geoms: Sequence[BaseGeometry] | np.ndarray,
) -> None:
    """Every reference of the features about to be written names an existing feature that
    agrees with their location; InvalidFeatureError (422) otherwise. The message does not
    tell a missing feature from one elsewhere."""
    for p in layer.references:
        if p.derived:
            continue
        wanted = sorted({d[p.name] for d in clean if d.get(p.name) is not None})
        if not wanted:
            continue
        target = get_layer(p.ref or "")
        grid_col = "grid_id" if target.grid_scoped else "NULL"
        rows = c.execute(
            f"SELECT fid, {grid_col}, geom FROM {_q(target.id)} "
            "WHERE fid IN (SELECT value FROM json_each(?))",
            (json.dumps(wanted),),
        ).fetchall()
        grid_of = {r[0]: r[1] for r in rows}
        shape_of = (
            dict(zip((r[0] for r in rows), geo.from_gpkg_blobs([r[2] for r in rows]), strict=True))
            if (p.inside and rows)
            else {}
        )
        for i, d in enumerate(clean):
            v = d.get(p.name)
            if v is None:
                continue
            if v not in grid_of or (p.same_grid and grid_of[v] != d.get("grid_id")):
                where = " in this feature's grid" if p.same_grid else ""
                msg = f"feature {i}: {p.name} {v} names no feature of {target.id}{where}"
                raise InvalidFeatureError(msg)
            if p.inside and not _covers(shape_of[v], geoms[i]):
                msg = (
                    f"feature {i} does not lie inside {target.id} {v} ({p.name}); redraw "
                    f"{target.id} {v} to take it in first, or name the one it lies in"
                )
                raise InvalidFeatureError(msg)


def check_named_by(
    c: sqlite3.Connection, layer: Layer, fid: int, geometry: BaseGeometry, grid_id: Any
) -> None:
    """Features that name this one still agree with it after it moved (IntegrityError)."""
    for other, p in _naming(layer.id):
        if p.inside:
            rows = c.execute(
                f"SELECT fid, geom FROM {_q(other.id)} WHERE {_q(p.name)} = ?", (int(fid),)
            ).fetchall()
            shapes = geo.from_gpkg_blobs([r[1] for r in rows]) if rows else []
            for (ofid, _), g in zip(rows, shapes, strict=True):
                if not _covers(geometry, g):
                    msg = (
                        f"{other.id} {ofid} would no longer lie inside {layer.id} {fid}; "
                        f"move {other.id} {ofid} (or name another {layer.id}) first"
                    )
                    raise IntegrityError(msg)
        if p.same_grid:
            n = c.execute(
                f"SELECT count(*) FROM {_q(other.id)} WHERE {_q(p.name)} = ? AND grid_id IS NOT ?",
                (int(fid), grid_id),
            ).fetchone()[0]
            if n:
                msg = (
                    f"{n} {other.id} naming {layer.id} {fid} would lie in another grid than "
                    "it; move them with it, or change their reference first"
                )
                raise IntegrityError(msg)


def check_same_grid(c: sqlite3.Connection) -> None:
    """After grid ids were derived again (a grid moved): every same-grid pair still agrees."""
    for layer in LAYERS:
        for p in layer.references:
            if not p.same_grid:
                continue
            row = c.execute(
                f"SELECT t.fid, r.fid FROM {_q(layer.id)} AS t JOIN {_q(p.ref or '')} AS r "
                f"ON t.{_q(p.name)} = r.fid WHERE t.grid_id IS NOT r.grid_id LIMIT 1"
            ).fetchone()
            if row is not None:
                msg = (
                    f"this grid edit would put {layer.id} {row[0]} in another grid than "
                    f"{p.ref} {row[1]} it belongs to; a grid boundary may not cut through it"
                )
                raise IntegrityError(msg)


def refuse_if_named(c: sqlite3.Connection, layer: Layer, fid: int) -> None:
    """IntegrityError (409) if a feature of any layer still names this one."""
    for other, p in _naming(layer.id):
        n = c.execute(
            f"SELECT count(*) FROM {_q(other.id)} WHERE {_q(p.name)} = ?", (int(fid),)
        ).fetchone()[0]
        if n:
            hint = (
                "redraw the neighbouring grids over them first"
                if p.derived
                else f"change their {p.name} first"
            )
            msg = f"{layer.id} {fid} is still named by {n} {other.id}; {hint}, then delete it"
            raise IntegrityError(msg)
