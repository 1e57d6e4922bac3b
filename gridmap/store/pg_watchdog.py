"""The client-side watchdog that cuts a pooled PostgreSQL connection whose server went silent."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from typing import Any

import psycopg
from psycopg.abc import RV, PQGen

from gridmap.errors import StoreError

log = logging.getLogger(__name__)
ENV = "GRIDMAP_PG_WATCHDOG_SECONDS"
MARGIN_S = 10.0
"""How much longer than the statement timeout a server may stay silent (a pipeline of many
statements flushes its results only now and then)."""
TICK_S = 0.5


class Watchdog:
    """Connections waiting on their server, each with when it last heard from it; one
    daemon thread (started on first use) cuts those silent for longer than their limit.

    A live server answers or cancels within its ``statement_timeout``; a frozen backend
    (SIGSTOP, a hung host) does neither, and its kernel still ACKs, so keepalives never
    fire. Cutting the socket ends the waiting thread's statement with an OperationalError,
    and the pool drops that connection when it comes back."""

    def __init__(self, tick: float = TICK_S) -> None:
        self._tick = tick
        self._busy: dict[psycopg.Connection[Any], list[float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def register(self, conn: psycopg.Connection[Any], limit: float) -> list[float]:
        """``conn`` waits on its server from now; the entry ``[last heard, limit]``."""
        entry = [time.monotonic(), limit]
        with self._lock:
            self._busy[conn] = entry
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gridmap-pg-watchdog", daemon=True
                )
                self._thread.start()
        return entry

    def unregister(self, conn: psycopg.Connection[Any]) -> None:
        """``conn`` no longer waits (done, failed, or already cut)."""
        with self._lock:
            self._busy.pop(conn, None)

    def after_fork(self) -> None:
        """In a forked child: no thread runs and no connection of the parent is watched."""
        self._busy = {}
        self._lock = threading.Lock()
        self._thread = None

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            self.sweep()

    def sweep(self) -> None:
        """Cut every connection silent for longer than its limit."""
        now = time.monotonic()
        cut: list[float] = []
        with self._lock:  # held while cutting: a watched connection is not closed meanwhile
            for conn, (heard, limit) in list(self._busy.items()):
                if now - heard > limit:
                    del self._busy[conn]
                    _shut_down(conn)
                    cut.append(now - heard)
        for silent in cut:
            log.warning(
                "PostgreSQL sent nothing for %.0f s on a busy connection (a frozen server "
                "process, a hung host?); the connection was cut",
                silent,
            )


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG.after_fork)


class WatchedConnection(psycopg.Connection[Any]):
    """A connection whose every wait on the server is watched by :data:`WATCHDOG`."""

    silence_limit_s: float = 30.0 + MARGIN_S

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        """Consume ``gen`` as psycopg does, registered as busy (a dict entry, no thread);
        every byte moved either way counts as hearing from the server."""
        entry = WATCHDOG.register(self, self.silence_limit_s)
        try:
            return super().wait(_heard(gen, entry), *args, **kwargs)
        finally:
            WATCHDOG.unregister(self)


def connection_class(statement_timeout_s: float) -> type[WatchedConnection]:
    """The class of a pool's connections, cut after ``statement_timeout_s`` plus
    :data:`MARGIN_S` of silence (``GRIDMAP_PG_WATCHDOG_SECONDS``, if set, instead)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return _watched(statement_timeout_s + MARGIN_S)
    try:
        limit = float(raw)
    except ValueError:
        limit = 0.0
    if not 0 < limit < float("inf"):
        msg = f"{ENV} must be a positive number of seconds, not {raw[:20]!r}"
        raise StoreError(msg)
    return _watched(limit)


@functools.cache
def _watched(limit: float) -> type[WatchedConnection]:
    return type("WatchedConnection", (WatchedConnection,), {"silence_limit_s": limit})


def _heard(gen: PQGen[RV], entry: list[float]) -> PQGen[RV]:
    """``gen``, noting in ``entry[0]`` when the socket was last ready (not an idle poll)."""
    try:
        waiting = gen.send(None)  # type: ignore[arg-type]
        while True:
            ready = yield waiting
            if ready:
                entry[0] = time.monotonic()
            waiting = gen.send(ready)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down both ways (through a duplicate of its descriptor,
    closed after): the thread polling it wakes to an end of file, which libpq reports."""
    with contextlib.suppress(psycopg.Error, OSError):
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
