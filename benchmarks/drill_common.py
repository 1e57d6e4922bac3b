"""What the reliability drills share: a store to drill (the sample with its users, on either
backend), a token, a feature to create, reading back what was stored, percentiles."""

from __future__ import annotations

import contextlib
import secrets
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def toilet(name: str) -> dict[str, Any]:
    """A planned toilet inside the sample subdistrict."""
    return {
        "type": "Feature",
        "properties": {"name": name, "status": "planned"},
        "geometry": {"type": "Point", "coordinates": [113.291, 34.811]},
    }


def stored_names(database: str | Path, prefix: str) -> Counter[str]:
    """How many toilets the database holds under each name starting with ``prefix``
    (read with plain SQL, not through gridmap)."""
    sql = "SELECT name FROM toilets WHERE name LIKE ?"
    if str(database).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(database)) as conn:
            rows = conn.execute(sql.replace("?", "%s"), (prefix + "%",)).fetchall()
    else:
        import sqlite3

        conn = sqlite3.connect(database)
        rows = conn.execute(sql, (prefix + "%",)).fetchall()
        conn.close()
    return Counter(str(r[0]) for r in rows)


def admin_headers(database: str | Path) -> dict[str, str]:
    """A subdistrict admin's bearer token for the database (a sample user, or one made)."""
    from gridmap.accounts import Accounts, token_secret
    from gridmap.security import Role
    from gridmap.store import open_store

    store = open_store(database)
    try:
        accounts = Accounts(store, secret=token_secret(store), token_minutes=240)
        admin = next((u for u in store.users() if u["role"] == Role.SUBDISTRICT_ADMIN.value), None)
        if admin is None:
            password = secrets.token_urlsafe(24) + "#A9"
            accounts.add_user("drill_admin", password, Role.SUBDISTRICT_ADMIN)
        name = admin["username"] if admin else "drill_admin"
        token = accounts.issue(name, Role.SUBDISTRICT_ADMIN).access_token
    finally:
        store.close()
    return {"Authorization": f"Bearer {token}"}


def sample_copy(folder: Path) -> Path:
    """The sample subdistrict with its users, built into ``folder``."""
    from gridmap.accounts import seed_sample_users
    from gridmap.sample import build_demo

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "drill.gpkg"
    store = build_demo(path)
    seed_sample_users(store)
    store.close()
    return path


def percentile_ms(values: list[float], q: int) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds."""
    if len(values) < 2:
        return values[0] * 1000 if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


@contextlib.contextmanager
def drill_store(folder: Path, postgis: bool = False) -> Iterator[str | Path]:
    """The sample with its users: a GeoPackage in ``folder``, or copied into a database of
    a throw-away PostgreSQL cluster (tests/postgres.py), stopped afterwards."""
    path = sample_copy(folder)
    if not postgis:
        yield path
        return
    from gridmap.transfer import copy_store
    from tests import postgres

    if (why := postgres.unavailable()) is not None:
        raise SystemExit(f"--postgis: {why}")
    cluster = postgres.start()
    try:
        url = cluster.new_database("drill")
        copy_store(path, url)
        yield url
    finally:
        cluster.stop()
