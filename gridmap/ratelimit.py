"""Rate limits: counts shared by every process through the store; log-in delays and the
route planner's places kept per process."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from gridmap.errors import RateLimitedError

log = logging.getLogger(__name__)


class Turns(Protocol):
    """Where limits are kept: the store, shared by every process over it."""

    def take_turn(self, key: str, now: float, interval: float, burst: float) -> float | None: ...

    def forget_turns(self, before: float) -> None: ...


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds for each key, counted in the store so
    that every API process over it shares the count (``limit`` at once, then one each
    ``window / limit`` seconds: the generic cell rate algorithm, see
    :meth:`gridmap.store.records.RecordTables.take_turn`). Hosts must keep time (NTP)."""

    SWEEP_EVERY = 1_000
    """Events between two clean-ups of rows whose turn has passed."""

    def __init__(self, turns: Turns, name: str, limit: int, window: float) -> None:
        self.turns = turns
        self.name = name
        self.limit = limit
        self.window = window
        self._events = 0
        self._local = LocalTurns()
        self._warned = False

    def hit(self, key: str, what: str = "requests") -> None:
        """Count one event for ``key``; RateLimitedError when over the limit. When the
        store cannot count (read-only media, busy, down) this process counts alone."""
        now = time.time()
        interval = self.window / self.limit
        if len(key) > 100:  # a key is a name or an address; anything longer is hashed
            key = hashlib.sha256(key.encode()).hexdigest()
        key = f"{self.name}:{key}"
        self._events += 1
        try:
            if self._events % self.SWEEP_EVERY == 0:
                self.turns.forget_turns(now)
            wait = self.turns.take_turn(key, now, interval, self.window - interval)
        except Exception as exc:  # the limit must never be what fails a request
            if not self._warned:
                log.warning("rate limits counted per process: the store cannot (%s)", exc)
                self._warned = True
            wait = self._local.take_turn(key, now, interval, self.window - interval)
        if wait is not None:
            retry = max(1, math.ceil(wait))
            msg = f"too many {what}; try again in {retry} s"
            raise RateLimitedError(msg, retry)


class LocalTurns:
    """The same algorithm in this process's memory (when the store cannot count)."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._lock = threading.Lock()

    def take_turn(self, key: str, now: float, interval: float, burst: float) -> float | None:
        """As :meth:`gridmap.store.records.RecordTables.take_turn`, for this process only."""
        with self._lock:
            due = min(self._due.get(key, now), now + interval + burst)
            if due - now > burst + 1e-6:
                return due - now - burst
            if len(self._due) > 100_000:
                self._due = {k: v for k, v in self._due.items() if v > now}
            self._due[key] = max(due, now) + interval
            return None


class LoginThrottle:
    """Growing delays after failed log-ins, per (account name as typed, source address).

    The first ``free`` failures cost nothing; each further one doubles the wait before the
    next attempt from that source for that name (``base`` seconds, up to ``cap``). A
    success clears the pair. Nobody can lock an account for others: a flood from one
    source slows that source only. Unknown names are throttled exactly like real ones,
    so the answers tell nothing about which accounts exist. Kept per worker process.
    """

    def __init__(
        self, *, free: int = 3, base: float = 1.0, cap: float = 900.0, size: int = 100_000
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.size = size
        self._state: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def check(self, name: str, source: str) -> None:
        """RateLimitedError while this (name, source) must wait."""
        with self._lock:
            _, until = self._state.get((name.lower(), source), (0, 0.0))
        wait = until - time.monotonic()
        if wait > 0:
            retry = int(wait) + 1
            msg = f"too many failed log-ins for this name from here; try again in {retry} s"
            raise RateLimitedError(msg, retry)

    def failed(self, name: str, source: str) -> None:
        """Count a failure; from the ``free``-th on, the next attempt must wait longer."""
        key = (name.lower(), source)
        with self._lock:
            n, _ = self._state.get(key, (0, 0.0))
            n += 1
            delay = 0.0 if n < self.free else min(self.cap, self.base * 2 ** (n - self.free))
            self._state[key] = (n, time.monotonic() + delay)
            if len(self._state) > self.size:  # forget the oldest pairs
                for old in list(self._state)[: self.size // 10]:
                    del self._state[old]

    def succeeded(self, name: str, source: str) -> None:
        """Clear the pair after a successful log-in."""
        with self._lock:
            self._state.pop((name.lower(), source), None)


class Gate:
    """Long work (route solving, analyses) held to one job per user and ``limit`` jobs at
    once; ``what`` names the work in the refusals."""

    def __init__(
        self, limit: int, retry_after: int = 30, what: tuple[str, str] = ("routes", "route planner")
    ) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.what = what
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def enter(self, user: str) -> Iterator[None]:
        """Hold a place for ``user``'s job; RateLimitedError when they already have one
        under way or the server is full."""
        with self._lock:
            if user in self._busy:
                msg = f"you have {self.what[0]} being computed already; wait, then ask again"
                raise RateLimitedError(msg, self.retry_after)
            if len(self._busy) >= self.limit:
                msg = f"the {self.what[1]} is busy; try again in {self.retry_after} s"
                raise RateLimitedError(msg, self.retry_after)
            self._busy.add(user)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(user)


SOLVING = Gate(limit=4)
"""Route solving in this server process: one job per user, four at once."""
ANALYSING = Gate(limit=2, what=("analyses", "planning analysis"))
"""Planning analyses (siting, balance, their maps) in this server process: one job per user,
two at once, apart from route solving so that neither holds up the other."""
