"""Scaling the API out over PostGIS: more worker processes, a read replica, and the domain
queries at city size.

Over one PostGIS store — ``--database URL`` (an existing one, e.g. the city of
``gridmap city --subdistricts 67``: a million households) or, without it, the sample
copied into a new database of a throw-away PostgreSQL + PostGIS cluster
(``tests.postgres``) — measured in one run:

(a) API throughput with 1, 2 and 4 uvicorn worker processes (``--workers 1,2,4``;
    ``uvicorn api.app:create_app --factory --workers N``, uvloop and httptools) over the
    same database, with ``--clients`` (32) closed-loop clients reading: OGC API items by
    a varying 300–1,000 m bbox over households, toilets and grids, and single
    households and toilets (the reads of ``benchmarks/bench_mixed.py``), as the
    subdistrict admin (each household read checked, counted and audited in the
    database; the per-user household limit lifted) — requests/s, p50/p99 and the
    ratio to 1 worker. The anchor is the 1-worker run of the same invocation.
(b) The same with a streaming replica taking the reads
    (``GRIDMAP_DATABASE_REPLICAS``; writes — the audit entries, the shared rate limit —
    still go to the primary): ``--replica URL`` names one; ``--start-replica`` starts one
    of a local server made by ``tests/postgres.py`` (a base backup of its whole cluster
    into a new folder, removed afterwards; nothing in the primary changes); with the
    throw-away cluster one is always started. Before timing, the replica must have
    replayed the primary's write-ahead log as it was; the transactions each server
    committed during each run (warm-up included) are printed: the replica's are the
    reads it answered plus the stamp polls, 20 a second per process. Ratios are to the
    same number of workers without it.
(c) ``/stats/grids`` and ``/locate?lon=…&lat=…`` (random points in the households'
    extent, fixed seed) on one worker: sequential requests (1 client: median, p95) and
    8 clients (requests/s), for ``--domain-seconds`` each, on PostGIS and, with
    ``--gpkg PATH`` (a GeoPackage of the same city: ``gridmap city --database city.gpkg
    --subdistricts 67``), on it.

Each run has ``--warmup`` seconds untimed (every worker process fills its own caches),
then ``--seconds`` timed; the load generator is the asyncio client of
``bench_mixed`` in this process. The CPU of the API processes, the load generator, each
PostgreSQL server and the whole machine is printed per run (psutil): on a machine with
2 cores, 2 and 4 workers share those cores with PostgreSQL, its replica and the load
generator, so the scaling ratios there say how far one machine goes, not what more
machines would give.

The store is read through the API only (plus the audit log and rate-limit rows every
read writes); the sample users are added to a store (or ``--gpkg``) that has no
``admin`` user.

Run: ``.venv/bin/python -m benchmarks.bench_scaleout [--database URL [--replica URL |
--start-replica]] [--gpkg PATH] [--workers 1,2,4] [--seconds 20] [--domain-seconds 60]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg

from api.server import UVICORN_STACK, free_port, running
from benchmarks.bench_mixed import (
    LIFTED,
    READS_ONLY,
    Browser,
    CpuMeter,
    Load,
    Tally,
    admin_token,
    cpu_line,
    drive,
    pct,
    run,
    workload,
)
from gridmap.sample import build_demo
from gridmap.store import is_server_url, open_store
from gridmap.transfer import copy_store
from tests import postgres

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with dask[distributed]
    psutil = None

LOCATE_POINTS = 2000
STATS_DAYS = 30


@contextlib.contextmanager
def serve(database: str | Path, workers: int, replicas: str = "") -> Iterator[str]:
    """The API over ``database`` with ``workers`` uvicorn processes; its base URL."""
    port = free_port()
    env = {
        "GRIDMAP_DATABASE": str(database),
        "GRIDMAP_DATABASE_REPLICAS": replicas,
        **{f"GRIDMAP_{k.upper()}": v for k, v in LIFTED.items()},
    }
    command = [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--workers", str(workers), *UVICORN_STACK,
    ]  # fmt: skip
    with running(command, url=f"http://127.0.0.1:{port}", env=env) as url:
        yield url


def postmaster(url: str) -> int | None:
    """The pid of the postmaster of the server at ``url`` (the parent of a backend), if
    it runs on this machine and psutil is installed."""
    if psutil is None:
        return None
    with psycopg.connect(url, connect_timeout=10) as c:
        pid = int(c.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        try:
            return int(psutil.Process(pid).ppid())
        except psutil.Error:
            return None  # another machine's


def commits(url: str) -> int:
    """Transactions committed in ``url``'s database so far (that server's statistics)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as c:
        row = c.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


