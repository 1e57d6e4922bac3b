"""In-memory spatial indexes of a GeoPackage's layers, rebuilt off the request path.

A layer's index answers bbox reads from memory while its change stamp holds. When an edit
moves the stamp, the reads go to SQLite's R-tree (exact and current) and one background
thread rebuilds the index, pausing between rebuilds: no request pays for a rebuild, and
many requests at once never rebuild it side by side (under a stream of edits that would
eat every core).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LayerIndex:
    """One layer's geometries at one change stamp (ids sorted) in an STRtree, with the
    values of one integer column (a scope's grid restriction) beside it."""

    stamp: int
    fids: npt.NDArray[np.int64]
    tree: shapely.STRtree
    column: str | None
    values: npt.NDArray[np.int64] | None


Build = Callable[[Layer, str | None], LayerIndex]


class LayerIndexes:
    """The current index of each layer, or None while it is (re)built in the background."""

    def __init__(self, build: Build) -> None:
        self._build = build
        self._kept: dict[str, LayerIndex] = {}
        self._wanted: dict[str, tuple[Layer, str | None]] = {}
        self._next: dict[str, float] = {}  # a layer is not rebuilt again before this
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def fresh(self, layer: Layer, column: str | None, stamp: int) -> LayerIndex | None:
        """The layer's index if built at ``stamp`` (holding ``column`` if one is asked);
        else None, and a rebuild is asked for."""
        kept = self._kept.get(layer.id)
        if kept is not None and kept.stamp == stamp and (column is None or kept.column == column):
            return kept
        want = column if column is not None else (kept.column if kept is not None else None)
        with self._lock:
            if self._closed:
                return None
            self._wanted[layer.id] = (layer, want)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gridmap-gpkg-index", daemon=True
                )
                self._thread.start()
        self._wake.set()
        return None

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
