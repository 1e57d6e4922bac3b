"""In-memory spatial indexes of a GeoPackage's layers, patched after edits and rebuilt off
the request path.

A layer's index answers bbox reads from memory. When an edit moves the layer's stamp, the
index is patched from the file's log of row changes: the rows changed since it was built
are left out of its tree's answers and their current geometries kept beside it. Only when
too many rows changed (or the log cannot tell) do the reads go to SQLite's R-tree (exact
and current) while one background thread rebuilds the index, pausing between rebuilds: no
request pays for a rebuild, and many requests at once never rebuild it side by side
(under a stream of edits that would eat every core).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import shapely

from gridmap.layers import Layer

log = logging.getLogger(__name__)
MIN_PAUSE_S = 1.0
PAUSE_FACTOR = 10.0
"""After a rebuild that took t seconds, the next waits max(MIN_PAUSE_S, PAUSE_FACTOR·t):
under a stream of edits rebuilding takes at most a tenth of a core, and SQLite answers
between rebuilds."""
REBUILD_AFTER = 256
"""A patched index is rebuilt (in the background) once more than this many of its rows, or
a twentieth of them, changed since it was built; a patch reads only the rows changed since
the last one."""


_NONE = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class LayerIndex:
    """One layer's geometries in an STRtree (ids sorted), with the values of one integer
    column (a scope's grid restriction) beside them, as of ``stamp``: the tree as built,
    less the rows changed since (``changed``, sorted), plus those rows as they are now
    (``patch_*``; a deleted row is changed and not in the patch)."""

    stamp: int
    fids: npt.NDArray[np.int64]
    tree: shapely.STRtree
    column: str | None
    values: npt.NDArray[np.int64] | None
    changed: npt.NDArray[np.int64] = field(default_factory=lambda: _NONE)
    patch_fids: npt.NDArray[np.int64] = field(default_factory=lambda: _NONE)
    patch_geoms: npt.NDArray[np.object_] = field(default_factory=lambda: np.empty(0, dtype=object))
    patch_values: npt.NDArray[np.int64] = field(default_factory=lambda: _NONE)

    def query(self, area: object, within: Sequence[int] | None = None) -> npt.NDArray[np.int64]:
        """Sorted ids of the rows whose geometry intersects ``area`` (whose column's value
        is in ``within``, if given)."""
        hits = self.tree.query(area, predicate="intersects")
        ids = self.fids[hits]
        values = self.values[hits] if self.values is not None else None
        if len(self.changed):
            kept = ~np.isin(ids, self.changed, assume_unique=True)
            ids = ids[kept]
            values = values[kept] if values is not None else None
        if len(self.patch_fids):
            found = shapely.intersects(self.patch_geoms, area)
            ids = np.concatenate([ids, self.patch_fids[found]])
            if values is not None:
                values = np.concatenate([values, self.patch_values[found]])
        if within is not None and values is not None:
            ids = ids[np.isin(values, list(within))]
        return np.sort(ids)

    def values_of(
        self, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """The column's values of ``ids`` and which of them are rows of the layer."""
        assert self.values is not None
        values, ok = _look_up(self.fids, self.values, ids)
        if len(self.changed):
            changed = np.isin(ids, self.changed)
            now, there = _look_up(self.patch_fids, self.patch_values, ids)
            ok = np.where(changed, there, ok)
            values = np.where(changed, now, values)
        return values, ok

    def patched(
        self,
        stamp: int,
        touched: npt.NDArray[np.int64],
        fids: npt.NDArray[np.int64],
        geoms: npt.NDArray[np.object_],
        values: npt.NDArray[np.int64],
    ) -> LayerIndex:
        """This index at ``stamp``, after the rows ``touched`` changed; ``fids``, ``geoms``
        and ``values`` are those of them that are there now, as they are now."""
        keep = ~np.isin(self.patch_fids, touched)
        pf = np.concatenate([self.patch_fids[keep], fids])
        order = np.argsort(pf, kind="stable")
        return replace(
            self,
            stamp=stamp,
            changed=np.union1d(self.changed, touched),
            patch_fids=pf[order],
            patch_geoms=np.concatenate([self.patch_geoms[keep], geoms])[order],
            patch_values=np.concatenate([self.patch_values[keep], values])[order],
        )


def _look_up(
    keys: npt.NDArray[np.int64], values: npt.NDArray[np.int64], ids: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """The values under ``ids`` among sorted ``keys``, and which ids are keys."""
    if not len(keys):
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    ok = keys[pos] == ids
    return values[pos], ok


Build = Callable[[Layer, str | None], LayerIndex]
Patch = Callable[[Layer, LayerIndex, int], LayerIndex | None]
"""Patch an index to a stamp from the log of row changes (None: too many changed, or the
log cannot tell)."""


class LayerIndexes:
    """The current index of each layer, or None while it is (re)built in the background."""

    def __init__(self, build: Build, patch: Patch | None = None) -> None:
        self._build = build
        self._patch = patch
        self._patching = threading.Lock()
        self._kept: dict[str, LayerIndex] = {}
        self._wanted: dict[str, tuple[Layer, str | None]] = {}
        self._next: dict[str, float] = {}  # a layer is not rebuilt again before this
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def fresh(self, layer: Layer, column: str | None, stamp: int) -> LayerIndex | None:
        """The layer's index at ``stamp`` (holding ``column`` if one is asked): as kept, or
        patched from the log of row changes; else None (SQLite's R-tree answers), and a
        rebuild is asked for. A patched index that left out many rows asks for one too."""
        kept = self._kept.get(layer.id)
        fits = kept is not None and (column is None or kept.column == column)
        if kept is not None and fits and kept.stamp == stamp:
            return kept
        if kept is not None and fits and kept.stamp < stamp and self._patch is not None:
            if not self._patching.acquire(blocking=False):
                return None  # another thread is patching it: the R-tree answers meanwhile
            try:
                patched = self._patched(layer, kept, stamp)
            finally:
                self._patching.release()
            if patched is not None:
                if len(patched.changed) > max(REBUILD_AFTER, len(patched.fids) // 20):
                    self._ask(layer, patched.column)
                return patched
        self._ask(layer, column if column is not None else (kept.column if kept else None))
        return None

    def _ask(self, layer: Layer, column: str | None) -> None:
        """Have the background thread (started if need be) rebuild a layer's index."""
        with self._lock:
            if self._closed:
                return
            self._wanted[layer.id] = (layer, column)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gridmap-gpkg-index", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _patched(self, layer: Layer, kept: LayerIndex, stamp: int) -> LayerIndex | None:
        """The kept index patched to ``stamp`` and kept (None if it cannot be); called
        holding the patching lock."""
        assert self._patch is not None
        now = self._kept.get(layer.id, kept)
        if now.stamp == stamp:
            return now  # another thread patched it meanwhile
        if now.stamp > stamp or (now.column != kept.column):
            return None
        try:
            patched = self._patch(layer, now, stamp)
        except Exception as exc:  # the store closed, the file went away …
            log.debug("index of %s not patched: %s", layer.id, exc)
            return None
        if patched is not None and self._kept.get(layer.id) is now:
            self._kept[layer.id] = patched
        return patched

    def build_now(self, layer: Layer, column: str | None) -> LayerIndex:
        """Build and keep a layer's index in this thread (tests, warm-up)."""
        started = time.monotonic()
        built = self._build(layer, column)
        done = time.monotonic()
        self._kept[layer.id] = built
        self._next[layer.id] = done + max(MIN_PAUSE_S, PAUSE_FACTOR * (done - started))
        return built

    def close(self) -> None:
        """Stop the background thread (it ends within a second)."""
        with self._lock:
            self._closed = True
            self._wanted.clear()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(0.25)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                if self._closed:
                    self._thread = None
                    return
                todo = [w for k, w in self._wanted.items() if self._next.get(k, 0.0) <= now]
                for layer, _ in todo:
                    del self._wanted[layer.id]
            for layer, column in todo:
                try:
                    self.build_now(layer, column)
                except Exception as exc:  # the store closed, the file went away …
                    log.debug("index of %s not rebuilt: %s", layer.id, exc)