@dataclasses.dataclass
class Paths:
    """GETs of one kind of request over a list of paths, picked at random."""

    kind: str
    paths: list[str]

    async def op(self, b: Browser, rng: random.Random, tally: Tally) -> None:
        t = time.perf_counter()
        got = await b.call(tally, self.kind, "GET", rng.choice(self.paths))
        tally.op(self.kind, None if got is None else time.perf_counter() - t)


@dataclasses.dataclass
class Result:
    tally: Tally
    seconds: float
    used: dict[str, float]
    commits: dict[str, int]

    def req_s(self) -> float:
        return self.tally.sent / self.seconds

    def lat(self, kind: str) -> list[float]:
        return self.tally.ops.get(kind, [])


def measure(
    url: str,
    token: str,
    load: Load,
    *,
    clients: int,
    seconds: float,
    warmup: float,
    cpu: CpuMeter,
    stats_of: dict[str, str] | None = None,
) -> Result:
    """One timed run; the commits of the databases in ``stats_of`` (name: URL) over it
    (warm-up included)."""
    before = {k: commits(u) for k, u in (stats_of or {}).items()}
    timed, warm, used = run(
        drive(url, token, load, clients=clients, seconds=seconds, warmup=warmup, cpu=cpu)
    )
    after = {k: commits(u) - before[k] for k, u in (stats_of or {}).items()}
    if warm.error_count:
        timed.examples.extend(warm.examples[:2])
    return Result(timed, seconds, used, after)


def problems(r: Result) -> list[str]:
    """Errors and unexpected statuses of a run, as lines."""
    out = []
    if r.tally.error_count or r.tally.unexpected:
        out.append(
            f"    {r.tally.error_count} errors (≥ 500 or no answer), unexpected statuses "
            f"{dict(r.tally.unexpected) or 'none'}"
        )
        out += [f"    e.g. {line}" for line in r.tally.examples[:4]]
    return out


def throughput_table(
    title: str, results: dict[int, Result], anchors: dict[int, Result], anchor_name: str
) -> None:
    """One row per number of workers: req/s, latency, errors, ratio to the anchor."""
    print(f"\n{title}")
    head = (
        f"{'workers':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'× ' + anchor_name:>18}  CPU (cores)"
    )
    print(head)
    print("-" * (len(head) + 40))
    for n, r in results.items():
        anchor = anchors.get(n)
        ratio = f"{r.req_s() / anchor.req_s():.2f}×" if anchor and anchor.req_s() else "–"
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.used.items()) or "not measured"
        print(
            f"{n:>7}{r.req_s():>9.1f}{pct(r.lat('read'), 50):>9.1f}{pct(r.lat('read'), 99):>9.1f}"
            f"{r.tally.error_count:>8}{ratio:>18}  {cpu}"
        )
        if r.commits:
            print("         transactions committed: " + ", ".join(
                f"{k} {v:,}" for k, v in r.commits.items()))  # fmt: skip
        for line in problems(r):
            print(line)


def domain_table(rows: list[tuple[str, str, int, Result]]) -> None:
    """(c): one row per backend, request and number of clients."""
    print("\n(c) /stats/grids and /locate, one worker")
    head = (
        f"{'backend':<12}{'request':<15}{'clients':>8}{'n':>7}{'req/s':>9}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    print(head)
    print("-" * len(head))
    for backend, kind, clients, r in rows:
        lat = r.lat(kind)
        print(
            f"{backend:<12}{kind:<15}{clients:>8}{len(lat):>7}{r.req_s():>9.1f}"
            f"{pct(lat, 50):>9.1f}{pct(lat, 95):>9.1f}{pct(lat, 99):>9.1f}"
            f"{r.tally.error_count:>8}"
        )
        for line in problems(r):
            print(line)
        print(f"    {cpu_line(r.used)}")


def wait_replayed(primary: str, replica: str, timeout: float = 900.0) -> float:
    """Wait until ``replica`` (a hot standby) has replayed the primary's log as it is now;
    the seconds waited. Exits if it is not a standby or does not catch up."""
    try:
        with psycopg.connect(replica, autocommit=True, connect_timeout=10) as c:
            standby = c.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.OperationalError as exc:
        sys.exit(f"cannot connect to the replica {replica}: {exc}".strip())
    if not standby or not standby[0]:
        sys.exit(f"{replica} is not a standby (pg_is_in_recovery() is false): not a replica")
    with psycopg.connect(primary, autocommit=True) as c:
        target = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    t = time.perf_counter()
    with psycopg.connect(replica, autocommit=True) as c:
        while True:
            row = c.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn, pg_last_wal_replay_lsn()",
                (target,),
            ).fetchone()
            if row and row[0]:
                return time.perf_counter() - t
            if time.perf_counter() - t > timeout:
                sys.exit(f"the replica has replayed up to {row and row[1]}, not {target}, after "
                         f"{timeout:.0f} s")  # fmt: skip
            time.sleep(0.2)


