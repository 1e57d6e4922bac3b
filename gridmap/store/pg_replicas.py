"""Read replicas of a PostGIS store (streaming replication): which one may answer a read.

A replica may answer a read of a table when it has replayed every change of that table
this process knows of: its ``gridmap_changes`` stamp for the table is at least the
primary's, as the primary's change notifications keep it in memory (:mod:`.pg_stamps`).
So a process reads its own writes at once (its own write moves the stamp it knows), sees
another process's write as soon as it would have seen it on the primary, and never reads
older data from a replica than from its caches. A thread polls every replica's stamps
(:data:`POLL_S`); a replica that lags, fails or cannot be reached is passed over, and the
primary answers instead. So is a server that is not a standby of the primary (another
cluster, a primary, a promoted former standby): each poll checks it is in recovery and
shares the primary's system identifier.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)
POLL_S = 0.05
"""How often each replica's stamps are read (its lag behind the primary, as seen here)."""
RETRY_S = 5.0
"""How long a replica that failed is left alone before it is asked again."""
FRESH_S = 1.0
"""A replica whose stamps were not read within this long gets no reads (a frozen or
overloaded replica is passed over instead of holding reads until the watchdog cuts it)."""


IDENTITY_SQL = "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())"
"""Whether a server is a standby, and of which cluster (a standby shares its primary's
system identifier; a promoted one leaves recovery)."""


class NotAStandbyError(Exception):
    """A replica URL names a server that is not (or no longer) a standby of the primary."""


class Replica:
    """One replica: its pool and the stamps it had replayed when last asked."""

    def __init__(self, url: str, pool: ConnectionPool[Any], identity: int | None = None) -> None:
        self.url = url
        self.pool = pool
        self.identity = identity  # the primary's system identifier
        self.stamps: dict[str, int] | None = None  # None: unknown or failed
        self.failed_at = 0.0
        self.read_at = 0.0  # when the stamps were last read

    def read_stamps(self) -> None:
        """Ask the replica for its stamps (None and a pause after a failure)."""
        if self.stamps is None and time.monotonic() - self.failed_at < RETRY_S:
            return
        try:
            with self.pool.connection(timeout=2.0) as c:
                standby, system = c.execute(IDENTITY_SQL).fetchone() or (False, None)
                if not standby or (self.identity is not None and int(system) != self.identity):
                    what = "a primary" if not standby else "a standby of another cluster"
                    raise NotAStandbyError(f"it is {what}, not a standby of this database's")
                rows = c.execute("SELECT layer, stamp FROM gridmap_changes").fetchall()
            if time.monotonic() - self.failed_at >= RETRY_S:  # not failed meanwhile
                self.stamps = {str(k): int(v) for k, v in rows}
                self.read_at = time.monotonic()
        except Exception as exc:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """Pass this replica over for :data:`RETRY_S` (the primary answers meanwhile)."""
        if self.stamps is not None or self.failed_at == 0.0:
            log.warning("read replica %s left out for now: %s", _host(self.url), exc)
        self.stamps = None
        self.failed_at = time.monotonic()


class Replicas:
    """The replicas of one store, their stamps kept fresh by a daemon thread."""

    def __init__(
        self,
        urls: list[str],
        make_pool: Callable[[str], ConnectionPool[Any]],
        identity: int | None = None,
    ) -> None:
        self.members = [Replica(u, make_pool(u), identity) for u in urls]
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="gridmap-replicas", daemon=True)
        self._thread.start()

    def pick(self, table: str, known: int) -> Replica | None:
        """A replica that has replayed the table up to stamp ``known`` (in turn), or None."""
        now = time.monotonic()
        ready = [
            r
            for r in self.members
            if r.stamps is not None
            and now - r.read_at < FRESH_S
            and r.stamps.get(table, -1) >= known
        ]
        return ready[next(self._turn) % len(ready)] if ready else None

    def close(self) -> None:
        """Stop polling and close every replica's pool."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        for r in self.members:
            r.pool.close()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for r in self.members:
                try:
                    r.read_stamps()
                except Exception:
                    log.exception("polling read replica %s failed", _host(r.url))
            self._stop.wait(POLL_S)


def retryable(exc: psycopg.Error) -> bool:
    """True if a read that failed on a replica should be asked of the primary: the
    connection broke, or the replica cancelled it to replay changes (a recovery
    conflict); not a timeout or an error in the query, which the primary would repeat."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return False
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.AdminShutdown):
        return True
    return isinstance(exc, psycopg.OperationalError)


def _host(url: str) -> str:
    """Where a replica is, without user or password (never raises)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except Exception:
        return "(a replica)"
    return f"{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"
