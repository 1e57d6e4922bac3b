"""Group commit of a GeoPackage's small record writes (audit entries, rate-limit turns).

Every household read writes twice (its rate-limit turn, then its audit entry). Written one
transaction each, 40 request threads queue on SQLite's single writer, and the thread at the
head holds the write lock across several waits for the GIL: a convoy that capped the whole
server at a few hundred writes a second. Here the first thread to arrive leads: it takes
every statement waiting, runs them in one transaction (each in a savepoint of its own, so
one statement's error is its caller's alone), commits once and wakes the others. A caller
returns only after the commit that holds its statement, as before.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

Rows = list[tuple[Any, ...]]
Write = Callable[[], AbstractContextManager[sqlite3.Connection]]


@dataclass
class _Job:
    sql: str
    params: Sequence[Any]
    rows: Rows = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Statements from many threads, committed together by whichever thread leads."""

    def __init__(self, write: Write) -> None:
        """``write()`` opens one write transaction (a context yielding the connection)."""
        self._write = write
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._leading = False

    def run(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Run one writing statement; return its rows once it is committed."""
        job = _Job(sql, params)
        with self._cond:
            self._pending.append(job)
            while self._leading and not job.done:
                self._cond.wait()
            if not job.done:
                self._leading = True
                batch, self._pending = self._pending, []
        if not job.done:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    for j in batch:
                        j.done = True
                    self._leading = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.rows

    def _commit(self, batch: list[_Job]) -> None:
        try:
            with self._write() as conn:
                for job in batch:
                    conn.execute("SAVEPOINT g")
                    try:
                        job.rows = conn.execute(job.sql, job.params).fetchall()
                    except sqlite3.Error as exc:
                        if not conn.in_transaction:  # SQLite ended it (SQLITE_FULL): all fail
                            raise
                        conn.execute("ROLLBACK TO g")
                        job.error = exc
                    conn.execute("RELEASE g")
        except BaseException as exc:
            for job in batch:
                job.rows, job.error = [], exc
