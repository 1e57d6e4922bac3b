"""What a scope sees of features: personal fields masked on the way out, kept on the way in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gridmap.errors import PermissionDeniedError
from gridmap.layers import Layer
from gridmap.store.base import Feature, FeatureSet, Scope


def require(allowed: bool, message: str) -> None:
    """PermissionDeniedError with ``message`` unless ``allowed``."""
    if not allowed:
        raise PermissionDeniedError(message)


def mask_feature(layer: Layer, f: Feature, scope: Scope) -> Feature:
    """One feature as the scope sees it."""
    fs = FeatureSet(
        layer,
        np.array([f.id]),
        np.array([f.geometry], dtype=object),
        [f.properties],
        np.array([f.version]),
    )
    return next(iter(mask(fs, scope)))


def unmask_unchanged(
    layer: Layer, properties: Mapping[str, Any] | None, current: Feature, scope: Scope
) -> Mapping[str, Any] | None:
    """A masked value sent back unchanged (GET, edit, PUT) keeps the stored value."""
    if not properties:
        return properties
    from gridmap.security import mask_value

    out = dict(properties)
    for name in scope.masked_in(layer):
        if name in out:
            stored = current.properties.get(name)
            if stored is not None and out[name] == mask_value(name, stored):
                out[name] = stored
    return out


def mask(fs: FeatureSet, scope: Scope) -> FeatureSet:
    """Mask the scope's personal fields in a feature set (in place), before anything else."""
    fields = sorted(scope.masked_in(fs.layer))
    if not fields:
        return fs
    from gridmap.security import mask_value

    for d in fs.properties:
        for name in fields:
            d[name] = mask_value(name, d.get(name))
    return fs
