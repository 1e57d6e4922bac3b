"""Change stamps of a PostgreSQL store kept in memory, refreshed when the database says a
table changed (LISTEN/NOTIFY), so a request reads no stamp over the network.

Every write, by any client, fires ``gridmap_touch()``, which moves the table's stamp and
notifies ``gridmap_changes`` with the table's name at commit. A listener thread (its own
connection) marks that table's cached stamp stale; the next read fetches every stamp in
one query. Writes through this process mark their tables stale at once (read-your-writes);
another client's write reaches the cache when its notification arrives (milliseconds).
While the listener is not connected, every read goes to the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg

CHANNEL = "gridmap_changes"


class StampWatch:
    """Stamps cached per table, valid until a change of that table is heard of."""

    def __init__(self, url: str, read_all: Callable[[], dict[str, int]]) -> None:
        self._url = url
        self._read_all = read_all
        self._lock = threading.Lock()
        self._gen: dict[str, int] = {}
        self._all_gen = 0
        self._cached: dict[str, int] | None = None
        self._cached_at: tuple[int, dict[str, int]] = (-1, {})
        self._listening = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="gridmap-stamps", daemon=True)
        self._thread.start()

    def changed(self, table: str | None = None) -> None:
        """A table (None: any) changed: its cached stamp is stale."""
        with self._lock:
            if table is None:
                self._all_gen += 1
            else:
                self._gen[table] = self._gen.get(table, 0) + 1

    def get(self, table: str) -> int | None:
        """The table's stamp from memory (refreshed if stale); None while not listening."""
        if not self._listening:
            return None
        with self._lock:
            snapshot = (self._all_gen, dict(self._gen))
            if self._cached is not None and self._cached_at == snapshot:
                return self._cached.get(table, -1)
        fresh = self._read_all()
        with self._lock:
            if (self._all_gen, self._gen) == snapshot:  # nothing changed while reading
                self._cached, self._cached_at = fresh, snapshot
        return fresh.get(table, -1)

    def peek(self, table: str) -> int | None:
        """The table's stamp if memory holds a fresh one, else None (never reads)."""
        if not self._listening:
            return None
        with self._lock:
            if self._cached is not None and self._cached_at == (self._all_gen, self._gen):
                return self._cached.get(table, -1)
        return None

    def close(self) -> None:
        """Stop listening (the thread ends within a second)."""
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.changed()  # anything may have changed while no one listened
                    self._listening = True
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.changed(note.payload or None)
            except psycopg.Error:
                pass
            finally:
                self._listening = False
                self.changed()
            self._stop.wait(1.0)
