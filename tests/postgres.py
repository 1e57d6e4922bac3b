"""A throw-away PostgreSQL + PostGIS cluster for the tests and benchmarks (OS packages).

``GRIDMAP_TEST_POSTGRES=postgresql://…`` names a server to use instead (each test makes
its own database there). Otherwise the newest ``/usr/lib/postgresql/*/bin`` is started
on a free loopback port in a temporary folder, owned by the ``postgres`` user when run
as root (PostgreSQL refuses to run as root), with durability off (nothing here is kept).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

INSTALL = "apt-get install -y postgresql postgis  (Debian: postgresql-15-postgis-3)"


def _bin_dir() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def unavailable() -> str | None:
    """Why no PostGIS server can be had here (None: one can)."""
    if os.environ.get("GRIDMAP_TEST_POSTGRES"):
        return None
    bindir = _bin_dir()
    if bindir is None:
        return f"PostgreSQL is not installed ({INSTALL})"
    version = bindir.parent.name
    if not Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists():
        return f"PostGIS is not installed for PostgreSQL {version} ({INSTALL})"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as its own user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running server; :meth:`new_database` makes empty databases on it."""

    _names = itertools.count(1)

    def __init__(self, admin_url: str, stop: list[str] | None = None, folder: Path | None = None):
        self.admin_url = admin_url
        self._stop = stop
        self._folder = folder

    def url(self, dbname: str) -> str:
        """The URL of one database on this server."""
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{dbname}"

    def new_database(self, prefix: str = "gm", *, template: str | None = None) -> str:
        """Create a database (a copy of ``template`` if given); its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            sql = f'CREATE DATABASE "{name}"'
            if template is not None:
                sql += f' TEMPLATE "{template}"'
            c.execute(sql)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database` (its connections closed first)."""
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop a server this process started, and remove its folder."""
        if self._stop is not None:
            subprocess.run(self._stop, check=False, capture_output=True)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start() -> Cluster:
    """A server to test against: GRIDMAP_TEST_POSTGRES, or a new throw-away cluster."""
    given = os.environ.get("GRIDMAP_TEST_POSTGRES")
    if given:
        return Cluster(given)
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = _bin_dir()
    assert bindir is not None
    folder = _folder("gridmap-pg-")
    subprocess.run(
        _as_postgres(
            [str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    return _launch(bindir, folder)


def start_replica(primary: Cluster) -> Cluster:
    """A streaming replica (hot standby) of a server :func:`start` made, on its own port:
    a base backup of the primary that then follows its write-ahead log."""
    bindir = _bin_dir()
    assert bindir is not None and primary._folder is not None, "a replica of a server made here"
    info = psycopg.conninfo.conninfo_to_dict(primary.admin_url)
    folder = _folder("gridmap-pg-replica-")
    subprocess.run(
        _as_postgres(
            [str(bindir / "pg_basebackup"), "-h", str(info["host"]), "-p", str(info["port"]),
             "-U", "postgres", "-D", str(folder / "data"), "-R", "-X", "stream", "--no-sync",
             "--checkpoint=fast"]
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    return _launch(bindir, folder)


def _folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    return folder


def _launch(bindir: Path, folder: Path) -> Cluster:
    """Start the server whose data is in ``folder``/data on a free port; wait until it
    accepts connections."""
    data = folder / "data"
    port = _free_port()
    opts = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_connections=200 -c shared_buffers=128MB"
    )
    log = folder / "server.log"
    subprocess.run(
        _as_postgres(
            [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    stop = _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return Cluster(url, stop, folder)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """A server for the length of a ``with`` block."""
    c = start()
    try:
        yield c
    finally:
        c.stop()
