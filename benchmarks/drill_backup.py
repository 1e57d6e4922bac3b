"""Backup drill: ``gridmap backup`` of a city of ``--subdistricts`` invented subdistricts
(7: about 105,000 households) while a real server takes writes, then ``gridmap restore``
into a new store and the checks: every creation acknowledged before the backup began is in
the restored store, every table matches the backup's checksums (``gridmap restore`` checks
them), the integrity check passes, and the audit log still refuses changes.

    .venv/bin/python -m benchmarks.drill_backup [--subdistricts 7] [--writers 8] [--postgis]

Prints the time of the backup under load, the writes' latency before and during it, and the
time to restore (the figure the issue asks for: households restored per second).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from api.server import gridmap_server
from benchmarks.drill_common import admin_headers, percentile_ms, stored_names, toilet

GRIDMAP = str(Path(sys.executable).parent / "gridmap")


def city(folder: Path, subdistricts: int, postgis: bool) -> tuple[str, object | None]:
    """A city store (GeoPackage, or a database of a throw-away cluster) with an admin."""
    from gridmap.accounts import Accounts, token_secret
    from gridmap.city import build_city
    from gridmap.security import Role

    cluster = None
    if postgis:
        from tests import postgres

        cluster = postgres.start()
        target = cluster.new_database("drill_city")
    else:
        target = str(folder / "city.gpkg")
    store = build_city(target, subdistricts)
    Accounts(store, secret=token_secret(store)).add_user(
        "drill_admin", "Drill#backup-2026-" + uuid.uuid4().hex[:8], Role.SUBDISTRICT_ADMIN
    )
    store.close()
    return target, cluster


Log = list[tuple[float, float, str]]


def writes_during(url: str, headers: dict[str, str], tag: str, writers: int,
                  stop: threading.Event, log: Log) -> list[threading.Thread]:  # fmt: skip
    """Writers creating toilets until ``stop``; each acknowledged one logged as
    (sent at, latency, name)."""

    def work(w: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            i = 0
            while not stop.is_set():
                i += 1
                name = f"{tag}-{w}-{i}"
                t = time.time()
                r = c.post("/collections/toilets/items", json=toilet(name),
                           headers={"Idempotency-Key": name})  # fmt: skip
                if r.status_code == 201:
                    log.append((t, time.time() - t, name))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    return threads


def audit_refuses_changes(target: str) -> bool:
    """The restored database itself refuses to change an audit entry (plain SQL)."""
    insert = "INSERT INTO gridmap_audit (at, action, result) VALUES ('now', 'drill', 'ok')"
    update = "UPDATE gridmap_audit SET result = 'changed'"
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(insert)
            try:
                conn.execute(update)
            except psycopg.Error:
                return True
        return False
    import sqlite3

    conn = sqlite3.connect(target)
    try:
        conn.execute(insert)
        conn.commit()
        conn.execute(update)
    except sqlite3.DatabaseError:
        return True
    finally:
        conn.close()
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subdistricts", type=int, default=7)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--postgis", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        db, cluster = city(folder, args.subdistricts, args.postgis)
        built = time.perf_counter() - t
        try:
            run(db, folder, args.writers, built, cluster)
        finally:
            if cluster is not None:
                cluster.stop()  # type: ignore[attr-defined]


def run(db: str, folder: Path, writers: int, built: float, cluster: object | None) -> None:
    """Back up under load, restore, check; print the figures."""
    from gridmap.backup import Manifest

    headers = admin_headers(db)
    tag = f"bk-{uuid.uuid4().hex[:6]}"
    stop, log = threading.Event(), []  # type: ignore[var-annotated]
    out = folder / "city.backup"
    with gridmap_server(db, log_level="WARNING") as url:
        threads = writes_during(url, headers, tag, writers, stop, log)
        time.sleep(5)
        began = time.time()
        done = subprocess.run([GRIDMAP, "backup", str(out), "--database", db],
                              capture_output=True, text=True, check=False)  # fmt: skip
        ended = time.time()
        time.sleep(2)
        stop.set()
        for th in threads:
            th.join()
    if done.returncode != 0:
        raise SystemExit(f"backup failed: {done.stdout}{done.stderr}")
    manifest = Manifest.read(out)
    households = manifest.tables["households"]["rows"]
    target = cluster.new_database("drill_restored") if cluster else str(folder / "restored.gpkg")  # type: ignore[attr-defined]
    t = time.perf_counter()
    restored = subprocess.run([GRIDMAP, "restore", str(out), "--database", target],
                              capture_output=True, text=True, check=False)  # fmt: skip
    restore_s = time.perf_counter() - t
    acked_before = [n for (sent, lat, n) in log if sent + lat < began]
    kept = stored_names(target, tag)
    missing = [n for n in acked_before if kept.get(n) != 1]
    during = [lat for (sent, lat, _) in log if began <= sent <= ended]
    ahead = [lat for (sent, lat, _) in log if sent < began]
    print(f"backup drill: {households:,} households ({'PostGIS' if cluster else 'GeoPackage'}; "
          f"city built in {built:.0f} s), {writers} writers")  # fmt: skip
    print(f"backup under load: {ended - began:.1f} s, {out.stat().st_size / 2**20:.0f} MB; writes "
          f"acknowledged during it {len(during)}, p99 before {percentile_ms(ahead, 99):.0f} ms, "
          f"during {percentile_ms(during, 99):.0f} ms")  # fmt: skip
    print(f"restore: {restore_s:.1f} s ({households / restore_s:,.0f} households/s), exit "
          f"{restored.returncode}; acknowledged before the backup began {len(acked_before)}, "
          f"missing from the restored store {len(missing)}; audit log append-only: "
          f"{audit_refuses_changes(target)}")  # fmt: skip
    said = " ".join(restored.stdout.split())
    ok = (
        restored.returncode == 0
        and not missing
        and "integrity checks passed" in said
        and audit_refuses_changes(target)
    )
    print(said[-200:])
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
