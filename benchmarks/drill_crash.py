"""Crash drills: ``kill -9`` at random moments, then check that nothing is half-written.

* ``import``: ``gridmap import`` of ``--rows`` invented households (a CSV) is killed at
  ``--kills`` random moments of its run (drawn over the time one full import takes,
  measured first on a copy). After each kill the store must hold the households it held
  before (or, had the import finished first, all of the new ones), pass SQLite's integrity
  check (GeoPackage) and ``gridmap check``; at the end the same import runs to completion.
* ``serve``: the API server is killed every ``--interval`` seconds, ``--kills`` times,
  while ``--writers`` clients create toilets (each with an ``Idempotency-Key``, resent
  until acknowledged) and edit toilets of their own (``If-Match``). Afterwards every
  acknowledged creation must be stored exactly once, no resend may have made a second,
  and every toilet must hold the last value whose edit was acknowledged.

    .venv/bin/python -m benchmarks.drill_crash import [--rows 50000] [--kills 12] [--postgis]
    .venv/bin/python -m benchmarks.drill_crash serve [--interval 60] [--kills 10] [--postgis]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.server import UVICORN_STACK, free_port, wait_until_up
from benchmarks.drill_common import admin_headers, drill_store, stored_names, toilet
from gridmap.backup import integrity_problems

GRIDMAP = str(Path(sys.executable).parent / "gridmap")


# ---------------------------------------------------------------- import killed


def households_csv(database: str | Path, rows: int, out: Path) -> Path:
    """``rows`` invented households in the sample's buildings, as a CSV with 经度/纬度."""
    from benchmarks.bench_import import COLUMNS, households

    sample = database
    if str(database).startswith("postgresql://"):
        raise ValueError("households_csv reads a GeoPackage sample")
    frame = households(Path(sample), rows)
    with out.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["楼栋", "门牌", "户主", "联系电话", "身份证号", "人口", "标签", "经度", "纬度"])
        cells = frame[COLUMNS].astype(object).where(frame[COLUMNS].notna(), "")
        for r, g in zip(cells.itertuples(index=False), frame.geometry, strict=True):
            w.writerow([*r, f"{g.x:.9f}", f"{g.y:.9f}"])
    return out


def count_households(database: str | Path) -> int:
    """Households stored, counted with plain SQL."""
    sql = "SELECT count(*) FROM households"
    if str(database).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(database)) as conn:
            return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]
    conn = sqlite3.connect(database)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def sqlite_ok(database: str | Path) -> bool:
    """SQLite's own integrity check (True for a server database: PostgreSQL's WAL)."""
    if str(database).startswith("postgresql://"):
        return True
    conn = sqlite3.connect(database)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def import_command(database: str | Path, source: Path) -> list[str]:
    """The ``gridmap import`` of the drill."""
    return [GRIDMAP, "import", str(source), "--layer", "households", "--crs", "wgs84",
            "--database", str(database)]  # fmt: skip


@dataclass
class Kill:
    """One import killed: when, and what the store held after."""

    at: float
    households: int
    outcome: str  # "nothing" | "everything" | "HALF"
    sqlite_ok: bool
    problems: int


