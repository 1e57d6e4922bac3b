"""In-process sliding-window rate limits (per worker process)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from gridmap.errors import RateLimitedError


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds for each key."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str, what: str = "requests") -> None:
        """Count one event for ``key``; RateLimitedError when over the limit."""
        now = time.monotonic()
        with self._lock:
            q = self._events[key]
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                retry = max(1, int(q[0] + self.window - now) + 1)
                msg = f"too many {what}; try again in {retry} s"
                raise RateLimitedError(msg, retry)
            q.append(now)
