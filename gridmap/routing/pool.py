"""Many routing problems at once on every core: a pool of solver processes kept while the
service runs (planning 40 grids is 40 independent problems)."""

from __future__ import annotations

import atexit
import itertools
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gridmap.routing.solver import Problem, Result, solve

MAX_PROCESSES = 8


def processes() -> int:
    """Solver processes: one per core this process may use (at most MAX_PROCESSES)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_PROCESSES))


def _warm() -> None:  # pragma: no cover - runs in the child
    import signal

    import pyvrp  # noqa: F401  (imported once per process, not per problem)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    parent = os.getppid()

    def orphaned() -> None:  # a parent killed outright leaves no one to stop us
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=orphaned, daemon=True, name="orphan-watch").start()


class SolverPool:
    """A lazily started process pool (spawned: never fork a threaded server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    processes(), mp_context=mp.get_context("spawn"), initializer=_warm
                )
            return self._pool

    def close(self) -> None:
        """Stop the processes (at exit, or after one died); a search under way is ended."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=5)

    def solve_all(
        self,
        jobs: Iterable[tuple[Problem, dict[str, Any]]],
        on_done: Callable[[int], None] | None = None,
    ) -> list[Result]:
        """Solve each problem with its keyword options (see :func:`solve`), in parallel on
        every core: each job is handed out as soon as it is produced, so preparing the next
        overlaps solving this one. ``on_done(i)`` as each finishes."""
        jobs = iter(jobs)
        head = list(itertools.islice(jobs, 2))
        if processes() == 1 or len(head) < 2:  # one problem: no process to hand it to
            return [self._here(i, p, kw, on_done) for i, (p, kw) in enumerate([*head, *jobs])]
        jobs = itertools.chain(head, jobs)
        given: list[tuple[Problem, dict[str, Any]]] = []
        out: dict[int, Result] = {}
        try:
            pool = self._get()
            futures = {}
            for i, (p, kw) in enumerate(jobs):
                given.append((p, kw))
                futures[pool.submit(solve, p, **kw)] = i
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                if on_done is not None:
                    on_done(futures[fut])
        except BrokenProcessPool:  # a process died (killed, out of memory): carry on here
            self.close()
            given += list(jobs)  # whatever the generator had not yet produced
        return [
            out[i] if i in out else self._here(i, p, kw, on_done) for i, (p, kw) in enumerate(given)
        ]

    @staticmethod
    def _here(
        i: int, p: Problem, kw: dict[str, Any], on_done: Callable[[int], None] | None
    ) -> Result:
        r = solve(p, **kw)
        if on_done is not None:
            on_done(i)
        return r


POOL = SolverPool()
atexit.register(POOL.close)
