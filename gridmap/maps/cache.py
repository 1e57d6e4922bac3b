"""Rendered map pages kept while nothing they show has changed."""

from __future__ import annotations

import threading
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
        self._lock = threading.Lock()

    @staticmethod
    def stamps(store: Store) -> tuple[int, ...]:
        """The change stamps of every layer and of the documents (campaigns name measures)."""
        return store.stamps([*(layer.id for layer in LAYERS), "gridmap_documents"])

    def get_or_render(
        self, key: Hashable, render: Callable[[], Any], *, reads: ReadLog | None = None
    ) -> Any:
        """The cached page for ``key``, or ``render()`` it and keep it.

        The personal rows a page was drawn from are noted in ``reads`` both when it is
        drawn and whenever it is served again from here: a cached page is still a read.
        """
        with self._lock:
            hit = self._pages.get(key)
            if hit is not None:
                self._pages.move_to_end(key)
        if hit is not None:
            page, notes = hit
            if reads is not None:
                reads.replay(notes)
            return page
        mark = reads.mark() if reads is not None else 0
        page = render()
        notes = reads.since(mark) if reads is not None else []
        with self._lock:
            self._pages[key] = (page, notes)
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)
        return page
