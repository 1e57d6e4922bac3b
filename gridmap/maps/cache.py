"""Rendered map pages and layers kept while nothing they show has changed; grid figures
for map colours kept for a bounded time."""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from gridmap.access import ReadLog
from gridmap.layers import LAYERS
from gridmap.store.base import Store


class PageCache:
    """The last ``size`` rendered pages by key; a key includes every layer's change stamp.

    Two requests with the same view (scope, language, measure, basemap) and no edit in
    between get the same page without drawing it again; any edit to any layer moves its
    stamp and so the key.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._pages: OrderedDict[Hashable, Any] = OrderedDict()
        self._drawing: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    @staticmethod
    def stamps(store: Store) -> tuple[int, ...]:
        """The change stamps of every layer and of the documents (campaigns name measures)."""
        return store.stamps([*(layer.id for layer in LAYERS), "gridmap_documents"])

    def get_or_render(
        self, key: Hashable, render: Callable[[], Any], *, reads: ReadLog | None = None
    ) -> Any:
        """The cached page for ``key``, or ``render()`` it and keep it.

        Requests that miss the same key at once wait for one rendering (no stampede).
        The personal rows a page was drawn from are noted in ``reads`` both when it is
        drawn and whenever it is served again from here: a cached page is still a read.
        """
        while True:
            with self._lock:
                hit = self._pages.get(key)
                if hit is not None:
                    self._pages.move_to_end(key)
                    break
                busy = self._drawing.get(key)
                if busy is None:
                    busy = self._drawing[key] = threading.Event()
                    break
            busy.wait(timeout=120.0)  # another request draws it; then take its result
        if hit is not None:
            page, notes = hit
            if reads is not None:
                reads.replay(notes)
            return page
        try:
            mark = reads.mark() if reads is not None else 0
            page = render()
            notes = reads.since(mark) if reads is not None else []
            with self._lock:
                self._pages[key] = (page, notes)
                while len(self._pages) > self.size:
                    self._pages.popitem(last=False)
        finally:
            with self._lock:
                self._drawing.pop(key, None)
            busy.set()
        return page


class Figures:
    """Grid figures for colouring a map, counted again at most every ``max_age`` seconds
    while the data under them keeps changing (each count is ~0.3 s for a subdistrict,
    ~1.3 s for a city: with edits every second, counting on every change would starve
    the readers). /stats stays exact; a map's colours lag an edit by at most ``max_age``.
    """

    def __init__(self, max_age: float, size: int = 64) -> None:
        self.max_age = max_age
        self.size = size
        self._kept: OrderedDict[Hashable, tuple[tuple[int, ...], float, int, Any, list[Any]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self._count = PageCache(size)  # one count at a time per key and stamps
        self._versions = itertools.count(1)

    def get(
        self,
        key: Hashable,
        stamps: tuple[int, ...],
        count: Callable[[], Any],
        *,
        reads: ReadLog | None = None,
    ) -> tuple[int, Any]:
        """(version, figures) for ``key``: the kept ones if counted at these stamps or
        less than ``max_age`` ago, else ``count()`` again (a new version)."""
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and (kept[0] == stamps or now - kept[1] < self.max_age):
            if reads is not None:
                reads.replay(kept[4])
            return kept[2], kept[3]
        mark = reads.mark() if reads is not None else 0
        figures = self._count.get_or_render((key, stamps), count, reads=reads)
        notes = reads.since(mark) if reads is not None else []
        with self._lock:
            again = self._kept.get(key)
            if again is not None and again[0] == stamps:
                return again[2], again[3]
            version = next(self._versions)
            self._kept[key] = (stamps, now, version, figures, notes)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return version, figures
