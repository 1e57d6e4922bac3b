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
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gridmap.routing.solver import Problem, Result, rank, solve

MAX_PROCESSES = 8
VARIANTS: tuple[dict[str, Any], ...] = ({}, {"neighbours": 50})
"""One problem alone is solved this many ways side by side (the better result is kept)."""
SIDE_BY_SIDE_MIN_STOPS = 20
"""Smaller problems are solved here: the search finds their best quickly anyway."""


def processes() -> int:
    """Solver processes: one per core this process may use (at most MAX_PROCESSES), or
    GRIDMAP_SOLVER_PROCESSES; 1 (solve in this process) in a daemon process such as a
    Dask worker, which may not start processes of its own."""
    if mp.current_process().daemon:
        return 1
    given = os.environ.get("GRIDMAP_SOLVER_PROCESSES", "")
    if given.isdigit() and int(given) > 0:
        return min(int(given), MAX_PROCESSES)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_PROCESSES))


def _idle() -> None:  # pragma: no cover - runs in the child
    """Nothing: submitted to start a process."""


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
        self._warm: list[Future[None]] = []

    def ready(self) -> bool:
        """True once the processes are up and have imported the solver."""
        return bool(self._warm) and all(f.done() and not f.exception() for f in self._warm)

    def warm_up(self) -> None:
        """Start the processes in the background (returns at once)."""
        with self._lock:
            if self._warm:
                return
        pool = self._get()
        self._warm = [pool.submit(_idle) for _ in range(processes())]

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    processes(), mp_context=mp.get_context("spawn"), initializer=_warm
                )
            return self._pool

    def close(self) -> None:
        """Stop the processes (at exit, or after one died)."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._warm = []
        if pool is None:
            return
        # a search under way ends within its time limit; waiting for it lets the
        # processes and queues close cleanly
        pool.shutdown(wait=True, cancel_futures=True)

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
        if len(head) == 1:
            result = self.solve_best(*head[0])
            if on_done is not None:
                on_done(0)
            return [result]
        if processes() == 1 or not head:
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

    def solve_best(self, problem: Problem, options: dict[str, Any]) -> Result:
        """One problem solved each of :data:`VARIANTS` ways side by side on the processes,
        the best kept (:func:`rank`); here, the plain way, while they are not yet up (and
        they are started for next time) or when the problem is small."""
        if processes() == 1 or len(problem.stops) < SIDE_BY_SIDE_MIN_STOPS:
            return solve(problem, **options)
        if not self.ready():
            self.warm_up()
            return solve(problem, **options)
        try:
            pool = self._get()
            futures = [pool.submit(solve, problem, **{**options, **v}) for v in VARIANTS]
            results = [f.result() for f in futures]
        except BrokenProcessPool:
            self.close()
            return solve(problem, **options)
        return min(results, key=lambda r: rank(problem, r))

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