def replica_of_local(database: str) -> tuple[postgres.Cluster, str]:
    """A new streaming replica of the local server holding ``database`` (made by
    ``tests.postgres``: its folder holds ``data``), and the database's URL on it."""
    if (reason := postgres.unavailable()) is not None:
        sys.exit(f"--start-replica: {reason}")
    info = psycopg.conninfo.conninfo_to_dict(database)
    with psycopg.connect(database, autocommit=True) as c:
        data, level, senders = c.execute(
            "SELECT current_setting('data_directory'), current_setting('wal_level'), "
            "current_setting('max_wal_senders')::int"
        ).fetchone()  # type: ignore[misc]
    if level == "minimal" or senders < 1:
        sys.exit(f"--start-replica: the server has wal_level={level}, max_wal_senders={senders}")
    folder = Path(data).parent
    if Path(data).name != "data" or not (Path(data) / "postmaster.pid").exists():
        sys.exit(
            f"--start-replica: {database} is not a server made here by tests/postgres.py "
            f"(its data directory is {data}); start a standby yourself and pass --replica URL"
        )
    primary = postgres.Cluster(
        f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:"
        f"{info.get('port', 5432)}/postgres",
        folder=folder,  # never stopped or removed here: only its address and folder are read
    )
    replica = postgres.start_replica(primary)
    return replica, _on(replica, database)


def _on(replica: postgres.Cluster, database: str) -> str:
    """``database``'s URL on the replica: its database name and role, the replica's address
    (a replica holds the primary's roles and databases)."""
    info = psycopg.conninfo.conninfo_to_dict(database)
    r = psycopg.conninfo.conninfo_to_dict(replica.admin_url)
    auth = info.get("user", "postgres")
    if info.get("password"):
        auth += ":" + str(info["password"])
    return f"postgresql://{auth}@{r['host']}:{r['port']}/{info['dbname']}"


