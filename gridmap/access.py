"""The personal records read for one caller in one request: noted by the store, rate-limited
on the first read, and turned into one audit entry per layer at the end of the request.

A :class:`ReadLog` rides on the caller's :class:`~gridmap.store.base.Scope`; the store
notes every row of a personal layer (one with sensitive properties, such as households)
that it returns under that scope, whatever route, map, statistic or future feature asked
for it. Nothing reads personal rows around it: a read is a read because the store did it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Note = tuple[str, tuple[int, ...], tuple[int | None, ...], int]
"""(layer id, feature ids, their grid ids, rows counted) of one store read: rows returned
(ids and grids), or rows counted in the database by an aggregate (their grids and number,
no ids)."""


@dataclass
class ReadLog:
    """Personal rows read on behalf of one caller during one request.

    ``on_first_read`` runs before the first read is noted (a rate limit raises there, so
    nothing is returned); ``action`` names the audit entry ("read", or "export" for a
    download).
    """

    on_first_read: Callable[[], None] | None = None
    action: str = "read"
    _notes: list[Note] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: bool = False

    def saw(self, layer_id: str, ids: Iterable[int], grid_ids: Iterable[int | None]) -> None:
        """Note that rows of ``layer_id`` were read (called by the store)."""
        listed = ids.tolist() if hasattr(ids, "tolist") else ids  # numpy: Python ints at once
        self._note((layer_id, tuple(int(i) for i in listed), tuple(grid_ids), 0))

    def counted(self, layer_id: str, rows: int, grid_ids: Iterable[int | None]) -> None:
        """Note that the database counted ``rows`` rows of ``layer_id`` for a statistic (no
        row left it; still a use of personal data, limited and audited like a read)."""
        self._note((layer_id, (), tuple(grid_ids), int(rows)))

    def _note(self, note: Note) -> None:
        with self._lock:
            first = not self._started
            self._started = True
        if first and self.on_first_read is not None:
            try:
                self.on_first_read()
            except BaseException:
                with self._lock:
                    self._started = False
                raise
        with self._lock:
            self._notes.append(note)

    def mark(self) -> int:
        """A position in the log, for :meth:`since`."""
        with self._lock:
            return len(self._notes)

    def since(self, mark: int) -> list[Note]:
        """The notes made after ``mark`` (what a cached page contained)."""
        with self._lock:
            return list(self._notes[mark:])

    def replay(self, notes: Iterable[Note]) -> None:
        """Note again what an earlier request read, when its result is served from a cache."""
        for note in notes:
            self._note(note)

    def summary(self) -> list[tuple[str, list[int], int | None]]:
        """Per layer: the distinct ids read, and their grid when all lie in one."""
        with self._lock:
            notes = list(self._notes)
        by_layer: dict[str, tuple[set[int], set[int | None]]] = {}
        for layer_id, ids, grids, counted in notes:
            if counted and not ids:
                continue
            seen, in_grids = by_layer.setdefault(layer_id, (set(), set()))
            seen.update(ids)
            in_grids.update(grids)
        return [
            (layer_id, sorted(ids), next(iter(grids)) if len(grids) == 1 else None)
            for layer_id, (ids, grids) in by_layer.items()
        ]

    def counts(self) -> list[tuple[str, int, int | None]]:
        """Per layer: the rows counted by aggregates, and their grid when all lie in one."""
        with self._lock:
            notes = list(self._notes)
        by_layer: dict[str, tuple[int, set[int | None]]] = {}
        for layer_id, _ids, grids, counted in notes:
            if counted:
                n, in_grids = by_layer.get(layer_id, (0, set()))
                by_layer[layer_id] = (n + counted, in_grids | set(grids))
        return [
            (layer_id, n, next(iter(grids)) if len(grids) == 1 else None)
            for layer_id, (n, grids) in by_layer.items()
        ]


def id_ranges(ids: Iterable[int], limit: int = 400) -> str:
    """Ids as compact ranges for the audit log, e.g. ``1-100,205``; cut at ``limit``."""
    out: list[str] = []
    start = prev = None
    for i in sorted(set(ids)):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    text = ",".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."
