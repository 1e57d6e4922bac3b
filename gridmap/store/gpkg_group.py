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

from gridmap.errors import StoreError

Rows = list[tuple[Any, ...]]
Write = Callable[[], AbstractContextManager[sqlite3.Connection]]


@dataclass
class _Job:
    sql: str
    params: Sequence[Any]
    rows: Rows = field(default_factory=list)
    error: BaseException | None = None
    settled: bool = False  # committed (rows) or failed (error)
    done: bool = False  # its leader has finished with it


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
        lead, batch = False, []
        try:
            with self._cond:
                self._pending.append(job)
                while self._leading and not job.done:
                    self._cond.wait()
                if not job.done:
                    lead = True  # first: the finally below then always hands the lead on
                    self._leading = True
                    batch, self._pending = self._pending, []
            if lead:
                self._commit(batch)
        finally:
            if lead:
                with self._cond:
                    for j in batch:
                        if not j.settled:  # the leader was interrupted before it ended
                            j.error = StoreError("the write was interrupted; try again")
                        j.done = True
                    self._leading = False
                    self._cond.notify_all()
        if job.error is not None:  # each caller raises an exception object of its own
            raise _twin(job.error) from job.error.__cause__
        return job.rows

    def _commit(self, batch: list[_Job]) -> None:
        try:
            with self._write() as conn:
                for job in batch:
                    conn.execute("SAVEPOINT g")
                    try:
                        job.rows = conn.execute(job.sql, job.params).fetchall()
                    except Exception as exc:  # its caller's alone (a value SQLite refuses)
                        if not conn.in_transaction:  # SQLite ended it (SQLITE_FULL): all fail
                            raise
                        conn.execute("ROLLBACK TO g")
                        job.rows, job.error = [], exc
                    conn.execute("RELEASE g")
        except Exception as exc:
            for job in batch:
                job.rows, job.error = [], exc
        for job in batch:
            job.settled = True


def _twin(exc: BaseException) -> BaseException:
    """A new exception object like ``exc`` (type, args, attributes; no traceback), so that
    threads failing together do not share, and keep alive, one another's frames."""
    twin = BaseException.__new__(type(exc))
    twin.args = exc.args
    twin.__dict__.update(exc.__dict__)
    return twin