def locate_paths(area: tuple[float, float, float, float], seed: int = 11) -> list[str]:
    """``/locate`` paths for random points in ``area`` (fixed seed)."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = area
    xs, ys = rng.uniform(x0, x1, LOCATE_POINTS), rng.uniform(y0, y1, LOCATE_POINTS)
    return [f"/locate?lon={x:.6f}&lat={y:.6f}" for x, y in zip(xs, ys, strict=True)]


def households_area(database: str | Path) -> tuple[tuple[float, float, float, float], int]:
    store = open_store(database)
    try:
        area = store.extent("households")
        n = store.count("households")
    finally:
        store.close()
    if area is None or n == 0:
        sys.exit(f"{database}: holds no households")
    return area, n


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database", help="an existing PostGIS store (default: the sample, copied)")
    ap.add_argument("--replica", help="URL of a hot standby of --database (same database name)")
    ap.add_argument(
        "--start-replica",
        action="store_true",
        help="start a standby of the local --database server (made by tests/postgres.py)",
    )
    ap.add_argument("--gpkg", help="a GeoPackage of the same city: (c) on it too")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument("--clients", type=int, default=32, help="clients for (a) and (b)")
    ap.add_argument("--domain-clients", type=int, default=8, help="concurrent clients for (c)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    ap.add_argument("--warmup", type=float, default=5.0, help="untimed seconds before each run")
    ap.add_argument(
        "--domain-seconds",
        type=float,
        help="timed seconds of each (c) run (default: --seconds; /stats/grids takes about a "
        "second at a million households)",
    )
    args = ap.parse_args()
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        sys.exit(f"--workers takes whole numbers separated by commas, not {args.workers!r}")
    if not workers or min(workers) < 1:
        sys.exit("--workers needs at least one count ≥ 1")
    if args.database and not is_server_url(args.database):
        sys.exit(
            f"--database must be a postgresql:// URL (GeoPackage: --gpkg), not {args.database}"
        )
    if args.replica and not args.database:
        sys.exit("--replica names a standby of --database: give --database too")
    if args.replica and args.start_replica:
        sys.exit("give --replica or --start-replica, not both")
    if args.gpkg and not Path(args.gpkg).is_file():
        sys.exit(f"--gpkg {args.gpkg}: no such file")
    if not args.database and (reason := postgres.unavailable()) is not None:
        sys.exit(f"no --database given and no throw-away PostgreSQL can be started: {reason}")

    work = Path(tempfile.mkdtemp(prefix="gridmap-scaleout-"))
    clusters: list[postgres.Cluster] = []
    try:
        if args.database:
            database = args.database
            try:
                psycopg.connect(database, connect_timeout=10).close()
            except psycopg.OperationalError as exc:
                sys.exit(f"cannot connect to --database: {exc}".strip())
        else:
            gpkg = work / "zhongxinlu.gpkg"
            build_demo(gpkg, today=dt.date(2026, 11, 24)).close()
            print("starting PostgreSQL + PostGIS, copying the sample into it …", flush=True)
            primary = postgres.start()
            clusters.append(primary)
            database = primary.new_database("scaleout")
            copy_store(gpkg, database)
            with psycopg.connect(database, autocommit=True) as c:
                c.execute("VACUUM ANALYZE")
        token = admin_token(database)  # before a replica is made: the users are on it
        area, n_households = households_area(database)
        replica = args.replica
        if not args.database:
            print("starting a streaming replica …", flush=True)
            standby = postgres.start_replica(primary)
            clusters.append(standby)
            replica = _on(standby, database)
        elif args.start_replica:
            print("starting a streaming replica of the --database server …", flush=True)
            t = time.perf_counter()
            standby, replica = replica_of_local(database)
            clusters.append(standby)
            print(f"  base backup and start: {time.perf_counter() - t:.1f} s", flush=True)
        reads = workload(database, READS_ONLY)
        cores = os.cpu_count()
        print(
            f"{n_households:,} households on PostGIS ({_hide(database)}); {args.clients} "
            f"clients; {args.warmup:g} s warm-up + {args.seconds:g} s per run"
        )
        print(
            f"this machine has {cores} cores: API processes, PostgreSQL (and its replica) and "
            "the load generator share them"
        )
        pgs = {"PostgreSQL": pid} if (pid := postmaster(database)) else {}
        cpu = CpuMeter(pgs)
        plain: dict[int, Result] = {}
        for n in workers:
            with serve(database, n) as url:
                plain[n] = measure(
                    url, token, reads, clients=args.clients, seconds=args.seconds,
                    warmup=args.warmup, cpu=cpu,
                )  # fmt: skip
        one = {n: plain[min(workers)] for n in workers}
        throughput_table(
            "(a) reads, items by bbox and single items, over the primary",
            plain,
            one,
            f"{min(workers)} worker",
        )
        if replica:
            waited = wait_replayed(database, replica)
            print(f"\nreplica {_hide(replica)} has replayed the primary's log ({waited:.1f} s)")
            standby_pid = postmaster(replica)
            cpu = CpuMeter({**pgs, **({"replica": standby_pid} if standby_pid else {})})
            stats_of = {"primary": database, "replica": replica}
            with_replica: dict[int, Result] = {}
            for n in workers:
                with serve(database, n, replicas=replica) as url:
                    with_replica[n] = measure(
                        url, token, reads, clients=args.clients, seconds=args.seconds,
                        warmup=args.warmup, cpu=cpu, stats_of=stats_of,
                    )  # fmt: skip
            throughput_table(
                "(b) the same reads with the replica answering them (GRIDMAP_DATABASE_REPLICAS)",
                with_replica,
                plain,
                "no replica",
            )
        else:
            print("\n(b) skipped: give --replica URL or --start-replica")

        stats = Paths("/stats/grids", [f"/stats/grids?days={STATS_DAYS}"])
        locate = Paths("/locate", locate_paths(area))
        rows: list[tuple[str, str, int, Result]] = []
        backends: list[tuple[str, str | Path, dict[str, int]]] = [("PostGIS", database, pgs)]
        if args.gpkg:
            _, gpkg_n = households_area(args.gpkg)
            print(f"\nGeoPackage {args.gpkg}: {gpkg_n:,} households")
            if gpkg_n != n_households:
                print("  (not the same number as on PostGIS: not the same city?)")
            backends.append(("GeoPackage", args.gpkg, {}))
        domain_seconds = args.domain_seconds or args.seconds
        for name, db, pg in backends:
            tok = token if db == database else admin_token(db)
            with serve(db, 1) as url:
                for load in (stats, locate):
                    for clients in (1, args.domain_clients):
                        r = measure(
                            url, tok, load, clients=clients, seconds=domain_seconds,
                            warmup=args.warmup, cpu=CpuMeter(pg),
                        )  # fmt: skip
                        rows.append((name, load.kind, clients, r))
        domain_table(rows)
    finally:
        for cluster in reversed(clusters):
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def _hide(url: str) -> str:
    """A database URL without its password, to print."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host')}:{info.get('port')}/{info.get('dbname')}"


if __name__ == "__main__":
    main()