def import_kills(
    database: str | Path, source: Path, rows: int, kills: int, full_seconds: float, seed: int = 1
) -> tuple[list[Kill], bool]:
    """Kill the import ``kills`` times at random moments of ``full_seconds``; then run it
    to the end. Returns the kills and whether the last run stored every row."""
    rng = random.Random(seed)
    out = []
    before = count_households(database)
    for _ in range(kills):
        at = rng.uniform(0.05, 1.0) * full_seconds
        proc = subprocess.Popen(
            import_command(database, source), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        n = count_households(database)
        outcome = "nothing" if n == before else "everything" if n == before + rows else "HALF"
        out.append(
            Kill(at, n, outcome, sqlite_ok(database), len(integrity_problems(str(database))))
        )
        if outcome == "everything":  # it finished first: nothing left to kill
            break
    if out and out[-1].outcome == "everything":
        return out, True  # the run that was to be killed stored every row
    finished = subprocess.run(import_command(database, source), capture_output=True, check=False)
    return out, finished.returncode == 0 and count_households(database) == before + rows


def timed_import(database: str | Path, source: Path) -> float:
    """Seconds one full import takes (on a store the drill then throws away)."""
    t = time.perf_counter()
    subprocess.run(import_command(database, source), check=True, capture_output=True)
    return time.perf_counter() - t


# ---------------------------------------------------------------- server killed


class Server:
    """The API server on a fixed port, started again after each kill."""

    def __init__(self, database: str | Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "GRIDMAP_DATABASE": str(database), "GRIDMAP_LOG_LEVEL": "WARNING"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; the seconds until it answers."""
        t = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host",
             "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *UVICORN_STACK],
            env=self.env,
        )  # fmt: skip
        wait_until_up(self.url + "/health")
        return time.perf_counter() - t

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextmanager
def server(database: str | Path) -> Iterator[Server]:
    """A server to kill, stopped at the end."""
    s = Server(database)
    s.start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()
            s.proc.wait(timeout=30)


@dataclass
class Load:
    """What the writers saw and were told."""

    created: dict[str, int] = field(default_factory=dict)  # name → id, acknowledged
    edited: dict[int, str] = field(default_factory=dict)  # id → last acknowledged value
    attempts: int = 0
    failures: int = 0  # refused connections, resets, 5xx: each resent
    replayed: int = 0  # resent creations answered from their Idempotency-Key
    server_errors: dict[int, int] = field(default_factory=dict)


def _send(c: httpx.Client, load: Load, lock: threading.Lock, stop: threading.Event,
          method: str, path: str, **kw: Any) -> httpx.Response | None:  # fmt: skip
    """Send until the server answers below 500 (resending the same request); None if the
    drill stops first."""
    while not stop.is_set() or method == "POST":
        with lock:
            load.attempts += 1
        try:
            r = c.request(method, path, **kw)
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code < 500:
            return r
        with lock:
            load.failures += 1
            if r is not None:
                load.server_errors[r.status_code] = load.server_errors.get(r.status_code, 0) + 1
        time.sleep(0.2)
    return None


def writer(url: str, headers: dict[str, str], tag: str, w: int, load: Load,
           lock: threading.Lock, stop: threading.Event) -> None:  # fmt: skip
    """Create toilets and edit this writer's own one, until ``stop``."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        own_key = {"Idempotency-Key": f"{tag}-own-{w}"}
        mine = _send(c, load, lock, stop, "POST", "/collections/toilets/items",
                     json=toilet(f"{tag}-own-{w}"), headers=own_key)  # fmt: skip
        if mine is None or mine.status_code != 201:
            return
        own = int(mine.json()["id"])
        with lock:
            load.created[f"{tag}-own-{w}"] = own
        i = 0
        while not stop.is_set():
            i += 1
            name = f"{tag}-{w}-{i}"
            key = {"Idempotency-Key": str(uuid.uuid5(uuid.NAMESPACE_URL, name))}
            r = _send(c, load, lock, stop, "POST", "/collections/toilets/items",
                      json=toilet(name), headers=key)  # fmt: skip
            if r is not None and r.status_code == 201:
                with lock:
                    load.created[name] = int(r.json()["id"])
                    load.replayed += r.headers.get("Idempotent-Replayed") == "true"
            value = f"第{i}次"
            while not stop.is_set():
                got = _send(c, load, lock, stop, "GET", f"/collections/toilets/items/{own}")
                if got is None:
                    break
                if got.json()["properties"]["open_hours"] == value:
                    break  # an edit whose answer was lost had landed
                p = _send(c, load, lock, stop, "PATCH", f"/collections/toilets/items/{own}",
                          json={"properties": {"open_hours": value}},
                          headers={"If-Match": got.headers["ETag"]})  # fmt: skip
                if p is not None and p.status_code == 200:
                    with lock:
                        load.edited[own] = value
                    break


def server_kills(database: str | Path, interval: float, kills: int, writers: int
                 ) -> tuple[Load, list[float], dict[str, Any]]:  # fmt: skip
    """Kill the server every ``interval`` s, ``kills`` times, under ``writers`` writers."""
    headers = admin_headers(database)
    tag = f"crash-{uuid.uuid4().hex[:6]}"
    load, lock, stop = Load(), threading.Lock(), threading.Event()
    restarts = []
    with server(database) as s:
        threads = [
            threading.Thread(target=writer, args=(s.url, headers, tag, w, load, lock, stop))
            for w in range(writers)
        ]
        for t in threads:
            t.start()
        for _ in range(kills):
            time.sleep(interval)
            s.kill()
            restarts.append(s.start())
        time.sleep(min(interval, 2.0))
        stop.set()
        for t in threads:
            t.join(timeout=120)
        s.kill()  # the last one too: what is checked is what survived a kill
    stored = stored_names(database, tag)
    facts = {
        "stored": sum(stored.values()),
        "duplicates": sum(n - 1 for n in stored.values() if n > 1),
        "missing": sorted(n for n in load.created if stored.get(n, 0) != 1),
        "unacknowledged_stored": sorted(n for n in stored if n not in load.created),
        "wrong_values": _wrong_values(database, load.edited),
        "sqlite_ok": sqlite_ok(database),
    }
    return load, restarts, facts


def _wrong_values(database: str | Path, edited: dict[int, str]) -> list[int]:
    """Toilets whose stored value is not the last acknowledged one (plain SQL)."""
    if not edited:
        return []
    if str(database).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(database)) as conn:
            rows = conn.execute(
                "SELECT fid, open_hours FROM toilets WHERE fid = ANY(%s)", (list(edited),)
            ).fetchall()
    else:
        conn = sqlite3.connect(database)
        marks = ",".join("?" * len(edited))
        rows = conn.execute(
            f"SELECT fid, open_hours FROM toilets WHERE fid IN ({marks})",  # noqa: S608
            list(edited),
        ).fetchall()
        conn.close()
    found = {int(f): v for f, v in rows}
    return sorted(f for f, v in edited.items() if found.get(f) != v)


# ---------------------------------------------------------------- the script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("drill", choices=["import", "serve"])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--kills", type=int, default=None)
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--postgis", action="store_true", help="over PostGIS (a throw-away cluster)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.drill == "import":
            run_import_drill(Path(tmp), args.rows, args.kills or 12, args.postgis)
        else:
            run_serve_drill(Path(tmp), args.interval, args.kills or 10, args.writers, args.postgis)


def run_import_drill(tmp: Path, rows: int, kills: int, postgis: bool) -> None:
    """Print the import drill's figures."""
    from benchmarks.drill_common import sample_copy

    source = households_csv(sample_copy(tmp / "csv-src"), rows, tmp / "households.csv")
    with drill_store(tmp / "probe", postgis) as probe:
        full = timed_import(probe, source)
    with drill_store(tmp / "drill", postgis) as db:
        found, finished = import_kills(db, source, rows, kills, full)
    print(f"import drill: {rows:,} households, one full import {full:.1f} s "
          f"({'PostGIS' if postgis else 'GeoPackage'})")  # fmt: skip
    print(f"{'kill at':>9} {'households':>11} {'outcome':>11} {'sqlite':>7} {'check':>6}")
    for k in found:
        print(f"{k.at:8.2f}s {k.households:11,} {k.outcome:>11} "
              f"{'ok' if k.sqlite_ok else 'BAD':>7} {k.problems:6}")  # fmt: skip
    ok = all(k.outcome != "HALF" and k.sqlite_ok and k.problems == 0 for k in found) and finished
    print(f"re-run stored every row: {finished}; {'PASS' if ok else 'FAIL'}")


def run_serve_drill(tmp: Path, interval: float, kills: int, writers: int, postgis: bool) -> None:
    """Print the server-kill drill's figures."""
    (tmp / "s").mkdir()
    with drill_store(tmp / "s", postgis) as db:
        load, restarts, facts = server_kills(db, interval, kills, writers)
    ok = (
        not (facts["duplicates"] or facts["missing"] or facts["wrong_values"])
        and facts["sqlite_ok"]
    )
    print(f"server killed {kills}× every {interval:.0f} s under {writers} writers "
          f"({'PostGIS' if postgis else 'GeoPackage'}); back up in "
          f"{max(restarts):.1f} s at most")  # fmt: skip
    print(f"requests {load.attempts:,}, resent after a kill {load.failures:,}; acknowledged "
          f"creations {len(load.created):,} ({load.replayed} answered as a resend), "
          f"stored {facts['stored']:,}, duplicates "
          f"{facts['duplicates']}, acknowledged but missing {len(facts['missing'])}, "
          f"stored without an answer {len(facts['unacknowledged_stored'])}; edits "
          f"acknowledged {len(load.edited)} toilets, wrong last value "
          f"{len(facts['wrong_values'])}; 5xx answers {load.server_errors}; "
          f"{'PASS' if ok else 'FAIL'}")  # fmt: skip


if __name__ == "__main__":
    main()
