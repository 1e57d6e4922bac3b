"""Exporting a layer as a file for a role: read in pages (scoped, masked), written, audited."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gridmap.accounts import audit
from gridmap.crs import CRS84
from gridmap.io import writers
from gridmap.security import Principal, scope_for
from gridmap.store import FeatureStore, Query
from gridmap.store.base import FeatureSet, Scope

PAGE = 5000


def read_all(
    store: FeatureStore,
    layer_id: str,
    scope: Scope,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Every feature of the layer the scope sees, read in pages by id (progress: done, total)."""
    total = store.count(layer_id, scope=scope)
    parts: list[FeatureSet] = []
    after = 0
    done = 0
    while True:
        fs = store.query(layer_id, Query(after=after, limit=PAGE, order_by=("id",)), scope=scope)
        if not len(fs):
            break
        parts.append(fs)
        after = int(fs.ids[-1])
        done += len(fs)
        if progress is not None:
            progress(done, max(total, done))
    return concat(store, layer_id, parts, scope)


def concat(store: FeatureStore, layer_id: str, parts: list[FeatureSet], scope: Scope) -> FeatureSet:
    """One feature set of several pages."""
    if not parts:
        return store.query(layer_id, Query(limit=0), scope=scope)
    return FeatureSet(
        parts[0].layer,
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.geometries for p in parts]),
        [d for p in parts for d in p.properties],
        np.concatenate([p.versions for p in parts]),
        number_matched=sum(len(p) for p in parts),
    )


def export(
    store: FeatureStore,
    layer_id: str,
    fmt: str,
    *,
    principal: Principal,
    crs: str = CRS84,
    encoding: str | None = None,
    lang: str = "zh",
    source: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[bytes, int]:
    """The layer as the principal may see it, as a file; (bytes, features). Audited."""
    scope = scope_for(principal)
    fs = read_all(store, layer_id, scope, progress=progress)
    writers.check_format(fmt, fs.layer, encoding=encoding, crs=crs)
    data = writers.write(fs, fmt, crs=crs, encoding=encoding, lang=lang)
    audit(
        store,
        principal,
        "export",
        object=f"{layer_id}: {len(fs)} features as {fmt}",
        source=source,
        grid_id=None,
        detail=("personal data, masked" if fs.layer.personal else None),
    )
    return data, len(fs)
