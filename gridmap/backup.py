"""Backups: a consistent copy of a running store with a manifest of checksums, and a
restore that checks the copy before it replaces anything.

* GeoPackage: ``VACUUM INTO`` reads one snapshot (the service goes on writing: WAL) into a
  new file; the manifest holds the file's SHA-256 and, per table, its row count and a
  digest of its rows in content order (row ids may be renumbered by VACUUM).
* PostGIS: ``pg_dump -Fc`` of a snapshot exported by a transaction that computes the same
  per-table figures in PostgreSQL (``md5`` of each row's text, in content order).

A restore verifies the file (SHA-256, ``PRAGMA integrity_check``, every table's figures),
then replaces the target in one step: a GeoPackage by renaming over it (the old file is
kept beside it), a PostgreSQL database by ``pg_restore --single-transaction`` into an
empty database. The figures are computed again on the restored store and must match.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gridmap.errors import GridmapError, StoreError
from gridmap.store import is_server_url

Step = Callable[[str, int, int], None]
"""Progress: (what, done, total)."""


class BackupError(GridmapError):
    """A backup or restore that cannot be done as asked (nothing was changed)."""


@dataclass
class Manifest:
    """What a backup holds, to check it against before and after a restore."""

    kind: str  # "gpkg" | "postgis"
    created_at: str
    schema_digest: str | None
    sha256: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    method: str = ""

    def write(self, path: Path) -> None:
        """Write beside the backup as ``<backup>.manifest.json``."""
        manifest_path(path).write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest of a backup file; BackupError if missing or unreadable."""
        mp = manifest_path(path)
        try:
            return cls(**orjson.loads(mp.read_bytes()))
        except FileNotFoundError:
            raise BackupError(f"{mp} is missing; a backup is checked against it") from None
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise BackupError(f"{mp} is not a gridmap backup manifest ({exc})") from None


def manifest_path(backup: Path) -> Path:
    """Where a backup's manifest lives."""
    return backup.with_name(backup.name + ".manifest.json")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _noop(_what: str, _done: int, _total: int) -> None:
    pass


# ---------------------------------------------------------------- backing up


def backup(database: str, dest: Path, *, step: Step = _noop) -> Manifest:
    """Back ``database`` up into the new file ``dest`` (the service may keep running);
    write and return its manifest."""
    dest = Path(dest)
    if dest.exists() or manifest_path(dest).exists():
        raise BackupError(f"{dest} already exists; give a new file name")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is no folder; create it first")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        if is_server_url(database):
            manifest = _pg_backup(database, partial, step)
        else:
            manifest = _gpkg_backup(Path(database), partial, step)
        _fsync(partial)
        partial.rename(dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    manifest.write(dest)
    return manifest


def _gpkg_backup(source: Path, out: Path, step: Step) -> Manifest:
    if not source.is_file():
        raise BackupError(f"no GeoPackage at {source}")
    step("snapshot", 0, 1)
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("VACUUM INTO ?", (str(out),))
    except sqlite3.Error as exc:
        raise BackupError(f"could not copy {source}: {exc}") from None
    finally:
        conn.close()
    step("snapshot", 1, 1)
    copy = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        _integrity(copy, out)
        tables = sqlite_figures(copy, step)
        digest = _meta(copy, "schema_digest")
    finally:
        copy.close()
    return Manifest("gpkg", _now(), digest, file_sha256(out), tables, "sha256-rows-by-content")


def _pg_backup(url: str, out: Path, step: Step) -> Manifest:
    import psycopg

    pg_dump = _tool("pg_dump")
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        step("dump", 0, 1)
        dump = subprocess.Popen(
            [pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--file={out}", url],
            stderr=subprocess.PIPE,
            text=True,
        )
        tables = pg_figures(conn, step)  # the same snapshot, while pg_dump reads it
        digest = conn.execute(
            "SELECT value FROM gridmap_meta WHERE key = 'schema_digest'"
        ).fetchone()
        _, err = dump.communicate()
        if dump.returncode != 0:
            raise BackupError(f"pg_dump failed: {_redacted(err, url)}")
        step("dump", 1, 1)
        conn.rollback()
    return Manifest(
        "postgis",
        _now(),
        digest[0] if digest else None,
        file_sha256(out),
        tables,
        "md5-rows-by-content",
    )


# ---------------------------------------------------------------- figures


def sqlite_figures(conn: sqlite3.Connection, step: Step = _noop) -> dict[str, dict[str, Any]]:
    """Row count and content digest of every table holding data (not SQLite's own, not
    the R-tree indexes, which are rebuilt from the rows)."""
    names = [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE 'rtree_%' AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name"
        )
    ]
    out = {}
    for i, name in enumerate(names):
        step("checksums", i, len(names))
        quoted = '"' + name.replace('"', '""') + '"'
        ncols = len(conn.execute(f"SELECT * FROM {quoted} LIMIT 0").description)  # noqa: S608
        order = ", ".join(str(k) for k in range(1, ncols + 1))
        h = hashlib.sha256()
        rows = 0
        for row in conn.execute(f"SELECT * FROM {quoted} ORDER BY {order}"):  # noqa: S608
            h.update(repr(row).encode())
            rows += 1
        out[name] = {"rows": rows, "digest": h.hexdigest()}
    step("checksums", len(names), len(names))
    return out


def pg_figures(conn: Any, step: Step = _noop) -> dict[str, dict[str, Any]]:
    """Row count and content digest of every table of the store's schema (PostGIS's own
    ``spatial_ref_sys`` left out), computed by PostgreSQL."""
    names = [
        str(r[0])
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE' AND table_name <> 'spatial_ref_sys' "
            "ORDER BY table_name"
        )
    ]
    out = {}
    for i, name in enumerate(names):
        step("checksums", i, len(names))
        quoted = '"' + name.replace('"', '""') + '"'
        rows, digest = conn.execute(
            "SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), '')) "  # noqa: S608
            f"FROM (SELECT md5(t::text) AS h FROM {quoted} t) s"
        ).fetchone()
        out[name] = {"rows": int(rows), "digest": str(digest)}
    step("checksums", len(names), len(names))
    return out


