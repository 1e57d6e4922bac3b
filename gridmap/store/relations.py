"""The relations the layer registry declares, kept true by every write, on any backend.

A reference (``Prop.ref``) names an existing feature; ``same_grid`` adds that both lie in
one grid (a household and its building), ``inside`` that the feature lies inside the one
it names (a grid in its community, a community in its zone); a ``derived`` reference is
computed from the location (the grid a household lies in). Checked on the side that
names (insert, update) and on the side that is named (a move, a delete), inside the
write's transaction, so nothing is half-written. No layer is named here: everything is
read from the registry, and rows are read through the backend's :class:`Rows`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from gridmap.errors import IntegrityError, InvalidFeatureError
from gridmap.layers import LAYERS, Layer, Prop, get_layer
from gridmap.store.backend import Rows, Selection

INSIDE_TOLERANCE_DEG = 1e-7
"""About a centimetre: shared boundaries drawn apart by rounding still count as inside."""
GRID_KEY = "grid_id"
"""The property by which a feature belongs to a grid (``Layer.grid_scoped``)."""


def _covers(outer: BaseGeometry, inner: BaseGeometry) -> bool:
    return bool(outer.buffer(INSIDE_TOLERANCE_DEG).covers(inner))


def naming(layer_id: str) -> list[tuple[Layer, Prop]]:
    """(layer, property) pairs that name features of ``layer_id``."""
    return [(other, p) for other in LAYERS for p in other.references if p.ref == layer_id]


def derived_references(layer: Layer) -> list[Prop]:
    """The layer's references computed from its features' locations."""
    return [p for p in layer.references if p.derived]


def located_by(layer_id: str) -> list[tuple[Layer, Prop]]:
    """(layer, property) pairs whose value is derived from where features of ``layer_id`` lie."""
    return [(other, p) for other, p in naming(layer_id) if p.derived]


def check_references(
    rows: Rows,
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
        found = rows.select(target, Selection(ids=wanted), count=False)
        grid_of = {
            int(i): (props.get(GRID_KEY) if target.grid_scoped else None)
            for i, props in zip(found.ids, found.properties, strict=True)
        }
        shape_of = dict(zip(found.ids.tolist(), found.geometries, strict=True))
        for i, d in enumerate(clean):
            v = d.get(p.name)
            if v is None:
                continue
            if v not in grid_of or (p.same_grid and grid_of[v] != d.get(GRID_KEY)):
                where = " in this feature's grid" if p.same_grid else ""
                msg = f"feature {i}: {p.name} {v} names no feature of {target.id}{where}"
                raise InvalidFeatureError(msg)
            if p.inside and not (shape_of[v] is not None and _covers(shape_of[v], geoms[i])):
                msg = (
                    f"feature {i} does not lie inside {target.id} {v} ({p.name}); redraw "
                    f"{target.id} {v} to take it in first, or name the one it lies in"
                )
                raise InvalidFeatureError(msg)


def check_named_by(
    rows: Rows, layer: Layer, fid: int, geometry: BaseGeometry, grid_id: Any
) -> None:
    """Features that name this one still agree with it after it moved (IntegrityError)."""
    for other, p in naming(layer.id):
        if not (p.inside or p.same_grid):
            continue
        found = rows.select(other, Selection(equals={p.name: int(fid)}), count=False)
        if p.inside:
            for ofid, g in zip(found.ids.tolist(), found.geometries, strict=True):
                if g is not None and not _covers(geometry, g):
                    msg = (
                        f"{other.id} {ofid} would no longer lie inside {layer.id} {fid}; "
                        f"move {other.id} {ofid} (or name another {layer.id}) first"
                    )
                    raise IntegrityError(msg)
        if p.same_grid:
            n = sum(1 for props in found.properties if props.get(GRID_KEY) != grid_id)
            if n:
                msg = (
                    f"{n} {other.id} naming {layer.id} {fid} would lie in another grid than "
                    "it; move them with it, or change their reference first"
                )
                raise IntegrityError(msg)


def check_same_grid(rows: Rows, layer: Layer, moved: Mapping[int, int]) -> None:
    """After the grids of some features of ``layer`` were derived again (fid → new grid):
    every same-grid pair they take part in still agrees (IntegrityError otherwise)."""
    if not moved:
        return
    fids = sorted(moved)
    for p in layer.references:  # what the moved features name
        if not p.same_grid:
            continue
        mine = rows.select(layer, Selection(ids=fids), count=False)
        refs = {
            int(i): props.get(p.name) for i, props in zip(mine.ids, mine.properties, strict=True)
        }
        wanted = sorted({v for v in refs.values() if v is not None})
        target = get_layer(p.ref or "")
        theirs = rows.select(target, Selection(ids=wanted), count=False) if wanted else None
        grid_of = (
            {}
            if theirs is None
            else {
                int(i): props.get(GRID_KEY)
                for i, props in zip(theirs.ids, theirs.properties, strict=True)
            }
        )
        for fid, ref in refs.items():
            if ref is not None and grid_of.get(ref) != moved[fid]:
                _split(layer.id, fid, target.id, ref)
    for other, p in naming(layer.id):  # what names the moved features
        if not p.same_grid:
            continue
        found = rows.select(other, Selection(within=(p.name, frozenset(moved))), count=False)
        for ofid, props in zip(found.ids.tolist(), found.properties, strict=True):
            ref = props.get(p.name)
            if ref in moved and props.get(GRID_KEY) != moved[ref]:
                _split(other.id, ofid, layer.id, ref)


def _split(layer_id: str, fid: int, target_id: str, ref: int) -> None:
    msg = (
        f"this grid edit would put {layer_id} {fid} in another grid than "
        f"{target_id} {ref} it belongs to; a grid boundary may not cut through it"
    )
    raise IntegrityError(msg)


def refuse_if_named(rows: Rows, layer: Layer, fid: int) -> None:
    """IntegrityError (409) if a feature of any layer still names this one."""
    for other, p in naming(layer.id):
        n = rows.count(other, Selection(equals={p.name: int(fid)}))
        if n:
            hint = (
                "redraw the neighbouring grids over them first"
                if p.derived
                else f"change their {p.name} first"
            )
            msg = f"{layer.id} {fid} is still named by {n} {other.id}; {hint}, then delete it"
            raise IntegrityError(msg)
