"""Backups: a consistent copy of a running store with a manifest of checksums, and a
restore that checks the copy before it replaces anything.

* GeoPackage: ``VACUUM INTO`` reads one snapshot (the service goes on writing: WAL) into a
  new file; the manifest holds the file's SHA-256 and, per table, its row count and a
  digest of its rows in content order (row ids may be renumbered by VACUUM).
* PostGIS: ``pg_dump -Fc`` of a snapshot exported by a transaction that computes the same
  per-table figures in PostgreSQL (``md5`` of each row's text, in content order).

A restore verifies the file (SHA-256, ``PRAGMA integrity_check`` or ``pg_restore --list``,
every table's figures), then replaces the target in one step: a GeoPackage by renaming over
it (the old file is kept beside it), a PostgreSQL database by ``pg_restore
--single-transaction`` into an empty database. The figures are computed again on the
restored store and must match. Backups, manifests and restored files are the owner's alone
(mode 600): they hold password hashes, the token key and unmasked personal data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gridmap.errors import GridmapError, StoreError
from gridmap.store import is_server_url

Step = Callable[[str, int, int], None]
"""Progress: (what, done, total)."""
PRIVATE = 0o600
KINDS = ("gpkg", "postgis")


class BackupError(GridmapError):
    """A backup or restore that cannot be done as asked (nothing was changed)."""


F = TypeVar("F", bound=Callable[..., Any])


def said_plainly(fn: F) -> F:
    """Errors of SQLite, PostgreSQL and the file system become one-line BackupErrors (the
    command prints them; no traceback), with any password taken out of the text."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg

        try:
            return fn(*args, **kwargs)
        except GridmapError:
            raise
        except psycopg.Error as exc:
            raise BackupError(f"the database server: {_redacted(str(exc).strip())}") from None
        except sqlite3.Error as exc:
            raise BackupError(f"SQLite: {exc}") from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise BackupError(f"{exc.strerror or exc}{where}") from None

    return wrapper  # type: ignore[return-value]


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
        """Write beside the backup as ``<backup>.manifest.json`` (a new file, mode 600)."""
        _write_new(manifest_path(path), orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest of a backup file; BackupError if missing or not one."""
        mp = manifest_path(path)
        try:
            m = cls(**orjson.loads(mp.read_bytes()))
        except FileNotFoundError:
            raise BackupError(f"{mp} is missing; a backup is checked against it") from None
        except (orjson.JSONDecodeError, TypeError, OSError) as exc:
            raise BackupError(f"{mp} is not a gridmap backup manifest ({exc})") from None
        tables_ok = isinstance(m.tables, dict) and all(
            isinstance(v, dict) and set(v) == {"rows", "digest"} for v in m.tables.values()
        )
        if m.kind not in KINDS or not isinstance(m.sha256, str) or not tables_ok:
            raise BackupError(f"{mp} is not a gridmap backup manifest")
        return m


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


def read_only_uri(path: Path) -> str:
    """SQLite's URI for reading ``path`` (quoted: a ``#``, ``?`` or ``%`` in it is a name)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _new_private_file(path: Path) -> None:
    """Create ``path`` empty and private; FileExistsError if it exists (another run)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))


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


@said_plainly
def backup(database: str, dest: Path, *, step: Step = _noop) -> Manifest:
    """Back ``database`` up into the new file ``dest`` (the service may keep running);
    write and return its manifest."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink() or manifest_path(dest).exists():
        raise BackupError(f"{dest} already exists; give a new file name")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is no folder; create it first")
    partial = dest.with_name(dest.name + ".partial")
    try:
        _new_private_file(partial)
    except FileExistsError:
        msg = f"{partial} exists: another backup to {dest.name} is running, or one was cut off"
        raise BackupError(msg + " (remove it if none runs)") from None
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
    conn = sqlite3.connect(read_only_uri(source), uri=True, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        try:
            known = _has(conn, "gridmap_meta")
        except sqlite3.DatabaseError:
            raise BackupError(f"{source} is no GeoPackage (not an SQLite database)") from None
        if not known:
            raise BackupError(f"{source} holds no gridmap store")
        conn.execute("VACUUM INTO ?", (str(out),))  # into the empty private file
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"could not copy {source}: {exc}") from None
    finally:
        conn.close()
    step("snapshot", 1, 1)
    copy = sqlite3.connect(read_only_uri(out), uri=True)
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
        if conn.execute("SELECT to_regclass('gridmap_meta')").fetchone()[0] is None:  # type: ignore[index]
            raise BackupError("that database holds no gridmap store")
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


def pg_tables(conn: Any) -> list[str]:
    """The tables of the connection's schema (PostGIS's own ``spatial_ref_sys`` left out)."""
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE' AND table_name <> 'spatial_ref_sys' "
            "ORDER BY table_name"
        )
    ]