def _integrity(conn: sqlite3.Connection, path: Path) -> None:
    found = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    if found != ["ok"]:
        raise BackupError(f"{path} fails SQLite's integrity check: {'; '.join(found[:3])}")


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    try:
        row = conn.execute("SELECT value FROM gridmap_meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        msg = f"{name} is not installed; on Debian: sudo apt-get install postgresql-client"
        raise BackupError(msg)
    return found


def _redacted(text: str, url: str) -> str:
    from gridmap.store.postgis import redact

    return text.replace(url, redact(url)).strip()[-500:]


# ---------------------------------------------------------------- checking, restoring


def verify(path: Path, *, step: Step = _noop) -> Manifest:
    """Check a backup file against its manifest; BackupError saying what differs."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"no backup at {path}")
    manifest = Manifest.read(path)
    step("sha256", 0, 1)
    if file_sha256(path) != manifest.sha256:
        raise BackupError(f"{path} is not the file its manifest describes (SHA-256 differs)")
    step("sha256", 1, 1)
    if manifest.kind == "gpkg":
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            _integrity(conn, path)
            _same(sqlite_figures(conn, step), manifest.tables, str(path))
        finally:
            conn.close()
    return manifest


def _same(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    differ = sorted(t for t in set(found) | set(expected) if found.get(t) != expected.get(t))
    if differ:
        raise BackupError(f"{where} differs from the backup's manifest in: {', '.join(differ)}")


def restore(backup_file: Path, database: str, *, step: Step = _noop) -> Manifest:
    """Replace ``database`` by the backup (verified first, checked again after); returns
    the manifest. A GeoPackage must not be open by a running service; the file it replaces
    is kept as ``<name>.before-restore-<time>``. A PostgreSQL database must hold no gridmap
    store (create an empty one, restore, then point the service at it)."""
    manifest = verify(Path(backup_file), step=step)
    if is_server_url(database):
        if manifest.kind != "postgis":
            raise BackupError("a GeoPackage backup goes to a file; use `gridmap copy` for a server")
        _pg_restore(Path(backup_file), database, manifest, step)
    else:
        if manifest.kind != "gpkg":
            raise BackupError("a PostgreSQL backup goes to a postgresql:// database")
        _gpkg_restore(Path(backup_file), Path(database), manifest, step)
    return manifest


def in_use(path: Path) -> bool:
    """True if some process has the GeoPackage open (SQLite's WAL mode holds a shared lock
    on byte 128 of the ``-shm`` file for as long as a connection is open)."""
    shm = path.with_name(path.name + "-shm")
    if not shm.exists():
        return False
    with shm.open("rb+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
        except OSError:
            return True
        fcntl.lockf(f, fcntl.LOCK_UN, 1, 128)
    return False


def _gpkg_restore(src: Path, target: Path, manifest: Manifest, step: Step) -> None:
    if target.exists() and in_use(target):
        msg = f"{target} is open by a running service; stop it first (systemctl stop gridmap)"
        raise BackupError(msg)
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is no folder; create it first")
    incoming = target.with_name(target.name + ".restoring")
    step("copy", 0, 1)
    shutil.copyfile(src, incoming)
    _fsync(incoming)
    step("copy", 1, 1)
    if target.exists():
        _checkpoint(target)  # the old file whole, without its WAL, before it is set aside
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        target.rename(target.with_name(f"{target.name}.before-restore-{stamp}"))
    for side in ("-wal", "-shm", "-journal"):
        target.with_name(target.name + side).unlink(missing_ok=True)
    incoming.rename(target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        _same(sqlite_figures(conn, step), manifest.tables, str(target))
    finally:
        conn.close()


def _checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=30)
    try:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _pg_restore(src: Path, url: str, manifest: Manifest, step: Step) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        held = conn.execute("SELECT to_regclass('gridmap_meta')").fetchone()[0]  # type: ignore[index]
    if held is not None:
        msg = (
            "that database holds a gridmap store already; restore into an empty database "
            "(createdb), check it, then point GRIDMAP_DATABASE at it"
        )
        raise BackupError(msg)
    step("restore", 0, 1)
    done = subprocess.run(
        [_tool("pg_restore"), "--single-transaction", "--exit-on-error", "--no-owner",
         f"--dbname={url}", str(src)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        msg = f"pg_restore failed (nothing was restored): {_redacted(done.stderr, url)}"
        raise BackupError(msg)
    step("restore", 1, 1)
    with psycopg.connect(url, autocommit=False) as conn:
        _same(pg_figures(conn, step), manifest.tables, "the restored database")


def integrity_problems(database: str) -> list[str]:
    """What ``gridmap check`` finds in a store (empty: none)."""
    from gridmap.integrity import check_store
    from gridmap.store import open_store

    try:
        store = open_store(database)
    except StoreError as exc:
        return [str(exc)]
    try:
        return check_store(store)
    finally:
        store.close()