def pg_figures(conn: Any, step: Step = _noop) -> dict[str, dict[str, Any]]:
    """Row count and content digest of every table of the store's schema, computed by
    PostgreSQL."""
    names = pg_tables(conn)
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
    try:
        found = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is no SQLite database ({exc})") from None
    if found != ["ok"]:
        raise BackupError(f"{path} fails SQLite's integrity check: {'; '.join(found[:3])}")


def _has(conn: sqlite3.Connection, table: str) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return found is not None


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    try:
        row = conn.execute("SELECT value FROM gridmap_meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        msg = f"{name} is not installed; on Debian: sudo apt-get install postgresql-client"
        raise BackupError(msg)
    return found


def _redacted(text: str, url: str | None = None) -> str:
    from gridmap.store.postgis import redact

    if url:
        text = text.replace(url, redact(url))
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return " ".join(text.split())[-500:]


# ---------------------------------------------------------------- checking, restoring


@said_plainly
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
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            _integrity(conn, path)
            _same(sqlite_figures(conn, step), manifest.tables, str(path))
        finally:
            conn.close()
    else:
        _pg_listed(path, manifest)
    return manifest


def _pg_listed(path: Path, manifest: Manifest) -> None:
    """pg_restore reads the archive's table of contents: every table is in it."""
    done = subprocess.run(
        [_tool("pg_restore"), "--list", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"{path} is no PostgreSQL archive: {_redacted(done.stderr)}")
    listed = {m.group(1) for m in re.finditer(r"TABLE DATA \S+ (\S+)", done.stdout)}
    lacking = sorted(set(manifest.tables) - listed)
    if lacking:
        raise BackupError(f"{path} lacks the data of: {', '.join(lacking[:5])}")


def _same(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    differ = sorted(t for t in set(found) | set(expected) if found.get(t) != expected.get(t))
    if differ:
        raise BackupError(f"{where} differs from the backup's manifest in: {', '.join(differ)}")


@said_plainly
def restore(backup_file: Path, database: str, *, step: Step = _noop) -> Manifest:
    """Replace ``database`` by the backup (verified first, checked again after); returns
    the manifest. A GeoPackage must not be open by a running service; the file it replaces
    is kept as ``<name>.before-restore-<time>``. A PostgreSQL database must be empty
    (create one, restore, then point the service at it)."""
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


@contextlib.contextmanager
def _only_restore(target: Path) -> Iterator[None]:
    """Hold ``<target>.restore-lock``: a second restore of the same file is refused."""
    lock = target.with_name(target.name + ".restore-lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BackupError(f"another restore of {target} is running") from None
        yield
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def _gpkg_restore(src: Path, given: Path, manifest: Manifest, step: Step) -> None:
    target = given.resolve()  # a symlink's file is the one a service has open
    if target.is_dir():
        raise BackupError(f"{given} is a folder; name the database file")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is no folder; create it first")
    with _only_restore(target):
        if target.exists() and in_use(target):
            msg = f"{given} is open by a running service; stop it first (systemctl stop gridmap)"
            raise BackupError(msg)
        incoming = target.with_name(target.name + ".restoring")
        incoming.unlink(missing_ok=True)  # a cut-off restore's (we hold the lock)
        try:
            step("copy", 0, 1)
            _new_private_file(incoming)
            with src.open("rb") as a, incoming.open("r+b") as b:
                shutil.copyfileobj(a, b, 1 << 20)
            _fsync(incoming)
            step("copy", 1, 1)
            conn = sqlite3.connect(read_only_uri(incoming), uri=True)
            try:
                _same(sqlite_figures(conn, step), manifest.tables, str(incoming))
            finally:
                conn.close()
            if target.exists():
                _checkpoint(target)  # the old file whole, without its WAL, before it goes aside
                target.rename(_aside(target))
            for side in ("-wal", "-shm", "-journal"):
                target.with_name(target.name + side).unlink(missing_ok=True)
            incoming.rename(target)
        except BaseException:
            incoming.unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _aside(target: Path) -> Path:
    """A new name for the file a restore replaces (never one that exists)."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        aside = target.with_name(f"{target.name}.before-restore-{stamp}" + (f"-{n}" if n else ""))
        if not aside.exists():
            return aside
    raise BackupError(f"too many earlier restores beside {target}; remove some")


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
        held = pg_tables(conn)
    if held:
        msg = (
            f"that database is not empty (it holds {', '.join(held[:3])}"
            f"{' …' if len(held) > 3 else ''}); restore into a new one (createdb), check it, "
            "then point GRIDMAP_DATABASE at it"
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
